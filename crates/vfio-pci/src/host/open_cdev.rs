//! Opening a host device through iommufd: `/dev/iommu`, a new or shared IOAS, and the device's
//! VFIO cdev bound to it ([`OpenedIommufdDevice`]), opened here or handed in as fds by a
//! privileged launcher ([`OpenedIommufdDevice::from_fds`]). Cargo feature `iommufd`: vfio-ioctls
//! 0.10 only has its cdev support with its `kvm` feature, which brings `kvm-ioctls`.

use std::error::Error as StdError;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use iommu_dma::IommufdMapper;
use iommu_dma::iommufd::open_iommufd_at;
use iommufd_ioctls::IommuFd;
use vfio_ioctls::{VfioDevice, VfioDeviceFd, VfioError, VfioIommufd};

use super::PciAddress;
use super::handed_fd::{check_device_cdev_fd, check_iommufd_fd};
use super::info::DeviceInfo;
use super::open_iommufd::{
    IommuAvailability, IommuBackendChoice, IommuChoiceError, IommufdOpenError,
};
use super::paths::HostPaths;
use super::sysfs::HostDevice;

fn errno_in_chain(error: &(dyn StdError + 'static)) -> Option<i32> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(e) = e.downcast_ref::<vmm_sys_util::errno::Error>() {
            return Some(e.errno());
        }
        if let Some(e) = e.downcast_ref::<io::Error>() {
            return e.raw_os_error();
        }
        current = e.source();
    }
    None
}

fn cdev_open_hint(address: PciAddress, node: &std::path::Path, error: &io::Error) -> String {
    match (error.kind(), error.raw_os_error()) {
        (io::ErrorKind::PermissionDenied, _) => format!(
            "run as root or `chown $USER {}` (and /dev/iommu)",
            node.display()
        ),
        (_, Some(libc::EBUSY)) => format!(
            "{address} is in use: another process has it open, or its VFIO group is open \
             through the type1 container"
        ),
        (io::ErrorKind::NotFound, _) | (_, Some(libc::ENODEV)) | (_, Some(libc::ENXIO)) => {
            format!("{address} was unbound from vfio-pci meanwhile? (the host readiness check)")
        }
        _ => format!("see `dmesg | tail` and the host readiness check of {address}"),
    }
}

fn device_hint(address: PciAddress, error: &VfioError) -> String {
    let errno = errno_in_chain(error);
    match error {
        VfioError::VfioDeviceBindIommufd(_) if errno == Some(libc::EBUSY) => format!(
            "{address} is already bound to an iommufd or its group is open through the type1 \
             container: close the other user first"
        ),
        VfioError::VfioDeviceBindIommufd(_) if errno == Some(libc::EPERM) => {
            "binding needs CAP_SYS_RAWIO or an IOMMU that enforces isolation (no \
             `vfio.enable_unsafe_noiommu_mode`); run as root"
                .to_string()
        }
        VfioError::VfioDeviceBindIommufd(_) => format!(
            "VFIO_DEVICE_BIND_IOMMUFD refused it: is every device in the IOMMU group of \
             {address} on vfio-pci? (the host readiness check says)"
        ),
        VfioError::VfioDeviceAttachIommufdPt(_) => format!(
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT refused {address}: an IOAS shared with devices \
             behind another IOMMU may not fit it (open it with its own IOAS); see `dmesg | tail` \
             and the host readiness check"
        ),
        VfioError::SetDeviceAttr(_) => "KVM refused the cdev (KVM_DEV_VFIO_FILE_ADD): is the \
                                        KVM VFIO device from this VM?"
            .to_string(),
        _ => format!("see `dmesg | tail` and the host readiness check of {address}"),
    }
}

/// A host device opened through iommufd: its cdev bound to an iommufd and attached to an IOAS.
pub struct OpenedIommufdDevice {
    address: PciAddress,
    group: Option<u32>,
    cdev_node: PathBuf,
    iommufd_node: PathBuf,
    // Dropped first: vfio-ioctls detaches the device from the IOAS on drop.
    device: VfioDevice,
    iommufd: Arc<VfioIommufd>,
    info: DeviceInfo,
}

impl fmt::Debug for OpenedIommufdDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedIommufdDevice")
            .field("address", &self.address)
            .field("group", &self.group)
            .field("cdev_node", &self.cdev_node)
            .field("ioas", &self.iommufd.ioas().id())
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// What the checks before any ioctl found: the device's group and its cdev node.
struct Preflight {
    group: Option<u32>,
    cdev_node: PathBuf,
    iommufd_node: PathBuf,
}

