//! MSI capability (PCI Local Bus 3.0 §6.8.1): 32- or 64-bit message address, optional
//! per-vector masking.

use super::{CapId, CapabilityError, CapabilityId, check_header, rd16, rd32};
use crate::registers::{BitKind, RegisterFile};

/// Message Control bits.
mod ctl {
    pub const ENABLE: u16 = 1 << 0;
    pub const MMC_SHIFT: u16 = 1;
    pub const MME_SHIFT: u16 = 4;
    pub const MME_MASK: u16 = 0x7 << 4;
    pub const ADDR64: u16 = 1 << 7;
    pub const PER_VECTOR_MASK: u16 = 1 << 8;
}

/// Length of the MSI structure for a given Message Control value.
pub(crate) fn structure_len(control: u16) -> u16 {
    match (
        control & ctl::ADDR64 != 0,
        control & ctl::PER_VECTOR_MASK != 0,
    ) {
        (false, false) => 0x0a,
        (true, false) => 0x0e,
        (false, true) => 0x14,
        (true, true) => 0x18,
    }
}

/// A decoded MSI capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsiCapability {
    /// Offset of the capability header.
    pub offset: u16,
    /// Message Control register.
    pub control: u16,
    /// Message address (upper half zero for 32-bit capabilities).
    pub address: u64,
    /// Message data.
    pub data: u16,
    /// Mask bits, when per-vector masking is implemented.
    pub mask_bits: Option<u32>,
    /// Pending bits, when per-vector masking is implemented.
    pub pending_bits: Option<u32>,
}

impl MsiCapability {
    /// A disabled MSI capability able to request `vectors` vectors (1, 2, 4, 8, 16 or 32;
    /// other values round down to a power of two).
    pub fn new(vectors: u8, addr64: bool, per_vector_masking: bool) -> Self {
        let mmc = (vectors.clamp(1, 32) as u32).ilog2() as u16;
        let control = (mmc << ctl::MMC_SHIFT)
            | if addr64 { ctl::ADDR64 } else { 0 }
            | if per_vector_masking {
                ctl::PER_VECTOR_MASK
            } else {
                0
            };
        MsiCapability {
            offset: 0,
            control,
            address: 0,
            data: 0,
            mask_bits: per_vector_masking.then_some(0),
            pending_bits: per_vector_masking.then_some(0),
        }
    }

    /// Decodes the capability at `offset`.
    pub fn parse(config: &[u8], offset: u16) -> Result<Self, CapabilityError> {
        check_header(config, offset, CapabilityId::MSI, 4)?;
        let o = offset as usize;
        let control = rd16(config, o + 2);
        check_header(config, offset, CapabilityId::MSI, structure_len(control))?;
        if (control >> ctl::MMC_SHIFT) & 0x7 > 5 {
            return Err(CapabilityError::Malformed {
                offset,
                id: CapId::Standard(CapabilityId::MSI),
                what: format!(
                    "Multiple Message Capable is {}, the largest valid encoding is 5 (32 vectors)",
                    (control >> ctl::MMC_SHIFT) & 0x7
                ),
            });
        }
        let addr64 = control & ctl::ADDR64 != 0;
        let lo = rd32(config, o + 4) as u64;
        let (address, data_at) = if addr64 {
            (lo | (rd32(config, o + 8) as u64) << 32, o + 12)
        } else {
            (lo, o + 8)
        };
        let pvm = control & ctl::PER_VECTOR_MASK != 0;
        let mask_at = if addr64 { o + 0x10 } else { o + 0x0c };
        Ok(MsiCapability {
            offset,
            control,
            address,
            data: rd16(config, data_at),
            mask_bits: pvm.then(|| rd32(config, mask_at)),
            pending_bits: pvm.then(|| rd32(config, mask_at + 4)),
        })
    }

    /// MSI enable.
    pub fn enabled(&self) -> bool {
        self.control & ctl::ENABLE != 0
    }

    /// 64-bit message address capable.
    pub fn is_64bit(&self) -> bool {
        self.control & ctl::ADDR64 != 0
    }

    /// Per-vector masking capable.
    pub fn per_vector_masking(&self) -> bool {
        self.control & ctl::PER_VECTOR_MASK != 0
    }

    /// Vectors the function can request (Multiple Message Capable).
    pub fn vectors_capable(&self) -> u8 {
        1 << ((self.control >> ctl::MMC_SHIFT) & 0x7).min(5)
    }

    /// Vectors software enabled (Multiple Message Enable).
    pub fn vectors_enabled(&self) -> u8 {
        1 << ((self.control & ctl::MME_MASK) >> ctl::MME_SHIFT).min(5)
    }

    /// True when vector `v` is masked (always false without per-vector masking).
    pub fn is_masked(&self, v: u8) -> bool {
        v < 32 && self.mask_bits.is_some_and(|m| m & (1 << v) != 0)
    }

    /// Structure length in bytes.
    pub fn len(&self) -> u16 {
        structure_len(self.control)
    }

    /// Always false; present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The structure's bytes (next pointer 0).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.len() as usize];
        b[0] = CapabilityId::MSI.0;
        b[2..4].copy_from_slice(&self.control.to_le_bytes());
        b[4..8].copy_from_slice(&(self.address as u32).to_le_bytes());
        let data_at = if self.is_64bit() {
            b[8..12].copy_from_slice(&((self.address >> 32) as u32).to_le_bytes());
            12
        } else {
            8
        };
        b[data_at..data_at + 2].copy_from_slice(&self.data.to_le_bytes());
        if self.per_vector_masking() {
            let m = data_at + 4;
            b[m..m + 4].copy_from_slice(&self.mask_bits.unwrap_or(0).to_le_bytes());
            b[m + 4..m + 8].copy_from_slice(&self.pending_bits.unwrap_or(0).to_le_bytes());
        }
        b
    }
}

/// Enable and Multiple Message Enable are writable; address (bits 1:0 reserved), data and the
/// mask bits of implemented vectors are writable; pending bits are read-only.
pub(crate) fn install_masks(regs: &mut RegisterFile, offset: u16, control: u16) {
    let _ = regs.set_bits_u16(offset + 2, ctl::ENABLE | ctl::MME_MASK, BitKind::ReadWrite);
    let _ = regs.set_bits_u16(offset + 2, 0xfe00, BitKind::Reserved);
    let _ = regs.set_bits_u32(offset + 4, !0x3, BitKind::ReadWrite);
    let _ = regs.set_bits_u32(offset + 4, 0x3, BitKind::Reserved);
    let addr64 = control & ctl::ADDR64 != 0;
    let data = if addr64 {
        let _ = regs.set_bits_u32(offset + 8, u32::MAX, BitKind::ReadWrite);
        offset + 12
    } else {
        offset + 8
    };
    let _ = regs.set_bits_u16(data, u16::MAX, BitKind::ReadWrite);
    if control & ctl::PER_VECTOR_MASK != 0 {
        let vectors = 1u64 << ((control >> ctl::MMC_SHIFT) & 0x7).min(5);
        let implemented = ((1u64 << vectors) - 1) as u32;
        let _ = regs.set_bits_u32(data + 4, implemented, BitKind::ReadWrite);
        let _ = regs.set_bits_u32(data + 4, !implemented, BitKind::Reserved);
    }
}
