//! A simulated host device: a **test aid, not a feature** (cargo feature `sim`).
//!
//! [`SimBackend`] implements [`DeviceBackend`] without `/dev/vfio`, so the passthrough device,
//! a VMM's PCI bus and guest-driven tests run on any Linux host with `/dev/kvm`:
//!
//! - **Config space** is a [`ConfigSpace`] built like the real device's (IDs, BARs at host
//!   addresses, capabilities, INTx pin); the device's own masks apply to writes.
//! - **BARs** are memfds (`memfd_create`): the mappable parts are mmapped from them exactly as
//!   a VFIO region is mmapped from the device fd, and trapped accesses (`region_read` /
//!   `region_write`) read and write the same bytes. I/O BARs are memfds too (never mapped).
//! - **Interrupts** are the eventfds the passthrough device installs; [`SimBackend::fire`]
//!   signals the one of vector N, as the device raising it would.
//! - **Doorbell**: a guest write to the doorbell ([`SimBackend::doorbell`], BAR 0 offset 0 in
//!   the presets; that page is trapped because the presets' sparse-mmap areas leave it out, as a
//!   host reports for registers it must filter) fires vector 0 of whatever interrupt is enabled
//!   (MSI-X, else MSI, else INTx), so a guest can ring it and receive an interrupt.
//! - **DMA** goes through a [`SoftwareIommu`]: after attach, guest RAM is reachable at IOVA =
//!   GPA with [`SoftwareIommu::read`]/[`write`](SoftwareIommu::write) (see [`SimBackend::iommu`]).
//! - **Reset** restores the initial config space, zeroes the BARs and drops the interrupts.
//!
//! Presets: [`SimBackend::nvme`] is modelled on QEMU's NVMe controller (`1b36:0010`, MSI-X
//! table and PBA inside BAR 0); [`SimBackend::nic`] on an Intel 82574L NIC (`8086:10d3`,
//! MSI and MSI-X, the MSI-X structures in BAR 3 of their own, an I/O BAR).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use iommu_dma::{DmaError, DmaMapper, DmaMapping, HostIommuLimits, SoftwareIommu};
use pci_config::capability::{BarOffset, MsiCapability, MsixCapability, PowerManagement};
use pci_config::capability::{ExpressCapability, PortType};
use pci_config::{BarDef, ConfigSize, ConfigSpace, DeviceIds, ExtCapabilityId, HeaderType};
use trap_map::MmapArea;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_REGIONS,
};
use vmm_sys_util::eventfd::EventFd;

use crate::backend::{BackendError, DeviceBackend, MmapSource};
use crate::host::{DeviceInfo, IrqFlags, IrqInfo, IrqKind, RegionFlags, VfioRegionInfo};

/// One BAR of a simulated device.
#[derive(Debug, Clone)]
pub struct SimBar {
    /// BAR index (0-5).
    pub index: u8,
    /// The BAR definition (kind, size, prefetchable, host address).
    pub def: BarDef,
    /// The areas the "host" lets the VMM mmap (`None`: all of it, for memory BARs).
    pub sparse: Option<Vec<MmapArea>>,
    /// Whether the MSI-X table pages may be mmapped too.
    pub msix_mappable: bool,
}

/// What a simulated device looks like: config space, BARs, interrupts.
#[derive(Debug, Clone)]
pub struct SimSpec {
    /// Name for logs and views (a host BDF).
    pub name: String,
    /// Configuration space with IDs and capabilities; the BARs are added from `bars`.
    pub config: ConfigSpace,
    /// The BARs.
    pub bars: Vec<SimBar>,
    /// Size of the expansion ROM (0: none).
    pub rom_size: u64,
    /// INTx supported (pin A).
    pub intx: bool,
    /// MSI vectors (0: no MSI); must match the config space's MSI capability.
    pub msi_vectors: u32,
    /// MSI-X vectors (0: no MSI-X); must match the config space's MSI-X capability.
    pub msix_vectors: u32,
    /// `(BAR, offset)` whose guest writes fire vector 0.
    pub doorbell: Option<(u8, u64)>,
}

/// Which interrupt a [`SimBackend::fire`] signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// The MSI-X vector's eventfd.
    Msix,
    /// The MSI vector's eventfd.
    Msi,
    /// The INTx eventfd.
    Intx,
    /// Nothing is enabled for that vector: the interrupt is lost, as on hardware.
    Nothing,
}

