//! The iommufd backend: an I/O address space (IOAS) on `/dev/iommu` (Linux 6.2+ with
//! `CONFIG_IOMMUFD`, and `CONFIG_VFIO_DEVICE_CDEV` for VFIO devices to use it).
//!
//! Set-up order, mirroring the type1 one:
//!
//! 1. [`open_iommufd`] opens `/dev/iommu`;
//! 2. the device crate makes a `vfio_ioctls::VfioIommufd` from it (which allocates an
//!    IOAS) and opens each device cdev with `VfioDevice::new(path, vfio_iommufd, true)`,
//!    which binds the device and attaches it to the IOAS;
//! 3. [`IommufdMapper::from_vfio`] wraps that IOAS and reads its valid IOVA ranges
//!    (`IOMMU_IOAS_IOVA_RANGES`). The ranges narrow with each attached device (the MSI window
//!    appears only then), so [`DmaMapper::refresh_limits`] queries again.
//!
//! Maps use `iommufd_ioctls::IommuFd::map_iommu_ioas` with `IOMMU_IOAS_MAP_FIXED_IOVA`, so
//! IOVA = GPA as with type1. `iommufd-ioctls` has no wrapper for `IOMMU_IOAS_IOVA_RANGES`;
//! it is issued here with the `iommufd-bindings` structures.

use std::io;
use std::mem::size_of;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use iommufd_bindings::{
    iommu_ioas_iova_ranges, iommu_ioas_map, iommu_iova_range,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE,
    iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE,
};
use iommufd_ioctls::{IommuFd, IommufdError, IommufdIoas};
#[cfg(feature = "vfio-cdev")]
use vfio_ioctls::VfioIommufd;

use crate::devnode::{IOMMUFD_PATH, open_rw};
use crate::error::DmaError;
use crate::kernel::KernelMappings;
use crate::mapper::{DmaMapper, DmaMapping, HostIommuLimits};
use crate::memlock::MemlockBudget;
use crate::range::IovaRange;

mod ioctl {
    use iommufd_bindings::{IOMMUFD_CMD_IOAS_IOVA_RANGES, IOMMUFD_TYPE};
    vmm_sys_util::ioctl_io_nr!(
        IOMMU_IOAS_IOVA_RANGES,
        IOMMUFD_TYPE as u32,
        IOMMUFD_CMD_IOAS_IOVA_RANGES
    );
}
use ioctl::IOMMU_IOAS_IOVA_RANGES;

/// Open `/dev/iommu`, with a message that says what to do when it is missing.
pub fn open_iommufd() -> Result<Arc<IommuFd>, DmaError> {
    open_iommufd_at(Path::new(IOMMUFD_PATH))
}

/// Open an iommufd node at `path` (for a non-standard `/dev`).
pub fn open_iommufd_at(path: &Path) -> Result<Arc<IommuFd>, DmaError> {
    Ok(Arc::new(IommuFd::new_from_fd(open_rw(path)?)))
}

/// The errno inside an `IommufdError`, so messages show the kernel's words.
fn iommufd_io_error(e: IommufdError) -> io::Error {
    match e {
        IommufdError::OpenIommufd(io) => io,
        IommufdError::IommuIoasAlloc(s)
        | IommufdError::IommuIoasMap(s)
        | IommufdError::IommuIoasUnmap(s)
        | IommufdError::IommuDestroy(s) => io::Error::from_raw_os_error(s.errno()),
        other => io::Error::other(other.to_string()),
    }
}

/// A [`DmaMapper`] over one iommufd IOAS. See the [module documentation](self).
pub struct IommufdMapper {
    iommufd: Arc<IommuFd>,
    ioas: Arc<IommufdIoas>,
    state: KernelMappings,
}

impl std::fmt::Debug for IommufdMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("IommufdMapper").field(&self.state).finish()
    }
}

impl IommufdMapper {
    /// Allocate a new IOAS on `iommufd` and wrap it. Attach devices to
    /// [`ioas`](Self::ioas) afterwards, then map (the attach narrows the valid ranges).
    pub fn new_ioas(iommufd: Arc<IommuFd>) -> Result<Self, DmaError> {
        let ioas = IommufdIoas::new(Arc::clone(&iommufd)).map_err(|e| DmaError::Setup {
            mapper: format!("iommufd {IOMMUFD_PATH} (fd {})", iommufd.as_raw_fd()),
            op: "IOMMU_IOAS_ALLOC",
            source: iommufd_io_error(e),
            hint: "is this file descriptor really /dev/iommu? (CONFIG_IOMMUFD)".to_string(),
        })?;
        Self::with_ioas(iommufd, Arc::new(ioas))
    }

    /// Wrap the IOAS that a `VfioIommufd` binds its devices to (feature `vfio-cdev`).
    #[cfg(feature = "vfio-cdev")]
    pub fn from_vfio(vfio: &VfioIommufd) -> Result<Self, DmaError> {
        Self::with_ioas(Arc::clone(vfio.iommufd()), Arc::clone(vfio.ioas()))
    }

