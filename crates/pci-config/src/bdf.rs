//! PCI addresses: domain, bus, device, function.
//!
//! The one parser of the workspace for `[DOMAIN:]BUS:DEVICE.FUNCTION`, used by the lspci parser,
//! `refvmm` options and the host side of `vfio-pci` (which adds the sysfs-path form on top).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A PCI function address (`[domain:]bus:device.function`, all hex).
///
/// Displays the way the kernel names it in sysfs: `0000:01:00.0` (lower-case hex).
///
/// ```
/// use pci_config::Bdf;
///
/// let a: Bdf = "01:00.1".parse().unwrap();
/// assert_eq!(a.to_string(), "0000:01:00.1");
/// assert_eq!((a.domain, a.bus, a.device, a.function), (0, 1, 0, 1));
/// assert_eq!(
///     "0000:01:00.8".parse::<Bdf>().unwrap_err().to_string(),
///     "\"0000:01:00.8\": function must be 0-7"
/// );
/// ```
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

/// Why a string is not a PCI address.
///
/// Every message quotes the input and says which part is wrong, e.g.
/// `"0000:01:00.8": function must be 0-7`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BdfParseError {
    /// The text does not have the `[DOMAIN:]BUS:DEVICE.FUNCTION` shape.
    #[error(
        "{input:?} is not a PCI address: expected [DOMAIN:]BUS:DEVICE.FUNCTION in hex such as \
         0000:01:00.0 or 01:00.0 (see `lspci -D`)"
    )]
    Shape {
        /// The rejected text.
        input: String,
    },
    /// Blanks before or after the address.
    #[error("{input:?}: remove the blanks around the PCI address")]
    Blanks {
        /// The rejected text.
        input: String,
    },
    /// The domain is not 1 to 8 hexadecimal digits.
    #[error("{input:?}: domain must be 1-8 hex digits (usually 0000)")]
    Domain {
        /// The rejected text.
        input: String,
    },
    /// The bus is not 1 or 2 hexadecimal digits.
    #[error("{input:?}: bus must be 00-ff (hex)")]
    Bus {
        /// The rejected text.
        input: String,
    },
    /// The device number is not 00-1f.
    #[error("{input:?}: device must be 00-1f (hex)")]
    Device {
        /// The rejected text.
        input: String,
    },
    /// The function number is not 0-7.
    #[error("{input:?}: function must be 0-7")]
    Function {
        /// The rejected text.
        input: String,
    },
}

impl BdfParseError {
    /// The rejected text.
    pub fn input(&self) -> &str {
        match self {
            BdfParseError::Shape { input }
            | BdfParseError::Blanks { input }
            | BdfParseError::Domain { input }
            | BdfParseError::Bus { input }
            | BdfParseError::Device { input }
            | BdfParseError::Function { input } => input,
        }
    }
}

impl Bdf {
    /// A function address in domain 0. Device and function are not checked; see
    /// [`checked`](Self::checked).
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Bdf {
            domain: 0,
            bus,
            device,
            function,
        }
    }

    /// An address, or `None` when the device is not 0-31 or the function not 0-7.
    pub const fn checked(domain: u32, bus: u8, device: u8, function: u8) -> Option<Self> {
        if device < 32 && function < 8 {
            Some(Bdf {
                domain,
                bus,
                device,
                function,
            })
        } else {
            None
        }
    }

    /// The short form lspci prints when every device is in domain 0: `00:01.0`.
    pub fn short(&self) -> String {
        format!("{:02x}:{:02x}.{:x}", self.bus, self.device, self.function)
    }
}

impl fmt::Display for Bdf {
    /// The full sysfs form: `0000:00:01.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
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

