//! Capability accessors and editing of a [`ConfigSpace`].

use super::ConfigSpace;
use crate::capability::{
    self, CapId, Capability, CapabilityError, CapabilityId, ExpressCapability, ExtCapabilityId,
    HiddenCapability, MsiCapability, MsixCapability, NewCapability, PowerManagement,
};
use crate::registers::{BitKind, ConfigSize};

impl ConfigSpace {
    /// Both capability chains, strictly checked.
    pub fn capabilities(&self) -> Result<Vec<Capability>, CapabilityError> {
        capability::capabilities(self.bytes())
    }

    /// The first standard capability with `id` (in the parseable part of the chain).
    pub fn find_capability(&self, id: CapabilityId) -> Option<Capability> {
        let (caps, _) = capability::capabilities_lenient(self.bytes());
        caps.into_iter().find(|c| c.id == CapId::Standard(id))
    }

    /// The first extended capability with `id`.
    pub fn find_extended_capability(&self, id: ExtCapabilityId) -> Option<Capability> {
        let (caps, _) = capability::capabilities_lenient(self.bytes());
        caps.into_iter().find(|c| c.id == CapId::Extended(id))
    }

    /// The MSI capability, decoded.
    pub fn msi(&self) -> Option<MsiCapability> {
        let c = self.find_capability(CapabilityId::MSI)?;
        MsiCapability::parse(self.bytes(), c.offset).ok()
    }

    /// The MSI-X capability, decoded.
    pub fn msix(&self) -> Option<MsixCapability> {
        let c = self.find_capability(CapabilityId::MSIX)?;
        MsixCapability::parse(self.bytes(), c.offset).ok()
    }

    /// The Power Management capability, decoded.
    pub fn power_management(&self) -> Option<PowerManagement> {
        let c = self.find_capability(CapabilityId::POWER_MANAGEMENT)?;
        PowerManagement::parse(self.bytes(), c.offset).ok()
    }

    /// The PCI Express capability, decoded.
    pub fn express(&self) -> Option<ExpressCapability> {
        let c = self.find_capability(CapabilityId::EXPRESS)?;
        ExpressCapability::parse(self.bytes(), c.offset).ok()
    }

    /// Adds a standard capability at the first free dword-aligned offset at or above 0x40,
    /// appends it to the chain, sets Status.CapabilitiesList and installs its register masks.
    /// Returns its offset.
    pub fn add_capability(
        &mut self,
        cap: impl Into<NewCapability>,
    ) -> Result<u16, CapabilityError> {
        let cap = cap.into();
        let id = cap.id();
        let body = cap.encode();
        let len = body.len() as u16;
        let caps = self.capabilities()?;
        let at = capability::find_free(self.len(), &caps, len, false).ok_or(
            CapabilityError::NoSpace {
                id: CapId::Standard(id),
                len,
            },
        )?;
        let _ = self
            .regs
            .set_bits(at, &vec![0xff; len as usize], BitKind::ReadOnly);
        let _ = self.regs.set(at, &body);
        let mut copy = self.bytes().to_vec();
        capability::link_standard(&mut copy, &caps, at);
        let _ = self.regs.set(0, &copy);
        let new = Capability {
            offset: at,
            id: CapId::Standard(id),
            version: 0,
            len,
            next: 0,
        };
        capability::install_masks(&mut self.regs, &new);
        self.rebuild_watches();
        Ok(at)
    }

    /// Adds an extended capability with `id`, `version` and the bytes after its 4-byte header,
    /// padded to the structure size this crate knows for the ID. Returns its offset.
    pub fn add_extended_capability(
        &mut self,
        id: ExtCapabilityId,
        version: u8,
        body: &[u8],
    ) -> Result<u16, CapabilityError> {
        let cid = CapId::Extended(id);
        if self.size() != ConfigSize::Extended {
            return Err(CapabilityError::NoExtendedSpace {
                id: cid,
                size: self.len(),
            });
        }
        let header = id.0 as u32 | ((version as u32 & 0xf) << 16);
        let mut bytes = header.to_le_bytes().to_vec();
        bytes.extend_from_slice(body);
        let mut probe = vec![0u8; 4096];
        let n = bytes.len().min(4096 - 0x100);
        probe[0x100..0x100 + n].copy_from_slice(&bytes[..n]);
        let min = capability::chain_len_extended(&probe, 0x100, id).unwrap_or(4);
        if bytes.len() < min as usize {
            bytes.resize(min as usize, 0);
        }
        let len = bytes.len() as u16;
        let caps = self.capabilities()?;
        let at = capability::find_free(self.len(), &caps, len, true)
            .ok_or(CapabilityError::NoSpace { id: cid, len })?;
        let _ = self
            .regs
            .set_bits(at, &vec![0xff; len as usize], BitKind::ReadOnly);
        let _ = self.regs.set(at, &bytes);
        let mut copy = self.bytes().to_vec();
        capability::link_extended(&mut copy, &caps, at);
        let _ = self.regs.set(0, &copy);
        let new = Capability {
            offset: at,
            id: cid,
            version,
            len,
            next: 0,
        };
        capability::install_masks(&mut self.regs, &new);
        Ok(at)
    }

    /// Hides the capability at `offset`: unlinks it from its chain (see
    /// [`capability::hide_capability`]) and blanks its bytes to read-only zero so a guest that
    /// scans for it finds nothing and cannot write it. The blanked range is the whole
    /// capability ([`HiddenCapability::len`]): its structure when this crate knows the ID, up
    /// to the next capability (or the end of the space) when it does not.
    pub fn hide_capability(&mut self, offset: u16) -> Result<HiddenCapability, CapabilityError> {
        let mut copy = self.bytes().to_vec();
        let hidden = capability::hide_capability(&mut copy, offset)?;
        self.regs
            .blank(hidden.capability.offset as usize, hidden.len as usize);
        for &(o, l) in &hidden.patched {
            let _ = self.regs.set(o, &copy[o as usize..(o + l) as usize]);
        }
        self.rebuild_watches();
        Ok(hidden)
    }
}
