//! Fixtures shared by the integration tests, and by `benches/benches/config_access.rs`, which
//! includes this file by path: an in-memory device behind [`ConfigBackend`], the MSI-X layout
//! most fixtures use, and the VMM-side passthrough view in front of the device.

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::io;

use pci_config::capability::{
    BarOffset, ExpressCapability, MsiCapability, MsixCapability, PortType, PowerManagement,
};
use pci_config::{
    BarDef, ConfigBackend, ConfigSize, ConfigSpace, DeviceIds, ExtCapabilityId, HeaderType, RomDef,
    VirtualizedConfig,
};

/// One backend access: `'r'` or `'w'`, offset, width.
pub type Access = (char, u16, usize);

/// A device that stores whatever is written, checks that every access it gets is naturally
/// aligned and 1, 2 or 4 bytes wide (what a VFIO config region may be given), records the
/// accesses unless made [`quiet`](Self::quiet), and fails them all while `fail` is set.
pub struct MockDevice {
    pub regs: RefCell<Vec<u8>>,
    pub fail: Cell<bool>,
    log: Option<RefCell<Vec<Access>>>,
}

impl MockDevice {
    /// A recording device with these configuration bytes.
    pub fn new(bytes: &[u8]) -> Self {
        MockDevice {
            regs: RefCell::new(bytes.to_vec()),
            fail: Cell::new(false),
            log: Some(RefCell::new(Vec::new())),
        }
    }

    /// A device that records nothing, for benchmarks (a log would grow with every iteration).
    pub fn quiet(bytes: &[u8]) -> Self {
        MockDevice {
            log: None,
            ..MockDevice::new(bytes)
        }
    }

    /// The accesses since the last call.
    pub fn take_log(&self) -> Vec<Access> {
        self.log
            .as_ref()
            .map(|l| std::mem::take(&mut *l.borrow_mut()))
            .unwrap_or_default()
    }

    /// The writes (offset, width) since the last [`take_log`](Self::take_log).
    pub fn writes(&self) -> Vec<(u16, usize)> {
        self.take_log()
            .into_iter()
            .filter(|a| a.0 == 'w')
            .map(|a| (a.1, a.2))
            .collect()
    }

    fn access(&self, kind: char, offset: u16, len: usize) -> io::Result<std::ops::Range<usize>> {
        assert!(
            matches!(len, 1 | 2 | 4) && offset as usize % len == 0,
            "backend got a {len}-byte access at {offset:#x}: not naturally aligned"
        );
        if let Some(log) = &self.log {
            log.borrow_mut().push((kind, offset, len));
        }
        if self.fail.get() {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "device gone"));
        }
        Ok(offset as usize..offset as usize + len)
    }
}

impl ConfigBackend for MockDevice {
    fn read(&self, offset: u16, data: &mut [u8]) -> io::Result<()> {
        let r = self.access('r', offset, data.len())?;
        data.copy_from_slice(&self.regs.borrow()[r]);
        Ok(())
    }

    fn write(&self, offset: u16, data: &[u8]) -> io::Result<()> {
        let r = self.access('w', offset, data.len())?;
        self.regs.borrow_mut()[r].copy_from_slice(data);
        Ok(())
    }
}

/// An MSI-X capability of `entries` vectors with its table at 0x2000 and its PBA at 0x3000 of
/// BAR 0 (QEMU's NVMe controller layout, on a 16 KiB BAR 0).
pub fn msix_in_bar0(entries: u16) -> MsixCapability {
    MsixCapability::new(
        entries,
        BarOffset {
            bir: 0,
            offset: 0x2000,
        },
        BarOffset {
            bir: 0,
            offset: 0x3000,
        },
    )
}

/// What a VMM puts in front of `dev`: a model from a snapshot of its config space, BAR 0 sized
/// as a 16 KiB 64-bit BAR (the size VFIO region info would give), behind the passthrough
/// defaults.
pub fn passthrough_view(dev: &MockDevice) -> VirtualizedConfig<&MockDevice> {
    let snapshot = dev.regs.borrow().clone();
    let mut model = ConfigSpace::from_bytes(&snapshot).unwrap();
    model.set_bar(0, BarDef::memory64(0x4000)).unwrap();
    VirtualizedConfig::passthrough(model, dev)
}

/// An endpoint with one BAR of every kind (64-bit memory, I/O, 32-bit memory, a 4 GiB
/// prefetchable one), a ROM, PM, MSI, MSI-X, Express and AER: every register with side effects.
pub fn rich_device() -> ConfigSpace {
    let ids = DeviceIds {
        vendor_id: 0x1234,
        device_id: 0x5678,
        class_code: 0x020000,
        ..Default::default()
    };
    let mut c = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Extended, ids);
    c.set_bar(0, BarDef::memory64(0x4000).at(0xfebd_0000))
        .unwrap();
    c.set_bar(2, BarDef::io(64)).unwrap();
    c.set_bar(3, BarDef::memory32(0x1000)).unwrap();
    c.set_bar(4, BarDef::memory64(1 << 32).prefetchable())
        .unwrap();
    c.set_rom(RomDef::new(0x10000)).unwrap();
    c.add_capability(PowerManagement::new(true)).unwrap();
    c.add_capability(MsiCapability::new(8, true, true)).unwrap();
    c.add_capability(msix_in_bar0(16)).unwrap();
    c.add_capability(ExpressCapability::new(PortType::Endpoint))
        .unwrap();
    c.add_extended_capability(ExtCapabilityId::AER, 2, &[])
        .unwrap();
    c
}