fn preflight(paths: &HostPaths, address: PciAddress) -> Result<Preflight, IommufdOpenError> {
    let host = IommuAvailability::probe(paths, address).map_err(IommuChoiceError::from)?;
    IommuBackendChoice::Iommufd.decide(&host)?;
    Ok(Preflight {
        group: host.iommu_group,
        // `decide` checked that the node is named and exists.
        cdev_node: host.cdev_node.unwrap_or_default(),
        iommufd_node: host.iommufd_node,
    })
}

impl OpenedIommufdDevice {
    /// Checks sysfs and `/dev`, opens `/dev/iommu`, allocates a new IOAS, then opens the
    /// device's cdev, binds it to the iommufd and attaches it to the IOAS.
    ///
    /// `kvm_device` is the VM's `KVM_DEV_TYPE_VFIO` device: the cdev is added to it (KVM
    /// needs the device for coherent DMA and interrupt posting); `None` to only look at it.
    pub fn open(
        paths: &HostPaths,
        address: PciAddress,
        kvm_device: Option<Arc<VfioDeviceFd>>,
    ) -> Result<Self, IommufdOpenError> {
        let pre = preflight(paths, address)?;
        let fd = open_iommufd_at(&pre.iommufd_node)
            .map_err(|source| IommufdOpenError::OpenIommufd { address, source })?;
        let iommufd =
            VfioIommufd::new(fd, None, kvm_device).map_err(|source| IommufdOpenError::Ioas {
                address,
                node: pre.iommufd_node.clone(),
                source: Box::new(source),
            })?;
        Self::finish(address, pre, Arc::new(iommufd))
    }

    /// Like [`open`](Self::open), but attaches the device to an existing iommufd and IOAS
    /// (another device's [`iommufd`](Self::iommufd)), so guest RAM is mapped once for all.
    /// The KVM device is the one that `iommufd` was made with.
    pub fn open_in(
        paths: &HostPaths,
        address: PciAddress,
        iommufd: Arc<VfioIommufd>,
    ) -> Result<Self, IommufdOpenError> {
        let pre = preflight(paths, address)?;
        Self::finish(address, pre, iommufd)
    }

    /// Builds the device from file descriptors a privileged launcher opened and handed in:
    /// `device` is the cdev of `address` (`/dev/vfio/devices/vfioN`) and `iommufd` is
    /// `/dev/iommu`, both read-write. This process needs no access to either node, only to
    /// sysfs (to check the fds) and enough `RLIMIT_MEMLOCK` for guest RAM. Like QEMU's
    /// `-device vfio-pci,fd=N` with `-object iommufd,fd=M`.
    ///
    /// Each fd is checked before any ioctl ([`check_device_cdev_fd`], [`check_iommufd_fd`]):
    /// a closed number, a pipe, `/dev/null`, or the cdev of another device gives an error
    /// naming the fd and what it is. Then a new IOAS is allocated on the iommufd and the device
    /// bound and attached as in [`open`](Self::open).
    ///
    /// [`check_device_cdev_fd`]: super::check_device_cdev_fd
    /// [`check_iommufd_fd`]: super::check_iommufd_fd
    pub fn from_fds(
        paths: &HostPaths,
        address: PciAddress,
        device: OwnedFd,
        iommufd: OwnedFd,
        kvm_device: Option<Arc<VfioDeviceFd>>,
    ) -> Result<Self, IommufdOpenError> {
        let handed = |e| IommufdOpenError::HandedFd {
            address,
            fd_error: Box::new(e),
        };
        check_device_cdev_fd(paths, address, &device).map_err(handed)?;
        check_iommufd_fd(paths, &iommufd).map_err(handed)?;
        let iommufd_node = handed_fd_path(paths, &iommufd);
        let vfio = VfioIommufd::new(
            Arc::new(IommuFd::new_from_fd(File::from(iommufd))),
            None,
            kvm_device,
        )
        .map_err(|source| IommufdOpenError::Ioas {
            address,
            node: iommufd_node.clone(),
            source: Box::new(source),
        })?;
        let pre = Preflight {
            group: HostDevice::read(paths, address)
                .map_err(IommuChoiceError::from)?
                .iommu_group,
            cdev_node: handed_fd_path(paths, &device),
            iommufd_node,
        };
        Self::attach(address, pre, File::from(device), Arc::new(vfio))
    }

    /// Like [`from_fds`](Self::from_fds) for a device whose cdev was handed in, attached to an
    /// existing iommufd and IOAS (another device's [`iommufd`](Self::iommufd), itself handed in
    /// or opened), so guest RAM is mapped once for all devices.
    pub fn from_fd_in(
        paths: &HostPaths,
        address: PciAddress,
        device: OwnedFd,
        iommufd: Arc<VfioIommufd>,
    ) -> Result<Self, IommufdOpenError> {
        check_device_cdev_fd(paths, address, &device).map_err(|e| IommufdOpenError::HandedFd {
            address,
            fd_error: Box::new(e),
        })?;
        let shared = iommufd.iommufd().as_raw_fd();
        let pre = Preflight {
            group: HostDevice::read(paths, address)
                .map_err(IommuChoiceError::from)?
                .iommu_group,
            cdev_node: handed_fd_path(paths, &device),
            iommufd_node: paths.proc.join(format!("self/fd/{shared}")),
        };
        Self::attach(address, pre, File::from(device), iommufd)
    }

