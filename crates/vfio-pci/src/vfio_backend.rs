//! [`VfioBackend`]: the [`DeviceBackend`] of a real host device opened through VFIO
//! (`vfio-ioctls` type1 container and group, see [`host::OpenedDevice`](crate::host::OpenedDevice)).
//!
//! Region reads and writes are `pread`/`pwrite` on the device fd at the region's offset, with
//! errors reported (vfio-ioctls' own `region_read` only logs them); interrupts go through
//! `VFIO_DEVICE_SET_IRQS`; the reset is `VFIO_DEVICE_RESET` when `VFIO_DEVICE_GET_INFO` says
//! the device has one. DMA goes through a [`VfioType1Mapper`] over the device's container.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use iommu_dma::{DmaError, DmaMapper};
#[cfg(feature = "kvm")]
use kvm_runloop::reexports::kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
#[cfg(feature = "kvm")]
use kvm_runloop::reexports::kvm_ioctls::VmFd;
use thiserror::Error;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_RESET, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, vfio_device_info,
};
use vfio_ioctls::VfioDeviceFd;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref};
use vmm_sys_util::ioctl_io_nr;

use crate::backend::{BackendError, DeviceBackend, MmapSource};
use crate::host::{
    DeviceInfo, HostPaths, IommuBackendChoice, IrqKind, OpenError, OpenVfioError, OpenedDevice,
    OpenedVfio, PciAddress,
};

// From <linux/vfio.h>: VFIO_TYPE is ';', VFIO_BASE 100.
const VFIO_TYPE: u32 = b';' as u32;
const VFIO_BASE: u32 = 100;
ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE, VFIO_BASE + 11);

/// Why a [`VfioBackend`] could not be set up.
#[derive(Debug, Error)]
pub enum VfioBackendError {
    /// Opening the device failed; the message names the BDF, the group, the `/dev/vfio` node
    /// and what to do.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Choosing the IOMMU backend, or opening through iommufd, failed; the message names the
    /// BDF, the missing node or kernel option, and the `--iommu` fallback.
    #[error(transparent)]
    OpenVfio(#[from] OpenVfioError),
    /// `KVM_CREATE_DEVICE` of the VM's KVM VFIO device failed.
    #[error(
        "cannot create the VM's KVM VFIO device (KVM_CREATE_DEVICE, KVM_DEV_TYPE_VFIO): {source}; \
         the host kernel needs CONFIG_KVM_VFIO (create one per VM and share it)"
    )]
    KvmVfioDevice {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The device has no configuration region (not a vfio-pci device?).
    #[error(
        "{address}: VFIO reports no readable config region (index 7): is it bound to vfio-pci \
         and not to a vendor variant driver that hides it?"
    )]
    NoConfigRegion {
        /// The device.
        address: PciAddress,
    },
    /// `VFIO_DEVICE_GET_INFO` failed.
    #[error("{address}: VFIO_DEVICE_GET_INFO failed: {source}; see `dmesg | tail`")]
    DeviceInfo {
        /// The device.
        address: PciAddress,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Setting up the DMA mapper over the container or IOAS failed.
    #[error(
        "{address}: cannot set up DMA mapping through its VFIO container or iommufd IOAS: {source}"
    )]
    Dma {
        /// The device.
        address: PciAddress,
        /// What iommu-dma said.
        #[source]
        source: DmaError,
    },
}

/// A host device opened through VFIO, as a [`DeviceBackend`].
///
/// Drop it only once every mmap of its regions is gone ([`PassthroughDevice`](crate::PassthroughDevice)
/// releases its own at detach): an mmap keeps the device file open, and dropping the backend
/// then leaves its group in the container (`VFIO_GROUP_UNSET_CONTAINER` fails with `EBUSY`),
/// so the device cannot be opened again in this process.
pub struct VfioBackend {
    name: String,
    opened: OpenedVfio,
    config_offset: u64,
    config_size: u64,
    reset_supported: bool,
    mapper: Arc<dyn DmaMapper>,
}

impl std::fmt::Debug for VfioBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioBackend")
            .field("name", &self.name)
            .field("reset_supported", &self.reset_supported)
            .finish_non_exhaustive()
    }
}

/// Creates the VM's `KVM_DEV_TYPE_VFIO` pseudo-device, to hand to every
/// [`VfioBackend::open_with`] of that VM: VFIO adds each group (or device cdev) to it as it is
/// opened, so KVM knows the VM has assigned devices and honours the guest's cache attributes
/// where DMA is not coherent (QEMU does the same with `vfio_kvm_device_add_group`). Create one
/// per VM and share it: mainline KVM refuses a second one. (Feature `kvm`.)
#[cfg(feature = "kvm")]
pub fn create_kvm_vfio_device(vm: &VmFd) -> Result<Arc<VfioDeviceFd>, VfioBackendError> {
    let mut request = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let device = vm
        .create_device(&mut request)
        .map_err(|e| VfioBackendError::KvmVfioDevice {
            source: io::Error::from_raw_os_error(e.errno()),
        })?;
    Ok(Arc::new(VfioDeviceFd::new_from_kvm(device)))
}

