//! Opening a host device through VFIO (type1 container and group) with `vfio-ioctls`.
//!
//! Before any ioctl, sysfs is checked so that the usual mistakes (device not bound to
//! vfio-pci, no IOMMU group, no `/dev/vfio/N`) get an error that names the device, the group
//! and the node. `vfio-ioctls` opens `/dev/vfio/vfio` and `/dev/vfio/N` itself, so a
//! [`HostPaths`] with another `dev` root only moves those checks, not the opening.
//!
//! The iommufd path (`/dev/iommu` and `/dev/vfio/devices/vfioN`) is in `open_iommufd.rs`, which
//! also chooses between the two.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError, VfioOps};

use super::info::DeviceInfo;
use super::sysfs::{HostDevice, SysfsError};
use super::{HostPaths, PciAddress};

/// The container node `vfio-ioctls` opens, whatever [`HostPaths::dev`] says.
const VFIO_CONTAINER_NODE: &str = "/dev/vfio/vfio";

/// Why a device could not be opened through VFIO.
#[derive(Debug, Error)]
pub enum OpenError {
    /// Reading sysfs failed (or the device does not exist).
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    /// The device is on another driver.
    #[error("{address} is bound to {driver}, not vfio-pci: bind it to vfio-pci first")]
    NotBoundToVfio {
        /// The device.
        address: PciAddress,
        /// Its driver, or `no driver`.
        driver: String,
    },
    /// The device has no IOMMU group.
    #[error(
        "{address} has no IOMMU group: VFIO needs an enabled IOMMU (the host\
         readiness check says how)"
    )]
    NoIommuGroup {
        /// The device.
        address: PciAddress,
    },
    /// `/dev/vfio/N` does not exist.
    #[error(
        "{address}: {node} (VFIO group {group}) does not exist: check `ls -l /dev/vfio` and \
         the host readiness check"
    )]
    GroupNodeMissing {
        /// The device.
        address: PciAddress,
        /// Its IOMMU group.
        group: u32,
        /// The missing node.
        node: PathBuf,
    },
    /// Opening the container failed.
    #[error(
        "{address} (VFIO group {group}): cannot set up the VFIO container {node}: load \
         `vfio_iommu_type1` and check the node's permissions (the host readiness check does)"
    )]
    Container {
        /// The device.
        address: PciAddress,
        /// Its IOMMU group.
        group: u32,
        /// The container node.
        node: PathBuf,
        /// What vfio-ioctls reported.
        #[source]
        source: VfioError,
    },
    /// Opening the group or the device failed.
    #[error("{address}: opening it through VFIO group {group} ({node}) failed: {hint}")]
    Device {
        /// The device.
        address: PciAddress,
        /// Its IOMMU group.
        group: u32,
        /// The group node.
        node: PathBuf,
        /// What to do, from the kind of failure.
        hint: String,
        /// What vfio-ioctls reported.
        #[source]
        source: VfioError,
    },
}

fn device_hint(address: PciAddress, group: u32, error: &VfioError) -> String {
    let errno = |e: &vmm_sys_util::errno::Error| e.errno();
    match error {
        VfioError::OpenGroup(e, _) if e.raw_os_error() == Some(libc::EBUSY) => {
            format!("group {group} is already open, probably by another VMM; close it first")
        }
        VfioError::OpenGroup(e, _) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            format!(
                "no permission on /dev/vfio/{group}: run as root or `chown $USER /dev/vfio/{group}`"
            )
        }
        VfioError::GroupViable => format!(
            "group {group} is not viable: another device in it is on a host driver \
             (the host readiness check lists them)"
        ),
        VfioError::GroupGetDeviceFD(e) if errno(e) == libc::EBUSY => {
            format!("{address} is already in use by another process")
        }
        VfioError::ContainerSetIOMMU(_) => {
            "the type1 IOMMU could not be set on the container (`modprobe vfio_iommu_type1`)".into()
        }
        _ => format!("see `dmesg | tail` and the host readiness check of {address}"),
    }
}

/// A host device opened through VFIO, with everything VFIO said about it.
pub struct OpenedDevice {
    address: PciAddress,
    group: u32,
    container: Arc<VfioContainer>,
    device: VfioDevice,
    info: DeviceInfo,
}

impl std::fmt::Debug for OpenedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedDevice")
            .field("address", &self.address)
            .field("group", &self.group)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl OpenedDevice {
    /// Checks sysfs, then opens a new type1 container, the device's group and the device.
    ///
    /// `kvm_device` is the VMM's `KVM_DEV_TYPE_VFIO` device, which KVM needs to know about
    /// the group (for coherent DMA and interrupt posting); `None` to only look at the device.
    pub fn open(
        paths: &HostPaths,
        address: PciAddress,
        kvm_device: Option<Arc<VfioDeviceFd>>,
    ) -> Result<Self, OpenError> {
        let (sysfs_path, group) = preflight(paths, address)?;
        let container = VfioContainer::new(kvm_device).map_err(|source| OpenError::Container {
            address,
            group,
            node: PathBuf::from(VFIO_CONTAINER_NODE),
            source,
        })?;
        Self::finish(paths, address, group, sysfs_path, Arc::new(container))
    }

    /// Like [`open`](Self::open), but puts the group into an existing container, so that
    /// several devices share one IOMMU domain and guest RAM is mapped once for all of them.
    pub fn open_in(
        paths: &HostPaths,
        address: PciAddress,
        container: Arc<VfioContainer>,
    ) -> Result<Self, OpenError> {
        let (sysfs_path, group) = preflight(paths, address)?;
        Self::finish(paths, address, group, sysfs_path, container)
    }

    fn finish(
        paths: &HostPaths,
        address: PciAddress,
        group: u32,
        sysfs_path: PathBuf,
        container: Arc<VfioContainer>,
    ) -> Result<Self, OpenError> {
        let ops: Arc<dyn VfioOps> = container.clone();
        let device =
            VfioDevice::new(&sysfs_path, ops, false).map_err(|source| OpenError::Device {
                address,
                group,
                node: paths.vfio_group_node(group),
                hint: device_hint(address, group, &source),
                source,
            })?;
        let info = DeviceInfo::from_device(&device);
        Ok(Self {
            address,
            group,
            container,
            device,
            info,
        })
    }

    /// The device's address.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// The device's IOMMU group.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// Its regions and IRQs.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The `vfio-ioctls` device, for region access, mmap offsets, IRQs and reset.
    pub fn device(&self) -> &VfioDevice {
        &self.device
    }

    /// The container, for DMA mapping (it implements `VfioOps`) and for [`open_in`](Self::open_in).
    pub fn container(&self) -> &Arc<VfioContainer> {
        &self.container
    }
}

/// The checks made before any VFIO ioctl: the device exists, is on vfio-pci, has a group
/// and the group's node exists. Returns the sysfs path and the group.
fn preflight(paths: &HostPaths, address: PciAddress) -> Result<(PathBuf, u32), OpenError> {
    let device = HostDevice::read(paths, address)?;
    if !device.is_bound_to_vfio() {
        return Err(OpenError::NotBoundToVfio {
            address,
            driver: device.driver_name().to_string(),
        });
    }
    let group = device
        .iommu_group
        .ok_or(OpenError::NoIommuGroup { address })?;
    let node = paths.vfio_group_node(group);
    if !node.exists() {
        return Err(OpenError::GroupNodeMissing {
            address,
            group,
            node,
        });
    }
    Ok((device.sysfs_path, group))
}
