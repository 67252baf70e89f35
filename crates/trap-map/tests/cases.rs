//! Named layouts with the well-known passthrough problems, checked segment by segment.

#[path = "support/invariants.rs"]
mod invariants;

use pci_config::BarKind;
use trap_map::{
    DeviceLayout, DevicePlan, HostBar, MmapArea, MsixInfo, MsixRelocation, MsixStructure, PageSize,
    PlanError, Policy, RelocationKind, SegmentKind, TrapHandling, TrapReason,
};

use PageSize::{Size4K, Size16K, Size64K};
use TrapReason::*;

/// `(offset, len, None)` for a mapping at the same host offset, `(offset, len, Some(reason))`
/// for a trap.
type Expected = [(u64, u64, Option<TrapReason>)];

fn plan(layout: &DeviceLayout, page: PageSize, policy: Policy) -> DevicePlan {
    let plan = DevicePlan::new(layout, page, policy).expect("plan");
    invariants::check_plan(layout, page, policy, &plan).expect("invariants");
    plan
}

fn assert_segments(plan: &DevicePlan, bar: u8, expected: &Expected) {
    let got: Vec<(u64, u64, Option<TrapReason>)> = plan
        .bar(bar)
        .unwrap_or_else(|| panic!("BAR {bar} missing"))
        .segments()
        .iter()
        .map(|s| match s.kind {
            SegmentKind::Map { host_region_offset } => {
                assert_eq!(host_region_offset, s.offset);
                (s.offset, s.len, None)
            }
            SegmentKind::Trap { reason } => (s.offset, s.len, Some(reason)),
        })
        .collect();
    assert_eq!(got, expected, "BAR {bar}");
}

fn msix(entries: u16, table: (u8, u32), pba: (u8, u32)) -> Option<MsixInfo> {
    Some(MsixInfo {
        entries,
        table_bar: table.0,
        table_offset: table.1,
        pba_bar: pba.0,
        pba_offset: pba.1,
    })
}

fn qemu_nvme() -> DeviceLayout {
    DeviceLayout {
        bars: vec![HostBar::memory64(0, 0x4000)],
        msix: msix(65, (0, 0x2000), (0, 0x3000)),
    }
}

#[test]
fn qemu_nvme_pba_on_its_own_page_is_mapped() {
    let p = plan(&qemu_nvme(), Size4K, Policy::default());
    assert_segments(
        &p,
        0,
        &[
            (0, 0x2000, None),
            (0x2000, 0x410, Some(MsixTable)),
            (0x2410, 0xbf0, Some(MsixPage)),
            (0x3000, 0x1000, None),
        ],
    );
    assert!(!p.msix().unwrap().pba_emulated);
}

#[test]
fn trap_pba_policy_traps_the_pba_page() {
    let policy = Policy {
        trap_pba: true,
        ..Policy::default()
    };
    let p = plan(&qemu_nvme(), Size4K, policy);
    assert_segments(
        &p,
        0,
        &[
            (0, 0x2000, None),
            (0x2000, 0x410, Some(MsixTable)),
            (0x2410, 0xbf0, Some(MsixPage)),
            (0x3000, 0x10, Some(MsixPba)),
            (0x3010, 0xff0, Some(MsixPage)),
        ],
    );
}

#[test]
fn table_and_pba_on_the_same_page() {
    let layout = DeviceLayout {
        bars: vec![HostBar::memory32(0, 0x4000)],
        msix: msix(8, (0, 0x1000), (0, 0x1800)),
    };
    let p = plan(&layout, Size4K, Policy::default());
    assert_segments(
        &p,
        0,
        &[
            (0, 0x1000, None),
            (0x1000, 0x80, Some(MsixTable)),
            (0x1080, 0x780, Some(MsixPage)),
            (0x1800, 0x8, Some(MsixPba)),
            (0x1808, 0x7f8, Some(MsixPage)),
            (0x2000, 0x2000, None),
        ],
    );
    assert!(p.msix().unwrap().pba_emulated);
}

