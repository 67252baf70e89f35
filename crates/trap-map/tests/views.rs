//! The mtree, trap table and summary views, and guest placement.

use trap_map::view::{
    GuestPlacement, MMIO32_WINDOW, PlacementError, render_mtree, render_summary, render_trap_table,
};
use trap_map::{DeviceLayout, DevicePlan, HostBar, MsixInfo, MsixRelocation, PageSize, Policy};

/// An Intel 82574L-like NIC: registers in BAR 0, flash in BAR 1, I/O BAR 2, MSI-X in BAR 3.
fn nic() -> DeviceLayout {
    DeviceLayout {
        bars: vec![
            HostBar::memory32(0, 0x2_0000),
            HostBar::memory32(1, 0x8_0000),
            HostBar::io(2, 0x20),
            HostBar::memory32(3, 0x4000),
        ],
        msix: Some(MsixInfo {
            entries: 5,
            table_bar: 3,
            table_offset: 0,
            pba_bar: 3,
            pba_offset: 0x2000,
        }),
    }
}

#[test]
fn mtree_matches_qemu_format() {
    let plan = DevicePlan::new(&nic(), PageSize::Size4K, Policy::default()).unwrap();
    let placement = GuestPlacement::auto(&plan, &GuestPlacement::new()).unwrap();
    // Largest first from the bottom of the window, naturally aligned.
    assert_eq!(placement.address(1), Some(0xc000_0000));
    assert_eq!(placement.address(0), Some(0xc008_0000));
    assert_eq!(placement.address(3), Some(0xc00a_0000));
    assert_eq!(placement.address(2), Some(0xc000));
    let text = render_mtree(&plan, &placement, "0000:02:00.0").unwrap();
    let expected = "\
FlatView #0
 AS \"memory\", root: system
 Root memory region: system
  00000000c0000000-00000000c007ffff (prio 0, ramd): 0000:02:00.0 BAR1 mmap +0x0
  00000000c0080000-00000000c009ffff (prio 0, ramd): 0000:02:00.0 BAR0 mmap +0x0
  00000000c00a0000-00000000c00a004f (prio 0, i/o): 0000:02:00.0 BAR3 msix-table
  00000000c00a0050-00000000c00a0fff (prio 0, i/o): 0000:02:00.0 BAR3 +0x50 (shares a host page with MSI-X structures)
  00000000c00a1000-00000000c00a3fff (prio 0, ramd): 0000:02:00.0 BAR3 mmap +0x1000

FlatView #1
 AS \"I/O\", root: io
 Root memory region: io
  000000000000c000-000000000000c01f (prio 0, i/o): 0000:02:00.0 BAR2 +0x0 (I/O port BAR)

";
    assert_eq!(text, expected);

    let table = render_trap_table(&plan, &placement).unwrap();
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(rows[0].starts_with("BAR  BAR OFFSETS"));
    assert!(rows[1].starts_with("2    0x0-0x1f "), "{table}");
    assert!(rows[1].ends_with("device     I/O port BAR"), "{table}");
    assert!(
        rows[2].contains("00000000c00a0000-00000000c00a004f"),
        "{table}"
    );
    assert!(
        rows[2].ends_with("emulation  MSI-X table (emulated)"),
        "{table}"
    );
    assert!(
        rows[3].ends_with("shares a host page with MSI-X structures"),
        "{table}"
    );

    let summary = render_summary(&plan);
    assert!(
        summary.contains("BAR3 (mem32, 16 KiB): mapped 12 KiB in 1 range (3 pages of 4 KiB), trapped 4 KiB in 2 ranges"),
        "{summary}"
    );
    assert!(
        summary.contains("BAR2 (I/O, 32 B): trapped 32 B in 1 range"),
        "{summary}"
    );
}

