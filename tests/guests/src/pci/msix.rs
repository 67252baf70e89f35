//! MSI-X (PCI Local Bus 3.0, 6.8.2): the capability, the table in a BAR, and programming an
//! entry to deliver a vector to this CPU's local APIC.

use core::fmt;

use super::{Bar, Bars, Bdf, ConfigSpace};
use crate::io::{Mmio, Registers};
use crate::lapic;

/// Capability ID of MSI-X.
pub const CAP_ID: u8 = 0x11;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_SIZE: u64 = 16;
const VECTOR_CONTROL_MASKED: u32 = 1;

/// The MSI-X capability, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCapability {
    /// Offset of the capability in configuration space.
    pub offset: u8,
    /// Message control as read.
    pub control: u16,
    /// Number of table entries.
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR.
    pub table_offset: u32,
    /// BAR holding the pending-bit array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR.
    pub pba_offset: u32,
}

impl MsixCapability {
    /// Decodes the three dwords of the capability at `offset` (header+control, table, PBA).
    pub fn decode(offset: u8, header: u32, table: u32, pba: u32) -> Self {
        let control = (header >> 16) as u16;
        MsixCapability {
            offset,
            control,
            table_size: (control & 0x7ff) + 1,
            table_bar: (table & 0x7) as u8,
            table_offset: table & !0x7,
            pba_bar: (pba & 0x7) as u8,
            pba_offset: pba & !0x7,
        }
    }

    /// Reads the capability at `offset`.
    pub fn read(cfg: &mut impl ConfigSpace, bdf: Bdf, offset: u8) -> Self {
        let o = u16::from(offset);
        Self::decode(
            offset,
            cfg.read32(bdf, o),
            cfg.read32(bdf, o + 4),
            cfg.read32(bdf, o + 8),
        )
    }
}

impl fmt::Display for MsixCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} vectors, table BAR{}+{:#x}, PBA BAR{}+{:#x}",
            self.table_size, self.table_bar, self.table_offset, self.pba_bar, self.pba_offset
        )
    }
}

/// Why the table cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixError {
    /// The table's BAR is not an implemented memory BAR.
    NoTableBar {
        /// The BAR index from the capability.
        bar: u8,
    },
    /// The table does not fit in its BAR.
    TableOutsideBar {
        /// BAR index.
        bar: u8,
        /// Table offset.
        offset: u32,
        /// Table size in entries.
        entries: u16,
        /// BAR size.
        bar_size: u64,
    },
    /// An entry index beyond the table.
    NoSuchEntry {
        /// The index asked for.
        entry: u16,
        /// Entries in the table.
        entries: u16,
    },
}

impl fmt::Display for MsixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MsixError::NoTableBar { bar } => write!(
                f,
                "MSI-X table is in BAR{bar}, which is not an implemented memory BAR"
            ),
            MsixError::TableOutsideBar {
                bar,
                offset,
                entries,
                bar_size,
            } => write!(
                f,
                "MSI-X table ({entries} entries at {offset:#x}) does not fit in BAR{bar} ({bar_size:#x} bytes)"
            ),
            MsixError::NoSuchEntry { entry, entries } => write!(
                f,
                "MSI-X entry {entry} is beyond the table ({entries} entries)"
            ),
        }
    }
}

/// The MSI-X table of a function, at the address its BAR was given.
#[derive(Debug, Clone, Copy)]
pub struct MsixTable {
    mmio: Mmio,
    entries: u16,
}

impl MsixTable {
    /// Locates the table from the capability and the programmed BARs.
    pub fn locate(cap: &MsixCapability, bars: &Bars) -> Result<Self, MsixError> {
        let bar: Bar = bars
            .get(usize::from(cap.table_bar))
            .copied()
            .flatten()
            .filter(|b| b.is_memory() && b.address != 0)
            .ok_or(MsixError::NoTableBar { bar: cap.table_bar })?;
        let end = u64::from(cap.table_offset) + u64::from(cap.table_size) * ENTRY_SIZE;
        if end > bar.size {
            return Err(MsixError::TableOutsideBar {
                bar: cap.table_bar,
                offset: cap.table_offset,
                entries: cap.table_size,
                bar_size: bar.size,
            });
        }
        // SAFETY: the table lies inside a memory BAR this guest programmed (checked above).
        let mmio = unsafe { Mmio::new(bar.address + u64::from(cap.table_offset)) };
        Ok(MsixTable {
            mmio,
            entries: cap.table_size,
        })
    }

    /// Guest-physical address of the table.
    pub fn address(&self) -> u64 {
        self.mmio.base()
    }