/// Some NVMe SSDs put a small table at an odd offset in the middle of their registers: the
/// registers around it on the same page trap (and are forwarded) unless MSI-X is relocated.
#[test]
fn table_at_odd_offset_among_registers() {
    let nvme = |msix_mappable| DeviceLayout {
        bars: vec![HostBar::memory64(0, 0x4000).msix_mappable(msix_mappable)],
        msix: msix(9, (0, 0x1810), (0, 0x18a0)),
    };
    let p = plan(&nvme(false), Size4K, Policy::default());
    assert_segments(
        &p,
        0,
        &[
            (0, 0x1000, None),
            (0x1000, 0x810, Some(MsixPage)),
            (0x1810, 0x90, Some(MsixTable)),
            (0x18a0, 0x8, Some(MsixPba)),
            (0x18a8, 0x758, Some(MsixPage)),
            (0x2000, 0x2000, None),
        ],
    );
    assert_eq!(
        p.segment_at(0, 0x1000)
            .unwrap()
            .trap_reason()
            .unwrap()
            .handling(),
        TrapHandling::Device
    );

    // Auto relocation does not help when the host will not mmap the table page anyway.
    let auto = Policy {
        msix_relocation: MsixRelocation::Auto,
        ..Policy::default()
    };
    let p = plan(&nvme(false), Size4K, auto);
    assert!(p.relocation().is_none());

    // With MSIX_MAPPABLE it does: a new 64-bit BAR 2 (slot 1 is BAR 0's upper half) takes the
    // structures and the whole of BAR 0 is mapped.
    let p = plan(&nvme(true), Size4K, auto);
    let r = p.relocation().expect("relocated");
    assert_eq!(r.bar, 2);
    assert_eq!(
        r.kind,
        RelocationKind::NewBar {
            kind: BarKind::Memory64
        }
    );
    assert_segments(&p, 0, &[(0, 0x4000, None)]);
    assert_segments(
        &p,
        2,
        &[
            (0, 0x90, Some(MsixTable)),
            (0x90, 0x8, Some(MsixPba)),
            (0x98, 0xf68, Some(Unbacked)),
        ],
    );
    let m = p.msix().unwrap();
    assert_eq!((m.table_register(), m.pba_register()), (2, 0x90 | 2));
    assert!(p.bar(2).unwrap().is_added());
    assert!(p.bar(2).unwrap().prefetchable());
}

#[test]
fn relocation_into_an_existing_bar_doubles_it() {
    let layout = DeviceLayout {
        bars: vec![HostBar::memory32(0, 0x4000).msix_mappable(true)],
        msix: msix(16, (0, 0x800), (0, 0x900)),
    };
    let policy = Policy {
        msix_relocation: MsixRelocation::Bar(0),
        ..Policy::default()
    };
    let p = plan(&layout, Size4K, policy);
    let b = p.bar(0).unwrap();
    assert_eq!((b.host_size(), b.guest_size()), (0x4000, 0x8000));
    assert_segments(
        &p,
        0,
        &[
            (0, 0x4000, None),
            (0x4000, 0x100, Some(MsixTable)),
            (0x4100, 0x8, Some(MsixPba)),
            (0x4108, 0x3ef8, Some(Unbacked)),
        ],
    );
    assert_eq!(
        p.segment_at(0, 0x5000)
            .unwrap()
            .trap_reason()
            .unwrap()
            .handling(),
        TrapHandling::Unbacked
    );
}

