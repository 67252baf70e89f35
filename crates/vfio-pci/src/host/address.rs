//! PCI addresses as users type them: `0000:01:00.0`, `01:00.0`, or a sysfs path.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use thiserror::Error;

/// Why a device argument is not a PCI address.
///
/// Every message quotes the input and says which part is wrong, e.g.
/// `"0000:01:00.8": function must be 0-7`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressError {
    /// The text does not have the `[DOMAIN:]BUS:DEVICE.FUNCTION` shape.
    #[error(
        "{input:?}: expected a PCI address [DOMAIN:]BUS:DEVICE.FUNCTION such as 0000:01:00.0 \
         or 01:00.0 (see `lspci -D`), or a path like /sys/bus/pci/devices/0000:01:00.0"
    )]
    Shape {
        /// What the user gave.
        input: String,
    },
    /// The domain is not 1 to 8 hexadecimal digits.
    #[error("{input:?}: domain must be 1-8 hex digits (usually 0000)")]
    Domain {
        /// What the user gave.
        input: String,
    },
    /// The bus is not 1 or 2 hexadecimal digits.
    #[error("{input:?}: bus must be 00-ff (hex)")]
    Bus {
        /// What the user gave.
        input: String,
    },
    /// The device number is not 00-1f.
    #[error("{input:?}: device must be 00-1f (hex)")]
    Device {
        /// What the user gave.
        input: String,
    },
    /// The function number is not 0-7.
    #[error("{input:?}: function must be 0-7")]
    Function {
        /// What the user gave.
        input: String,
    },
    /// A path was given whose last component is not a full `DOMAIN:BUS:DEVICE.FUNCTION`.
    #[error(
        "{input:?}: not a PCI device path: its last component must be a PCI address with a \
         domain, as in /sys/bus/pci/devices/0000:01:00.0"
    )]
    Path {
        /// What the user gave.
        input: String,
    },
}

/// The address of a PCI function on the host: domain (segment), bus, device and function.
///
/// Displays the way the kernel names it in sysfs: `0000:01:00.0` (lower-case hex).
///
/// ```
/// use vfio_pci::host::PciAddress;
///
/// let a: PciAddress = "01:00.1".parse().unwrap();
/// assert_eq!(a.to_string(), "0000:01:00.1");
/// assert_eq!((a.domain(), a.bus(), a.device(), a.function()), (0, 1, 0, 1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    domain: u32,
    bus: u8,
    device: u8,
    function: u8,
}

impl PciAddress {
    /// Builds an address, checking that the device is 0-31 and the function 0-7.
    pub fn new(domain: u32, bus: u8, device: u8, function: u8) -> Option<Self> {
        (device < 32 && function < 8).then_some(Self {
            domain,
            bus,
            device,
            function,
        })
    }

    /// Parses what a user passes on a command line: a BDF (`0000:01:00.0`, `01:00.0`) or a
    /// sysfs path whose last component is a full BDF (`/sys/bus/pci/devices/0000:01:00.0`,
    /// or the resolved `/sys/devices/pci0000:00/0000:00:1c.0/0000:01:00.0`).
    ///
    /// A path is only looked at textually: whether the device exists is for
    /// [`HostDevice::read`](crate::host::HostDevice::read) to say.
    pub fn from_arg(arg: &str) -> Result<Self, AddressError> {
        if !arg.contains('/') {
            return arg.parse();
        }
        let path_error = || AddressError::Path {
            input: arg.to_string(),
        };
        let name = Path::new(arg)
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(path_error)?;
        // A sysfs name always carries the domain; a short form here means a wrong path.
        if name.matches(':').count() != 2 {
            return Err(path_error());
        }
        name.parse().map_err(|e| match e {
            AddressError::Shape { .. } => path_error(),
            other => other,
        })
    }

    /// The PCI domain (segment group), 0 on most machines.
    pub fn domain(&self) -> u32 {
        self.domain
    }

    /// The bus number.
    pub fn bus(&self) -> u8 {
        self.bus
    }

    /// The device (slot) number, 0-31.
    pub fn device(&self) -> u8 {
        self.device
    }

