//! [`DeviceBackend`]: everything the passthrough device needs from the host device, as one
//! small trait, so the same device code runs over VFIO ([`VfioBackend`](crate::VfioBackend))
//! and over a simulated device in host tests (`sim::SimBackend`, feature `sim`).
//!
//! The indexes are VFIO's fixed vfio-pci layout (regions 0-5 BARs, 6 ROM, 7 config; IRQ
//! indexes 0 INTx, 1 MSI, 2 MSI-X), and the region and IRQ descriptions are the plain data of
//! [`host::DeviceInfo`](crate::host::DeviceInfo), whoever produces them.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use iommu_dma::DmaMapper;
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::host::{DeviceInfo, IrqKind};

/// A failed backend operation, naming the device, the operation and the region or IRQ, and
/// what to do for the errors a host device gives when it fails.
#[derive(Debug, Error)]
#[error("{device}: {op} failed: {source}{}", hint(.source))]
pub struct BackendError {
    /// The device (its BDF for VFIO).
    pub device: String,
    /// What was attempted, with the region/IRQ and offset, e.g. `read of 4 bytes at 0x10 of BAR0`.
    pub op: String,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl BackendError {
    /// Builds an error.
    pub fn new(device: impl Into<String>, op: impl Into<String>, source: io::Error) -> Self {
        Self {
            device: device.into(),
            op: op.into(),
            source,
        }
    }
}

/// What to do about the errnos a failing or vanished host device gives.
fn hint(source: &io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::ENODEV) => {
            "; the device is gone from the host (surprise removal, unbind or a failed link): \
             detach it, then check `lspci` and `dmesg`"
        }
        Some(libc::EIO) => {
            "; the device reported an error: check `dmesg`; a reset (or detach and attach) may \
             recover it"
        }
        Some(libc::ENOSPC) | Some(libc::ENOMEM) => {
            "; the host is out of interrupt vectors or memory for it: enable fewer vectors, or \
             free host resources"
        }
        _ => "",
    }
}

/// Where a region can be mmapped from: a file descriptor and the offset of the region in it
/// (the VFIO device fd and the region offset, or a memfd). The device maps the parts it needs
/// itself, once, with `MAP_SHARED`.
#[derive(Debug, Clone, Copy)]
pub struct MmapSource<'a> {
    /// The file to map.
    pub fd: BorrowedFd<'a>,
    /// Offset of the region's byte 0 in that file.
    pub offset: u64,
}

/// The host device behind a [`PassthroughDevice`](crate::PassthroughDevice).
///
/// All methods take `&self` and may be called from any vCPU thread: accesses to trapped BAR
/// ranges arrive concurrently.
pub trait DeviceBackend: Send + Sync {
    /// A name for logs and views: the host BDF for VFIO (`0000:01:00.0`).
    fn name(&self) -> &str;

    /// Regions and IRQ indexes, as VFIO reports them.
    fn info(&self) -> &DeviceInfo;

    /// Reads `data.len()` bytes (1, 2 or 4, naturally aligned) of configuration space.
    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), BackendError>;

    /// Writes configuration space (1, 2 or 4 bytes, naturally aligned).
    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), BackendError>;

    /// Reads region `index` at `offset` (a trapped BAR access, or the ROM).
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), BackendError>;

    /// Writes region `index` at `offset`.
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError>;

    /// Where region `index` can be mmapped from; `None` when it cannot be (no
    /// `VFIO_REGION_INFO_FLAG_MMAP`).
    fn mmap_source(&self, index: u32) -> Option<MmapSource<'_>>;

    /// Routes every vector of `kind` to the given eventfds (`fds[i]` for vector `i`)
    /// (`VFIO_DEVICE_SET_IRQS`, `ACTION_TRIGGER`). VFIO refuses it while another kind is
    /// enabled, and refuses to grow an enabled MSI block: the device disables first.
    fn enable_irqs(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), BackendError>;

    /// Turns interrupts of `kind` off (the device stops signalling them).
    fn disable_irqs(&self, kind: IrqKind) -> Result<(), BackendError>;

    /// Sets the INTx resample eventfd: when it is signalled (the guest EOIed the line), the
    /// host unmasks INTx at the device (`ACTION_UNMASK` with an eventfd).
    fn set_intx_resample(&self, fd: &EventFd) -> Result<(), BackendError>;

    /// Unmasks INTx at the device once (`ACTION_UNMASK`, no data).
    fn unmask_intx(&self) -> Result<(), BackendError>;

    /// Resets the function. `Ok(false)` when the device has no reset method.
    fn reset(&self) -> Result<bool, BackendError>;

    /// The DMA mapper of the IOMMU domain the device sits in (its VFIO container), through which
    /// guest RAM is mapped at IOVA = GPA.
    fn dma_mapper(&self) -> Arc<dyn DmaMapper>;

    /// Number of vectors of an IRQ kind (0 when the device lacks it).
    fn irq_count(&self, kind: IrqKind) -> u32 {
        self.info()
            .irqs
            .iter()
            .find(|i| i.kind() == kind)
            .map_or(0, |i| i.count)
    }
}

impl<T: DeviceBackend + ?Sized> DeviceBackend for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn info(&self) -> &DeviceInfo {
        (**self).info()
    }
    fn config_read(&self, offset: u16, data: &mut [u8]) -> Result<(), BackendError> {
        (**self).config_read(offset, data)
    }
    fn config_write(&self, offset: u16, data: &[u8]) -> Result<(), BackendError> {
        (**self).config_write(offset, data)
    }
    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), BackendError> {
        (**self).region_read(index, offset, data)
    }
    fn region_write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        (**self).region_write(index, offset, data)
    }
    fn mmap_source(&self, index: u32) -> Option<MmapSource<'_>> {
        (**self).mmap_source(index)
    }
    fn enable_irqs(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), BackendError> {
        (**self).enable_irqs(kind, fds)
    }
    fn disable_irqs(&self, kind: IrqKind) -> Result<(), BackendError> {
        (**self).disable_irqs(kind)
    }
    fn set_intx_resample(&self, fd: &EventFd) -> Result<(), BackendError> {
        (**self).set_intx_resample(fd)
    }
    fn unmask_intx(&self) -> Result<(), BackendError> {
        (**self).unmask_intx()
    }
    fn reset(&self) -> Result<bool, BackendError> {
        (**self).reset()
    }
    fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        (**self).dma_mapper()
    }
}