/// On a 64 KiB page host a 16 KiB BAR is smaller than a page: nothing can be mapped.
#[test]
fn sixteen_kib_bar_on_64k_pages() {
    let p = plan(&qemu_nvme(), Size64K, Policy::default());
    assert_segments(
        &p,
        0,
        &[
            (0, 0x2000, Some(MsixPage)),
            (0x2000, 0x410, Some(MsixTable)),
            (0x2410, 0xbf0, Some(MsixPage)),
            (0x3000, 0x10, Some(MsixPba)),
            (0x3010, 0xff0, Some(MsixPage)),
        ],
    );
    let no_msix = DeviceLayout {
        bars: vec![HostBar::memory32(2, 0x4000)],
        msix: None,
    };
    let p = plan(&no_msix, Size64K, Policy::default());
    assert_segments(&p, 2, &[(0, 0x4000, Some(SubPage))]);
    // 16 KiB pages map it whole.
    let p = plan(&no_msix, Size16K, Policy::default());
    assert_segments(&p, 2, &[(0, 0x4000, None)]);
}

/// A table in the middle of a 64 KiB page traps the whole page; the rest of the BAR maps.
#[test]
fn table_in_the_middle_of_a_64k_page() {
    let layout = DeviceLayout {
        bars: vec![HostBar::memory64(0, 0x10_0000)],
        msix: msix(32, (0, 0x2_3000), (0, 0x2_3800)),
    };
    let p = plan(&layout, Size64K, Policy::default());
    assert_segments(
        &p,
        0,
        &[
            (0, 0x2_0000, None),
            (0x2_0000, 0x3000, Some(MsixPage)),
            (0x2_3000, 0x200, Some(MsixTable)),
            (0x2_3200, 0x600, Some(MsixPage)),
            (0x2_3800, 0x8, Some(MsixPba)),
            (0x2_3808, 0xc7f8, Some(MsixPage)),
            (0x3_0000, 0xd_0000, None),
        ],
    );
    // The same layout on 4 KiB pages traps a single page.
    let p = plan(&layout, Size4K, Policy::default());
    assert_eq!(p.bar(0).unwrap().trapped_bytes(), 0x1000);
}

#[test]
fn bar_the_host_marks_not_mmappable() {
    let layout = DeviceLayout {
        bars: vec![
            HostBar::memory32(0, 0x2_0000).not_mmappable(),
            HostBar::memory32(1, 0x4000),
        ],
        msix: msix(4, (1, 0), (1, 0x2000)),
    };
    let p = plan(&layout, Size4K, Policy::default());
    assert_segments(&p, 0, &[(0, 0x2_0000, Some(NotMmappable))]);
    assert_segments(
        &p,
        1,
        &[
            (0, 0x40, Some(MsixTable)),
            (0x40, 0xfc0, Some(MsixPage)),
            (0x1000, 0x3000, None),
        ],
    );
}

#[test]
fn sparse_mmap_areas_leave_holes() {
    let layout = DeviceLayout {
        bars: vec![HostBar::memory64(0, 0x1_0000).sparse_mmap(vec![
            MmapArea {
                offset: 0,
                size: 0x2000,
            },
            MmapArea {
                offset: 0x3000,
                size: 0x5000,
            },
            // Not page aligned at either end: only its whole page maps.
            MmapArea {
                offset: 0x9800,
                size: 0x1c00,
            },
        ])],
        msix: None,
    };
    let p = plan(&layout, Size4K, Policy::default());
    assert_segments(
        &p,
        0,
        &[
            (0, 0x2000, None),
            (0x2000, 0x1000, Some(NotMmappable)),
            (0x3000, 0x5000, None),
            (0x8000, 0x1800, Some(NotMmappable)),
            (0x9800, 0x800, Some(SubPage)),
            (0xa000, 0x1000, None),
            (0xb000, 0x400, Some(SubPage)),
            (0xb400, 0x4c00, Some(NotMmappable)),
        ],
    );
    // An empty list: nothing may be mmapped.
    let none = DeviceLayout {
        bars: vec![HostBar::memory32(0, 0x1000).sparse_mmap(Vec::new())],
        msix: None,
    };
    assert_segments(
        &plan(&none, Size4K, Policy::default()),
        0,
        &[(0, 0x1000, Some(NotMmappable))],
    );
}

