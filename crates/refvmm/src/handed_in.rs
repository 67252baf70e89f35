//! `--device BDF,fd=N,iommufd-fd=M`: a host device whose VFIO cdev and iommufd a privileged
//! launcher opened and handed in, so refvmm itself needs no access to `/dev/vfio` or `/dev/iommu`
//! (only sysfs and enough `RLIMIT_MEMLOCK` for guest RAM).
//!
//! The spelling follows QEMU (`-device vfio-pci,host=BDF,fd=N` with `-object iommufd,fd=M`).
//! The address stays required: it is how refvmm checks that fd N really is that device's cdev
//! (vfio-pci's [`check_device_cdev_fd`](vfio_pci::host::check_device_cdev_fd)). Each fd number
//! is owned by one `--device` only (the device closes it when it goes): a launcher that passes
//! two devices opens `/dev/iommu` once per device. Each device gets an IOAS of its own, as
//! with `--iommu iommufd`.

use std::collections::HashSet;
use std::fmt;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use vfio_pci::host::{
    FdRole, HandedFdError, HostPaths, OpenVfioError, OpenedIommufdDevice, PciAddress,
    claim_inherited_fd,
};
use vfio_pci::{VfioBackend, VfioBackendError, VfioDeviceFd};

/// A host device given as file descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedInDevice {
    /// The device, to check the cdev fd against (sysfs).
    pub address: PciAddress,
    /// Its VFIO cdev (`/dev/vfio/devices/vfioN`), opened read-write.
    pub device_fd: RawFd,
    /// An iommufd (`/dev/iommu`), opened read-write.
    pub iommufd_fd: RawFd,
}

/// The `--device` syntax, for messages.
pub const SYNTAX: &str = "BDF,fd=N,iommufd-fd=M";

fn parse_fd(key: &str, value: &str, spec: &str) -> Result<RawFd, String> {
    value
        .parse::<RawFd>()
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| format!("{spec:?}: {key}={value:?} is not a file descriptor number"))
}

impl HandedInDevice {
    /// Parses `BDF,fd=N,iommufd-fd=M` (the options in any order, each once).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut parts = spec.split(',');
        let address = PciAddress::from_arg(parts.next().unwrap_or_default())
            .map_err(|e| format!("{spec:?}: {e}; handed-in devices are {SYNTAX}"))?;
        let (mut device_fd, mut iommufd_fd) = (None, None);
        for part in parts {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let slot = match key {
                "fd" => &mut device_fd,
                "iommufd-fd" => &mut iommufd_fd,
                _ => {
                    return Err(format!(
                        "{spec:?}: unknown option {key:?}; handed-in devices are {SYNTAX} (the \
                         device's VFIO cdev and /dev/iommu, opened by the launcher)"
                    ));
                }
            };
            if slot.replace(parse_fd(key, value, spec)?).is_some() {
                return Err(format!("{spec:?}: {key}= given twice"));
            }
        }
        let missing = |what: &str| {
            format!(
                "{spec:?}: {what} missing; handed-in devices are {SYNTAX} (the type1 container \
                 cannot be handed in: use a plain BDF with a VFIO group node this user may open)"
            )
        };
        let device_fd = device_fd.ok_or_else(|| missing("fd= (the VFIO device cdev)"))?;
        let iommufd_fd = iommufd_fd.ok_or_else(|| missing("iommufd-fd= (/dev/iommu)"))?;
        if device_fd == iommufd_fd {
            return Err(format!(
                "{spec:?}: fd= and iommufd-fd= are both {device_fd}: they are two different files"
            ));
        }
        Ok(Self {
            address,
            device_fd,
            iommufd_fd,
        })
    }

    /// Claims both fds (each number once per process), checks what they are and opens the
    /// device through them with an IOAS of its own.
    pub fn open(
        &self,
        kvm_device: Option<Arc<VfioDeviceFd>>,
    ) -> Result<VfioBackend, HandedInError> {
        static CLAIMED: Mutex<Option<HashSet<RawFd>>> = Mutex::new(None);
        {
            let mut claimed = CLAIMED.lock().unwrap_or_else(|p| p.into_inner());
            let claimed = claimed.get_or_insert_with(HashSet::new);
            for fd in [self.device_fd, self.iommufd_fd] {
                if !claimed.insert(fd) {
                    return Err(HandedInError::FdReused {
                        spec: self.clone(),
                        fd,
                    });
                }
            }
        }
        let fd_error = |source| HandedInError::Fd {
            spec: self.clone(),
            source: Box::new(source),
        };
        // SAFETY: the numbers come from the command line, each claimed once per process (the
        // set above), and nothing else in refvmm opens or closes inherited fds.
        let device =
            unsafe { claim_inherited_fd(self.device_fd, FdRole::DeviceCdev) }.map_err(fd_error)?;
        // SAFETY: as above.
        let iommufd =
            unsafe { claim_inherited_fd(self.iommufd_fd, FdRole::Iommufd) }.map_err(fd_error)?;
        let open_error = |source| HandedInError::Open {
            spec: self.clone(),
            source: Box::new(source),
        };
        let opened = OpenedIommufdDevice::from_fds(
            &HostPaths::default(),
            self.address,
            device,
            iommufd,
            kvm_device,
        )
        .map_err(|e| open_error(VfioBackendError::from(OpenVfioError::from(e))))?;
        VfioBackend::from_opened(opened).map_err(open_error)
    }
}

