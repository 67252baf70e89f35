//! Finding functions on a bus.

use core::fmt;

use super::{Bdf, ConfigSpace, reg};

/// The class code triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassCode {
    /// Base class (0x01 mass storage, 0x02 network, 0x06 bridge, ...).
    pub base: u8,
    /// Subclass (0x08 with base 0x01: non-volatile memory).
    pub sub: u8,
    /// Programming interface (0x02 with 01:08: NVM Express).
    pub prog_if: u8,
}

impl ClassCode {
    /// NVM Express controller, 01:08:02.
    pub const NVME: ClassCode = ClassCode {
        base: 0x01,
        sub: 0x08,
        prog_if: 0x02,
    };
    /// Base class of bridges.
    pub const BRIDGE_BASE: u8 = 0x06;
}

impl fmt::Display for ClassCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}:{:02x}", self.base, self.sub, self.prog_if)
    }
}

/// A function found on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code.
    pub class: ClassCode,
    /// Revision ID.
    pub revision: u8,
    /// Header layout (0 device, 1 PCI bridge, 2 CardBus bridge), without the multi-function bit.
    pub header_type: u8,
    /// Whether function 0 says more functions may exist.
    pub multifunction: bool,
}

impl Function {
    /// A bridge (class 06 or a bridge header layout): the probe programs never take these.
    pub fn is_bridge(&self) -> bool {
        self.class.base == ClassCode::BRIDGE_BASE || self.header_type != 0
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} class {} rev {:02x} header {}{}",
            self.bdf,
            self.vendor,
            self.device,
            self.class,
            self.revision,
            self.header_type,
            if self.multifunction {
                " multi-function"
            } else {
                ""
            }
        )
    }
}

/// Reads the identity of `bdf`; `None` if nothing answers (vendor 0xFFFF).
pub fn probe_function(cfg: &mut impl ConfigSpace, bdf: Bdf) -> Option<Function> {
    let id = cfg.read32(bdf, reg::VENDOR_ID);
    let vendor = id as u16;
    if vendor == 0xffff || vendor == 0 {
        return None;
    }
    let class = cfg.read32(bdf, reg::CLASS_REVISION);
    let header = (cfg.read32(bdf, reg::HEADER_TYPE_DWORD) >> 16) as u8;
    Some(Function {
        bdf,
        vendor,
        device: (id >> 16) as u16,
        class: ClassCode {
            base: (class >> 24) as u8,
            sub: (class >> 16) as u8,
            prog_if: (class >> 8) as u8,
        },
        revision: class as u8,
        header_type: header & 0x7f,
        multifunction: header & 0x80 != 0,
    })
}

/// Calls `found` for every function on `bus`, in address order. Functions 1-7 are only probed
/// when function 0 exists and has the multi-function bit. Returns how many were found.
pub fn scan_bus(cfg: &mut impl ConfigSpace, bus: u8, mut found: impl FnMut(&Function)) -> usize {
    let mut count = 0;
    for device in 0..32 {
        let Some(f0) = probe_function(cfg, Bdf::new(bus, device, 0)) else {
            continue;
        };
        found(&f0);
        count += 1;
        if f0.multifunction {
            for function in 1..8 {
                if let Some(f) = probe_function(cfg, Bdf::new(bus, device, function)) {
                    found(&f);
                    count += 1;
                }
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fake::{FakeBus, FakeFunction};

    #[test]
    fn finds_functions_and_respects_multifunction_bit() {
        let mut bus = FakeBus::default();
        bus.add(
            Bdf::new(0, 0, 0),
            FakeFunction::new(0x8086, 0x29c0, 0x060000),
        );
        bus.add(
            Bdf::new(0, 1, 0),
            FakeFunction::new(0x1b36, 0x0010, 0x010802),
        );
        // Function 1 of a single-function device: must not be reported.
        bus.add(
            Bdf::new(0, 1, 1),
            FakeFunction::new(0x1b36, 0x0011, 0x010802),
        );
        let mut mf = FakeFunction::new(0x8086, 0x2918, 0x060100);
        mf.set_multifunction();
        bus.add(Bdf::new(0, 0x1f, 0), mf);
        bus.add(
            Bdf::new(0, 0x1f, 3),
            FakeFunction::new(0x8086, 0x2930, 0x0c0500),
        );
        let mut seen = Vec::new();
        let n = scan_bus(&mut bus, 0, |f| seen.push(*f));
        assert_eq!(n, 4);
        let bdfs: Vec<String> = seen.iter().map(|f| f.bdf.to_string()).collect();
        assert_eq!(bdfs, ["00:00.0", "00:01.0", "00:1f.0", "00:1f.3"]);
        assert_eq!(seen[1].class, ClassCode::NVME);
        assert!(seen[0].is_bridge());
        assert!(!seen[1].is_bridge());
        assert!(seen[2].multifunction);
        assert_eq!(
            seen[1].to_string(),
            "00:01.0 1b36:0010 class 01:08:02 rev 00 header 0"
        );
    }
}