    /// Wrap an existing IOAS of `iommufd` and read its valid IOVA ranges.
    pub fn with_ioas(iommufd: Arc<IommuFd>, ioas: Arc<IommufdIoas>) -> Result<Self, DmaError> {
        let name = format!(
            "iommufd IOAS {} ({IOMMUFD_PATH} fd {})",
            ioas.id(),
            iommufd.as_raw_fd()
        );
        let mapper = IommufdMapper {
            iommufd,
            ioas,
            state: KernelMappings::new(name),
        };
        mapper.refresh_limits()?;
        Ok(mapper)
    }

    /// The iommufd.
    pub fn iommufd(&self) -> &Arc<IommuFd> {
        &self.iommufd
    }

    /// The IOAS; attach devices (or a `VfioIommufd`) to it.
    pub fn ioas(&self) -> &Arc<IommufdIoas> {
        &self.ioas
    }

    /// `IOMMU_IOAS_IOVA_RANGES`: the allowed ranges and the IOVA alignment.
    fn query_ranges(&self) -> io::Result<(Vec<IovaRange>, u64)> {
        let mut buf = vec![iommu_iova_range::default(); 8];
        // The count can grow between two calls (a device attached meanwhile): retry a few times.
        for _ in 0..4 {
            let mut arg = iommu_ioas_iova_ranges {
                size: size_of::<iommu_ioas_iova_ranges>() as u32,
                ioas_id: self.ioas.id(),
                num_iovas: buf.len() as u32,
                __reserved: 0,
                allowed_iovas: buf.as_mut_ptr() as u64,
                out_iova_alignment: 0,
            };
            // SAFETY: the fd is an iommufd; `arg` is a complete iommu_ioas_iova_ranges whose
            // `allowed_iovas` points at `num_iovas` writable elements, which bounds what the
            // kernel writes.
            let ret = unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ref(
                    &*self.iommufd,
                    IOMMU_IOAS_IOVA_RANGES(),
                    &mut arg,
                )
            };
            if ret < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EMSGSIZE) && arg.num_iovas as usize > buf.len()
                {
                    buf.resize(arg.num_iovas as usize, iommu_iova_range::default());
                    continue;
                }
                return Err(err);
            }
            let n = (arg.num_iovas as usize).min(buf.len());
            let ranges = buf[..n]
                .iter()
                .map(|r| {
                    IovaRange::from_inclusive(r.start, r.last).ok_or_else(|| {
                        io::Error::other(format!(
                            "kernel reported IOVA range {:#x}-{:#x}, which ends before it starts",
                            r.start, r.last
                        ))
                    })
                })
                .collect::<io::Result<Vec<_>>>()?;
            return Ok((ranges, arg.out_iova_alignment));
        }
        Err(io::Error::other(
            "the number of IOVA ranges kept changing while it was read",
        ))
    }
}

impl DmaMapper for IommufdMapper {
    fn name(&self) -> &str {
        self.state.name()
    }

    fn limits(&self) -> HostIommuLimits {
        self.state.limits()
    }

    fn refresh_limits(&self) -> Result<HostIommuLimits, DmaError> {
        let op = "IOMMU_IOAS_IOVA_RANGES";
        let (ranges, align) = self.query_ranges().map_err(|e| {
            self.state
                .setup_error(op, e, "is the IOAS still allocated on this iommufd?")
        })?;
        // SAFETY: sysconf has no memory-safety preconditions.
        let host_page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let host_page = u64::try_from(host_page).unwrap_or(4096).max(1);
        // Pinning is page-granular whatever the IOAS alignment says.
        let page_size = align.max(host_page).next_power_of_two();
        // iommufd has no per-IOAS mapping count limit (unlike type1's dma_entry_limit).
        let limits = HostIommuLimits::new(ranges, page_size, None).map_err(|e| {
            self.state.setup_error(
                op,
                io::Error::other(e.to_string()),
                "no IOVA is usable: the attached devices reserve everything",
            )
        })?;
        self.state.set_limits(limits.clone());
        Ok(limits)
    }

    fn memlock_budget(&self) -> Result<Option<MemlockBudget>, DmaError> {
        self.state.memlock_budget().map(Some)
    }

    unsafe fn map(&self, mapping: DmaMapping) -> Result<(), DmaError> {
        self.state.map(mapping, "IOMMU_IOAS_MAP", |m| {
            let mut flags = iommufd_ioas_map_flags_IOMMU_IOAS_MAP_FIXED_IOVA;
            if m.perm.readable() {
                flags |= iommufd_ioas_map_flags_IOMMU_IOAS_MAP_READABLE;
            }
            if m.perm.writable() {
                flags |= iommufd_ioas_map_flags_IOMMU_IOAS_MAP_WRITEABLE;
            }
            let arg = iommu_ioas_map {
                size: size_of::<iommu_ioas_map>() as u32,
                flags,
                ioas_id: self.ioas.id(),
                __reserved: 0,
                user_va: m.host_addr,
                length: m.size,
                iova: m.iova,
            };
            // The memory `arg` names is covered by the caller's `DmaMapper::map` contract.
            self.iommufd.map_iommu_ioas(&arg).map_err(iommufd_io_error)
        })
    }

    fn unmap(&self, iova: u64, size: u64) -> Result<DmaMapping, DmaError> {
        self.state.unmap(iova, size, "IOMMU_IOAS_UNMAP", |m| {
            self.ioas.unmap(m.iova, m.size).map_err(iommufd_io_error)
        })
    }

    fn mappings(&self) -> Vec<DmaMapping> {
        self.state.mappings()
    }
}