    /// The function number, 0-7.
    pub fn function(&self) -> u8 {
        self.function
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

fn hex_field(text: &str, max_digits: usize) -> Option<u32> {
    if text.is_empty() || text.len() > max_digits || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

impl FromStr for PciAddress {
    type Err = AddressError;

    /// Parses `DOMAIN:BUS:DEVICE.FUNCTION` or `BUS:DEVICE.FUNCTION` (domain 0), hex, any case.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let owned = || input.to_string();
        let (rest, function) = input
            .rsplit_once('.')
            .ok_or(AddressError::Shape { input: owned() })?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [bus, device] => (None, *bus, *device),
            [domain, bus, device] => (Some(*domain), *bus, *device),
            _ => return Err(AddressError::Shape { input: owned() }),
        };
        let domain = match domain {
            None => 0,
            Some(d) => hex_field(d, 8).ok_or(AddressError::Domain { input: owned() })?,
        };
        let bus = hex_field(bus, 2).ok_or(AddressError::Bus { input: owned() })?;
        let device = hex_field(device, 2)
            .filter(|d| *d < 32)
            .ok_or(AddressError::Device { input: owned() })?;
        let function = hex_field(function, 1)
            .filter(|f| *f < 8)
            .ok_or(AddressError::Function { input: owned() })?;
        // The filters above bound every field, so the narrowing casts are exact.
        Ok(Self {
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

    fn parse(s: &str) -> Result<PciAddress, AddressError> {
        s.parse()
    }

    #[test]
    fn full_and_short_forms() {
        let full = parse("0000:01:00.0").unwrap();
        assert_eq!(full, parse("01:00.0").unwrap());
        assert_eq!(full.to_string(), "0000:01:00.0");
        let odd = parse("10000:FF:1f.7").unwrap();
        assert_eq!(
            (odd.domain(), odd.bus(), odd.device(), odd.function()),
            (0x10000, 0xff, 0x1f, 7)
        );
        assert_eq!(odd.to_string(), "10000:ff:1f.7");
        assert_eq!(parse("0:1:2.3").unwrap().to_string(), "0000:01:02.3");
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(
            parse("0000:01:00.8").unwrap_err().to_string(),
            "\"0000:01:00.8\": function must be 0-7"
        );
        assert!(matches!(
            parse("0000:01:20.0"),
            Err(AddressError::Device { .. })
        ));
        assert!(matches!(
            parse("0000:100:00.0"),
            Err(AddressError::Bus { .. })
        ));
        assert!(matches!(
            parse("0000:0g:00.0"),
            Err(AddressError::Bus { .. })
        ));
        assert!(matches!(
            parse("123456789:01:00.0"),
            Err(AddressError::Domain { .. })
        ));
        assert!(matches!(
            parse("0000:01:00.10"),
            Err(AddressError::Function { .. })
        ));
        assert!(matches!(
            parse("0000:01:00.-1"),
            Err(AddressError::Function { .. })
        ));
        assert!(matches!(
            parse(":01:00.0"),
            Err(AddressError::Domain { .. })
        ));
        assert!(matches!(
            parse("0000:01:.0"),
            Err(AddressError::Device { .. })
        ));
        assert!(matches!(parse("+1:00.0"), Err(AddressError::Bus { .. })));
    }

    #[test]
    fn wrong_shapes() {
        for bad in [
            "",
            "01:00",
            "0000:01:00:00.0",
            "nvme0",
            "01.00.0",
            "0000-01-00.0",
        ] {
            assert!(
                matches!(parse(bad), Err(AddressError::Shape { .. })),
                "{bad:?} gave {:?}",
                parse(bad)
            );
        }
        assert!(
            parse("01:00")
                .unwrap_err()
                .to_string()
                .contains("0000:01:00.0")
        );
    }

    #[test]
    fn sysfs_paths() {
        let want = parse("0000:01:00.0").unwrap();
        for p in [
            "/sys/bus/pci/devices/0000:01:00.0",
            "/sys/bus/pci/devices/0000:01:00.0/",
            "/sys/devices/pci0000:00/0000:00:1c.0/0000:01:00.0",
            "0000:01:00.0",
            "01:00.0",
        ] {
            assert_eq!(PciAddress::from_arg(p).unwrap(), want, "{p}");
        }
        assert!(matches!(
            PciAddress::from_arg("/sys/bus/pci/devices/0000:01:00.0/config"),
            Err(AddressError::Path { .. })
        ));
        assert!(matches!(
            PciAddress::from_arg("/sys/bus/pci/devices/01:00.0"),
            Err(AddressError::Path { .. })
        ));
        assert_eq!(
            PciAddress::from_arg("/sys/bus/pci/devices/0000:01:00.9")
                .unwrap_err()
                .to_string(),
            "\"0000:01:00.9\": function must be 0-7"
        );
        assert!(matches!(
            PciAddress::from_arg("/"),
            Err(AddressError::Path { .. })
        ));
    }

    #[test]
    fn new_checks_ranges() {
        assert!(PciAddress::new(0, 0, 31, 7).is_some());
        assert!(PciAddress::new(0, 0, 32, 0).is_none());
        assert!(PciAddress::new(0, 0, 0, 8).is_none());
    }
}
