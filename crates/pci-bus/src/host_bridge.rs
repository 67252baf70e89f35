//! The host bridge at 00:00.0.
//!
//! Guests expect function 00:00.0 to be a host bridge (class 06:00:00): Linux and firmware scan
//! from there, and some only look further when it answers. Its IDs are those of QEMU's generic
//! PCIe host bridge (`gpex`, 1b36:0008), which no guest driver binds to or programs, so nothing
//! in the guest expects chipset registers (a q35 or i440FX ID would invite drivers that poke
//! PCIEXBAR, PAM or SMRAM registers this VMM does not have). It has no BARs and no capabilities;
//! its Command register takes writes and has no effect.

use pci_config::{ConfigSize, ConfigSpace, DeviceIds, HeaderType, PciFunction};

/// The emulated host bridge function.
#[derive(Debug)]
pub struct HostBridge {
    space: ConfigSpace,
}

impl HostBridge {
    /// Vendor 0x1b36 (Red Hat, QEMU), device 0x0008 (generic PCIe host bridge), as the dword at
    /// offset 0.
    pub const ID: u32 = 0x0008_1b36;

    /// A host bridge with class 06:00:00.
    pub fn new() -> Self {
        let ids = DeviceIds {
            vendor_id: Self::ID as u16,
            device_id: (Self::ID >> 16) as u16,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            revision: 0,
            class_code: 0x06_00_00,
        };
        HostBridge {
            space: ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Conventional, ids),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        // Beyond the 256 conventional bytes (ECAM reaches 4 KiB): all-ones, as the PciFunction
        // contract asks for what a function cannot serve.
        if self.space.read(offset, data).is_err() {
            data.fill(0xff);
        }
    }

    fn config_read_u32(&mut self, offset: u16) -> u32 {
        self.space.read_u32(offset).unwrap_or(u32::MAX)
    }

    fn config_read_u16(&mut self, offset: u16) -> u16 {
        self.space.read_u16(offset).unwrap_or(u16::MAX)
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        if let Err(e) = self.space.write(offset, data) {
            log::debug!("host bridge: config write at {offset:#x} dropped: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_a_host_bridge_with_read_only_ids() {
        let mut hb = HostBridge::new();
        let mut d = [0u8; 4];
        hb.config_read(8, &mut d);
        assert_eq!(u32::from_le_bytes(d) >> 8, 0x06_00_00, "class");
        hb.config_write(0, &[0, 0, 0, 0]);
        hb.config_read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), HostBridge::ID, "IDs are read-only");
        hb.config_read(0x100, &mut d);
        assert_eq!(d, [0xff; 4], "no extended space");
        let mut h = [0u8; 1];
        hb.config_read(0x0e, &mut h);
        assert_eq!(h[0], 0, "type 0, single function");
    }
}