#[derive(Default)]
struct SimIrqs {
    intx: Option<EventFd>,
    intx_resample: Option<EventFd>,
    msi: Vec<EventFd>,
    msix: Vec<EventFd>,
}

/// Host faults to inject into a [`SimBackend`] ([`SimBackend::faults`]), each off by default and
/// switchable at any time, so tests see what a VMM sees when the host fails: errors that must
/// name the device and what to do, an attach that is all or nothing, a detach that leaves
/// nothing behind.
#[derive(Debug, Default)]
pub struct SimFaults {
    /// Region (BAR, ROM) reads and writes fail with `EIO`, as `pread`/`pwrite` on the device fd
    /// do when the device errors.
    pub region_io: AtomicBool,
    /// mmaps of the BARs fail (`EINVAL`, as when the host refuses the mapping).
    pub mmap: AtomicBool,
    /// `VFIO_DEVICE_SET_IRQS` fails with this errno (0: it works).
    pub irqs: AtomicI32,
    /// DMA maps fail with this errno (0: they work): `ENOMEM` (locked memory), `EBUSY`,
    /// `ENOSPC` (the IOMMU's mapping limit).
    pub dma_map: AtomicI32,
    /// `VFIO_DEVICE_RESET` fails with `EIO`.
    pub reset: AtomicBool,
    /// The device is gone (surprise removal): config and region reads return all-ones,
    /// writes are dropped, every ioctl fails with `ENODEV`.
    pub vanished: AtomicBool,
}

impl SimFaults {
    /// The errno an ioctl fails with now (`ENODEV` once the device vanished), or `None`.
    fn ioctl(&self, injected: i32) -> Option<i32> {
        if self.vanished.load(Ordering::Relaxed) {
            Some(libc::ENODEV)
        } else {
            (injected != 0).then_some(injected)
        }
    }
}

/// The simulated device's IOMMU with [`SimFaults::dma_map`] injected into its maps. Unmaps
/// always work: the container outlives a device that vanished, and so do its mappings.
#[derive(Debug)]
struct FaultyIommu {
    iommu: Arc<SoftwareIommu>,
    faults: Arc<SimFaults>,
}

impl DmaMapper for FaultyIommu {
    fn name(&self) -> &str {
        self.iommu.name()
    }

    fn limits(&self) -> HostIommuLimits {
        self.iommu.limits()
    }

    unsafe fn map(&self, mapping: DmaMapping) -> Result<(), DmaError> {
        let errno = self.faults.dma_map.load(Ordering::Relaxed);
        if let (Some(errno), Some(range)) = (self.faults.ioctl(errno), mapping.iova_range()) {
            return Err(DmaError::MapFailed {
                mapper: self.iommu.name().to_string(),
                op: "VFIO_IOMMU_MAP_DMA",
                range,
                host_addr: mapping.host_addr,
                source: io::Error::from_raw_os_error(errno),
            });
        }
        // SAFETY: the caller's guarantees for `mapping` are passed on unchanged.
        unsafe { self.iommu.map(mapping) }
    }

    fn unmap(&self, iova: u64, size: u64) -> Result<DmaMapping, DmaError> {
        self.iommu.unmap(iova, size)
    }

    fn mappings(&self) -> Vec<DmaMapping> {
        self.iommu.mappings()
    }
}

/// A simulated host device (see the [module docs](self)).
pub struct SimBackend {
    spec: SimSpec,
    info: DeviceInfo,
    /// The device's config space, as it is now.
    config: Mutex<ConfigSpace>,
    /// The config space after power-on, restored by a reset.
    initial: ConfigSpace,
    /// One memfd per region index (BARs, ROM); `None` where the region is absent.
    regions: Vec<Option<File>>,
    irqs: Mutex<SimIrqs>,
    iommu: Arc<SoftwareIommu>,
    resets: AtomicU64,
    region_writes: AtomicU64,
    intx_unmasks: AtomicU64,
    /// Set on drop when a mapping of a region is still in this process (see
    /// [`SimBackend::left_mapped_probe`]).
    left_mapped: Arc<AtomicBool>,
    faults: Arc<SimFaults>,
}