impl VfioBackend {
    /// Checks sysfs, opens a new type1 container, the device's group and the device
    /// ([`OpenedDevice::open`]), and sets up its DMA mapper. `kvm_device` is the VM's
    /// `KVM_DEV_TYPE_VFIO` device (`None` works, without KVM knowing about the group).
    pub fn open(
        paths: &HostPaths,
        address: PciAddress,
        kvm_device: Option<Arc<VfioDeviceFd>>,
    ) -> Result<Self, VfioBackendError> {
        Self::from_opened(OpenedDevice::open(paths, address, kvm_device)?)
    }

    /// Opens the device through the IOMMU backend `choice` picks ([`OpenedVfio::open`]:
    /// `Auto` takes iommufd when `/dev/iommu` and the device's cdev exist, else type1), and
    /// sets up its DMA mapper.
    pub fn open_with(
        paths: &HostPaths,
        address: PciAddress,
        kvm_device: Option<Arc<VfioDeviceFd>>,
        choice: IommuBackendChoice,
    ) -> Result<Self, VfioBackendError> {
        Self::from_opened(OpenedVfio::open(paths, address, kvm_device, choice)?)
    }

    /// Wraps a device opened with [`OpenedDevice::open`] or
    /// [`OpenedIommufdDevice::open`](crate::host::OpenedIommufdDevice::open), with a new DMA
    /// mapper over its container or IOAS.
    pub fn from_opened(opened: impl Into<OpenedVfio>) -> Result<Self, VfioBackendError> {
        let opened = opened.into();
        let address = opened.address();
        let mapper = opened
            .new_dma_mapper()
            .map_err(|source| VfioBackendError::Dma { address, source })?;
        Self::from_opened_with_mapper(opened, mapper)
    }

    /// Wraps a device opened with [`OpenedDevice::open_in`] into a container that other
    /// devices share: pass the container's one mapper (the first device's
    /// [`dma_mapper`](DeviceBackend::dma_mapper)), and give every device the same
    /// [`GuestMemoryDma`](iommu_dma::GuestMemoryDma) through
    /// [`DmaSetup::Shared`](crate::DmaSetup::Shared), so guest RAM is mapped once.
    pub fn from_opened_with_mapper(
        opened: impl Into<OpenedVfio>,
        mapper: Arc<dyn DmaMapper>,
    ) -> Result<Self, VfioBackendError> {
        let opened = opened.into();
        let address = opened.address();
        let config = opened
            .info()
            .region(VFIO_PCI_CONFIG_REGION_INDEX)
            .filter(|r| r.size >= 256 && r.flags.read)
            .cloned()
            .ok_or(VfioBackendError::NoConfigRegion { address })?;
        let mut info = vfio_device_info {
            argsz: std::mem::size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: VFIO_DEVICE_GET_INFO writes at most `argsz` bytes into `info`, a properly
        // sized vfio_device_info; the fd is the open device fd owned by `opened`.
        let ret = unsafe { ioctl_with_mut_ref(opened.device(), VFIO_DEVICE_GET_INFO(), &mut info) };
        if ret < 0 {
            return Err(VfioBackendError::DeviceInfo {
                address,
                source: io::Error::last_os_error(),
            });
        }
        Ok(Self {
            name: address.to_string(),
            config_offset: config.offset,
            config_size: config.size,
            reset_supported: info.flags & VFIO_DEVICE_FLAGS_RESET != 0,
            mapper,
            opened,
        })
    }

    /// The opened device (address, group, backend, vfio-ioctls device).
    pub fn opened(&self) -> &OpenedVfio {
        &self.opened
    }

    fn fd(&self) -> BorrowedFd<'_> {
        // The VFIO device fd; vfio-ioctls keeps it open as long as the VfioDevice lives.
        // SAFETY: the fd stays open while `self.opened` lives, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.opened.device().as_raw_fd()) }
    }

    fn region_bounds(&self, index: u32, offset: u64, len: usize) -> io::Result<u64> {
        let region = self
            .opened
            .info()
            .region(index)
            .filter(|r| r.size > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such region"))?;
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > region.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("outside the region's {:#x} bytes", region.size),
            ));
        }
        Ok(region.offset + offset)
    }

    fn pread(&self, at: u64, data: &mut [u8]) -> io::Result<()> {
        // SAFETY: `data` is a valid writable buffer of `data.len()` bytes for the whole call.
        let n = unsafe {
            libc::pread(
                self.fd().as_raw_fd(),
                data.as_mut_ptr().cast(),
                data.len(),
                at as libc::off_t,
            )
        };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != data.len() => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read: {n} of {} bytes", data.len()),
            )),
            _ => Ok(()),
        }
    }

    fn pwrite(&self, at: u64, data: &[u8]) -> io::Result<()> {
        // SAFETY: `data` is a valid readable buffer of `data.len()` bytes for the whole call.
        let n = unsafe {
            libc::pwrite(
                self.fd().as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                at as libc::off_t,
            )
        };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != data.len() => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {n} of {} bytes", data.len()),
            )),
            _ => Ok(()),
        }
    }

    fn err(&self, op: String, source: io::Error) -> BackendError {
        BackendError::new(self.name.clone(), op, source)
    }
}