    fn finish(
        address: PciAddress,
        pre: Preflight,
        iommufd: Arc<VfioIommufd>,
    ) -> Result<Self, IommufdOpenError> {
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pre.cdev_node)
            .map_err(|source| IommufdOpenError::OpenCdev {
                address,
                node: pre.cdev_node.clone(),
                hint: cdev_open_hint(address, &pre.cdev_node, &source),
                source,
            })?;
        Self::attach(address, pre, file, iommufd)
    }

    fn attach(
        address: PciAddress,
        pre: Preflight,
        file: File,
        iommufd: Arc<VfioIommufd>,
    ) -> Result<Self, IommufdOpenError> {
        // Binds the cdev to the iommufd (VFIO_DEVICE_BIND_IOMMUFD), attaches it to the IOAS
        // (VFIO_DEVICE_ATTACH_IOMMUFD_PT) and reads its regions and IRQs.
        let device = VfioDevice::new_from_fd(file, iommufd.clone(), true).map_err(|source| {
            IommufdOpenError::Device {
                address,
                node: pre.cdev_node.clone(),
                iommufd: pre.iommufd_node.clone(),
                hint: device_hint(address, &source),
                source: Box::new(source),
            }
        })?;
        let info = DeviceInfo::from_device(&device);
        Ok(Self {
            address,
            group: pre.group,
            cdev_node: pre.cdev_node,
            iommufd_node: pre.iommufd_node,
            device,
            iommufd,
            info,
        })
    }

    /// A DMA mapper over the device's IOAS (IOVA = GPA), reading the IOAS's valid IOVA
    /// ranges now that the device is attached.
    ///
    /// Make one per IOAS and share it: devices opened with [`open_in`](Self::open_in) use
    /// the first device's mapper (call its `refresh_limits` after attaching them, as each
    /// attach can narrow the ranges).
    pub fn dma_mapper(&self) -> Result<IommufdMapper, IommufdOpenError> {
        IommufdMapper::from_vfio(&self.iommufd).map_err(|source| IommufdOpenError::Dma {
            address: self.address,
            source,
        })
    }

    /// The device's address.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// Its IOMMU group, if sysfs names one (iommufd does not use it, KVM and checks do).
    pub fn group(&self) -> Option<u32> {
        self.group
    }

    /// `/dev/vfio/devices/vfioN`, or `/proc/self/fd/N` for a handed-in cdev.
    pub fn cdev_node(&self) -> &std::path::Path {
        &self.cdev_node
    }

    /// `/dev/iommu` (the node this device's iommufd was opened from, for messages), or
    /// `/proc/self/fd/N` for a handed-in iommufd.
    pub fn iommufd_node(&self) -> &std::path::Path {
        &self.iommufd_node
    }

    /// Its regions and IRQs.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The `vfio-ioctls` device, for region access, mmap offsets, IRQs and reset.
    pub fn device(&self) -> &VfioDevice {
        &self.device
    }

    /// The iommufd and IOAS, for [`open_in`](Self::open_in).
    pub fn iommufd(&self) -> &Arc<VfioIommufd> {
        &self.iommufd
    }
}

/// How messages name a handed-in fd: its `/proc/self/fd/N` path (which `ls -l` resolves).
fn handed_fd_path(paths: &HostPaths, fd: &OwnedFd) -> PathBuf {
    paths.proc.join(format!("self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HandedFdError;
    use std::os::fd::FromRawFd;

    #[test]
    fn handed_in_fds_that_are_not_vfio_fail_before_any_ioctl() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe(2) just created both fds and nothing else owns them.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let address: PciAddress = "0000:00:01.0".parse().unwrap();
        let err =
            OpenedIommufdDevice::from_fds(&HostPaths::default(), address, r, w, None).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, IommufdOpenError::HandedFd { fd_error, .. }
                if matches!(**fd_error, HandedFdError::WrongKind { .. })),
            "{msg}"
        );
        assert!(msg.starts_with("0000:00:01.0: fd "), "{msg}");
        assert!(msg.contains("pipe:["), "{msg}");

        // The device fd passes only as a VFIO cdev: /dev/null as the cdev names /dev/null.
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let iommu = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap();
        let err = OpenedIommufdDevice::from_fds(
            &HostPaths::default(),
            address,
            null.into(),
            iommu.into(),
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("is /dev/null (character device 1:3)"),
            "{err}"
        );
    }
}