/// Without MSIX_MAPPABLE and without sparse areas, the host table pages are never mapped, even
/// after relocation moved the guest's table away (the host would refuse the mmap).
#[test]
fn host_table_pages_stay_unmapped_without_msix_mappable() {
    let layout = DeviceLayout {
        bars: vec![HostBar::memory32(0, 0x4000), HostBar::memory32(1, 0x1000)],
        msix: msix(4, (0, 0x1000), (0, 0x1800)),
    };
    let policy = Policy {
        msix_relocation: MsixRelocation::Bar(1),
        ..Policy::default()
    };
    let p = plan(&layout, Size4K, policy);
    assert_segments(
        &p,
        0,
        &[
            (0, 0x1000, None),
            (0x1000, 0x1000, Some(NotMmappable)),
            (0x2000, 0x2000, None),
        ],
    );
    assert_segments(
        &p,
        1,
        &[
            (0, 0x1000, None),
            (0x1000, 0x40, Some(MsixTable)),
            (0x1040, 0x8, Some(MsixPba)),
            (0x1048, 0xfb8, Some(Unbacked)),
        ],
    );
}

#[test]
fn io_bars_and_trap_all() {
    let layout = DeviceLayout {
        bars: vec![
            HostBar::memory32(0, 0x2_0000),
            HostBar::io(2, 0x20),
            HostBar::memory32(3, 0x4000),
        ],
        msix: msix(5, (3, 0), (3, 0x2000)),
    };
    let p = plan(&layout, Size4K, Policy::default());
    assert_segments(&p, 0, &[(0, 0x2_0000, None)]);
    assert_segments(&p, 2, &[(0, 0x20, Some(IoBar))]);
    let trap_all = Policy {
        trap_all: true,
        ..Policy::default()
    };
    let p = plan(&layout, Size4K, trap_all);
    assert_eq!(p.mapped_bytes(), 0);
    assert_segments(&p, 0, &[(0, 0x2_0000, Some(Policy))]);
    assert_segments(&p, 2, &[(0, 0x20, Some(IoBar))]);
    assert_segments(
        &p,
        3,
        &[
            (0, 0x50, Some(MsixTable)),
            (0x50, 0x1fb0, Some(Policy)),
            (0x2000, 0x8, Some(MsixPba)),
            (0x2008, 0x1ff8, Some(Policy)),
        ],
    );
}

