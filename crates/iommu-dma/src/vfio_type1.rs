//! The VFIO type1 backend: a `vfio_ioctls::VfioContainer` (`/dev/vfio/vfio`).
//!
//! A container gets its IOMMU type only when the first group joins it, and
//! `vfio_ioctls::VfioDevice::new` is what joins a group. So the order is:
//!
//! 1. [`open_container`] (or `VfioContainer::new`) makes the container;
//! 2. the device crate opens each device with `VfioDevice::new(path, container.clone(), false)`,
//!    which attaches its group and sets type1v2;
//! 3. [`VfioType1Mapper::new`] wraps the container and asks the kernel for its limits
//!    (`VFIO_IOMMU_GET_INFO`); before step 2 that fails with a message saying so.
//!
//! Read-write mappings go through `VfioContainer::vfio_dma_map`; read-only and write-only
//! ones, which `vfio-ioctls` cannot express, through `VFIO_IOMMU_MAP_DMA` with the matching
//! flags.

use std::io;
use std::mem::size_of;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, vfio_iommu_type1_dma_map,
};
use vfio_ioctls::{VfioContainer, VfioDeviceFd, VfioError};

use crate::devnode::{VFIO_CONTAINER_PATH, open_failure};
use crate::error::DmaError;
use crate::kernel::KernelMappings;
use crate::mapper::{DmaMapper, DmaMapping, DmaPerm, HostIommuLimits};
use crate::memlock::MemlockBudget;
use crate::type1_info;

mod ioctl {
    use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
    vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 13);
}
use ioctl::VFIO_IOMMU_MAP_DMA;

/// Open `/dev/vfio/vfio` as a `VfioContainer`, turning the failures into messages that say
/// what to do (load `vfio-pci`, enable the IOMMU, fix permissions).
///
/// `device_fd` is the hypervisor's VFIO device (`KVM_DEV_TYPE_VFIO`), as for
/// `VfioContainer::new`.
pub fn open_container(
    device_fd: Option<Arc<VfioDeviceFd>>,
) -> Result<Arc<VfioContainer>, DmaError> {
    VfioContainer::new(device_fd)
        .map(Arc::new)
        .map_err(|e| match e {
            VfioError::OpenContainer(source) => {
                open_failure(Path::new(VFIO_CONTAINER_PATH), source)
            }
            VfioError::VfioApiVersion => setup_error(
                VFIO_CONTAINER_PATH.to_string(),
                "VFIO_GET_API_VERSION",
                io::Error::other(e.to_string()),
                "the kernel's VFIO API version is not the one vfio-bindings was built for",
            ),
            VfioError::VfioExtension | VfioError::VfioType1V2 => setup_error(
                VFIO_CONTAINER_PATH.to_string(),
                "VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU)",
                io::Error::other(e.to_string()),
                "the kernel offers no type1v2 IOMMU: `modprobe vfio_iommu_type1` and enable \
                 the IOMMU (intel_iommu=on / amd_iommu=on)",
            ),
            other => setup_error(
                VFIO_CONTAINER_PATH.to_string(),
                "opening the VFIO container",
                io::Error::other(other.to_string()),
                "see the kernel log (dmesg) for VFIO messages",
            ),
        })
}

fn setup_error(mapper: String, op: &'static str, source: io::Error, hint: &str) -> DmaError {
    DmaError::Setup {
        mapper,
        op,
        source,
        hint: hint.to_string(),
    }
}

/// A [`DmaMapper`] over a VFIO type1 container. See the [module documentation](self) for
/// the order of set-up.
pub struct VfioType1Mapper {
    container: Arc<VfioContainer>,
    state: KernelMappings,
}

impl std::fmt::Debug for VfioType1Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("VfioType1Mapper").field(&self.state).finish()
    }
}

impl VfioType1Mapper {
    /// Wrap `container`, which must have at least one group attached (open a
    /// `VfioDevice` through it first), and read its limits.
    pub fn new(container: Arc<VfioContainer>) -> Result<Self, DmaError> {
        let name = format!(
            "VFIO type1 container {VFIO_CONTAINER_PATH} (fd {})",
            container.as_raw_fd()
        );
        let mapper = VfioType1Mapper {
            container,
            state: KernelMappings::new(name),
        };
        mapper.refresh_limits()?;
        Ok(mapper)
    }

