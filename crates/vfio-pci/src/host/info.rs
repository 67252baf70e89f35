//! What VFIO says about an opened device: its regions and interrupts, as plain data.
//!
//! This is what the device model and the trap-map planner consume: per region its size,
//! whether it may be mmapped, the sparse-mmap areas (the parts that may, when not all of it
//! may) and whether the kernel allows mapping over the MSI-X table (`MSIX_MAPPABLE`).

use std::fmt;

use trap_map::MmapArea;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_AUTOMASKED, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE,
    VFIO_IRQ_INFO_NORESIZE, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ERR_IRQ_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS, VFIO_PCI_REQ_IRQ_INDEX, VFIO_PCI_ROM_REGION_INDEX,
    VFIO_PCI_VGA_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_ioctls::{VfioDevice, VfioRegionInfoCap};

/// Which PCI resource a VFIO region index stands for (the fixed vfio-pci layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VfioRegionKind {
    /// BAR 0-5.
    Bar(u8),
    /// The expansion ROM.
    Rom,
    /// Configuration space.
    Config,
    /// Legacy VGA ranges.
    Vga,
    /// A device-specific region (index 9 and up), described by its type capability.
    DeviceSpecific,
}

impl VfioRegionKind {
    /// The kind of region `index` on a vfio-pci device.
    pub fn of_index(index: u32) -> Self {
        match index {
            0..=5 => VfioRegionKind::Bar(index as u8),
            VFIO_PCI_ROM_REGION_INDEX => VfioRegionKind::Rom,
            VFIO_PCI_CONFIG_REGION_INDEX => VfioRegionKind::Config,
            VFIO_PCI_VGA_REGION_INDEX => VfioRegionKind::Vga,
            _ => VfioRegionKind::DeviceSpecific,
        }
    }
}

impl fmt::Display for VfioRegionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VfioRegionKind::Bar(n) => write!(f, "BAR{n}"),
            VfioRegionKind::Rom => f.write_str("ROM"),
            VfioRegionKind::Config => f.write_str("config"),
            VfioRegionKind::Vga => f.write_str("VGA"),
            VfioRegionKind::DeviceSpecific => f.write_str("device-specific"),
        }
    }
}

/// A region's access flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionFlags {
    /// `read(2)` at the region's offset works.
    pub read: bool,
    /// `write(2)` works.
    pub write: bool,
    /// `mmap(2)` of (parts of) the region works.
    pub mmap: bool,
}

impl RegionFlags {
    /// From `VFIO_REGION_INFO_FLAG_*` bits.
    pub fn from_bits(flags: u32) -> Self {
        Self {
            read: flags & VFIO_REGION_INFO_FLAG_READ != 0,
            write: flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            mmap: flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
        }
    }
}

/// One VFIO region of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioRegionInfo {
    /// The VFIO region index (0-5 BARs, 6 ROM, 7 config, 8 VGA, 9+ device-specific).
    pub index: u32,
    /// Size in bytes; 0 for an unimplemented BAR.
    pub size: u64,
    /// Offset of the region in the device file, for `pread`/`pwrite`/`mmap`.
    pub offset: u64,
    /// Access flags.
    pub flags: RegionFlags,
    /// The sparse-mmap capability's areas: `None` when the region has no such capability
    /// (then all of it may be mapped if `flags.mmap`), `Some(areas)` when only those may.
    pub sparse_areas: Option<Vec<MmapArea>>,
    /// The kernel lets the MSI-X table's page be mapped too (`VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`),
    /// so a BAR holding the table need not be split around it.
    pub msix_mappable: bool,
    /// The region type capability (type, subtype), for device-specific regions.
    pub region_type: Option<(u32, u32)>,
}

impl VfioRegionInfo {
    /// Builds the plain-data view of one region from VFIO's flags, size, offset and capabilities.
    pub fn from_vfio(
        index: u32,
        flags: u32,
        size: u64,
        offset: u64,
        caps: &[VfioRegionInfoCap],
    ) -> Self {
        let mut info = Self {
            index,
            size,
            offset,
            flags: RegionFlags::from_bits(flags),
            sparse_areas: None,
            msix_mappable: false,
            region_type: None,
        };
        for cap in caps {
            match cap {
                VfioRegionInfoCap::SparseMmap(sparse) => {
                    info.sparse_areas = Some(
                        sparse
                            .areas
                            .iter()
                            .map(|a| MmapArea {
                                offset: a.offset,
                                size: a.size,
                            })
                            .collect(),
                    );
                }
                VfioRegionInfoCap::MsixMappable => info.msix_mappable = true,
                VfioRegionInfoCap::Type(t) => info.region_type = Some((t.type_, t.subtype)),
                _ => {}
            }
        }
        info
    }

    /// Which PCI resource this region is.
    pub fn kind(&self) -> VfioRegionKind {
        VfioRegionKind::of_index(self.index)
    }

