//! The [`DmaMapper`] trait: what every IOMMU backend offers, and the values it works with.

use std::fmt;

use crate::error::DmaError;
use crate::memlock::MemlockBudget;
use crate::range::{IovaRange, RangeList};
use crate::report::MappingReport;

/// What a device may do with a mapping: read memory (DMA to the device), write memory
/// (DMA from the device), or both. The kernel refuses a mapping with neither, so there is
/// no such value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaPerm {
    /// The device may read the memory but not write it (`VFIO_DMA_MAP_FLAG_READ`).
    ReadOnly,
    /// The device may write the memory but not read it (`VFIO_DMA_MAP_FLAG_WRITE`).
    WriteOnly,
    /// The device may read and write (what guest RAM is normally mapped with).
    ReadWrite,
}

impl DmaPerm {
    /// Whether a device access of kind `access` is allowed by this permission.
    pub fn allows(self, access: DmaAccess) -> bool {
        matches!(
            (self, access),
            (DmaPerm::ReadWrite, _)
                | (DmaPerm::ReadOnly, DmaAccess::Read)
                | (DmaPerm::WriteOnly, DmaAccess::Write)
        )
    }

    /// Whether the device may read memory through this mapping.
    pub fn readable(self) -> bool {
        self.allows(DmaAccess::Read)
    }

    /// Whether the device may write memory through this mapping.
    pub fn writable(self) -> bool {
        self.allows(DmaAccess::Write)
    }
}

impl fmt::Display for DmaPerm {
    /// `r-`, `-w` or `rw`, like a page table dump.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DmaPerm::ReadOnly => "r-",
            DmaPerm::WriteOnly => "-w",
            DmaPerm::ReadWrite => "rw",
        })
    }
}

/// The direction of one device DMA access, seen from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaAccess {
    /// The device reads memory (e.g. fetches a command or a buffer to transmit).
    Read,
    /// The device writes memory (e.g. posts a completion or received data).
    Write,
}

impl fmt::Display for DmaAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DmaAccess::Read => "read",
            DmaAccess::Write => "write",
        })
    }
}

/// One IOMMU mapping: `size` bytes at IOVA `iova` translate to the host virtual address
/// `host_addr` of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DmaMapping {
    /// I/O virtual address the device uses (the guest-physical address for guest RAM).
    pub iova: u64,
    /// Length in bytes; a multiple of the IOMMU page size.
    pub size: u64,
    /// Host virtual address in this process that backs `iova`.
    pub host_addr: u64,
    /// What the device may do.
    pub perm: DmaPerm,
}

impl DmaMapping {
    /// The IOVA range covered, or `None` for a zero size or a range past `u64::MAX`.
    pub fn iova_range(&self) -> Option<IovaRange> {
        IovaRange::new(self.iova, self.size)
    }
}

/// What the host IOMMU allows, as the kernel reports it (`VFIO_IOMMU_GET_INFO`,
/// `IOMMU_IOAS_IOVA_RANGES`) or as a software IOMMU is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIommuLimits {
    valid_ranges: Vec<IovaRange>,
    page_size: u64,
    max_mappings: Option<u32>,
}

impl HostIommuLimits {
    /// Limits from the IOVA ranges a device may use, the smallest IOMMU page size (a power
    /// of two), and the number of mappings the host allows (`None`: no limit reported).
    ///
    /// Ranges are sorted; overlapping or touching ranges are merged.
    pub fn new(
        valid_ranges: Vec<IovaRange>,
        page_size: u64,
        max_mappings: Option<u32>,
    ) -> Result<Self, DmaError> {
        if !page_size.is_power_of_two() {
            return Err(DmaError::InvalidLimits(format!(
                "IOMMU page size {page_size:#x} is not a power of two"
            )));
        }
        if valid_ranges.is_empty() {
            return Err(DmaError::InvalidLimits(
                "the host reports no valid IOVA range at all".into(),
            ));
        }
        let mut ranges = valid_ranges;
        ranges.sort();
        let mut merged: Vec<IovaRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(prev) if r.start() <= prev.last().saturating_add(1) => {
                    *prev = IovaRange::from_inclusive(prev.start(), prev.last().max(r.last()))
                        .expect("merged range is ordered");
                }
                _ => merged.push(r),
            }
        }
        Ok(HostIommuLimits {
            valid_ranges: merged,
            page_size,
            max_mappings,
        })
    }

    /// Any IOVA, 4 KiB pages, no mapping limit: a software IOMMU with nothing reserved.
    pub fn unrestricted() -> Self {
        HostIommuLimits {
            valid_ranges: vec![IovaRange::FULL],
            page_size: 4096,
            max_mappings: None,
        }
    }

    /// What the type1 IOMMU reports on a typical x86 host with VT-d (seen in the nested test
    /// bed): IOVAs `0x0-0xfedfffff` and `0xfef00000-0x7fffffffff` (39-bit address width, the
    /// MSI window `0xfee00000-0xfeefffff` reserved), 4 KiB pages, 65535 mappings.
    pub fn x86_vtd() -> Self {
        HostIommuLimits {
            valid_ranges: vec![
                IovaRange::from_inclusive(0, 0xfedf_ffff).expect("ordered"),
                IovaRange::from_inclusive(0xfef0_0000, 0x7f_ffff_ffff).expect("ordered"),
            ],
            page_size: 4096,
            max_mappings: Some(65535),
        }
    }

    /// IOVA ranges a mapping may use, sorted and disjoint.
    pub fn valid_ranges(&self) -> &[IovaRange] {
        &self.valid_ranges
    }

    /// Smallest IOMMU page size: IOVAs, sizes and host addresses must be multiples of it.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// How many mappings the host allows at once, if it says.
    pub fn max_mappings(&self) -> Option<u32> {
        self.max_mappings
    }

    /// The valid range that holds all of `range`, if one does.
    pub fn range_containing(&self, range: &IovaRange) -> Option<IovaRange> {
        self.valid_ranges
            .iter()
            .find(|v| v.contains_range(range))
            .copied()
    }
}