    /// Points `entry` at `vector` on the local APIC `apic_id` and unmasks it. The entry is masked
    /// while its address and data change (PCI 3.0, 6.8.3.5).
    pub fn program(&self, entry: u16, apic_id: u8, vector: u8) -> Result<(), MsixError> {
        let base = self.entry_offset(entry)?;
        self.mmio.write32(base + 12, VECTOR_CONTROL_MASKED);
        self.mmio.write32(base, lapic::msi_address(apic_id));
        self.mmio.write32(base + 4, 0);
        self.mmio.write32(base + 8, lapic::msi_data(vector));
        self.mmio.write32(base + 12, 0);
        Ok(())
    }

    /// Reads an entry back: (address, data, vector control).
    pub fn read(&self, entry: u16) -> Result<(u64, u32, u32), MsixError> {
        let base = self.entry_offset(entry)?;
        Ok((
            self.mmio.read64(base),
            self.mmio.read32(base + 8),
            self.mmio.read32(base + 12),
        ))
    }

    fn entry_offset(&self, entry: u16) -> Result<u64, MsixError> {
        if entry >= self.entries {
            return Err(MsixError::NoSuchEntry {
                entry,
                entries: self.entries,
            });
        }
        Ok(u64::from(entry) * ENTRY_SIZE)
    }
}

/// Turns MSI-X on or off, with or without the function mask; returns message control as read
/// back. Enable with the function mask set, program the entries, then clear the mask.
pub fn enable_msix(
    cfg: &mut impl ConfigSpace,
    bdf: Bdf,
    cap: &MsixCapability,
    enable: bool,
    function_mask: bool,
) -> u16 {
    let at = u16::from(cap.offset) + 2;
    let mut control = cfg.read16(bdf, at) & !(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
    if enable {
        control |= CONTROL_ENABLE;
    }
    if function_mask {
        control |= CONTROL_FUNCTION_MASK;
    }
    cfg.write16(bdf, at, control);
    cfg.read16(bdf, at)
}

/// Whether message control has MSI-X enabled and not function-masked.
pub fn is_enabled_unmasked(control: u16) -> bool {
    control & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK) == CONTROL_ENABLE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{Bar, BarKind};

    #[test]
    fn decode_capability() {
        // QEMU NVMe: 65 vectors, table at BAR0+0x2000, PBA at BAR0+0x3000.
        let c = MsixCapability::decode(0x80, 0x0040_0011 | 0x0040 << 16, 0x2000, 0x3000);
        assert_eq!(c.table_size, 0x41);
        assert_eq!(
            (c.table_bar, c.table_offset, c.pba_bar, c.pba_offset),
            (0, 0x2000, 0, 0x3000)
        );
        let c = MsixCapability::decode(0x70, 0x0004_0011, 0x0000_0803, 0x0000_0c04);
        assert_eq!(
            (
                c.table_size,
                c.table_bar,
                c.table_offset,
                c.pba_bar,
                c.pba_offset
            ),
            (5, 3, 0x800, 4, 0xc00)
        );
        assert_eq!(c.to_string(), "5 vectors, table BAR3+0x800, PBA BAR4+0xc00");
    }

    #[test]
    fn locate_checks_the_bar() {
        let cap = MsixCapability::decode(0x80, 0x0040_0011, 0x2000, 0x3000);
        let mut bars = [None; 6];
        assert_eq!(
            MsixTable::locate(&cap, &bars).unwrap_err(),
            MsixError::NoTableBar { bar: 0 }
        );
        bars[0] = Some(Bar {
            index: 0,
            kind: BarKind::Memory64,
            prefetchable: false,
            size: 0x2000,
            address: 0xc000_0000,
        });
        let e = MsixTable::locate(&cap, &bars).unwrap_err();
        assert!(matches!(e, MsixError::TableOutsideBar { bar: 0, .. }));
        assert!(e.to_string().contains("does not fit in BAR0"));
        bars[0].as_mut().unwrap().size = 0x4000;
        let t = MsixTable::locate(&cap, &bars).unwrap();
        assert_eq!(t.address(), 0xc000_2000);
        assert_eq!(
            t.entry_offset(65),
            Err(MsixError::NoSuchEntry {
                entry: 65,
                entries: 65
            })
        );
        assert_eq!(t.entry_offset(64), Ok(64 * 16));
    }

    #[test]
    fn control_bits() {
        assert!(is_enabled_unmasked(0x8040));
        assert!(!is_enabled_unmasked(0xc040));
        assert!(!is_enabled_unmasked(0x0040));
    }
}