#[test]
fn invalid_layouts_are_refused_with_the_field_named() {
    let page = Size4K;
    let p = Policy::default();
    let err = |bars: Vec<HostBar>, m: Option<MsixInfo>, policy: Policy| {
        DevicePlan::new(&DeviceLayout { bars, msix: m }, page, policy).unwrap_err()
    };
    assert_eq!(
        err(vec![HostBar::memory32(6, 0x1000)], None, p),
        PlanError::BarIndex { index: 6 }
    );
    assert_eq!(
        err(
            vec![HostBar::memory32(1, 0x1000), HostBar::io(1, 8)],
            None,
            p
        ),
        PlanError::DuplicateBar { index: 1 }
    );
    assert_eq!(
        err(
            vec![HostBar::memory64(0, 0x1000), HostBar::memory32(1, 0x1000)],
            None,
            p
        ),
        PlanError::UpperHalfListed { index: 1, lower: 0 }
    );
    assert_eq!(
        err(vec![HostBar::memory64(5, 0x1000)], None, p),
        PlanError::Bar64InLastSlot { index: 5 }
    );
    let e = err(vec![HostBar::memory32(0, 0x3000)], None, p);
    assert!(
        e.to_string().contains("BAR 0 (mem32) has size 0x3000"),
        "{e}"
    );
    assert!(matches!(
        err(vec![HostBar::memory32(0, 1 << 32)], None, p),
        PlanError::BarSize { .. }
    ));
    let e = err(
        vec![HostBar::memory32(0, 0x1000).sparse_mmap(vec![MmapArea {
            offset: 0x800,
            size: 0x1000,
        }])],
        None,
        p,
    );
    assert!(matches!(e, PlanError::SparseArea { index: 0, .. }), "{e}");
    let bar = || vec![HostBar::memory32(0, 0x1000), HostBar::io(1, 0x100)];
    assert_eq!(
        err(bar(), msix(0, (0, 0), (0, 0x800)), p),
        PlanError::MsixEntries { entries: 0 }
    );
    assert_eq!(
        err(bar(), msix(1, (3, 0), (0, 0x800)), p),
        PlanError::MsixBarMissing {
            structure: MsixStructure::Table,
            bar: 3
        }
    );
    assert_eq!(
        err(bar(), msix(1, (0, 0), (1, 0)), p),
        PlanError::MsixInIoBar {
            structure: MsixStructure::Pba,
            bar: 1
        }
    );
    assert!(matches!(
        err(bar(), msix(1, (0, 4), (0, 0x800)), p),
        PlanError::MsixMisaligned { .. }
    ));
    assert!(matches!(
        err(bar(), msix(1, (0, 0xff8), (0, 0x800)), p),
        PlanError::MsixOutsideBar {
            structure: MsixStructure::Table,
            ..
        }
    ));
    assert!(matches!(
        err(bar(), msix(8, (0, 0), (0, 0x40)), p),
        PlanError::MsixOverlap { .. }
    ));
    // A PBA outside its BAR (Chelsio T5 VFs) is fine once the structures are relocated.
    let chelsio = msix(8, (0, 0), (0, 0x8000));
    assert!(matches!(
        err(bar(), chelsio, p),
        PlanError::MsixOutsideBar {
            structure: MsixStructure::Pba,
            ..
        }
    ));
    let reloc = |n| Policy {
        msix_relocation: MsixRelocation::Bar(n),
        ..Policy::default()
    };
    let layout = DeviceLayout {
        bars: bar(),
        msix: chelsio,
    };
    assert!(DevicePlan::new(&layout, page, reloc(2)).is_ok());
    // Relocation targets that cannot work.
    assert!(matches!(
        err(bar(), chelsio, reloc(1)),
        PlanError::RelocationTarget { bar: 1, .. }
    ));
    assert_eq!(
        err(bar(), None, reloc(2)),
        PlanError::RelocationWithoutMsix { bar: 2 }
    );
    let e = err(
        vec![HostBar::memory64(0, 0x4000)],
        msix(1, (0, 0), (0, 0x800)),
        reloc(1),
    );
    assert!(e.to_string().contains("upper half of 64-bit BAR 0"), "{e}");
    let e = err(
        vec![HostBar::memory32(0, 1 << 31)],
        msix(1, (0, 0), (0, 0x800)),
        reloc(0),
    );
    assert!(e.to_string().contains("cannot double"), "{e}");
    let e = err(
        vec![HostBar::memory64(0, 8 << 30)],
        msix(1, (0, 0), (0, 0x800)),
        reloc(0),
    );
    assert!(
        e.to_string().contains("32-bit Table Offset register"),
        "{e}"
    );
}

#[test]
fn lookup_is_by_offset() {
    let p = plan(&qemu_nvme(), Size4K, Policy::default());
    let bar = p.bar(0).unwrap();
    assert_eq!(bar.segment_at(0x1fff).unwrap().offset, 0);
    assert_eq!(
        bar.segment_at(0x2000).unwrap().trap_reason(),
        Some(MsixTable)
    );
    assert_eq!(
        bar.segment_at(0x240f).unwrap().trap_reason(),
        Some(MsixTable)
    );
    assert_eq!(
        bar.segment_at(0x2410).unwrap().trap_reason(),
        Some(MsixPage)
    );
    assert!(bar.segment_at(0x4000).is_none());
    assert!(p.segment_at(1, 0).is_none());
    assert_eq!(bar.mapped().count(), 2);
    assert_eq!(bar.trapped().count(), 2);
}
