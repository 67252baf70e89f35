//! PCI addresses: domain, bus, device, function.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A PCI function address (`[domain:]bus:device.function`, all hex except the function).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Bdf {
    /// PCI segment/domain (0 on most machines).
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

/// A string that is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "`{text}` is not a PCI address; expected [domain:]bus:device.function in hex, such as \
     0000:00:01.0 or 00:01.0 (device 00-1f, function 0-7)"
)]
pub struct BdfParseError {
    /// The rejected text.
    pub text: String,
}

impl Bdf {
    /// A function address in domain 0.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Bdf {
            domain: 0,
            bus,
            device,
            function,
        }
    }

    /// The short form lspci prints when every device is in domain 0: `00:01.0`.
    pub fn short(&self) -> String {
        format!("{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

impl fmt::Display for Bdf {
    /// The full sysfs form: `0000:00:01.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

fn hex_field(s: &str, max_digits: usize) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

impl FromStr for Bdf {
    type Err = BdfParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BdfParseError {
            text: s.to_string(),
        };
        let (rest, func) = s.rsplit_once('.').ok_or_else(err)?;
        let function = match func {
            f if f.len() == 1 && matches!(f.as_bytes()[0], b'0'..=b'7') => f.as_bytes()[0] - b'0',
            _ => return Err(err()),
        };
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, dev) = match parts.as_slice() {
            [bus, dev] => (0, *bus, *dev),
            [dom, bus, dev] => (hex_field(dom, 8).ok_or_else(err)?, *bus, *dev),
            _ => return Err(err()),
        };
        let bus = hex_field(bus, 2).ok_or_else(err)? as u8;
        let device = hex_field(dev, 2).ok_or_else(err)?;
        if device > 0x1f {
            return Err(err());
        }
        Ok(Bdf {
            domain,
            bus,
            device: device as u8,
            function,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let b: Bdf = "0000:00:01.0".parse().unwrap();
        assert_eq!(b, Bdf::new(0, 1, 0));
        assert_eq!(b.to_string(), "0000:00:01.0");
        assert_eq!(b.short(), "00:01.0");
        let b: Bdf = "3a:1f.7".parse().unwrap();
        assert_eq!((b.bus, b.device, b.function), (0x3a, 0x1f, 7));
        let b: Bdf = "10000:e1:00.1".parse().unwrap();
        assert_eq!(b.domain, 0x10000);
        for bad in [
            "",
            "00:01",
            "00:20.0",
            "00:01.8",
            "0:0:0:0.0",
            "zz:00.0",
            "00:01.0 ",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad}");
        }
    }
}