    /// The container, to open more devices through it.
    pub fn container(&self) -> &Arc<VfioContainer> {
        &self.container
    }

    /// `VFIO_IOMMU_MAP_DMA` of `m`.
    ///
    /// # Safety
    ///
    /// The contract of [`DmaMapper::map`] holds for `m`.
    unsafe fn map_ioctl(&self, m: &DmaMapping) -> io::Result<()> {
        if m.perm == DmaPerm::ReadWrite {
            // SAFETY: our caller upholds `DmaMapper::map`'s contract for `m`, which is the
            // contract of `VfioContainer::vfio_dma_map`.
            let res = unsafe {
                self.container.vfio_dma_map(
                    m.iova,
                    m.size as usize,
                    m.host_addr as usize as *mut u8,
                )
            };
            return res.map_err(|e| match e {
                VfioError::IommuDmaMap(errno) => io::Error::from_raw_os_error(errno.errno()),
                other => io::Error::other(other.to_string()),
            });
        }
        let mut flags = 0;
        if m.perm.readable() {
            flags |= VFIO_DMA_MAP_FLAG_READ;
        }
        if m.perm.writable() {
            flags |= VFIO_DMA_MAP_FLAG_WRITE;
        }
        let arg = vfio_iommu_type1_dma_map {
            argsz: size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags,
            vaddr: m.host_addr,
            iova: m.iova,
            size: m.size,
        };
        // SAFETY: the fd is a VFIO container and `arg` a complete vfio_iommu_type1_dma_map the
        // kernel only reads; the memory it names is covered by `DmaMapper::map`'s contract,
        // which our caller upholds.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_ref(&*self.container, VFIO_IOMMU_MAP_DMA(), &arg)
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl DmaMapper for VfioType1Mapper {
    fn name(&self) -> &str {
        self.state.name()
    }

    fn limits(&self) -> HostIommuLimits {
        self.state.limits()
    }

    fn refresh_limits(&self) -> Result<HostIommuLimits, DmaError> {
        let op = "VFIO_IOMMU_GET_INFO";
        let info = type1_info::query(&*self.container).map_err(|source| {
            let hint = match source.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::ENOTTY) => {
                    "the container has no IOMMU type yet: attach a group first by opening a \
                     VfioDevice through this container"
                }
                _ => "see the kernel log (dmesg) for VFIO messages",
            };
            self.state.setup_error(op, source, hint)
        })?;
        let in_use = u32::try_from(self.state.len()).unwrap_or(u32::MAX);
        let limits = info.to_limits(in_use).map_err(|e| {
            self.state.setup_error(
                op,
                io::Error::other(e.to_string()),
                "the kernel's answer makes no sense; report this with the kernel version",
            )
        })?;
        if info.iova_ranges.is_none() {
            log::info!(
                "{}: kernel reports no valid IOVA ranges (pre-5.4); assuming all IOVAs are valid",
                self.name()
            );
        }
        self.state.set_limits(limits.clone());
        Ok(limits)
    }

    fn memlock_budget(&self) -> Result<Option<MemlockBudget>, DmaError> {
        self.state.memlock_budget().map(Some)
    }

    unsafe fn map(&self, mapping: DmaMapping) -> Result<(), DmaError> {
        self.state.map(mapping, "VFIO_IOMMU_MAP_DMA", |m| {
            // SAFETY: `m` is `mapping`, for which our caller upholds `DmaMapper::map`'s
            // contract.
            unsafe { self.map_ioctl(m) }
        })
    }

    fn unmap(&self, iova: u64, size: u64) -> Result<DmaMapping, DmaError> {
        self.state.unmap(iova, size, "VFIO_IOMMU_UNMAP_DMA", |m| {
            self.container
                .vfio_dma_unmap(m.iova, m.size as usize)
                .map_err(|e| match e {
                    VfioError::IommuDmaUnmap(errno) => io::Error::from_raw_os_error(errno.errno()),
                    VfioError::InvalidDmaUnmapSize => {
                        io::Error::other("the kernel unmapped a different size than was mapped")
                    }
                    other => io::Error::other(other.to_string()),
                })
        })
    }

    fn mappings(&self) -> Vec<DmaMapping> {
        self.state.mappings()
    }
}