    /// The parts that may be mmapped: none without the mmap flag, the sparse areas when the
    /// region has them, else the whole region. Areas past the region's end are clipped.
    pub fn mmappable_areas(&self) -> Vec<MmapArea> {
        if !self.flags.mmap || self.size == 0 {
            return Vec::new();
        }
        match &self.sparse_areas {
            None => vec![MmapArea {
                offset: 0,
                size: self.size,
            }],
            Some(areas) => areas
                .iter()
                .filter(|a| a.offset < self.size && a.size > 0)
                .map(|a| MmapArea {
                    offset: a.offset,
                    size: a.size.min(self.size - a.offset),
                })
                .collect(),
        }
    }
}

/// Which PCI interrupt a VFIO IRQ index stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqKind {
    /// Legacy INTx.
    Intx,
    /// MSI.
    Msi,
    /// MSI-X.
    Msix,
    /// PCIe AER error notification.
    Err,
    /// Device request (the host wants the device back).
    Req,
    /// Anything else.
    Other,
}

impl IrqKind {
    /// The kind of IRQ index `index` on a vfio-pci device.
    pub fn of_index(index: u32) -> Self {
        match index {
            VFIO_PCI_INTX_IRQ_INDEX => IrqKind::Intx,
            VFIO_PCI_MSI_IRQ_INDEX => IrqKind::Msi,
            VFIO_PCI_MSIX_IRQ_INDEX => IrqKind::Msix,
            VFIO_PCI_ERR_IRQ_INDEX => IrqKind::Err,
            VFIO_PCI_REQ_IRQ_INDEX => IrqKind::Req,
            _ => IrqKind::Other,
        }
    }
}

impl fmt::Display for IrqKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IrqKind::Intx => "INTx",
            IrqKind::Msi => "MSI",
            IrqKind::Msix => "MSI-X",
            IrqKind::Err => "ERR",
            IrqKind::Req => "REQ",
            IrqKind::Other => "other",
        })
    }
}

/// An IRQ index's flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IrqFlags {
    /// Can signal an eventfd.
    pub eventfd: bool,
    /// Can be masked and unmasked through VFIO.
    pub maskable: bool,
    /// Masked by the host when it fires (INTx): needs an unmask or a resample fd.
    pub automasked: bool,
    /// The number of vectors cannot change once enabled (MSI): enable all at once.
    pub noresize: bool,
}

impl IrqFlags {
    /// From `VFIO_IRQ_INFO_*` bits.
    pub fn from_bits(flags: u32) -> Self {
        Self {
            eventfd: flags & VFIO_IRQ_INFO_EVENTFD != 0,
            maskable: flags & VFIO_IRQ_INFO_MASKABLE != 0,
            automasked: flags & VFIO_IRQ_INFO_AUTOMASKED != 0,
            noresize: flags & VFIO_IRQ_INFO_NORESIZE != 0,
        }
    }
}

/// One VFIO IRQ index of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqInfo {
    /// The VFIO IRQ index (0 INTx, 1 MSI, 2 MSI-X, 3 ERR, 4 REQ).
    pub index: u32,
    /// How many vectors; 0 when the device lacks this kind.
    pub count: u32,
    /// Flags.
    pub flags: IrqFlags,
}

impl IrqInfo {
    /// Which PCI interrupt this is.
    pub fn kind(&self) -> IrqKind {
        IrqKind::of_index(self.index)
    }
}

/// Every region and IRQ index of an opened VFIO device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Regions, by index.
    pub regions: Vec<VfioRegionInfo>,
    /// IRQ indexes, by index.
    pub irqs: Vec<IrqInfo>,
}

impl DeviceInfo {
    /// Reads the regions and IRQs that `vfio-ioctls` queried when it opened the device.
    ///
    /// vfio-ioctls keeps the regions in a list and answers 0 for an index it lacks; a region
    /// with no flags is an unimplemented BAR (or no VGA), and the first flag-less index past
    /// the fixed PCI ones ends the device-specific regions.
    pub fn from_device(device: &VfioDevice) -> Self {
        let mut regions = Vec::new();
        for index in 0.. {
            let flags = device.get_region_flags(index);
            if flags == 0 {
                if index >= VFIO_PCI_NUM_REGIONS {
                    break;
                }
                regions.push(VfioRegionInfo::from_vfio(index, 0, 0, 0, &[]));
                continue;
            }
            regions.push(VfioRegionInfo::from_vfio(
                index,
                flags,
                device.get_region_size(index),
                device.get_region_offset(index),
                &device.get_region_caps(index),
            ));
        }
        let irqs = (0..VFIO_PCI_NUM_IRQS)
            .filter_map(|index| device.get_irq_info(index))
            .map(|irq| IrqInfo {
                index: irq.index,
                count: irq.count,
                flags: IrqFlags::from_bits(irq.flags),
            })
            .collect();
        Self { regions, irqs }
    }

    /// The region with VFIO index `index`.
    pub fn region(&self, index: u32) -> Option<&VfioRegionInfo> {
        self.regions.iter().find(|r| r.index == index)
    }

    /// The IRQ index `index`.
    pub fn irq(&self, index: u32) -> Option<&IrqInfo> {
        self.irqs.iter().find(|i| i.index == index)
    }
}

