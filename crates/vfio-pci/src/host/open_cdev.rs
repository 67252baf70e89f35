//! Opening a host device through iommufd: `/dev/iommu`, a new or shared IOAS, and the device's
//! VFIO cdev bound to it ([`OpenedIommufdDevice`]). Cargo feature `iommufd`: vfio-ioctls 0.10
//! only has its cdev support with its `kvm` feature, which brings `kvm-ioctls`.

use std::error::Error as StdError;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use iommu_dma::IommufdMapper;
use iommu_dma::iommufd::open_iommufd_at;
use vfio_ioctls::{VfioDevice, VfioDeviceFd, VfioError, VfioIommufd};

use super::PciAddress;
use super::info::DeviceInfo;
use super::open_iommufd::{
    IommuAvailability, IommuBackendChoice, IommuChoiceError, IommufdOpenError,
};
use super::paths::HostPaths;

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

    /// `/dev/vfio/devices/vfioN`.
    pub fn cdev_node(&self) -> &std::path::Path {
        &self.cdev_node
    }

    /// `/dev/iommu` (the node this device's iommufd was opened from, for messages).
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
