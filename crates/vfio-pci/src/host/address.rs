//! PCI addresses as users type them: `0000:01:00.0`, `01:00.0`, or a sysfs path.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use pci_config::{Bdf, BdfParseError};
use thiserror::Error;

/// Why a device argument is not a PCI address.
///
/// Every message quotes the input and says which part is wrong, e.g.
/// `"0000:01:00.8": function must be 0-7`. The field errors come from the workspace's one BDF
/// parser, [`pci_config::Bdf`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressError {
    /// The text does not have the `[DOMAIN:]BUS:DEVICE.FUNCTION` shape (nor is it a path).
    #[error(
        "{input:?}: expected a PCI address [DOMAIN:]BUS:DEVICE.FUNCTION such as 0000:01:00.0 \
         or 01:00.0 (see `lspci -D`), or a path like /sys/bus/pci/devices/0000:01:00.0"
    )]
    Shape {
        /// What the user gave.
        input: String,
    },
    /// The shape is right but a field is out of range (domain, bus, device or function).
    #[error(transparent)]
    Field(BdfParseError),
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

impl From<BdfParseError> for AddressError {
    fn from(e: BdfParseError) -> Self {
        match e {
            BdfParseError::Shape { input } => AddressError::Shape { input },
            other => AddressError::Field(other),
        }
    }
}

/// The address of a PCI function on the host: a [`pci_config::Bdf`] that also accepts the
/// sysfs-path form on the command line ([`from_arg`](Self::from_arg)).
///
/// Displays the way the kernel names it in sysfs: `0000:01:00.0` (lower-case hex).
///
/// ```
/// use vfio_pci::host::PciAddress;
///
/// let a: PciAddress = "01:00.1".parse().unwrap();
/// assert_eq!(a.to_string(), "0000:01:00.1");
/// assert_eq!((a.domain(), a.bus(), a.device(), a.function()), (0, 1, 0, 1));
/// assert_eq!(a.bdf(), pci_config::Bdf::new(1, 0, 1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress(Bdf);

impl PciAddress {
    /// Builds an address, checking that the device is 0-31 and the function 0-7.
    pub fn new(domain: u32, bus: u8, device: u8, function: u8) -> Option<Self> {
        Bdf::checked(domain, bus, device, function).map(Self)
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

    /// The address as the workspace's PCI address type.
    pub fn bdf(&self) -> Bdf {
        self.0
    }

    /// The PCI domain (segment group), 0 on most machines.
    pub fn domain(&self) -> u32 {
        self.0.domain
    }

    /// The bus number.
    pub fn bus(&self) -> u8 {
        self.0.bus
    }

    /// The device (slot) number, 0-31.
    pub fn device(&self) -> u8 {
        self.0.device
    }

    /// The function number, 0-7.
    pub fn function(&self) -> u8 {
        self.0.function
    }
}

impl From<PciAddress> for Bdf {
    fn from(a: PciAddress) -> Bdf {
        a.0
    }
}

impl TryFrom<Bdf> for PciAddress {
    type Error = AddressError;

    /// Checks the device and function ranges (a [`Bdf`] built field by field may exceed them).
    fn try_from(b: Bdf) -> Result<Self, AddressError> {
        PciAddress::new(b.domain, b.bus, b.device, b.function).ok_or_else(|| {
            let input = b.to_string();
            AddressError::Field(if b.device >= 32 {
                BdfParseError::Device { input }
            } else {
                BdfParseError::Function { input }
            })
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for PciAddress {
    type Err = AddressError;

    /// Parses `DOMAIN:BUS:DEVICE.FUNCTION` or `BUS:DEVICE.FUNCTION` (domain 0), hex, any case.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Ok(Self(input.parse::<Bdf>()?))
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
            Err(AddressError::Field(BdfParseError::Device { .. }))
        ));
        assert!(matches!(
            parse("0000:100:00.0"),
            Err(AddressError::Field(BdfParseError::Bus { .. }))
        ));
        assert!(matches!(
            parse("0000:0g:00.0"),
            Err(AddressError::Field(BdfParseError::Bus { .. }))
        ));
        assert!(matches!(
            parse("123456789:01:00.0"),
            Err(AddressError::Field(BdfParseError::Domain { .. }))
        ));
        assert!(matches!(
            parse("0000:01:00.10"),
            Err(AddressError::Field(BdfParseError::Function { .. }))
        ));
        assert!(matches!(
            parse("0000:01:00.-1"),
            Err(AddressError::Field(BdfParseError::Function { .. }))
        ));
        assert!(matches!(
            parse(":01:00.0"),
            Err(AddressError::Field(BdfParseError::Domain { .. }))
        ));
        assert!(matches!(
            parse("0000:01:.0"),
            Err(AddressError::Field(BdfParseError::Device { .. }))
        ));
        assert!(matches!(
            parse("+1:00.0"),
            Err(AddressError::Field(BdfParseError::Bus { .. }))
        ));
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
