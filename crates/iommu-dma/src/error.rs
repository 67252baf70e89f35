//! Errors of this crate. Each names the mapper (container or IOAS), the IOVA range and its
//! size, the errno text where the kernel said no, and what to do about it.

use std::io;

use crate::memlock::MemlockShortfall;
use crate::range::{ByteSize, IovaRange};

/// An error from mapping, unmapping, querying or opening an IOMMU.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// A map or unmap of zero bytes.
    #[error(
        "{mapper}: DMA range at IOVA {iova:#x} has size 0; a mapping covers at least one IOMMU page"
    )]
    ZeroSize {
        /// The container, IOAS or software IOMMU.
        mapper: String,
        /// The IOVA that was asked for.
        iova: u64,
    },

    /// `address + size` runs past the end of the 64-bit address space.
    #[error(
        "{mapper}: DMA range at {space} {addr:#x} of {size:#x} bytes ({}) runs past the end of \
         the 64-bit address space",
        ByteSize(*.size)
    )]
    Overflow {
        /// The container, IOAS or software IOMMU.
        mapper: String,
        /// `"IOVA"` or `"host address"`.
        space: &'static str,
        /// Start address in that space.
        addr: u64,
        /// Size asked for.
        size: u64,
    },

    /// IOVA, size or host address not a multiple of the IOMMU page size.
    #[error(
        "{mapper}: {what} {value:#x} of DMA range {range} ({}) is not aligned to the IOMMU page \
         size {page_size:#x}; IOVA, size and host address must all be multiples of it",
        ByteSize(.range.size())
    )]
    Unaligned {
        /// The container, IOAS or software IOMMU.
        mapper: String,
        /// The IOVA range asked for.
        range: IovaRange,
        /// `"IOVA"`, `"size"` or `"host address"`.
        what: &'static str,
        /// The offending value.
        value: u64,
        /// The IOMMU page size.
        page_size: u64,
    },

    /// The range overlaps a mapping that exists already.
    #[error(
        "{mapper}: DMA range {range} ({}) overlaps the existing mapping {existing} ({}); unmap \
         that first",
        ByteSize(.range.size()),
        ByteSize(.existing.size())
    )]
    Overlap {
        /// The container, IOAS or software IOMMU.
        mapper: String,
        /// The IOVA range asked for.
        range: IovaRange,
        /// An existing mapping it overlaps.
        existing: IovaRange,
    },

    /// The range is not inside one of the host's valid IOVA ranges.
    #[error(
        "{mapper}: DMA range {range} ({}) is outside the host's valid IOVA ranges ({valid}); the \
         rest is reserved by the host (e.g. the MSI window 0xfee00000-0xfeefffff) or beyond the \
         IOMMU's address width, so no device can use it",
        ByteSize(.range.size())
    )]
    OutsideValidRanges {
        /// The container, IOAS or software IOMMU.
        mapper: String,
        /// The IOVA range asked for.
        range: IovaRange,
        /// The valid ranges, as text.
        valid: String,
    },

    /// The host's mapping count limit is reached.
    #[error(
        "{mapper}: cannot map DMA range {range} ({}): all {limit} DMA mappings the host allows \
         are in use; map fewer, larger regions, or raise the limit (vfio_iommu_type1 module \
         parameter dma_entry_limit)",
        ByteSize(.range.size())
    )]
    TooManyMappings {
        /// The container, IOAS or software IOMMU.
        mapper: String,
        /// The IOVA range asked for.
        range: IovaRange,
        /// The host's limit.
        limit: u32,
    },

    /// Unmap of a range where nothing is mapped.
    #[error(
        "{mapper}: cannot unmap DMA range {range} ({}): nothing is mapped there",
        ByteSize(.range.size())
    )]
    NotMapped {
        /// The container, IOAS or software IOMMU.
        mapper: String,
        /// The IOVA range asked for.
        range: IovaRange,
    },

    /// Unmap of a range that is not exactly one existing mapping.
    #[error(
        "{mapper}: cannot unmap DMA range {range} ({}): it is not exactly the mapping {existing} \
         ({}) that is there; unmap whole mappings (type1v2 cannot split one)",
        ByteSize(.range.size()),
        ByteSize(.existing.size())
    )]
    PartialUnmap {
        /// The container, IOAS or software IOMMU.
        mapper: String,
        /// The IOVA range asked for.
        range: IovaRange,
        /// The existing mapping it overlaps.
        existing: IovaRange,
    },

    /// Pinning would exceed `RLIMIT_MEMLOCK`.
    #[error("{mapper}: {shortfall}")]
    Memlock {
        /// The container or IOAS.
        mapper: String,
        /// The numbers and how to raise the limit.
        shortfall: MemlockShortfall,
    },

    /// The kernel refused to map.
    #[error(
        "{mapper}: {op} of IOVA {range} ({}) to host address {host_addr:#x} failed: {source}{}",
        ByteSize(.range.size()),
        hint_suffix(.source)
    )]
    MapFailed {
        /// The container or IOAS.
        mapper: String,
        /// The ioctl: `VFIO_IOMMU_MAP_DMA` or `IOMMU_IOAS_MAP`.
        op: &'static str,
        /// The IOVA range asked for.
        range: IovaRange,
        /// The host virtual address asked for.
        host_addr: u64,
        /// The errno.
        #[source]
        source: io::Error,
    },

    /// The kernel refused to unmap, or unmapped a different amount.
    #[error(
        "{mapper}: {op} of IOVA {range} ({}) failed: {source}{}",
        ByteSize(.range.size()),
        hint_suffix(.source)
    )]
    UnmapFailed {
        /// The container or IOAS.
        mapper: String,
        /// The ioctl: `VFIO_IOMMU_UNMAP_DMA` or `IOMMU_IOAS_UNMAP`.
        op: &'static str,
        /// The IOVA range asked for.
        range: IovaRange,
        /// The errno, or what went wrong.
        #[source]
        source: io::Error,
    },

    /// A device node could not be opened.
    #[error("cannot open {path}: {source}; {hint}")]
    Open {
        /// `/dev/vfio/vfio` or `/dev/iommu`.
        path: String,
        /// The error from `open`.
        #[source]
        source: io::Error,
        /// What to do about it.
        hint: String,
    },

    /// A query or set-up ioctl failed (`VFIO_IOMMU_GET_INFO`, `IOMMU_IOAS_ALLOC`, ...).
    #[error("{mapper}: {op} failed: {source}; {hint}")]
    Setup {
        /// The container, IOAS or device node.
        mapper: String,
        /// The operation.
        op: &'static str,
        /// The errno or parse error.
        #[source]
        source: io::Error,
        /// What to do about it.
        hint: String,
    },

    /// Host IOMMU limits that make no sense.
    #[error("invalid host IOMMU limits: {0}")]
    InvalidLimits(String),

    /// A hot-added guest region overlaps one that is tracked already.
    #[error(
        "{mapper}: guest memory region {range} ({}) overlaps region {existing} that is already \
         mapped for DMA; remove that one first",
        ByteSize(.range.size())
    )]
    RegionOverlap {
        /// The container, IOAS or software IOMMU.
        mapper: String,
        /// The guest-physical range of the new region.
        range: IovaRange,
        /// The region it overlaps.
        existing: IovaRange,
    },

    /// A hot-remove names a region that was never added.
    #[error(
        "{mapper}: no guest memory region {range} ({}) is tracked for DMA; a removed region must \
         match an added one exactly",
        ByteSize(.range.size())
    )]
    RegionNotFound {
        /// The container, IOAS or software IOMMU.
        mapper: String,
        /// The guest-physical range asked for.
        range: IovaRange,
    },

    /// A guest region that cannot be mapped (no host address, empty, past `u64::MAX`).
    #[error(
        "{mapper}: guest memory region at {gpa:#x} of {size:#x} bytes cannot be mapped: {reason}"
    )]
    BadRegion {
        /// The container, IOAS or software IOMMU.
        mapper: String,
        /// Guest-physical start.
        gpa: u64,
        /// Size in bytes.
        size: u64,
        /// Why.
        reason: String,
    },

    /// Some unmaps failed during detach or removal; the mappings named stay recorded.
    #[error("{mapper}: {} mapping(s) could not be unmapped and stay in place: {}", .failures.len(), join_errors(.failures))]
    Incomplete {
        /// The container, IOAS or software IOMMU.
        mapper: String,
        /// One error per mapping left behind.
        failures: Vec<DmaError>,
    },
}

