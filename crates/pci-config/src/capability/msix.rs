//! MSI-X capability (PCI Local Bus 3.0 §6.8.2).

use super::{CapId, CapabilityError, CapabilityId, check_header, rd16, rd32};
use crate::registers::{BitKind, RegisterFile};

/// Length of the MSI-X capability structure.
pub const MSIX_LEN: u16 = 12;

/// Where a structure lives inside a BAR: BAR Indicator Register (BIR, 0..5) and byte offset
/// (8-byte aligned, since the low 3 bits of the register hold the BIR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BarOffset {
    /// BAR index (0..=5).
    pub bir: u8,
    /// Byte offset inside the BAR.
    pub offset: u32,
}

impl BarOffset {
    /// Decodes a Table Offset/BIR or PBA Offset/BIR register.
    pub fn from_register(value: u32) -> Self {
        BarOffset {
            bir: (value & 0x7) as u8,
            offset: value & !0x7,
        }
    }

    /// Encodes the register value.
    pub fn register(&self) -> u32 {
        (self.offset & !0x7) | (self.bir as u32 & 0x7)
    }
}

/// A decoded MSI-X capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsixCapability {
    /// Offset of the capability header.
    pub offset: u16,
    /// Number of table entries (Message Control bits 10:0 plus one), 1..=2048.
    pub table_size: u16,
    /// Location of the vector table.
    pub table: BarOffset,
    /// Location of the Pending Bit Array.
    pub pba: BarOffset,
    /// Message Control bit 15: MSI-X enable.
    pub enabled: bool,
    /// Message Control bit 14: function mask (all vectors masked).
    pub function_masked: bool,
}

impl MsixCapability {
    /// Message Control: MSI-X enable.
    pub const ENABLE: u16 = 1 << 15;
    /// Message Control: function mask.
    pub const FUNCTION_MASK: u16 = 1 << 14;
    /// Size of one vector table entry (§6.8.2: four DWORDs).
    pub const ENTRY_SIZE: u32 = 16;
    /// The most vectors a function can have (Table Size is an 11-bit N-1 field).
    pub const MAX_ENTRIES: u16 = 2048;
    /// Vector Control bit 0 of a table entry: the vector is masked (§6.8.2.9).
    pub const VECTOR_MASKED: u32 = 1;

    /// A disabled MSI-X capability with `table_size` vectors.
    pub fn new(table_size: u16, table: BarOffset, pba: BarOffset) -> Self {
        MsixCapability {
            offset: 0,
            table_size,
            table,
            pba,
            enabled: false,
            function_masked: false,
        }
    }

    /// Decodes the three registers of a capability at `offset`: Message Control, Table
    /// Offset/BIR and PBA Offset/BIR. No checks: a BIR may name a BAR that does not exist (6 or
    /// 7), which [`parse`](Self::parse) refuses and a dump renderer shows as it is.
    pub fn from_registers(offset: u16, control: u16, table: u32, pba: u32) -> Self {
        MsixCapability {
            offset,
            table_size: (control & 0x7ff) + 1,
            table: BarOffset::from_register(table),
            pba: BarOffset::from_register(pba),
            enabled: control & Self::ENABLE != 0,
            function_masked: control & Self::FUNCTION_MASK != 0,
        }
    }

    /// Decodes the capability at `offset`, checking that BIRs name a BAR (0..=5).
    pub fn parse(config: &[u8], offset: u16) -> Result<Self, CapabilityError> {
        check_header(config, offset, CapabilityId::MSIX, MSIX_LEN)?;
        let o = offset as usize;
        let cap = Self::from_registers(
            offset,
            rd16(config, o + 2),
            rd32(config, o + 4),
            rd32(config, o + 8),
        );
        for (what, loc) in [("table", cap.table), ("PBA", cap.pba)] {
            if loc.bir > 5 {
                return Err(CapabilityError::Malformed {
                    offset,
                    id: CapId::Standard(CapabilityId::MSIX),
                    what: format!("{what} BIR is {}, but only BARs 0..5 exist", loc.bir),
                });
            }
        }
        Ok(cap)
    }

    /// Bytes of the vector table (`table_size` * 16).
    pub fn table_len(&self) -> u32 {
        self.table_size as u32 * Self::ENTRY_SIZE
    }

    /// Bytes of the PBA (one bit per vector, in whole qwords).
    pub fn pba_len(&self) -> u32 {
        (self.table_size as u32).div_ceil(64) * 8
    }

    /// Message Control register value.
    pub fn control(&self) -> u16 {
        (self.table_size.clamp(1, 2048) - 1)
            | if self.enabled { Self::ENABLE } else { 0 }
            | if self.function_masked {
                Self::FUNCTION_MASK
            } else {
                0
            }
    }

    /// The structure's bytes (next pointer 0).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![CapabilityId::MSIX.0, 0];
        b.extend_from_slice(&self.control().to_le_bytes());
        b.extend_from_slice(&self.table.register().to_le_bytes());
        b.extend_from_slice(&self.pba.register().to_le_bytes());
        b
    }
}

/// Message Control: enable and function mask are writable; table size and locations read-only.
pub(crate) fn install_masks(regs: &mut RegisterFile, offset: u16) {
    let _ = regs.set_bits_u16(
        offset + 2,
        MsixCapability::ENABLE | MsixCapability::FUNCTION_MASK,
        BitKind::ReadWrite,
    );
    let _ = regs.set_bits_u16(offset + 2, 0x3800, BitKind::Reserved);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_decode_once_for_parse_and_dumps() {
        // Enabled, function-masked, 65 vectors; table in BAR0 at 0x2000, PBA in BAR7 (no such BAR).
        let raw = MsixCapability::from_registers(0x40, 0xc040, 0x2000, 0x3007);
        assert_eq!(
            (raw.table_size, raw.enabled, raw.function_masked),
            (65, true, true)
        );
        assert_eq!((raw.table.bir, raw.table.offset), (0, 0x2000));
        assert_eq!((raw.pba.bir, raw.pba.offset), (7, 0x3000));
        assert_eq!(raw.control(), 0xc040);
        let mut space = vec![0u8; 0x40];
        space.extend_from_slice(&raw.encode());
        let err = MsixCapability::parse(&space, 0x40).unwrap_err();
        assert!(err.to_string().contains("PBA BIR is 7"), "{err}");
    }
}
