//! Splitting a guest memory region at the host's reserved IOVA holes.
//!
//! A region is one mapping unless the host's valid IOVA ranges cut it: on x86 the MSI window
//! `0xfee00000-0xfeefffff` is reserved (writes there are interrupt messages, not memory), so
//! RAM that a VMM places across it can only be mapped around it. The part in the hole is
//! not mapped; devices cannot DMA there on any host, and the caller reports it.

use crate::mapper::{DmaMapping, DmaPerm, HostIommuLimits};
use crate::range::IovaRange;

/// How a region at IOVA = GPA maps on a host: the mappings to make, and the parts left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SplitPlan {
    pub(crate) mappings: Vec<DmaMapping>,
    pub(crate) excluded: Vec<IovaRange>,
}

/// Plan `range` (backed at `host_addr`) as mappings inside `limits`' valid ranges, each
/// aligned to the IOMMU page size. `host_addr` has the same page offset as `range.start()`.
pub(crate) fn split_region(
    range: IovaRange,
    host_addr: u64,
    perm: DmaPerm,
    limits: &HostIommuLimits,
) -> SplitPlan {
    let mut mappings = Vec::new();
    for valid in limits.valid_ranges() {
        if let Some(piece) = range.intersect_aligned(valid, limits.page_size()) {
            mappings.push(DmaMapping {
                iova: piece.start(),
                size: piece.size(),
                host_addr: host_addr.saturating_add(piece.start() - range.start()),
                perm,
            });
        }
    }
    let mut excluded = Vec::new();
    let mut next = Some(range.start());
    for m in &mappings {
        let start = next.expect("a mapping lies after the last covered address");
        if m.iova > start {
            excluded.push(IovaRange::from_inclusive(start, m.iova - 1).expect("ordered"));
        }
        // `None` once the mapping reaches u64::MAX: nothing can follow it.
        next = (m.iova + (m.size - 1)).checked_add(1);
    }
    if let Some(start) = next {
        if start <= range.last() {
            excluded.push(IovaRange::from_inclusive(start, range.last()).expect("ordered"));
        }
    }
    SplitPlan { mappings, excluded }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_inside_one_range_is_one_mapping() {
        let r = IovaRange::new(0, 0x8000_0000).unwrap();
        let plan = split_region(
            r,
            0x7f00_0000_0000,
            DmaPerm::ReadWrite,
            &HostIommuLimits::x86_vtd(),
        );
        assert_eq!(plan.mappings.len(), 1);
        assert_eq!(plan.mappings[0].size, 0x8000_0000);
        assert!(plan.excluded.is_empty());
    }

    #[test]
    fn region_across_msi_window_is_split_around_it() {
        let r = IovaRange::new(0xf000_0000, 0x2000_0000).unwrap();
        let plan = split_region(
            r,
            0x7f00_0000_0000,
            DmaPerm::ReadWrite,
            &HostIommuLimits::x86_vtd(),
        );
        assert_eq!(plan.mappings.len(), 2);
        assert_eq!(plan.mappings[0].iova, 0xf000_0000);
        assert_eq!(plan.mappings[0].size, 0x0ee0_0000);
        assert_eq!(plan.mappings[1].iova, 0xfef0_0000);
        assert_eq!(plan.mappings[1].host_addr, 0x7f00_0000_0000 + 0x0ef0_0000);
        assert_eq!(plan.mappings[1].size, 0x1_1000_0000 - 0xfef0_0000);
        assert_eq!(
            plan.excluded,
            vec![IovaRange::from_inclusive(0xfee0_0000, 0xfeef_ffff).unwrap()]
        );
    }

    #[test]
    fn region_past_address_width_loses_its_tail() {
        let r = IovaRange::new(0x7f_0000_0000, 0x2_0000_0000).unwrap();
        let plan = split_region(r, 0x1000, DmaPerm::ReadOnly, &HostIommuLimits::x86_vtd());
        assert_eq!(plan.mappings.len(), 1);
        assert_eq!(plan.mappings[0].size, 0x1_0000_0000);
        assert_eq!(
            plan.excluded,
            vec![IovaRange::from_inclusive(0x80_0000_0000, 0x80_ffff_ffff).unwrap()]
        );
    }

    #[test]
    fn region_entirely_in_hole_maps_nothing() {
        let r = IovaRange::new(0xfee0_0000, 0x1000).unwrap();
        let plan = split_region(r, 0x1000, DmaPerm::ReadWrite, &HostIommuLimits::x86_vtd());
        assert!(plan.mappings.is_empty());
        assert_eq!(plan.excluded, vec![r]);
    }

    #[test]
    fn region_at_top_of_address_space() {
        let r = IovaRange::from_inclusive(0xffff_ffff_ffff_0000, u64::MAX).unwrap();
        let plan = split_region(r, 0, DmaPerm::ReadWrite, &HostIommuLimits::unrestricted());
        assert_eq!(plan.mappings.len(), 1);
        assert!(plan.excluded.is_empty());
    }
}
