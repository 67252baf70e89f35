//! ECAM, the PCI Express enhanced configuration access mechanism (PCIe Base 6.0 §7.2.2): each
//! function's 4 KiB configuration space memory-mapped at
//! `base + (bus << 20 | device << 15 | function << 12 | register)`.
//!
//! Accesses of 1, 2 and 4 bytes that stay inside one dword go to the function as they are; an
//! 8-byte access (the spec leaves it undefined; some software issues it) is split into two dword
//! accesses. A misaligned access that would cross a dword reads all-ones and writes nothing,
//! because the `PciFunction` contract (like the hardware) never crosses a dword.

use std::sync::Arc;

use vm_device::DeviceMmio;
use vm_device::bus::{MmioAddress, MmioAddressOffset};

use crate::PciBus;

/// The ECAM window in front of a bus, registered on the MMIO bus at [`ECAM_BASE`](crate::layout::ECAM_BASE).
#[derive(Debug)]
pub struct Ecam {
    bus: Arc<PciBus>,
}

/// `(bus, device, function, register)` of a window offset.
fn decode(offset: u64) -> (u8, u8, u8, u16) {
    (
        (offset >> 20) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 0x7) as u8,
        (offset & 0xfff) as u16,
    )
}

impl Ecam {
    /// The window in front of `bus`.
    pub fn new(bus: Arc<PciBus>) -> Self {
        Ecam { bus }
    }

    fn read(&self, offset: u64, data: &mut [u8]) {
        let (b, d, f, reg) = decode(offset);
        self.bus.config_read(b, d, f, reg, data);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let (b, d, f, reg) = decode(offset);
        self.bus.config_write(b, d, f, reg, data);
    }
}

/// How an access of `len` bytes at `offset` is carried out.
enum Split {
    /// As it is.
    Whole,
    /// As two dwords (an aligned 8-byte access).
    TwoDwords,
    /// Not at all: it crosses a dword boundary or has an odd size.
    Refused,
}

fn split(offset: u64, len: usize) -> Split {
    match len {
        1 | 2 | 4 if (offset & 3) + len as u64 <= 4 => Split::Whole,
        8 if offset & 7 == 0 => Split::TwoDwords,
        _ => Split::Refused,
    }
}

impl DeviceMmio for Ecam {
    fn mmio_read(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        match split(offset, data.len()) {
            Split::Whole => self.read(offset, data),
            Split::TwoDwords => {
                let (lo, hi) = data.split_at_mut(4);
                self.read(offset, lo);
                self.read(offset + 4, hi);
            }
            Split::Refused => {
                log::debug!(
                    "ECAM: {}-byte read at +{offset:#x} crosses a dword; all-ones",
                    data.len()
                );
                data.fill(0xff)
            }
        }
    }

    fn mmio_write(&self, _base: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        match split(offset, data.len()) {
            Split::Whole => self.write(offset, data),
            Split::TwoDwords => {
                self.write(offset, &data[..4]);
                self.write(offset + 4, &data[4..]);
            }
            Split::Refused => {
                log::debug!(
                    "ECAM: {}-byte write at +{offset:#x} crosses a dword; dropped",
                    data.len()
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Conf1, HostBridge};
    use pci_config::Bdf;
    use vm_device::DevicePio;
    use vm_device::bus::PioAddress;

    fn ecam_read(e: &Ecam, offset: u64, len: usize) -> u64 {
        let mut d = [0u8; 8];
        e.mmio_read(MmioAddress(0), offset, &mut d[..len]);
        u64::from_le_bytes(d)
    }

    #[test]
    fn ecam_and_conf1_agree_on_every_register_of_bus_0() {
        let bus = Arc::new(PciBus::new());
        bus.insert(Bdf::new(0, 0, 0), "hb", Box::new(HostBridge::new()))
            .unwrap();
        bus.insert(Bdf::new(0, 5, 0), "other", Box::new(HostBridge::new()))
            .unwrap();
        let ecam = Ecam::new(bus.clone());
        let conf1 = Conf1::new(bus.clone());
        for dev in [0u32, 1, 5, 31] {
            for reg in (0..256u32).step_by(4) {
                let addr = 0x8000_0000 | dev << 11 | reg;
                conf1.pio_write(PioAddress(0xcf8), 0, &addr.to_le_bytes());
                let mut d = [0u8; 4];
                conf1.pio_read(PioAddress(0xcf8), 4, &mut d);
                let via_ecam = ecam_read(&ecam, u64::from(dev << 15 | reg), 4) as u32;
                assert_eq!(
                    u32::from_le_bytes(d),
                    via_ecam,
                    "device {dev} register {reg:#x}"
                );
            }
        }
        // A write through one is seen through the other (Command register of 00:05.0).
        ecam.mmio_write(MmioAddress(0), 5 << 15 | 4, &[0x06, 0]);
        conf1.pio_write(PioAddress(0xcf8), 0, &(0x8000_2804u32).to_le_bytes());
        let mut d = [0u8; 2];
        conf1.pio_read(PioAddress(0xcf8), 4, &mut d);
        assert_eq!(u16::from_le_bytes(d), 0x06);
    }

    #[test]
    fn extended_space_other_buses_and_odd_accesses() {
        let bus = Arc::new(PciBus::new());
        bus.insert(Bdf::new(0, 0, 0), "hb", Box::new(HostBridge::new()))
            .unwrap();
        let ecam = Ecam::new(bus);
        let (lo, hi) = (ecam_read(&ecam, 0, 4), ecam_read(&ecam, 4, 4));
        assert_eq!(
            ecam_read(&ecam, 0, 8),
            lo | hi << 32,
            "8-byte read = two dwords"
        );
        assert_eq!(lo, u64::from(HostBridge::ID));
        assert_eq!(
            ecam_read(&ecam, 0x100, 4),
            0xffff_ffff,
            "conventional function"
        );
        assert_eq!(ecam_read(&ecam, 1 << 20, 4), 0xffff_ffff, "bus 1 is empty");
        assert_eq!(
            ecam_read(&ecam, 255 << 20 | 31 << 15 | 7 << 12, 4),
            0xffff_ffff
        );
        assert_eq!(ecam_read(&ecam, 3, 2), 0xffff, "crosses a dword");
        assert_eq!(
            ecam_read(&ecam, 4, 8),
            u64::MAX,
            "8-byte access not 8-aligned"
        );
        assert_eq!(ecam_read(&ecam, 2, 2), 0x0008);
    }
}
