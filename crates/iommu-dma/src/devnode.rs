//! Opening `/dev/vfio/vfio` and `/dev/iommu`, and saying what to do when they are missing.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use crate::error::DmaError;

/// The VFIO container node.
pub const VFIO_CONTAINER_PATH: &str = "/dev/vfio/vfio";
/// The iommufd node.
pub const IOMMUFD_PATH: &str = "/dev/iommu";

/// The error for a failed `open(path)`, with the fix for the usual causes.
pub(crate) fn open_failure(path: &Path, source: io::Error) -> DmaError {
    let iommufd = path.ends_with("iommu");
    let hint = match (source.kind(), iommufd) {
        (io::ErrorKind::NotFound, false) => format!(
            "{} does not exist: load the VFIO driver (`modprobe vfio-pci`) and enable the IOMMU \
             (`intel_iommu=on` or `amd_iommu=on` on the kernel command line, VT-d/AMD-Vi in \
             the firmware)",
            path.display()
        ),
        (io::ErrorKind::NotFound, true) => format!(
            "{} does not exist: this kernel lacks iommufd (CONFIG_IOMMUFD; try `modprobe \
             iommufd`) or has no IOMMU enabled (`intel_iommu=on` / `amd_iommu=on`); use the \
             VFIO type1 container ({VFIO_CONTAINER_PATH}) instead",
            path.display()
        ),
        (io::ErrorKind::PermissionDenied, _) => format!(
            "no permission on {}: run as root, or give this user access to it (and to \
             /dev/vfio/GROUP) with a udev rule or chown",
            path.display()
        ),
        _ => match source.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) => format!(
                "the driver behind {} is not loaded: `modprobe vfio-pci` (type1) or \
                 `modprobe iommufd`",
                path.display()
            ),
            _ => "check that the node is a VFIO or iommufd character device".to_string(),
        },
    };
    DmaError::Open {
        path: path.display().to_string(),
        source,
        hint,
    }
}

/// Open a device node read-write, with [`open_failure`]'s message on error.
pub(crate) fn open_rw(path: &Path) -> Result<File, DmaError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| open_failure(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_path_and_the_fix() {
        let e = open_failure(
            Path::new(VFIO_CONTAINER_PATH),
            io::Error::from_raw_os_error(libc::ENOENT),
        )
        .to_string();
        assert!(
            e.contains("/dev/vfio/vfio") && e.contains("modprobe vfio-pci"),
            "{e}"
        );
        assert!(e.contains("intel_iommu=on"), "{e}");

        let e = open_failure(
            Path::new(IOMMUFD_PATH),
            io::Error::from_raw_os_error(libc::ENOENT),
        )
        .to_string();
        assert!(
            e.contains("/dev/iommu") && e.contains("CONFIG_IOMMUFD"),
            "{e}"
        );

        let e = open_failure(
            Path::new(IOMMUFD_PATH),
            io::Error::from_raw_os_error(libc::EACCES),
        )
        .to_string();
        assert!(e.contains("no permission on /dev/iommu"), "{e}");
        assert!(e.contains("Permission denied"), "{e}");
    }
}