impl std::fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBackend")
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

fn memfd(name: &str, size: u64) -> io::Result<File> {
    let cname = std::ffi::CString::new(format!("sim {name}")).map_err(io::Error::other)?;
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh fd that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

fn sim_err(name: &str, op: String, kind: io::ErrorKind, why: &str) -> BackendError {
    BackendError::new(name, op, io::Error::new(kind, why.to_string()))
}

impl SimBackend {
    /// A simulated device from a spec.
    pub fn new(spec: SimSpec) -> io::Result<Self> {
        let mut config = spec.config.clone();
        for bar in &spec.bars {
            config
                .set_bar(bar.index as usize, bar.def)
                .map_err(io::Error::other)?;
        }
        if spec.rom_size > 0 {
            config
                .set_rom(pci_config::RomDef::new(spec.rom_size as u32).at(0xfeb0_0000))
                .map_err(io::Error::other)?;
        }
        let _ = config.set_u8(pci_config::header::offset::INTERRUPT_PIN, spec.intx as u8);
        let mut regions: Vec<Option<File>> = (0..VFIO_PCI_NUM_REGIONS).map(|_| None).collect();
        let mut infos = Vec::new();
        for index in 0..VFIO_PCI_NUM_REGIONS {
            let bar = spec.bars.iter().find(|b| u32::from(b.index) == index);
            let (size, flags, sparse, msix_mappable) = match (index, bar) {
                (0..=5, Some(b)) => {
                    let memory = b.def.kind.is_memory();
                    let flags = RegionFlags {
                        read: true,
                        write: true,
                        mmap: memory,
                    };
                    (b.def.size, flags, b.sparse.clone(), b.msix_mappable)
                }
                (6, _) if spec.rom_size > 0 => {
                    let flags = RegionFlags {
                        read: true,
                        write: false,
                        mmap: false,
                    };
                    (spec.rom_size, flags, None, false)
                }
                (VFIO_PCI_CONFIG_REGION_INDEX, _) => {
                    let flags = RegionFlags {
                        read: true,
                        write: true,
                        mmap: false,
                    };
                    (config.len() as u64, flags, None, false)
                }
                _ => (0, RegionFlags::default(), None, false),
            };
            if size > 0 && index != VFIO_PCI_CONFIG_REGION_INDEX {
                let page = 4096u64;
                let file = memfd(&format!("{} region {index}", spec.name), size.max(page))?;
                regions[index as usize] = Some(file);
            }
            infos.push(VfioRegionInfo {
                index,
                size,
                // VFIO puts region N at N << 40 in the device fd; keep that shape.
                offset: u64::from(index) << 40,
                flags,
                sparse_areas: sparse,
                msix_mappable,
                region_type: None,
            });
        }
        let irq = |index, count| IrqInfo {
            index,
            count,
            flags: IrqFlags {
                eventfd: true,
                maskable: index == VFIO_PCI_INTX_IRQ_INDEX,
                automasked: index == VFIO_PCI_INTX_IRQ_INDEX,
                noresize: index != VFIO_PCI_MSIX_IRQ_INDEX,
            },
        };
        let info = DeviceInfo {
            regions: infos,
            irqs: vec![
                irq(VFIO_PCI_INTX_IRQ_INDEX, spec.intx as u32),
                irq(VFIO_PCI_MSI_IRQ_INDEX, spec.msi_vectors),
                irq(VFIO_PCI_MSIX_IRQ_INDEX, spec.msix_vectors),
            ],
        };
        let iommu = Arc::new(SoftwareIommu::with_limits(
            &format!("sim {}", spec.name),
            HostIommuLimits::x86_vtd(),
        ));
        Ok(Self {
            initial: config.clone(),
            config: Mutex::new(config),
            spec,
            info,
            regions,
            irqs: Mutex::new(SimIrqs::default()),
            iommu,
            resets: AtomicU64::new(0),
            region_writes: AtomicU64::new(0),
            intx_unmasks: AtomicU64::new(0),
            left_mapped: Arc::new(AtomicBool::new(false)),
            faults: Arc::new(SimFaults::default()),
        })
    }

    /// Modelled on QEMU's NVMe controller `1b36:0010` (`-device nvme`): BAR 0 is a 64-bit
    /// 16 KiB BAR with the controller registers at 0x0, the doorbells at 0x1000, the MSI-X table
    /// (65 vectors) at 0x2000 and the PBA at 0x3000. The "host" lets the doorbell and PBA pages
    /// be mmapped and not page 0 (sparse mmap), so page 0 is trapped and forwarded; the
    /// doorbell is BAR 0 offset 0. Capabilities: PM, PCI Express endpoint, MSI-X; extended:
    /// SR-IOV and ARI (which the passthrough device must hide). INTx pin A.
    pub fn nvme() -> io::Result<Self> {
        let ids = DeviceIds {
            vendor_id: 0x1b36,
            device_id: 0x0010,
            class_code: 0x010802,
            revision: 2,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
        };
        let mut config = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Extended, ids);
        config
            .add_capability(PowerManagement::new(true))
            .map_err(io::Error::other)?;
        config
            .add_capability(ExpressCapability::new(PortType::Endpoint))
            .map_err(io::Error::other)?;
        config
            .add_capability(MsixCapability::new(
                65,
                BarOffset {
                    bir: 0,
                    offset: 0x2000,
                },
                BarOffset {
                    bir: 0,
                    offset: 0x3000,
                },
            ))
            .map_err(io::Error::other)?;
        config
            .add_extended_capability(ExtCapabilityId::SRIOV, 1, &[])
            .map_err(io::Error::other)?;
        config
            .add_extended_capability(ExtCapabilityId::ARI, 1, &[])
            .map_err(io::Error::other)?;
        Self::new(SimSpec {
            name: "0000:01:00.0".into(),
            config,
            bars: vec![SimBar {
                index: 0,
                def: BarDef::memory64(0x4000).at(0xfebd_0000),
                sparse: Some(vec![
                    MmapArea {
                        offset: 0x1000,
                        size: 0x1000,
                    },
                    MmapArea {
                        offset: 0x3000,
                        size: 0x1000,
                    },
                ]),
                msix_mappable: false,
            }],
            rom_size: 0,
            intx: true,
            msi_vectors: 0,
            msix_vectors: 65,
            doorbell: Some((0, 0)),
        })
    }

    /// Modelled on an Intel 82574L NIC `8086:10d3`: BAR 0 128 KiB of registers (mmappable
    /// except page 0, which is trapped and holds the doorbell at offset 0), BAR 2 32 I/O ports,
    /// BAR 3 16 KiB holding only the MSI-X table (5 vectors, 0x0) and PBA (0x2000), a 64 KiB
    /// expansion ROM, MSI (1 vector, 64-bit) and INTx pin A. Extended: Resizable BAR (hidden by
    /// the passthrough device).
    pub fn nic() -> io::Result<Self> {
        let ids = DeviceIds {
            vendor_id: 0x8086,
            device_id: 0x10d3,
            class_code: 0x020000,
            revision: 0,
            subsystem_vendor_id: 0x8086,
            subsystem_id: 0xa01f,
        };
        let mut config = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Extended, ids);
        config
            .add_capability(PowerManagement::new(true))
            .map_err(io::Error::other)?;
        config
            .add_capability(MsiCapability::new(1, true, false))
            .map_err(io::Error::other)?;
        config
            .add_capability(ExpressCapability::new(PortType::Endpoint))
            .map_err(io::Error::other)?;
        config
            .add_capability(MsixCapability::new(
                5,
                BarOffset { bir: 3, offset: 0 },
                BarOffset {
                    bir: 3,
                    offset: 0x2000,
                },
            ))
            .map_err(io::Error::other)?;
        config
            .add_extended_capability(ExtCapabilityId::RESIZABLE_BAR, 1, &[])
            .map_err(io::Error::other)?;
        Self::new(SimSpec {
            name: "0000:02:00.0".into(),
            config,
            bars: vec![
                SimBar {
                    index: 0,
                    def: BarDef::memory32(0x2_0000).at(0xfeb8_0000),
                    sparse: Some(vec![MmapArea {
                        offset: 0x1000,
                        size: 0x1_f000,
                    }]),
                    msix_mappable: false,
                },
                SimBar {
                    index: 2,
                    def: BarDef::io(32).at(0xe000),
                    sparse: None,
                    msix_mappable: false,
                },
                SimBar {
                    index: 3,
                    def: BarDef::memory32(0x4000).at(0xfebe_0000),
                    sparse: None,
                    msix_mappable: false,
                },
            ],
            rom_size: 0x1_0000,
            intx: true,
            msi_vectors: 1,
            msix_vectors: 5,
            doorbell: Some((0, 0)),
        })
    }

    /// A function with `vectors` MSI-X vectors (up to 2,048, the most PCI allows) and nothing
    /// else: BAR 0 (64-bit, 64 KiB) holds the table at 0x0 and the PBA at 0x8000. For
    /// benchmarks and stress tests of interrupt routing.
    pub fn msix_only(name: &str, vectors: u16) -> io::Result<Self> {
        let ids = DeviceIds {
            vendor_id: 0x1af4,
            device_id: 0x10f0,
            class_code: 0xff0000,
            revision: 1,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
        };
        let mut config = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Extended, ids);
        config
            .add_capability(ExpressCapability::new(PortType::Endpoint))
            .map_err(io::Error::other)?;
        config
            .add_capability(MsixCapability::new(
                vectors,
                BarOffset { bir: 0, offset: 0 },
                BarOffset {
                    bir: 0,
                    offset: 0x8000,
                },
            ))
            .map_err(io::Error::other)?;
        Self::new(SimSpec {
            name: name.into(),
            config,
            bars: vec![SimBar {
                index: 0,
                def: BarDef::memory64(0x1_0000).at(0xfe00_0000),
                sparse: None,
                msix_mappable: false,
            }],
            rom_size: 0,
            intx: false,
            msi_vectors: 0,
            msix_vectors: u32::from(vectors),
            doorbell: None,
        })
    }

    /// The spec the device was built from.
    pub fn spec(&self) -> &SimSpec {
        &self.spec
    }

    /// The doorbell: `(BAR, offset)` whose writes fire vector 0.
    pub fn doorbell(&self) -> Option<(u8, u64)> {
        self.spec.doorbell
    }

    /// The software IOMMU the device does DMA through.
    pub fn iommu(&self) -> &Arc<SoftwareIommu> {
        &self.iommu
    }

    /// The device's config space as it is now (what passthrough writes reached).
    pub fn config(&self) -> ConfigSpace {
        self.lock_config().clone()
    }

    /// Resets done so far.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    /// Region writes (trapped BAR writes forwarded to the device) so far.
    pub fn region_writes(&self) -> u64 {
        self.region_writes.load(Ordering::Relaxed)
    }

    /// INTx unmasks so far.
    pub fn intx_unmasks(&self) -> u64 {
        self.intx_unmasks.load(Ordering::Relaxed)
    }

    /// Reads BAR/ROM memory directly (what the device holds), e.g. to see a guest's store into
    /// a mapped page.
    pub fn peek(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.region_file(index)?.read_exact_at(data, offset)
    }

    /// Writes BAR/ROM memory directly (the device changing its registers).
    pub fn poke(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        self.region_file(index)?.write_all_at(data, offset)
    }

    /// Number of vectors of `kind` the passthrough device has enabled (eventfds installed).
    pub fn enabled_vectors(&self, kind: IrqKind) -> usize {
        let irqs = self.lock_irqs();
        match kind {
            IrqKind::Msix => irqs.msix.len(),
            IrqKind::Msi => irqs.msi.len(),
            IrqKind::Intx => irqs.intx.is_some() as usize,
            _ => 0,
        }
    }

    /// The device raises `vector`: signals the eventfd installed for it, MSI-X first, then MSI,
    /// then INTx (vector 0 only). Returns which one, or [`Fired::Nothing`] when none is
    /// enabled for that vector.
    pub fn fire(&self, vector: u32) -> io::Result<Fired> {
        let irqs = self.lock_irqs();
        let v = vector as usize;
        let (fd, what) = if !irqs.msix.is_empty() {
            (irqs.msix.get(v), Fired::Msix)
        } else if !irqs.msi.is_empty() {
            (irqs.msi.get(v), Fired::Msi)
        } else if vector == 0 {
            (irqs.intx.as_ref(), Fired::Intx)
        } else {
            (None, Fired::Nothing)
        };
        match fd {
            Some(fd) => {
                fd.write(1)?;
                Ok(what)
            }
            None => Ok(Fired::Nothing),
        }
    }

    /// Signals the INTx resample eventfd, as KVM does when the guest EOIs the line.
    pub fn resample_intx(&self) -> io::Result<bool> {
        match &self.lock_irqs().intx_resample {
            Some(fd) => fd.write(1).map(|_| true),
            None => Ok(false),
        }
    }

    fn region_file(&self, index: u32) -> io::Result<&File> {
        self.regions
            .get(index as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such region"))
    }

    fn lock_config(&self) -> MutexGuard<'_, ConfigSpace> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_irqs(&self) -> MutexGuard<'_, SimIrqs> {
        self.irqs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_region(
        &self,
        index: u32,
        offset: u64,
        len: usize,
        op: &str,
    ) -> Result<(), BackendError> {
        let size = self.info.region(index).map_or(0, |r| r.size);
        if offset.checked_add(len as u64).is_none_or(|e| e > size) || size == 0 {
            return Err(sim_err(
                &self.spec.name,
                format!("{op} of {len} bytes at {offset:#x} of region {index}"),
                io::ErrorKind::InvalidInput,
                &format!("outside the region's {size:#x} bytes"),
            ));
        }
        Ok(())
    }
}

impl SimBackend {
    /// The faults to inject (all off until a test sets them).
    pub fn faults(&self) -> &SimFaults {
        &self.faults
    }

    /// An injected ioctl failure for `op`, if any (see [`SimFaults`]).
    fn ioctl_fault(&self, op: impl Into<String>, injected: i32) -> Result<(), BackendError> {
        match self.faults.ioctl(injected) {
            Some(errno) => Err(BackendError::new(
                self.spec.name.clone(),
                op,
                io::Error::from_raw_os_error(errno),
            )),
            None => Ok(()),
        }
    }

    /// A flag the backend sets when it is dropped while an mmap of one of its regions is still
    /// in this process. On a real VFIO device that is the teardown-order bug that leaves the
    /// group attached: an mmap keeps the device file open, so when `vfio-ioctls` closes the
    /// device and takes the group out of its container, `VFIO_GROUP_UNSET_CONTAINER` fails
    /// with `EBUSY`. Take the flag before handing the backend over.
    pub fn left_mapped_probe(&self) -> Arc<AtomicBool> {
        self.left_mapped.clone()
    }

    /// Whether `/proc/self/maps` shows a mapping of one of this device's region memfds.
    fn regions_mapped(&self) -> bool {
        let tag = format!("memfd:sim {} region ", self.spec.name);
        std::fs::read_to_string("/proc/self/maps").is_ok_and(|maps| maps.contains(&tag))
    }
}

impl Drop for SimBackend {
    fn drop(&mut self) {
        if self.regions_mapped() {
            self.left_mapped.store(true, Ordering::Relaxed);
        }
    }
}

impl DeviceBackend for SimBackend {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), BackendError> {
        if self.faults.vanished.load(Ordering::Relaxed) {
            data.fill(0xff);
            return Ok(());
        }
        self.lock_config().read(offset, data).map_err(|e| {
            sim_err(
                &self.spec.name,
                format!("config read of {} bytes at {offset:#x}", data.len()),
                io::ErrorKind::InvalidInput,
                &e.to_string(),
            )
        })
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), BackendError> {
        if self.faults.vanished.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.lock_config()
            .write(offset, data)
            .map(|_| ())
            .map_err(|e| {
                sim_err(
                    &self.spec.name,
                    format!("config write of {} bytes at {offset:#x}", data.len()),
                    io::ErrorKind::InvalidInput,
                    &e.to_string(),
                )
            })
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), BackendError> {
        self.check_region(index, offset, data.len(), "read")?;
        let len = data.len();
        if self.faults.vanished.load(Ordering::Relaxed) {
            data.fill(0xff);
            return Ok(());
        }
        if self.faults.region_io.load(Ordering::Relaxed) {
            return Err(BackendError::new(
                self.spec.name.clone(),
                format!("read of {len} bytes at {offset:#x} of region {index}"),
                io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        self.region_file(index)
            .and_then(|f| f.read_exact_at(data, offset))
            .map_err(|e| {
                BackendError::new(
                    self.spec.name.clone(),
                    format!("read of {len} bytes at {offset:#x} of region {index}"),
                    e,
                )
            })
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.check_region(index, offset, data.len(), "write")?;
        let op = || {
            format!(
                "write of {} bytes at {offset:#x} of region {index}",
                data.len()
            )
        };
        if self.faults.vanished.load(Ordering::Relaxed) {
            return Ok(());
        }
        if self.faults.region_io.load(Ordering::Relaxed) {
            return Err(BackendError::new(
                self.spec.name.clone(),
                op(),
                io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        if index == 6 {
            return Err(sim_err(
                &self.spec.name,
                op(),
                io::ErrorKind::PermissionDenied,
                "the ROM is read-only",
            ));
        }
        self.region_writes.fetch_add(1, Ordering::Relaxed);
        self.region_file(index)
            .and_then(|f| f.write_all_at(data, offset))
            .map_err(|e| BackendError::new(self.spec.name.clone(), op(), e))?;
        if self.spec.doorbell == Some((index as u8, offset)) {
            self.fire(0)
                .map_err(|e| BackendError::new(self.spec.name.clone(), "doorbell", e))?;
        }
        Ok(())
    }

    fn mmap_source(&self, index: u32) -> Option<MmapSource<'_>> {
        let region = self.info.region(index)?;
        if !region.flags.mmap {
            return None;
        }
        let file = self.regions.get(index as usize)?.as_ref()?;
        Some(MmapSource {
            fd: file.as_fd(),
            // An offset that is not page aligned: the host's mmap fails with EINVAL.
            offset: u64::from(self.faults.mmap.load(Ordering::Relaxed)),
        })
    }

    fn enable_irqs(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), BackendError> {
        let op = || format!("enabling {} {kind} vectors", fds.len());
        self.ioctl_fault(op(), self.faults.irqs.load(Ordering::Relaxed))?;
        let count = self.irq_count(kind) as usize;
        if count == 0 || fds.len() > count {
            return Err(sim_err(
                &self.spec.name,
                op(),
                io::ErrorKind::InvalidInput,
                &format!("the device has {count} {kind} vectors"),
            ));
        }
        let mut owned = Vec::with_capacity(fds.len());
        for fd in fds {
            owned.push(
                fd.try_clone()
                    .map_err(|e| BackendError::new(self.spec.name.clone(), op(), e))?,
            );
        }
        let mut irqs = self.lock_irqs();
        // VFIO refuses to switch interrupt types without disabling the old one first.
        let busy = match kind {
            IrqKind::Intx => !irqs.msi.is_empty() || !irqs.msix.is_empty(),
            IrqKind::Msi => irqs.intx.is_some() || !irqs.msix.is_empty(),
            IrqKind::Msix => irqs.intx.is_some() || !irqs.msi.is_empty(),
            _ => false,
        };
        if busy {
            return Err(sim_err(
                &self.spec.name,
                op(),
                io::ErrorKind::InvalidInput,
                "another interrupt type is enabled (VFIO answers EINVAL)",
            ));
        }
        // Nor can it grow an enabled MSI block (`vfio_msi_set_block`): disable it first.
        if kind == IrqKind::Msi && !irqs.msi.is_empty() && owned.len() > irqs.msi.len() {
            return Err(sim_err(
                &self.spec.name,
                op(),
                io::ErrorKind::InvalidInput,
                "MSI is enabled with fewer vectors (VFIO answers EINVAL)",
            ));
        }
        match kind {
            IrqKind::Intx => irqs.intx = owned.pop(),
            IrqKind::Msi => irqs.msi = owned,
            IrqKind::Msix => irqs.msix = owned,
            _ => {}
        }
        Ok(())
    }

    fn disable_irqs(&self, kind: IrqKind) -> Result<(), BackendError> {
        self.ioctl_fault(format!("disabling {kind}"), 0)?;
        let mut irqs = self.lock_irqs();
        match kind {
            IrqKind::Intx => {
                irqs.intx = None;
                irqs.intx_resample = None;
            }
            IrqKind::Msi => irqs.msi.clear(),
            IrqKind::Msix => irqs.msix.clear(),
            _ => {}
        }
        Ok(())
    }

    fn set_intx_resample(&self, fd: &EventFd) -> Result<(), BackendError> {
        let fd = fd.try_clone().map_err(|e| {
            BackendError::new(
                self.spec.name.clone(),
                "setting the INTx resample eventfd",
                e,
            )
        })?;
        self.lock_irqs().intx_resample = Some(fd);
        Ok(())
    }

    fn unmask_intx(&self) -> Result<(), BackendError> {
        self.intx_unmasks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn reset(&self) -> Result<bool, BackendError> {
        let injected = if self.faults.reset.load(Ordering::Relaxed) {
            libc::EIO
        } else {
            0
        };
        self.ioctl_fault("VFIO_DEVICE_RESET", injected)?;
        self.resets.fetch_add(1, Ordering::Relaxed);
        *self.lock_config() = self.initial.clone();
        for (index, file) in self.regions.iter().enumerate() {
            if let Some(file) = file {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                // Zero the contents in place: the mmaps the VMM holds stay valid.
                let zeros = vec![0u8; len as usize];
                file.write_all_at(&zeros, 0).map_err(|e| {
                    BackendError::new(
                        self.spec.name.clone(),
                        format!("reset of region {index}"),
                        e,
                    )
                })?;
            }
        }
        *self.lock_irqs() = SimIrqs::default();
        Ok(true)
    }

    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        Arc::new(FaultyIommu {
            iommu: self.iommu.clone(),
            faults: self.faults.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_look_like_their_models() {
        let nvme = SimBackend::nvme().unwrap();
        let c = nvme.config();
        assert_eq!(c.read_u32(0).unwrap(), 0x0010_1b36);
        assert_eq!(nvme.info().region(0).unwrap().size, 0x4000);
        assert_eq!(c.msix().unwrap().table_size, 65);
        assert!(c.find_extended_capability(ExtCapabilityId::SRIOV).is_some());
        // Page 0 of BAR0 is not among the mmappable areas, so a plan traps it.
        let areas = nvme.info().region(0).unwrap().mmappable_areas();
        assert!(areas.iter().all(|a| a.offset >= 0x1000));
        let nic = SimBackend::nic().unwrap();
        assert_eq!(nic.config().msix().unwrap().table.bir, 3);
        assert_eq!(nic.irq_count(IrqKind::Msi), 1);
        assert!(nic.mmap_source(2).is_none(), "I/O BARs are never mmapped");
    }

    #[test]
    fn doorbell_fires_vector_zero_of_the_enabled_kind() {
        let sim = SimBackend::nvme().unwrap();
        let fds: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let refs: Vec<&EventFd> = fds.iter().collect();
        sim.enable_irqs(IrqKind::Msix, &refs).unwrap();
        sim.region_write(0, 0, &1u32.to_le_bytes()).unwrap();
        assert_eq!(fds[0].read().unwrap(), 1);
        assert!(fds[1].read().is_err(), "only vector 0");
        assert_eq!(sim.fire(1).unwrap(), Fired::Msix);
        assert_eq!(fds[1].read().unwrap(), 1);
        assert_eq!(sim.fire(9).unwrap(), Fired::Nothing);
        // VFIO refuses a second interrupt type while one is enabled.
        assert!(sim.enable_irqs(IrqKind::Intx, &refs[..1]).is_err());
        sim.disable_irqs(IrqKind::Msix).unwrap();
        sim.enable_irqs(IrqKind::Intx, &refs[..1]).unwrap();
        assert_eq!(sim.fire(0).unwrap(), Fired::Intx);
    }

    #[test]
    fn regions_are_bounded_and_reset_clears_them() {
        let sim = SimBackend::nvme().unwrap();
        sim.region_write(0, 0x10, &[1, 2, 3, 4]).unwrap();
        let mut b = [0u8; 4];
        sim.region_read(0, 0x10, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        let err = sim.region_read(0, 0x3ffe, &mut b).unwrap_err();
        assert!(err.to_string().contains("0x3ffe of region 0"), "{err}");
        assert!(sim.region_read(4, 0, &mut b).is_err());
        sim.config_write(0x04, &[0x06, 0]).unwrap();
        assert!(sim.reset().unwrap());
        sim.region_read(0, 0x10, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
        assert!(!sim.config().command().memory());
        assert_eq!(sim.resets(), 1);
    }
}
