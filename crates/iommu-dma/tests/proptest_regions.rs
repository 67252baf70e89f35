//! Properties over random guest memory layouts: after attach, hot-remove and detach, the
//! IOMMU maps exactly guest RAM that the host allows, one mapping per piece, and nothing else.

use std::sync::Arc;

use iommu_dma::{DmaMapper, DmaOptions, GuestMemoryDma, HostIommuLimits, IovaRange, SoftwareIommu};
use proptest::prelude::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const PAGE: u64 = 4096;

/// Non-overlapping page-aligned regions (gap pages, size pages) laid out from `base`; a base
/// near the MSI window makes some regions cross it.
fn layouts() -> impl Strategy<Value = Vec<(u64, u64)>> {
    let base = prop_oneof![Just(0u64), Just(0xfed0_0000u64), Just(0xfedf_0000u64)];
    (base, prop::collection::vec((0u64..64, 1u64..512), 1..8)).prop_map(|(base, shape)| {
        let mut at = base;
        shape
            .into_iter()
            .map(|(gap, pages)| {
                let gpa = at + gap * PAGE;
                at = gpa + pages * PAGE;
                (gpa, pages * PAGE)
            })
            .collect()
    })
}

fn hole() -> IovaRange {
    IovaRange::from_inclusive(0xfee0_0000, 0xfeef_ffff).unwrap()
}

/// Pages of `regions` that a device should reach with the x86 limits.
fn expected_reachable(regions: &[(u64, u64)], page: u64) -> bool {
    let hole = hole();
    regions
        .iter()
        .any(|&(g, s)| page >= g && page < g + s && !hole.contains(page))
}

fn check_exact(iommu: &SoftwareIommu, regions: &[(u64, u64)]) -> Result<(), TestCaseError> {
    let hole = hole();
    // Each region is at most two mappings (around the hole), at IOVA = GPA.
    let mappings = iommu.mappings();
    let expected_count: usize = regions
        .iter()
        .map(|&(g, s)| {
            let r = IovaRange::new(g, s).unwrap();
            let below = r.start() < hole.start();
            let above = r.last() > hole.last();
            usize::from(below) + usize::from(above)
        })
        .sum();
    prop_assert_eq!(mappings.len(), expected_count);
    // Probe every page from before the first region to after the last.
    let lo = regions.first().map_or(0, |r| r.0.saturating_sub(2 * PAGE));
    let hi = regions.last().map_or(0, |r| r.0 + r.1 + 2 * PAGE);
    let mut page = lo;
    while page < hi {
        let reachable = iommu.write(page, &[0xa5]).is_ok();
        prop_assert_eq!(
            reachable,
            expected_reachable(regions, page),
            "page {:#x} of {:x?}",
            page,
            regions
        );
        page += PAGE;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn attach_remove_detach_keep_exactly_guest_ram_mapped(
        layout in layouts(),
        remove_mask in any::<u8>(),
    ) {
        let ranges: Vec<(GuestAddress, usize)> =
            layout.iter().map(|&(g, s)| (GuestAddress(g), s as usize)).collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
        let iommu = Arc::new(SoftwareIommu::with_limits("prop", HostIommuLimits::x86_vtd()));
        let dma = Arc::new(
            GuestMemoryDma::with_guest_memory(iommu.clone(), &mem, DmaOptions::default()).unwrap(),
        );
        // Regions entirely in the hole cannot be mapped; the others are.
        let mappable: Vec<(u64, u64)> = layout
            .iter()
            .copied()
            .filter(|&(g, s)| !hole().contains_range(&IovaRange::new(g, s).unwrap()))
            .collect();
        let dev = dma.attach_device("a").unwrap();
        let second = dma.attach_device("b").unwrap();
        check_exact(&iommu, &mappable)?;
        drop(second);
        check_exact(&iommu, &mappable)?;

        let mut kept = Vec::new();
        for (i, &(g, s)) in layout.iter().enumerate() {
            if remove_mask & (1 << (i % 8)) != 0 {
                dma.remove_region(GuestAddress(g), s).unwrap();
            } else if mappable.contains(&(g, s)) {
                kept.push((g, s));
            }
        }
        check_exact(&iommu, &kept)?;

        dev.detach().unwrap();
        prop_assert!(iommu.mappings().is_empty());
    }
}
