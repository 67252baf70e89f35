//! The bookkeeping every backend shares: which IOVA ranges are mapped, and the checks a map
//! or unmap must pass before any backend touches the kernel.
//!
//! Keeping one table per mapper means all backends reject bad input identically, with no
//! state change, and the diagnostics report reads the same for each.

use std::collections::BTreeMap;

use crate::error::DmaError;
use crate::mapper::{DmaMapping, HostIommuLimits};
use crate::range::{IovaRange, RangeList};

/// Mappings keyed by IOVA start. Invariant: no two overlap.
#[derive(Debug, Default, Clone)]
pub(crate) struct MappingTable {
    by_iova: BTreeMap<u64, DmaMapping>,
}

impl MappingTable {
    /// Check that `m` may be added; returns its IOVA range. Changes nothing.
    pub(crate) fn check_map(
        &self,
        mapper: &str,
        limits: &HostIommuLimits,
        m: &DmaMapping,
    ) -> Result<IovaRange, DmaError> {
        if m.size == 0 {
            return Err(DmaError::ZeroSize {
                mapper: mapper.into(),
                iova: m.iova,
            });
        }
        let range = m.iova_range().ok_or_else(|| DmaError::Overflow {
            mapper: mapper.into(),
            space: "IOVA",
            addr: m.iova,
            size: m.size,
        })?;
        if m.host_addr.checked_add(m.size - 1).is_none() {
            return Err(DmaError::Overflow {
                mapper: mapper.into(),
                space: "host address",
                addr: m.host_addr,
                size: m.size,
            });
        }
        let page = limits.page_size();
        for (what, value) in [
            ("IOVA", m.iova),
            ("size", m.size),
            ("host address", m.host_addr),
        ] {
            if value & (page - 1) != 0 {
                return Err(DmaError::Unaligned {
                    mapper: mapper.into(),
                    range,
                    what,
                    value,
                    page_size: page,
                });
            }
        }
        if limits.range_containing(&range).is_none() {
            return Err(DmaError::OutsideValidRanges {
                mapper: mapper.into(),
                range,
                valid: RangeList(limits.valid_ranges()).to_string(),
            });
        }
        if let Some(existing) = self.any_overlap(&range) {
            return Err(DmaError::Overlap {
                mapper: mapper.into(),
                range,
                existing,
            });
        }
        if let Some(limit) = limits.max_mappings() {
            if self.by_iova.len() >= limit as usize {
                return Err(DmaError::TooManyMappings {
                    mapper: mapper.into(),
                    range,
                    limit,
                });
            }
        }
        Ok(range)
    }

    /// Record `m`, which [`check_map`](Self::check_map) accepted.
    pub(crate) fn insert(&mut self, m: DmaMapping) {
        let old = self.by_iova.insert(m.iova, m);
        debug_assert!(old.is_none(), "check_map lets no overlap through");
    }

    /// Check that `iova..iova+size` is exactly one existing mapping and return it.
    pub(crate) fn check_unmap(
        &self,
        mapper: &str,
        iova: u64,
        size: u64,
    ) -> Result<DmaMapping, DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroSize {
                mapper: mapper.into(),
                iova,
            });
        }
        let range = IovaRange::new(iova, size).ok_or_else(|| DmaError::Overflow {
            mapper: mapper.into(),
            space: "IOVA",
            addr: iova,
            size,
        })?;
        match self.by_iova.get(&iova) {
            Some(m) if m.size == size => Ok(*m),
            _ => match self.any_overlap(&range) {
                Some(existing) => Err(DmaError::PartialUnmap {
                    mapper: mapper.into(),
                    range,
                    existing,
                }),
                None => Err(DmaError::NotMapped {
                    mapper: mapper.into(),
                    range,
                }),
            },
        }
    }

    /// Forget the mapping at `iova` ([`check_unmap`](Self::check_unmap) found it).
    pub(crate) fn remove(&mut self, iova: u64) -> Option<DmaMapping> {
        let m = self.by_iova.remove(&iova)?;
        Some(m)
    }

    /// The mapping that translates `iova`, if any.
    pub(crate) fn lookup(&self, iova: u64) -> Option<&DmaMapping> {
        let (_, m) = self.by_iova.range(..=iova).next_back()?;
        (iova - m.iova < m.size).then_some(m)
    }

    /// An existing mapping that overlaps `range` (the highest one), if any.
    fn any_overlap(&self, range: &IovaRange) -> Option<IovaRange> {
        // Only the last mapping starting at or before `range.last()` can overlap from the
        // left; any starting inside `range` is caught by it too (it starts <= last).
        let (_, m) = self.by_iova.range(..=range.last()).next_back()?;
        let existing = m.iova_range().expect("recorded mappings are valid");
        if existing.overlaps(range) {
            return Some(existing);
        }
        None
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &DmaMapping> {
        self.by_iova.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_iova.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::DmaPerm;

    fn m(iova: u64, size: u64) -> DmaMapping {
        DmaMapping {
            iova,
            size,
            host_addr: 0x7f00_0000_0000 + iova,
            perm: DmaPerm::ReadWrite,
        }
    }

    #[test]
    fn overlap_detection_covers_all_shapes() {
        let limits = HostIommuLimits::unrestricted();
        let mut t = MappingTable::default();
        t.insert(m(0x10000, 0x10000));
        for (iova, size) in [
            (0x10000, 0x1000), // same start
            (0xf000, 0x2000),  // from the left
            (0x1f000, 0x2000), // from the right
            (0x8000, 0x20000), // covering
            (0x12000, 0x1000), // inside
        ] {
            assert!(
                matches!(
                    t.check_map("t", &limits, &m(iova, size)),
                    Err(DmaError::Overlap { .. })
                ),
                "{iova:#x}+{size:#x}"
            );
        }
        assert!(t.check_map("t", &limits, &m(0x20000, 0x1000)).is_ok());
        assert!(t.check_map("t", &limits, &m(0xf000, 0x1000)).is_ok());
    }

    #[test]
    fn lookup_finds_containing_mapping() {
        let mut t = MappingTable::default();
        t.insert(m(0x10000, 0x10000));
        assert_eq!(t.lookup(0x1ffff).map(|m| m.iova), Some(0x10000));
        assert!(t.lookup(0x20000).is_none());
        assert!(t.lookup(0xffff).is_none());
    }

    #[test]
    fn unmap_must_match_exactly() {
        let mut t = MappingTable::default();
        t.insert(m(0x10000, 0x10000));
        assert!(matches!(
            t.check_unmap("t", 0x10000, 0x1000),
            Err(DmaError::PartialUnmap { .. })
        ));
        assert!(matches!(
            t.check_unmap("t", 0x30000, 0x1000),
            Err(DmaError::NotMapped { .. })
        ));
        assert_eq!(t.check_unmap("t", 0x10000, 0x10000).unwrap().iova, 0x10000);
    }
}