#[test]
fn relocated_area_is_named_by_what_it_is() {
    let policy = Policy {
        msix_relocation: MsixRelocation::Bar(4),
        ..Policy::default()
    };
    let plan = DevicePlan::new(&nic(), PageSize::Size4K, policy).unwrap();
    let placement = GuestPlacement::auto(&plan, &GuestPlacement::new()).unwrap();
    let text = render_mtree(&plan, &placement, "0000:02:00.0").unwrap();
    assert!(
        text.contains("(prio 0, i/o): 0000:02:00.0 BAR4 msix-pba\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "(prio 0, i/o): 0000:02:00.0 BAR4 +0x58 (added for MSI-X relocation, no device behind it)\n"
        ),
        "{text}"
    );
    assert!(render_summary(&plan).contains("BAR4 (mem64 prefetchable, 4 KiB added by the VMM)"));
}

#[test]
fn nothing_trapped_says_so() {
    let layout = DeviceLayout {
        bars: vec![HostBar::memory64(0, 0x1000)],
        msix: None,
    };
    let plan = DevicePlan::new(&layout, PageSize::Size4K, Policy::default()).unwrap();
    let mut placement = GuestPlacement::new();
    placement.set(0, 0x1_0000_0000);
    assert!(
        render_trap_table(&plan, &placement)
            .unwrap()
            .contains("(nothing is trapped)")
    );
    let text = render_mtree(&plan, &placement, "d").unwrap();
    assert!(
        !text.contains("FlatView #1"),
        "no I/O BARs, no I/O view: {text}"
    );
}

#[test]
fn auto_placement_works_around_fixed_bars() {
    let plan = DevicePlan::new(&nic(), PageSize::Size4K, Policy::default()).unwrap();
    let mut fixed = GuestPlacement::new();
    fixed.set(0, 0xc000_0000);
    let placement = GuestPlacement::auto(&plan, &fixed).unwrap();
    assert_eq!(placement.address(0), Some(0xc000_0000));
    assert_eq!(placement.address(1), Some(0xc008_0000));
    assert_eq!(placement.address(3), Some(0xc002_0000));
}

#[test]
fn bad_placements_are_explained() {
    let plan = DevicePlan::new(&nic(), PageSize::Size4K, Policy::default()).unwrap();
    let good = GuestPlacement::auto(&plan, &GuestPlacement::new()).unwrap();
    let with = |bar: u8, address: u64| {
        let mut p = good.clone();
        p.set(bar, address);
        p.validate(&plan).unwrap_err()
    };
    assert!(matches!(
        with(3, 0xc00a_1000),
        PlacementError::Misaligned { bar: 3, .. }
    ));
    assert!(matches!(
        with(3, 0xc000_0000),
        PlacementError::Overlap { .. }
    ));
    let e = with(0, 0x1_0000_0000);
    assert!(e.to_string().contains("below 4 GiB"), "{e}");
    assert!(matches!(
        with(2, 0x1_0000),
        PlacementError::OutOfRange { bar: 2, .. }
    ));
    assert_eq!(with(5, 0), PlacementError::UnknownBar { bar: 5 });
    // I/O and memory spaces do not overlap each other.
    let mut p = good.clone();
    p.set(2, 0xc000);
    p.set(3, 0xc000);
    assert!(p.validate(&plan).is_ok());
    assert_eq!(
        render_mtree(&plan, &GuestPlacement::new(), "d").unwrap_err(),
        PlacementError::Missing { bar: 0 }
    );
    // A 32-bit BAR that does not fit the default window.
    let huge = DeviceLayout {
        bars: vec![HostBar::memory32(0, 1 << 31)],
        msix: None,
    };
    let plan = DevicePlan::new(&huge, PageSize::Size4K, Policy::default()).unwrap();
    assert_eq!(
        GuestPlacement::auto(&plan, &GuestPlacement::new()).unwrap_err(),
        PlacementError::NoRoom {
            bar: 0,
            size: 1 << 31
        }
    );
    // A 64-bit one goes above 4 GiB instead.
    let huge = DeviceLayout {
        bars: vec![HostBar::memory64(0, 1 << 31)],
        msix: None,
    };
    let plan = DevicePlan::new(&huge, PageSize::Size4K, Policy::default()).unwrap();
    let p = GuestPlacement::auto(&plan, &GuestPlacement::new()).unwrap();
    assert_eq!(p.address(0), Some(0x80_0000_0000));
    assert!(MMIO32_WINDOW.1 - MMIO32_WINDOW.0 < 1 << 31);
}