    /// Parses `DOMAIN:BUS:DEVICE.FUNCTION` or `BUS:DEVICE.FUNCTION` (domain 0), hex, any case.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let owned = || input.to_string();
        // A quoted shell argument or a pasted line carries blanks; say so rather than blame
        // the bus or function number they stick to.
        if input.trim() != input {
            return Err(BdfParseError::Blanks { input: owned() });
        }
        let (rest, function) = input
            .rsplit_once('.')
            .ok_or(BdfParseError::Shape { input: owned() })?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [bus, device] => (None, *bus, *device),
            [domain, bus, device] => (Some(*domain), *bus, *device),
            _ => return Err(BdfParseError::Shape { input: owned() }),
        };
        let domain = match domain {
            None => 0,
            Some(d) => hex_field(d, 8).ok_or(BdfParseError::Domain { input: owned() })?,
        };
        let bus = hex_field(bus, 2).ok_or(BdfParseError::Bus { input: owned() })?;
        let device = hex_field(device, 2)
            .filter(|d| *d < 32)
            .ok_or(BdfParseError::Device { input: owned() })?;
        let function = hex_field(function, 1)
            .filter(|f| *f < 8)
            .ok_or(BdfParseError::Function { input: owned() })?;
        // The filters above bound every field, so the narrowing casts are exact.
        Ok(Bdf {
            domain,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Bdf, BdfParseError> {
        s.parse()
    }

    #[test]
    fn blanks_around_are_named() {
        for blank in [" 00:00.0", "0000:01:00.0\n"] {
            assert_eq!(
                parse(blank),
                Err(BdfParseError::Blanks {
                    input: blank.into()
                })
            );
        }
    }

    #[test]
    fn parse_and_display() {
        let b = parse("0000:00:01.0").unwrap();
        assert_eq!(b, Bdf::new(0, 1, 0));
        assert_eq!(b.to_string(), "0000:00:01.0");
        assert_eq!(b.short(), "00:01.0");
        let b = parse("3a:1f.7").unwrap();
        assert_eq!((b.bus, b.device, b.function), (0x3a, 0x1f, 7));
        let b = parse("10000:E1:00.1").unwrap();
        assert_eq!(b.domain, 0x10000);
        assert_eq!(b.to_string(), "10000:e1:00.1");
        assert_eq!(parse("0:1:2.3").unwrap().to_string(), "0000:01:02.3");
        for bad in [
            "",
            "00:01",
            "00:20.0",
            "00:01.8",
            "0:0:0:0.0",
            "zz:00.0",
            "00:01.0 ",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            parse("0000:01:00.8").unwrap_err().to_string(),
            "\"0000:01:00.8\": function must be 0-7"
        );
        let kind = |s: &str| std::mem::discriminant(&parse(s).unwrap_err());
        let device = std::mem::discriminant(&BdfParseError::Device {
            input: String::new(),
        });
        let bus = std::mem::discriminant(&BdfParseError::Bus {
            input: String::new(),
        });
        let domain = std::mem::discriminant(&BdfParseError::Domain {
            input: String::new(),
        });
        let function = std::mem::discriminant(&BdfParseError::Function {
            input: String::new(),
        });
        let shape = std::mem::discriminant(&BdfParseError::Shape {
            input: String::new(),
        });
        assert_eq!(kind("0000:01:20.0"), device);
        assert_eq!(kind("0000:01:.0"), device);
        assert_eq!(kind("0000:100:00.0"), bus);
        assert_eq!(kind("0000:0g:00.0"), bus);
        assert_eq!(kind("+1:00.0"), bus);
        assert_eq!(kind("123456789:01:00.0"), domain);
        assert_eq!(kind(":01:00.0"), domain);
        assert_eq!(kind("0000:01:00.10"), function);
        assert_eq!(kind("0000:01:00.-1"), function);
        for bad in [
            "",
            "01:00",
            "0000:01:00:00.0",
            "nvme0",
            "01.00.0",
            "0000-01-00.0",
        ] {
            assert_eq!(kind(bad), shape, "{bad:?}");
        }
        let e = parse("zz").unwrap_err();
        assert!(e.to_string().contains("is not a PCI address"), "{e}");
        assert_eq!(e.input(), "zz");
    }

    #[test]
    fn checked_bounds_fields() {
        assert!(Bdf::checked(0, 0, 31, 7).is_some());
        assert!(Bdf::checked(0, 0, 32, 0).is_none());
        assert!(Bdf::checked(0, 0, 0, 8).is_none());
    }
}
