//! PCI configuration mechanism #1 (PCI Local Bus 3.0 §3.2.2.3.2): ports 0xCF8-0xCFF.
//!
//! The guest writes an address dword to 0xCF8:
//!
//! | bits | field |
//! |---|---|
//! | 31 | enable: without it, data-port accesses do not reach configuration space |
//! | 30:24 | reserved, read as 0 |
//! | 23:16 | bus |
//! | 15:11 | device |
//! | 10:8 | function |
//! | 7:2 | register (dword) number; bits 1:0 read as 0 |
//!
//! and then reads or writes 1, 2 or 4 bytes at 0xCFC + n, which is register offset
//! `(address & 0xFC) + n`. Only the first 256 bytes of a function are reachable this way (ECAM
//! reaches the rest). As on real chipsets, only dword accesses to 0xCF8 hit the address
//! register; byte and word accesses there (0xCF9 is the reset control register on Intel chipsets)
//! read all-ones and are otherwise ignored, and a data access that would run past 0xCFF is refused
//! (all-ones) instead of wrapping into the next register.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use vm_device::DevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};

use crate::PciBus;

const ENABLE: u32 = 1 << 31;
/// The bits of the address register that hold something: enable, bus, device, function, register.
const ADDRESS_MASK: u32 = ENABLE | 0x00ff_fffc;

/// The 0xCF8/0xCFC port pair, registered on 8 ports from 0xCF8.
#[derive(Debug)]
pub struct Conf1 {
    bus: Arc<PciBus>,
    address: AtomicU32,
}

/// A decoded address register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    bus: u8,
    device: u8,
    function: u8,
    register: u16,
}

fn decode(address: u32) -> Option<Target> {
    (address & ENABLE != 0).then_some(Target {
        bus: (address >> 16) as u8,
        device: ((address >> 11) & 0x1f) as u8,
        function: ((address >> 8) & 0x7) as u8,
        register: (address & 0xfc) as u16,
    })
}

impl Conf1 {
    /// The mechanism in front of `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        Conf1 {
            bus,
            address: AtomicU32::new(0),
        }
    }

    /// The data-port target of an access of `len` bytes at 0xCFC + `lane`, if it reaches a
    /// register.
    fn data_target(&self, lane: u64, len: usize) -> Option<(Target, u16)> {
        if lane + len as u64 > 4 {
            return None;
        }
        let t = decode(self.address.load(Ordering::Acquire))?;
        Some((t, t.register + lane as u16))
    }
}

impl DevicePio for Conf1 {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let offset = u64::from(offset);
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                data.copy_from_slice(&self.address.load(Ordering::Acquire).to_le_bytes());
            } else {
                data.fill(0xff);
            }
            return;
        }
        match self.data_target(offset - 4, data.len()) {
            Some((t, reg)) => self.bus.config_read(t.bus, t.device, t.function, reg, data),
            None => data.fill(0xff),
        }
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let offset = u64::from(offset);
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.address.store(v & ADDRESS_MASK, Ordering::Release);
            } else {
                log::debug!(
                    "conf1: {}-byte write to port {:#x} ignored (only dword writes to 0xCF8 set the address)",
                    data.len(),
                    0xcf8 + offset
                );
            }
            return;
        }
        if let Some((t, reg)) = self.data_target(offset - 4, data.len()) {
            self.bus
                .config_write(t.bus, t.device, t.function, reg, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostBridge;
    use pci_config::Bdf;

    fn conf1() -> Conf1 {
        let bus = Arc::new(PciBus::new());
        bus.insert(Bdf::new(0, 0, 0), "hb", Box::new(HostBridge::new()))
            .unwrap();
        Conf1::new(bus)
    }

    fn out32(c: &Conf1, port: u16, v: u32) {
        c.pio_write(PioAddress(0xcf8), port - 0xcf8, &v.to_le_bytes());
    }

    fn input(c: &Conf1, port: u16, len: usize) -> u32 {
        let mut d = [0u8; 4];
        c.pio_read(PioAddress(0xcf8), port - 0xcf8, &mut d[..len]);
        u32::from_le_bytes(d)
    }

    #[test]
    fn dword_word_and_byte_reads_of_the_host_bridge() {
        let c = conf1();
        out32(&c, 0xcf8, 0x8000_0000);
        assert_eq!(input(&c, 0xcfc, 4), HostBridge::ID);
        assert_eq!(input(&c, 0xcfc, 2), 0x1b36);
        assert_eq!(input(&c, 0xcfe, 2), 0x0008);
        assert_eq!(input(&c, 0xcfd, 1), 0x1b);
        out32(&c, 0xcf8, 0x8000_0008);
        assert_eq!(input(&c, 0xcfe, 2), 0x0600, "class 06:00");
        // The address register reads back with bits 1:0 and 30:24 clear.
        out32(&c, 0xcf8, 0xff00_0003);
        assert_eq!(input(&c, 0xcf8, 4), 0x8000_0000);
    }

    #[test]
    fn disabled_absent_and_misaligned_accesses_read_all_ones() {
        let c = conf1();
        out32(&c, 0xcf8, 0x0000_0000); // enable bit clear
        assert_eq!(input(&c, 0xcfc, 4), 0xffff_ffff);
        out32(&c, 0xcf8, 0x8000_0800); // 00:01.0: empty
        assert_eq!(input(&c, 0xcfc, 4), 0xffff_ffff);
        out32(&c, 0xcf8, 0x8001_0000); // bus 1
        assert_eq!(input(&c, 0xcfc, 4), 0xffff_ffff);
        out32(&c, 0xcf8, 0x8000_0000);
        assert_eq!(input(&c, 0xcfe, 4) & 0xffff, 0xffff, "crosses 0xCFF");
        assert_eq!(input(&c, 0xcf9, 1), 0xff, "byte read of 0xCF9");
        c.pio_write(PioAddress(0xcf8), 1, &[0x06]); // 0xCF9 reset request: ignored
        assert_eq!(input(&c, 0xcf8, 4), 0x8000_0000);
    }
}