fn join_errors(errors: &[DmaError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn hint_suffix(err: &io::Error) -> String {
    match errno_hint(err) {
        Some(h) => format!(" ({h})"),
        None => String::new(),
    }
}

/// What an errno from a DMA map or unmap usually means, in the words of the fix.
pub(crate) fn errno_hint(err: &io::Error) -> Option<&'static str> {
    Some(match err.raw_os_error()? {
        libc::EFAULT => {
            "the host address range is not mapped in this process, or its pages cannot be pinned"
        }
        libc::ENOMEM => {
            "pinning ran out of locked memory: check RLIMIT_MEMLOCK (`ulimit -l`) and free memory"
        }
        libc::EEXIST => "the IOVA is already mapped in this container/IOAS, by another user of it",
        libc::EINVAL => {
            "the kernel rejected the range: unaligned, outside the valid IOVA ranges, or no IOMMU \
             type set yet (attach a group to the container first)"
        }
        libc::ENOSPC => {
            "the host's DMA mapping limit is reached (vfio_iommu_type1 dma_entry_limit)"
        }
        libc::EPERM | libc::EACCES => {
            "permission denied: run as root, or give the user access to the VFIO/iommufd nodes"
        }
        libc::EBUSY => "the range is in use by the kernel (pinned by an in-flight operation)",
        libc::ENOTTY => "this file descriptor does not support the ioctl: wrong device node?",
        libc::ENOENT => "nothing is mapped at that IOVA in the kernel's view",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_failure_names_everything() {
        let e = DmaError::MapFailed {
            mapper: "VFIO type1 container (fd 7)".into(),
            op: "VFIO_IOMMU_MAP_DMA",
            range: IovaRange::new(0x10_0000, 0x20_0000).unwrap(),
            host_addr: 0x7f00_0000_0000,
            source: io::Error::from_raw_os_error(libc::EFAULT),
        };
        let msg = e.to_string();
        for want in [
            "VFIO type1 container (fd 7)",
            "VFIO_IOMMU_MAP_DMA",
            "0x100000-0x2fffff",
            "2 MiB",
            "0x7f0000000000",
            "Bad address",
            "not mapped in this process",
        ] {
            assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        }
        assert!(!msg.contains("Error(14)"));
    }
}
