#![no_main]
//! Arbitrary sequences of sized config writes against the invariants: read-only bits never
//! change, W1C bits only clear, reserved bits stay zero, BARs stay naturally aligned and every
//! reported move is aligned; through the passthrough view no write reaches an emulated register.
use std::cell::RefCell;
use std::io;

use libfuzzer_sys::fuzz_target;
use pci_config::capability::{BarOffset, MsiCapability, MsixCapability, PowerManagement};
use pci_config::{
    BarDef, BarKind, ConfigBackend, ConfigEvent, ConfigSize, ConfigSpace, DeviceIds,
    ExtCapabilityId, HeaderType, RomDef, VirtualizedConfig,
};

struct Device {
    regs: RefCell<Vec<u8>>,
    written: RefCell<Vec<u16>>,
}

impl ConfigBackend for Device {
    fn read(&self, offset: u16, data: &mut [u8]) -> io::Result<()> {
        let o = offset as usize;
        data.copy_from_slice(&self.regs.borrow()[o..o + data.len()]);
        Ok(())
    }
    fn write(&self, offset: u16, data: &[u8]) -> io::Result<()> {
        self.written
            .borrow_mut()
            .extend((0..data.len() as u16).map(|i| offset + i));
        Ok(())
    }
}

/// Builds a device whose layout is chosen by the first input bytes.
fn device(setup: &[u8]) -> ConfigSpace {
    let header = if setup[0] & 1 == 0 {
        HeaderType::Endpoint
    } else {
        HeaderType::Bridge
    };
    let size = if setup[0] & 2 == 0 {
        ConfigSize::Extended
    } else {
        ConfigSize::Conventional
    };
    let mut c = ConfigSpace::new(
        header,
        size,
        DeviceIds {
            vendor_id: 0x1234,
            ..Default::default()
        },
    );
    let mut i = 0;
    while i < header.bar_count() {
        let b = setup[1 + i];
        let kind = match b & 3 {
            0 => None,
            1 => Some(BarKind::Io),
            2 => Some(BarKind::Memory32),
            _ => Some(BarKind::Memory64),
        };
        if let Some(kind) = kind {
            let log2 = (b >> 2) as u32 % 40;
            let size = match kind {
                BarKind::Io => 1u64 << log2.clamp(2, 8),
                BarKind::Memory32 => 1u64 << log2.clamp(4, 31),
                BarKind::Memory64 => 1u64 << log2.max(4),
            };
            let def = BarDef {
                kind,
                size,
                prefetchable: b & 0x80 != 0 && kind != BarKind::Io,
                address: 0,
            };
            if c.set_bar(i, def).is_ok() && kind == BarKind::Memory64 {
                i += 1;
            }
        }
        i += 1;
    }
    let _ = c.set_rom(RomDef::new(0x800 << (setup[7] % 16)));
    if setup[8] & 1 != 0 {
        let _ = c.add_capability(PowerManagement::new(true));
    }
    if setup[8] & 2 != 0 {
        let _ = c.add_capability(MsiCapability::new(
            1 << (setup[8] >> 5),
            setup[8] & 4 != 0,
            setup[8] & 8 != 0,
        ));
    }
    if setup[8] & 16 != 0 {
        let t = BarOffset { bir: 0, offset: 0 };
        let _ = c.add_capability(MsixCapability::new(
            1 + setup[9] as u16,
            t,
            BarOffset {
                bir: 0,
                offset: 0x1000,
            },
        ));
    }
    let _ = c.add_extended_capability(ExtCapabilityId::AER, 2, &[]);
    // raise some W1C bits so that clearing them is exercised
    let st = c.status().0 | 0xf900;
    let _ = c.set_u16(0x06, st);
    c
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let (setup, ops) = data.split_at(10);
    let initial = device(setup);
    let mut c = initial.clone();
    let dev = Device {
        regs: RefCell::new(initial.bytes().to_vec()),
        written: RefCell::new(Vec::new()),
    };
    let mut v = VirtualizedConfig::passthrough(initial.clone(), &dev);
    let protected: Vec<bool> = v.emulated_mask().iter().map(|&m| m == 0xff).collect();
    let bar_sizes: Vec<(u8, u64)> = c.bars().iter().map(|b| (b.index, b.size)).collect();

    for op in ops.chunks_exact(7) {
        let width = [1usize, 2, 4, 4][(op[0] & 3) as usize];
        let offset = u16::from_le_bytes([op[1], op[2]]) % 0x1004;
        let value = &op[3..3 + width];
        let before = c.bytes().to_vec();
        match c.write(offset, value) {
            Err(_) => assert_eq!(c.bytes(), &before[..], "a refused write changed state"),
            Ok(events) => {
                for e in events {
                    if let ConfigEvent::BarMoved { bar, new, .. } = e {
                        let size = bar_sizes
                            .iter()
                            .find(|b| b.0 == bar)
                            .expect("event for a defined BAR")
                            .1;
                        assert_eq!(new % size, 0, "BAR {bar} moved to unaligned {new:#x}");
                    }
                }
            }
        }
        let r = c.registers();
        for i in 0..c.len() {
            let ro = !(r.wmask()[i] | r.w1cmask()[i]);
            assert_eq!(
                c.bytes()[i] & ro,
                initial.bytes()[i] & ro,
                "RO bits of {i:#x} changed"
            );
            assert_eq!(
                c.bytes()[i] & r.w1cmask()[i] & !before[i],
                0,
                "W1C bit of {i:#x} set"
            );
            assert_eq!(
                c.bytes()[i] & r.rsvdmask()[i],
                0,
                "reserved bit of {i:#x} set"
            );
        }
        for b in c.bars() {
            assert_eq!(b.address % b.size, 0);
        }
        let _ = v.write(offset, value);
        let mut buf = [0u8; 4];
        let _ = v.read(offset, &mut buf[..width]);
    }
    for &o in dev.written.borrow().iter() {
        assert!(!protected[o as usize], "write reached emulated byte {o:#x}");
    }
});