impl fmt::Display for HostIommuLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "valid IOVA ranges {}; IOMMU page size {:#x}; ",
            RangeList(&self.valid_ranges),
            self.page_size
        )?;
        match self.max_mappings {
            Some(n) => write!(f, "at most {n} mappings"),
            None => f.write_str("no mapping limit reported"),
        }
    }
}

/// An IOMMU address space that maps IOVAs to host memory for device DMA.
///
/// One value stands for one translation domain: a VFIO type1 container, an iommufd IOAS, or
/// a software IOMMU. All devices attached to it see the same mappings, which is why methods
/// take `&self` (backends lock inside) and why a mapper is usually shared as
/// `Arc<dyn DmaMapper>`.
///
/// Every backend validates its input the same way before it touches the kernel: zero size,
/// address overflow, IOVA/size/host address not aligned to [`HostIommuLimits::page_size`],
/// overlap with an existing mapping, IOVA outside [`HostIommuLimits::valid_ranges`], the
/// mapping count limit, and unmap of anything but exactly one existing mapping are errors
/// that leave the mapper unchanged.
pub trait DmaMapper: Send + Sync + fmt::Debug {
    /// What this is, for messages: `VFIO type1 container (fd 7)`, `iommufd IOAS 2 ...`.
    fn name(&self) -> &str;

    /// The host's limits as last queried.
    fn limits(&self) -> HostIommuLimits;

    /// Query the host again (the valid ranges narrow when another device joins a container
    /// or IOAS) and return the new limits.
    fn refresh_limits(&self) -> Result<HostIommuLimits, DmaError> {
        Ok(self.limits())
    }

    /// The locked-memory budget that mappings are charged to, or `None` when mapping pins
    /// nothing (a software IOMMU). Kernel backends pin every mapped page.
    fn memlock_budget(&self) -> Result<Option<MemlockBudget>, DmaError> {
        Ok(None)
    }

    /// Map `mapping.size` bytes at `mapping.iova` to `mapping.host_addr`.
    ///
    /// # Safety
    ///
    /// Until this exact mapping is unmapped, `host_addr..host_addr + size` must stay mapped
    /// in this process, and the device may read or write it at any time (per `perm`). So it
    /// may only be used through raw pointers, volatile accesses and system calls (as
    /// `vm-memory` does for guest memory); no Rust reference to it may exist. This is the
    /// contract of `vfio_ioctls::VfioOps::vfio_dma_map`.
    unsafe fn map(&self, mapping: DmaMapping) -> Result<(), DmaError>;

    /// Unmap exactly the mapping at `iova` of `size` bytes and return it.
    fn unmap(&self, iova: u64, size: u64) -> Result<DmaMapping, DmaError>;

    /// Every current mapping, sorted by IOVA.
    fn mappings(&self) -> Vec<DmaMapping>;

    /// What is mapped, for diagnostics; its `Display` is a readable table.
    fn report(&self) -> MappingReport {
        MappingReport::new(self.name(), self.limits(), self.mappings())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions() {
        assert!(DmaPerm::ReadOnly.allows(DmaAccess::Read));
        assert!(!DmaPerm::ReadOnly.allows(DmaAccess::Write));
        assert!(!DmaPerm::WriteOnly.readable());
        assert!(DmaPerm::ReadWrite.readable() && DmaPerm::ReadWrite.writable());
        assert_eq!(DmaPerm::ReadOnly.to_string(), "r-");
    }

    #[test]
    fn limits_merge_and_validate() {
        let r = |s, l| IovaRange::from_inclusive(s, l).unwrap();
        let l = HostIommuLimits::new(
            vec![r(0x3000, 0x3fff), r(0, 0x1fff), r(0x2000, 0x2fff)],
            4096,
            None,
        )
        .unwrap();
        assert_eq!(l.valid_ranges(), &[r(0, 0x3fff)]);
        assert!(HostIommuLimits::new(vec![], 4096, None).is_err());
        assert!(HostIommuLimits::new(vec![IovaRange::FULL], 3000, None).is_err());
        assert_eq!(
            HostIommuLimits::x86_vtd().to_string(),
            "valid IOVA ranges 0x0-0xfedfffff, 0xfef00000-0x7fffffffff; IOMMU page size 0x1000; \
             at most 65535 mappings"
        );
    }
}