/// Why a handed-in device could not be opened.
#[derive(Debug, Error)]
pub enum HandedInError {
    /// The same fd number appears in two `--device`s.
    #[error(
        "--device {spec}: fd {fd} is already used by another --device; each handed-in device \
         needs fds of its own (the launcher opens /dev/iommu once per device)"
    )]
    FdReused {
        /// The device.
        spec: HandedInDevice,
        /// The number.
        fd: RawFd,
    },
    /// A number is not open.
    #[error("--device {spec}: a handed-in fd cannot be used")]
    Fd {
        /// The device.
        spec: HandedInDevice,
        /// Which fd (boxed: it is large).
        #[source]
        source: Box<HandedFdError>,
    },
    /// An fd is not what it should be, or VFIO/iommufd refused the device.
    #[error("--device {spec}: cannot open it through the handed-in fds")]
    Open {
        /// The device.
        spec: HandedInDevice,
        /// What vfio-pci said (names the fd and what it is).
        #[source]
        source: Box<VfioBackendError>,
    },
}

impl fmt::Display for HandedInDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},fd={},iommufd-fd={}",
            self.address, self.device_fd, self.iommufd_fd
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_qemu_like_spelling_in_any_order() {
        let want = HandedInDevice {
            address: "0000:00:01.0".parse().unwrap(),
            device_fd: 5,
            iommufd_fd: 6,
        };
        assert_eq!(
            HandedInDevice::parse("0000:00:01.0,fd=5,iommufd-fd=6").unwrap(),
            want
        );
        assert_eq!(
            HandedInDevice::parse("00:01.0,iommufd-fd=6,fd=5").unwrap(),
            want
        );
        assert_eq!(want.to_string(), "0000:00:01.0,fd=5,iommufd-fd=6");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let err = |s: &str| HandedInDevice::parse(s).unwrap_err();
        assert!(err("00:01.0,fd=5").contains("iommufd-fd= (/dev/iommu) missing"));
        assert!(err("00:01.0,iommufd-fd=6").contains("fd= (the VFIO device cdev) missing"));
        assert!(err("00:01.0,fd=x,iommufd-fd=6").contains("fd=\"x\" is not a file descriptor"));
        assert!(err("00:01.0,fd=-1,iommufd-fd=6").contains("is not a file descriptor"));
        assert!(err("00:01.0,fd=5,fd=7,iommufd-fd=6").contains("fd= given twice"));
        assert!(err("00:01.0,fd=5,iommufd-fd=5").contains("both 5"));
        assert!(err("00:01.0,fd=5,iommufd=6").contains("unknown option \"iommufd\""));
        assert!(err("nonsense,fd=5,iommufd-fd=6").contains(SYNTAX));
    }
}
