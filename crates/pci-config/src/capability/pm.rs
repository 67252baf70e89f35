//! PCI Power Management capability (PCI Bus Power Management Interface 1.2 §3.2).

use super::{CapabilityError, CapabilityId, check_header, rd16};
use crate::registers::{BitKind, RegisterFile};

/// Length of the PM capability structure.
pub const PM_LEN: u16 = 8;

/// A decoded Power Management capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PowerManagement {
    /// Offset of the capability header.
    pub offset: u16,
    /// Power Management Capabilities register (PMC, offset +2).
    pub pmc: u16,
    /// Power Management Control/Status register (PMCSR, offset +4).
    pub pmcsr: u16,
}

impl PowerManagement {
    /// PMC bits 2:0 = 3: PCI PM 1.2 (what QEMU and most devices report).
    pub const VERSION_1_2: u16 = 3;
    /// PMCSR bit 3: the function keeps its state across D3hot->D0 (no soft reset).
    pub const NO_SOFT_RESET: u16 = 1 << 3;
    /// PMCSR bit 8: PME enable (RW).
    pub const PME_ENABLE: u16 = 1 << 8;
    /// PMCSR bit 15: PME status (RW1C).
    pub const PME_STATUS: u16 = 1 << 15;

    /// A PM 1.2 capability in D0; `no_soft_reset` sets PMCSR bit 3.
    pub fn new(no_soft_reset: bool) -> Self {
        PowerManagement {
            offset: 0,
            pmc: Self::VERSION_1_2,
            pmcsr: if no_soft_reset {
                Self::NO_SOFT_RESET
            } else {
                0
            },
        }
    }

    /// Decodes the capability at `offset` of `config`.
    pub fn parse(config: &[u8], offset: u16) -> Result<Self, CapabilityError> {
        check_header(config, offset, CapabilityId::POWER_MANAGEMENT, PM_LEN)?;
        let o = offset as usize;
        Ok(PowerManagement {
            offset,
            pmc: rd16(config, o + 2),
            pmcsr: rd16(config, o + 4),
        })
    }

    /// PM specification version (PMC bits 2:0).
    pub fn version(&self) -> u8 {
        (self.pmc & 0x7) as u8
    }

    /// D1 supported.
    pub fn d1(&self) -> bool {
        self.pmc & (1 << 9) != 0
    }

    /// D2 supported.
    pub fn d2(&self) -> bool {
        self.pmc & (1 << 10) != 0
    }

    /// PME support per state, PMC bits 15:11 (D0, D1, D2, D3hot, D3cold).
    pub fn pme_support(&self) -> u8 {
        (self.pmc >> 11) as u8
    }

    /// Current power state, PMCSR bits 1:0 (0 = D0 .. 3 = D3hot).
    pub fn power_state(&self) -> u8 {
        (self.pmcsr & 0x3) as u8
    }

    /// PMCSR No_Soft_Reset.
    pub fn no_soft_reset(&self) -> bool {
        self.pmcsr & Self::NO_SOFT_RESET != 0
    }

    /// PMCSR PME_En.
    pub fn pme_enabled(&self) -> bool {
        self.pmcsr & Self::PME_ENABLE != 0
    }

    /// PMCSR PME_Status.
    pub fn pme_status(&self) -> bool {
        self.pmcsr & Self::PME_STATUS != 0
    }

    /// The structure's bytes (next pointer 0).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![CapabilityId::POWER_MANAGEMENT.0, 0];
        b.extend_from_slice(&self.pmc.to_le_bytes());
        b.extend_from_slice(&self.pmcsr.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b
    }
}

/// PMCSR: power state and PME_En are writable, PME_Status is RW1C, bits 7:4 reserved.
pub(crate) fn install_masks(regs: &mut RegisterFile, offset: u16) {
    let csr = offset + 4;
    let _ = regs.set_bits_u16(
        csr,
        0x0003 | PowerManagement::PME_ENABLE,
        BitKind::ReadWrite,
    );
    let _ = regs.set_bits_u16(csr, PowerManagement::PME_STATUS, BitKind::WriteOneToClear);
    let _ = regs.set_bits_u16(csr, 0x00f4, BitKind::Reserved);
}
