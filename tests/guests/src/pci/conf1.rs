//! Configuration mechanism #1: write the address to port 0xCF8, access the data at 0xCFC-0xCFF.
//!
//! Every access is two port I/O instructions, so two exits under a VMM. Sub-dword accesses use
//! the matching data port byte (0xCFC + offset % 4), as the PCI spec describes and as a VMM must
//! decode: no read-modify-write of neighbouring registers (which would clear RW1C status bits).

use super::{Bdf, ConfigSpace};
use crate::io::{inb, inl, inw, outl, outw};

const ADDRESS_PORT: u16 = 0xcf8;
const DATA_PORT: u16 = 0xcfc;

/// The conf1 accessor (stateless).
#[derive(Debug, Default, Clone, Copy)]
pub struct Conf1;

/// The value written to 0xCF8 for `bdf` and the dword holding `offset`.
pub const fn address(bdf: Bdf, offset: u16) -> u32 {
    1 << 31
        | (bdf.bus as u32) << 16
        | (bdf.device as u32) << 11
        | (bdf.function as u32) << 8
        | (offset as u32 & 0xfc)
}

impl ConfigSpace for Conf1 {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        outl(ADDRESS_PORT, address(bdf, offset));
        inl(DATA_PORT)
    }

    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        outl(ADDRESS_PORT, address(bdf, offset));
        outl(DATA_PORT, value);
    }

    fn read16(&mut self, bdf: Bdf, offset: u16) -> u16 {
        outl(ADDRESS_PORT, address(bdf, offset));
        inw(DATA_PORT + (offset & 2))
    }

    fn write16(&mut self, bdf: Bdf, offset: u16, value: u16) {
        outl(ADDRESS_PORT, address(bdf, offset));
        outw(DATA_PORT + (offset & 2), value);
    }

    fn read8(&mut self, bdf: Bdf, offset: u16) -> u8 {
        outl(ADDRESS_PORT, address(bdf, offset));
        inb(DATA_PORT + (offset & 3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_layout() {
        assert_eq!(address(Bdf::new(0, 1, 0), 0x10), 0x8000_0810);
        assert_eq!(address(Bdf::new(2, 31, 7), 0xff), 0x8002_fffc);
    }
}