impl fmt::Display for DeviceInfo {
    /// One line per region and IRQ, skipping empty ones:
    /// `region 0 BAR0: 0x4000 bytes at 0x0, rw, mmap` and
    /// `irq 2 MSI-X: 65 vectors (eventfd, maskable, noresize)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in self.regions.iter().filter(|r| r.size > 0) {
            let access = match (r.flags.read, r.flags.write) {
                (true, true) => "rw",
                (true, false) => "ro",
                (false, true) => "wo",
                (false, false) => "no access",
            };
            write!(
                f,
                "region {} {}: {:#x} bytes at {:#x}, {access}",
                r.index,
                r.kind(),
                r.size,
                r.offset
            )?;
            if r.flags.mmap {
                f.write_str(", mmap")?;
                if let Some(areas) = &r.sparse_areas {
                    let list: Vec<String> = areas
                        .iter()
                        .map(|a| format!("{:#x}+{:#x}", a.offset, a.size))
                        .collect();
                    write!(f, " only [{}]", list.join(", "))?;
                }
            }
            if r.msix_mappable {
                f.write_str(", msix-mappable")?;
            }
            if let Some((t, s)) = r.region_type {
                write!(f, ", type {t:#x}/{s:#x}")?;
            }
            writeln!(f)?;
        }
        for irq in self.irqs.iter().filter(|i| i.count > 0) {
            let mut flags = Vec::new();
            for (on, name) in [
                (irq.flags.eventfd, "eventfd"),
                (irq.flags.maskable, "maskable"),
                (irq.flags.automasked, "automasked"),
                (irq.flags.noresize, "noresize"),
            ] {
                if on {
                    flags.push(name);
                }
            }
            writeln!(
                f,
                "irq {} {}: {} vector{} ({})",
                irq.index,
                irq.kind(),
                irq.count,
                if irq.count == 1 { "" } else { "s" },
                flags.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_ioctls::{
        VfioRegionInfoCapSparseMmap, VfioRegionInfoCapType, VfioRegionSparseMmapArea,
    };

    const RW_MMAP: u32 =
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP;

    #[test]
    fn capabilities_become_plain_data() {
        let caps = [
            VfioRegionInfoCap::SparseMmap(VfioRegionInfoCapSparseMmap {
                areas: vec![
                    VfioRegionSparseMmapArea {
                        offset: 0,
                        size: 0x2000,
                    },
                    VfioRegionSparseMmapArea {
                        offset: 0x3000,
                        size: 0x2000,
                    },
                ],
            }),
            VfioRegionInfoCap::MsixMappable,
        ];
        let bar = VfioRegionInfo::from_vfio(0, RW_MMAP, 0x4000, 0, &caps);
        assert_eq!(bar.kind(), VfioRegionKind::Bar(0));
        assert!(bar.msix_mappable);
        assert_eq!(
            bar.mmappable_areas(),
            vec![
                MmapArea {
                    offset: 0,
                    size: 0x2000
                },
                // Clipped to the region's end.
                MmapArea {
                    offset: 0x3000,
                    size: 0x1000
                }
            ]
        );

        let plain = VfioRegionInfo::from_vfio(2, RW_MMAP, 0x1000, 0x2_0000_0000, &[]);
        assert_eq!(plain.mmappable_areas().len(), 1);
        assert_eq!(plain.sparse_areas, None);

        let config = VfioRegionInfo::from_vfio(
            7,
            VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
            0x1000,
            0x7_0000_0000,
            &[],
        );
        assert!(config.mmappable_areas().is_empty());
        assert_eq!(config.kind(), VfioRegionKind::Config);

        let special = VfioRegionInfo::from_vfio(
            9,
            VFIO_REGION_INFO_FLAG_READ,
            0x100,
            0,
            &[VfioRegionInfoCap::Type(VfioRegionInfoCapType {
                type_: 0x8000_8086,
                subtype: 1,
            })],
        );
        assert_eq!(special.region_type, Some((0x8000_8086, 1)));
        assert_eq!(special.kind(), VfioRegionKind::DeviceSpecific);
    }

    #[test]
    fn display_lists_regions_and_irqs() {
        let info = DeviceInfo {
            regions: vec![
                VfioRegionInfo::from_vfio(
                    0,
                    RW_MMAP,
                    0x4000,
                    0,
                    &[VfioRegionInfoCap::MsixMappable],
                ),
                VfioRegionInfo::from_vfio(1, 0, 0, 0, &[]),
            ],
            irqs: vec![
                IrqInfo {
                    index: 2,
                    count: 65,
                    flags: IrqFlags::from_bits(VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_NORESIZE),
                },
                IrqInfo {
                    index: 3,
                    count: 0,
                    flags: IrqFlags::default(),
                },
            ],
        };
        assert_eq!(
            info.to_string(),
            "region 0 BAR0: 0x4000 bytes at 0x0, rw, mmap, msix-mappable\n\
             irq 2 MSI-X: 65 vectors (eventfd, noresize)\n"
        );
        assert_eq!(info.irq(2).unwrap().kind(), IrqKind::Msix);
        assert!(info.region(1).is_some());
        assert!(info.region(7).is_none());
    }
}
