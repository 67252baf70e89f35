//! What the decoders know about one device: its IDs and class, its configuration space bytes
//! when they were read, where its MSI-X table is, and register values read from it.

use std::collections::BTreeMap;

use pci_config::capability::{self, Capability, MsixCapability};
use pci_config::{CapId, CapabilityId};

use crate::region::Location;

/// Facts about one device that decoders use to pick themselves and to name registers.
///
/// Everything is optional: offline (an `lspci` text without hex) a decoder may know only the
/// class code and assume the rest, and says so in [`Field::assumption`](crate::Field).
#[derive(Debug, Clone, Default)]
pub struct DeviceFacts {
    vendor_id: Option<u16>,
    device_id: Option<u16>,
    class_code: Option<u32>,
    config: Vec<u8>,
    capabilities: Vec<Capability>,
    msix: Option<MsixCapability>,
    values: BTreeMap<Location, u64>,
}

impl DeviceFacts {
    /// Nothing known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Facts from configuration space bytes (64, 256 or 4096 of them): IDs, class code, the
    /// capability chains (walked by `pci_config`, up to the first broken link) and MSI-X.
    pub fn from_config(config: &[u8]) -> Self {
        let mut facts = DeviceFacts {
            config: config.to_vec(),
            ..Self::default()
        };
        if config.len() >= 12 {
            facts.vendor_id = Some(u16::from_le_bytes([config[0], config[1]]));
            facts.device_id = Some(u16::from_le_bytes([config[2], config[3]]));
            facts.class_code = Some(u32::from_le_bytes([config[9], config[10], config[11], 0]));
        }
        let (caps, _first_problem) = capability::capabilities_lenient(config);
        facts.msix = caps
            .iter()
            .find(|c| c.id == CapId::Standard(CapabilityId::MSIX))
            .and_then(|c| MsixCapability::parse(config, c.offset).ok());
        facts.capabilities = caps;
        facts
    }

    /// The same facts with vendor and device ID.
    pub fn with_ids(mut self, vendor_id: u16, device_id: u16) -> Self {
        self.vendor_id = Some(vendor_id);
        self.device_id = Some(device_id);
        self
    }

    /// The same facts with the 24-bit class code (base class, subclass, programming interface:
    /// `0x010802` for an NVMe controller).
    pub fn with_class(mut self, class_code: u32) -> Self {
        self.class_code = Some(class_code & 0xff_ffff);
        self
    }

    /// The same facts with the MSI-X capability (when it is known without config bytes, e.g.
    /// from lspci's `Vector table:` lines).
    pub fn with_msix(mut self, msix: MsixCapability) -> Self {
        self.msix = Some(msix);
        self
    }

    /// The same facts with the value of the register starting at `at`, read from the device
    /// (e.g. NVMe CAP, which gives the doorbell stride).
    pub fn with_value(mut self, at: Location, value: u64) -> Self {
        self.values.insert(at, value);
        self
    }

    /// Vendor ID.
    pub fn vendor_id(&self) -> Option<u16> {
        self.vendor_id
    }

    /// Device ID.
    pub fn device_id(&self) -> Option<u16> {
        self.device_id
    }

    /// 24-bit class code.
    pub fn class_code(&self) -> Option<u32> {
        self.class_code
    }

    /// The configuration space bytes known (possibly none).
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// `width` bytes of configuration space at `offset`, little-endian, when they were read.
    pub fn config_value(&self, offset: u16, width: u8) -> Option<u64> {
        let start = offset as usize;
        let bytes = self.config.get(start..start.checked_add(width as usize)?)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, b| (acc << 8) | *b as u64),
        )
    }

    /// The capabilities of both chains, as `pci_config` walked them from the config bytes.
    pub fn capabilities(&self) -> &[Capability] {
        &self.capabilities
    }

    /// The MSI-X capability, when known.
    pub fn msix(&self) -> Option<&MsixCapability> {
        self.msix.as_ref()
    }

    /// A register value read from the device, by the register's start.
    pub fn value(&self, at: Location) -> Option<u64> {
        self.values.get(&at).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Region;

    #[test]
    fn config_gives_ids_class_and_values() {
        let mut config = vec![0u8; 64];
        config[..4].copy_from_slice(&[0x36, 0x1b, 0x10, 0x00]);
        config[9..12].copy_from_slice(&[0x02, 0x08, 0x01]);
        let facts = DeviceFacts::from_config(&config);
        assert_eq!(facts.vendor_id(), Some(0x1b36));
        assert_eq!(facts.device_id(), Some(0x0010));
        assert_eq!(facts.class_code(), Some(0x010802));
        assert_eq!(facts.config_value(0, 4), Some(0x0010_1b36));
        assert_eq!(facts.config_value(62, 4), None);
        assert!(facts.msix().is_none());
    }

    #[test]
    fn values_by_location() {
        let at = Location::new(Region::Bar(0), 0);
        let facts = DeviceFacts::new().with_value(at, 7);
        assert_eq!(facts.value(at), Some(7));
        assert_eq!(facts.value(Location::new(Region::Bar(0), 8)), None);
    }
}