fn irq_index(kind: IrqKind) -> io::Result<u32> {
    match kind {
        IrqKind::Intx => Ok(VFIO_PCI_INTX_IRQ_INDEX),
        IrqKind::Msi => Ok(VFIO_PCI_MSI_IRQ_INDEX),
        IrqKind::Msix => Ok(VFIO_PCI_MSIX_IRQ_INDEX),
        other => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{other} interrupts are not wired by the passthrough device"),
        )),
    }
}

/// A vfio-pci region index as people say it: `BAR0`..`BAR5`, `ROM`, `config`.
struct RegionName(u32);

impl std::fmt::Display for RegionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            i @ 0..=5 => write!(f, "BAR{i}"),
            6 => f.write_str("ROM"),
            VFIO_PCI_CONFIG_REGION_INDEX => f.write_str("config"),
            i => write!(f, "region {i}"),
        }
    }
}

fn vfio_err(e: vfio_ioctls::VfioError) -> io::Error {
    io::Error::other(e)
}

impl DeviceBackend for VfioBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn info(&self) -> &DeviceInfo {
        self.opened.info()
    }

    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), BackendError> {
        let len = data.len();
        let op = || format!("config read of {len} bytes at {offset:#x}");
        if u64::from(offset) + len as u64 > self.config_size {
            return Err(self.err(op(), io::Error::from(io::ErrorKind::InvalidInput)));
        }
        self.pread(self.config_offset + u64::from(offset), data)
            .map_err(|e| self.err(op(), e))
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), BackendError> {
        let op = || format!("config write of {} bytes at {offset:#x}", data.len());
        if u64::from(offset) + data.len() as u64 > self.config_size {
            return Err(self.err(op(), io::Error::from(io::ErrorKind::InvalidInput)));
        }
        self.pwrite(self.config_offset + u64::from(offset), data)
            .map_err(|e| self.err(op(), e))
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), BackendError> {
        let len = data.len();
        let op = || {
            format!(
                "read of {len} bytes at {offset:#x} of {}",
                RegionName(index)
            )
        };
        let at = self
            .region_bounds(index, offset, len)
            .map_err(|e| self.err(op(), e))?;
        self.pread(at, data).map_err(|e| self.err(op(), e))
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let op = || {
            format!(
                "write of {} bytes at {offset:#x} of {}",
                data.len(),
                RegionName(index)
            )
        };
        let at = self
            .region_bounds(index, offset, data.len())
            .map_err(|e| self.err(op(), e))?;
        self.pwrite(at, data).map_err(|e| self.err(op(), e))
    }

    fn mmap_source(&self, index: u32) -> Option<MmapSource<'_>> {
        let region = self.opened.info().region(index)?;
        (region.flags.mmap && region.size > 0).then(|| MmapSource {
            fd: self.fd(),
            offset: region.offset,
        })
    }

    fn enable_irqs(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), BackendError> {
        let op = || format!("enabling {} {kind} vectors", fds.len());
        let index = irq_index(kind).map_err(|e| self.err(op(), e))?;
        self.opened
            .device()
            .enable_irq(index, fds.to_vec())
            .map_err(|e| self.err(op(), vfio_err(e)))
    }

    fn disable_irqs(&self, kind: IrqKind) -> Result<(), BackendError> {
        let op = || format!("disabling {kind}");
        let index = irq_index(kind).map_err(|e| self.err(op(), e))?;
        self.opened
            .device()
            .disable_irq(index)
            .map_err(|e| self.err(op(), vfio_err(e)))
    }

    fn set_intx_resample(&self, fd: &EventFd) -> Result<(), BackendError> {
        self.opened
            .device()
            .set_irq_resample_fd(VFIO_PCI_INTX_IRQ_INDEX, vec![fd])
            .map_err(|e| self.err("setting the INTx resample eventfd".into(), vfio_err(e)))
    }

    fn unmask_intx(&self) -> Result<(), BackendError> {
        self.opened
            .device()
            .unmask_irq(VFIO_PCI_INTX_IRQ_INDEX)
            .map_err(|e| self.err("unmasking INTx".into(), vfio_err(e)))
    }

    fn reset(&self) -> Result<bool, BackendError> {
        if !self.reset_supported {
            return Ok(false);
        }
        // SAFETY: VFIO_DEVICE_RESET takes no argument; the fd is the open device fd.
        let ret = unsafe { ioctl(self.opened.device(), VFIO_DEVICE_RESET()) };
        if ret < 0 {
            return Err(self.err("VFIO_DEVICE_RESET".into(), io::Error::last_os_error()));
        }
        Ok(true)
    }

    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        self.mapper.clone()
    }
}
