//! Capabilities: IDs and names, chain walking with typed errors, typed views of the common
//! capabilities, their register masks, and the editing needed for passthrough (add, hide).

mod chain;
mod edit;
mod error;
mod express;
mod id;
mod msi;
mod msix;
mod pm;
mod vendor;

pub(crate) use chain::extended_len as chain_len_extended;
pub use chain::{
    Capability, capabilities, capabilities_lenient, extended_capabilities, standard_capabilities,
};
pub use edit::{HiddenCapability, hide_capability};
pub(crate) use edit::{find_free, link_extended, link_standard};
pub use error::CapabilityError;
pub use express::{ExpressCapability, PortType};
pub use id::{CapId, CapabilityId, ExtCapabilityId};
pub use msi::MsiCapability;
pub use msix::{BarOffset, MSIX_LEN, MsixCapability};
pub use pm::{PM_LEN, PowerManagement};
pub use vendor::VendorCapability;

use crate::registers::{BitKind, RegisterFile};

pub(crate) fn rd16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([
        b.get(at).copied().unwrap_or(0),
        b.get(at + 1).copied().unwrap_or(0),
    ])
}

pub(crate) fn rd32(b: &[u8], at: usize) -> u32 {
    rd16(b, at) as u32 | (rd16(b, at + 2) as u32) << 16
}

/// Checks that a standard capability with `id` starts at `offset` and that `len` bytes fit.
pub(crate) fn check_header(
    config: &[u8],
    offset: u16,
    id: CapabilityId,
    len: u16,
) -> Result<(), CapabilityError> {
    let o = offset as usize;
    let Some(&found) = config.get(o) else {
        return Err(CapabilityError::NotFound { offset });
    };
    if found != id.0 {
        return Err(CapabilityError::WrongId {
            offset,
            expected: CapId::Standard(id),
            found: CapId::Standard(CapabilityId(found)),
        });
    }
    let limit = config.len().min(256);
    if o + len as usize > limit {
        return Err(CapabilityError::Truncated {
            offset,
            id: CapId::Standard(id),
            needed: len,
            available: limit.saturating_sub(o) as u16,
        });
    }
    Ok(())
}

/// A capability to add to a configuration space with
/// [`ConfigSpace::add_capability`](crate::ConfigSpace::add_capability).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewCapability {
    /// Power Management.
    PowerManagement(PowerManagement),
    /// MSI.
    Msi(MsiCapability),
    /// MSI-X.
    Msix(MsixCapability),
    /// PCI Express.
    Express(ExpressCapability),
    /// Vendor-specific.
    Vendor(VendorCapability),
    /// Any other capability: its ID and the bytes after the 2-byte header. All its bits are
    /// read-only unless changed with [`ConfigSpace::set_bits`](crate::ConfigSpace::set_bits).
    Raw {
        /// Capability ID.
        id: CapabilityId,
        /// Contents after the ID and next-pointer bytes.
        body: Vec<u8>,
    },
}

impl NewCapability {
    /// The capability ID.
    pub fn id(&self) -> CapabilityId {
        match self {
            NewCapability::PowerManagement(_) => CapabilityId::POWER_MANAGEMENT,
            NewCapability::Msi(_) => CapabilityId::MSI,
            NewCapability::Msix(_) => CapabilityId::MSIX,
            NewCapability::Express(_) => CapabilityId::EXPRESS,
            NewCapability::Vendor(_) => CapabilityId::VENDOR_SPECIFIC,
            NewCapability::Raw { id, .. } => *id,
        }
    }

    /// The structure's bytes with a zero next pointer.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            NewCapability::PowerManagement(c) => c.encode(),
            NewCapability::Msi(c) => c.encode(),
            NewCapability::Msix(c) => c.encode(),
            NewCapability::Express(c) => c.encode(),
            NewCapability::Vendor(c) => c.encode(),
            NewCapability::Raw { id, body } => {
                let mut b = vec![id.0, 0];
                b.extend_from_slice(body);
                b
            }
        }
    }
}

impl From<PowerManagement> for NewCapability {
    fn from(c: PowerManagement) -> Self {
        NewCapability::PowerManagement(c)
    }
}
impl From<MsiCapability> for NewCapability {
    fn from(c: MsiCapability) -> Self {
        NewCapability::Msi(c)
    }
}
impl From<MsixCapability> for NewCapability {
    fn from(c: MsixCapability) -> Self {
        NewCapability::Msix(c)
    }
}
impl From<ExpressCapability> for NewCapability {
    fn from(c: ExpressCapability) -> Self {
        NewCapability::Express(c)
    }
}
impl From<VendorCapability> for NewCapability {
    fn from(c: VendorCapability) -> Self {
        NewCapability::Vendor(c)
    }
}

/// Installs the write masks of a recognised capability (the header bytes stay read-only).
/// Unrecognised capabilities stay read-only.
pub(crate) fn install_masks(regs: &mut RegisterFile, cap: &Capability) {
    let o = cap.offset;
    match cap.id {
        CapId::Standard(CapabilityId::POWER_MANAGEMENT) => pm::install_masks(regs, o),
        CapId::Standard(CapabilityId::MSI) => {
            msi::install_masks(regs, o, rd16(regs.bytes(), o as usize + 2))
        }
        CapId::Standard(CapabilityId::MSIX) => msix::install_masks(regs, o),
        CapId::Standard(CapabilityId::EXPRESS) => {
            express::install_masks(regs, o, rd16(regs.bytes(), o as usize + 2))
        }
        CapId::Extended(ExtCapabilityId::AER) => {
            // PCIe 4.0 §7.8.4: status registers RW1C, mask/severity RW, ECRC enables RW.
            let _ = regs.set_bits_u32(o + 0x04, u32::MAX, BitKind::WriteOneToClear);
            let _ = regs.set_bits_u32(o + 0x08, u32::MAX, BitKind::ReadWrite);
            let _ = regs.set_bits_u32(o + 0x0c, u32::MAX, BitKind::ReadWrite);
            let _ = regs.set_bits_u32(o + 0x10, u32::MAX, BitKind::WriteOneToClear);
            let _ = regs.set_bits_u32(o + 0x14, u32::MAX, BitKind::ReadWrite);
            let _ = regs.set_bits_u32(o + 0x18, (1 << 6) | (1 << 8), BitKind::ReadWrite);
        }
        _ => {}
    }
}
