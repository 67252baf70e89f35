//! PCI: configuration access through mechanism #1 (ports 0xCF8/0xCFC), bus scan, BAR sizing and
//! programming, the capability list, and MSI-X.
//!
//! Everything above [`Conf1`] is written against the [`ConfigSpace`] trait, so the logic runs in
//! host unit tests over a fake configuration space.

mod bar;
mod cap;
mod conf1;
mod msix;
mod scan;

pub use bar::{
    AssignError, Bar, BarKind, Bars, MmioWindow, assign_memory_bars, memory_bars_placed,
    probe_bars, size_from_readback,
};
pub use cap::{CapError, Capability, capabilities, capability_name, find_capability};
pub use conf1::Conf1;
pub use msix::{
    CAP_ID as CAP_ID_MSIX, MsixCapability, MsixError, MsixTable, enable_msix, is_enabled_unmasked,
};
pub use scan::{ClassCode, Function, probe_function, scan_bus};

use core::fmt;

/// Offsets and bits of the type-0 configuration header (PCI Local Bus 3.0, 6.1).
pub mod reg {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: u16 = 0x00;
    /// Command register (16 bits).
    pub const COMMAND: u16 = 0x04;
    /// Status register (16 bits).
    pub const STATUS: u16 = 0x06;
    /// Revision ID, then the class code (prog-if, subclass, base class).
    pub const CLASS_REVISION: u16 = 0x08;
    /// Cache line, latency timer, header type, BIST.
    pub const HEADER_TYPE_DWORD: u16 = 0x0c;
    /// First BAR.
    pub const BAR0: u16 = 0x10;
    /// Capabilities pointer (8 bits).
    pub const CAPABILITIES_POINTER: u16 = 0x34;

    /// Command: I/O space decode.
    pub const COMMAND_IO: u16 = 1 << 0;
    /// Command: memory space decode.
    pub const COMMAND_MEMORY: u16 = 1 << 1;
    /// Command: bus master (DMA, and MSI/MSI-X writes).
    pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
    /// Command: INTx disable.
    pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
    /// Status: the capability list exists.
    pub const STATUS_CAPABILITIES: u16 = 1 << 4;
}

/// A bus/device/function address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bdf {
    /// Bus (0-255).
    pub bus: u8,
    /// Device (0-31).
    pub device: u8,
    /// Function (0-7).
    pub function: u8,
}

impl Bdf {
    /// `bus:device.function`; panics if device > 31 or function > 7.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        assert!(
            device < 32 && function < 8,
            "PCI device is 0-31 and function 0-7"
        );
        Bdf {
            bus,
            device,
            function,
        }
    }

    /// Parses `bb:dd.f` (hex, as lspci prints it).
    pub fn parse(s: &str) -> Option<Self> {
        let (bus, rest) = s.split_once(':')?;
        let (dev, func) = rest.split_once('.')?;
        let bus = u8::from_str_radix(bus, 16).ok()?;
        let device = u8::from_str_radix(dev, 16).ok()?;
        let function = u8::from_str_radix(func, 16).ok()?;
        (device < 32 && function < 8).then_some(Bdf {
            bus,
            device,
            function,
        })
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// Access to PCI configuration space (the first 256 bytes of each function).
///
/// Offsets must be naturally aligned for the access size.
pub trait ConfigSpace {
    /// Reads 32 bits.
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32;
    /// Writes 32 bits.
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32);
    /// Reads 16 bits.
    fn read16(&mut self, bdf: Bdf, offset: u16) -> u16;
    /// Writes 16 bits.
    fn write16(&mut self, bdf: Bdf, offset: u16, value: u16);
    /// Reads 8 bits.
    fn read8(&mut self, bdf: Bdf, offset: u16) -> u8;
}

/// Sets and clears bits of the command register; returns the value read back.
pub fn update_command(cfg: &mut impl ConfigSpace, bdf: Bdf, set: u16, clear: u16) -> u16 {
    let cmd = cfg.read16(bdf, reg::COMMAND);
    cfg.write16(bdf, reg::COMMAND, (cmd & !clear) | set);
    cfg.read16(bdf, reg::COMMAND)
}

#[cfg(test)]
pub(crate) mod fake;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_text() {
        let b = Bdf::new(0, 0x1f, 3);
        assert_eq!(b.to_string(), "00:1f.3");
        assert_eq!(Bdf::parse("00:1f.3"), Some(b));
        assert_eq!(Bdf::parse("00:20.0"), None);
        assert_eq!(Bdf::parse("00:01.8"), None);
        assert_eq!(Bdf::parse("0001.0"), None);
    }
}
