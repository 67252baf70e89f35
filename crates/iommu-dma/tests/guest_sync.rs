//! `GuestMemoryDma` over the software IOMMU: IOVA = GPA for every guest RAM byte and nothing
//! else, through attach, hot-add/remove, sharing and detach.

mod common;

use std::sync::Arc;

use common::TestMapper;
use iommu_dma::{
    DmaError, DmaMapper, DmaOptions, DmaPerm, GuestMemoryDma, HostIommuLimits, IovaRange,
    MemlockBudget, PeerBarStatus, RegionKind, SoftwareIommu,
};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion,
};

const PAGE: u64 = 4096;

fn ram(ranges: &[(u64, u64)]) -> GuestMemoryMmap<()> {
    let ranges: Vec<(GuestAddress, usize)> = ranges
        .iter()
        .map(|&(gpa, size)| (GuestAddress(gpa), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

fn region(gpa: u64, size: u64) -> GuestRegionMmap<()> {
    GuestRegionMmap::new(MmapRegion::new(size as usize).unwrap(), GuestAddress(gpa)).unwrap()
}

/// A pattern that differs per byte and per region, so a mis-translation shows.
fn pattern(gpa: u64, len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((gpa as usize + i) % 251) as u8 ^ salt)
        .collect()
}

/// Every byte of every region is reachable at IOVA = GPA in both directions, and lands in
/// the guest's memory at the same GPA.
fn assert_all_ram_reachable(iommu: &SoftwareIommu, mem: &GuestMemoryMmap<()>, salt: u8) {
    for r in mem.iter() {
        let gpa = r.start_addr().0;
        let len = r.len() as usize;
        let data = pattern(gpa, len, salt);
        iommu.write(gpa, &data).unwrap_or_else(|f| panic!("{f}"));
        let mut seen = vec![0u8; len];
        mem.read_slice(&mut seen, GuestAddress(gpa)).unwrap();
        assert!(
            seen == data,
            "region {gpa:#x}: device write not seen by guest"
        );
        let data2 = pattern(gpa, len, salt.wrapping_add(0x5a));
        mem.write_slice(&data2, GuestAddress(gpa)).unwrap();
        iommu.read(gpa, &mut seen).unwrap();
        assert!(
            seen == data2,
            "region {gpa:#x}: guest write not seen by device"
        );
    }
}

/// Probes just outside every region (and far away) all fault.
fn assert_nothing_else_reachable(iommu: &SoftwareIommu, regions: &[(u64, u64)]) {
    let faults_before = iommu.fault_count();
    let mut probes = vec![0x7f_ffff_f000u64, 0xdead_b000];
    for &(gpa, size) in regions {
        if gpa >= PAGE {
            probes.push(gpa - PAGE);
        }
        probes.push(gpa + size);
    }
    probes.retain(|p| !regions.iter().any(|&(g, s)| *p >= g && *p < g + s));
    for p in &probes {
        assert!(iommu.write(*p, &[1; 8]).is_err(), "{p:#x} is reachable");
    }
    assert_eq!(iommu.fault_count() - faults_before, probes.len() as u64);
}

#[test]
fn every_ram_byte_reachable_at_gpa_and_nothing_else() {
    let layout = [
        (0, 0xa_0000),
        (0x10_0000, 0x30_0000),
        (0x1_0000_0000, 0x10_0000),
    ];
    let mem = ram(&layout);
    let iommu = Arc::new(SoftwareIommu::with_limits("t", HostIommuLimits::x86_vtd()));
    let dma = Arc::new(
        GuestMemoryDma::with_guest_memory(iommu.clone(), &mem, DmaOptions::default()).unwrap(),
    );
    assert!(
        iommu.mappings().is_empty(),
        "nothing mapped before a device attaches"
    );
    let dev = dma.attach_device("0000:01:00.0").unwrap();

    // One mapping per region, at the region's host address, read-write.
    let mappings = iommu.mappings();
    assert_eq!(mappings.len(), layout.len());
    for (m, r) in mappings.iter().zip(mem.iter()) {
        assert_eq!(m.iova, r.start_addr().0);
        assert_eq!(m.size, r.len());
        assert_eq!(m.host_addr, r.as_ptr() as u64);
        assert_eq!(m.perm, DmaPerm::ReadWrite);
    }
    let expected: Vec<IovaRange> = layout
        .iter()
        .map(|&(g, s)| IovaRange::new(g, s).unwrap())
        .collect();
    assert_eq!(iommu.report().reachable_ranges(), expected);
    assert_all_ram_reachable(&iommu, &mem, 0);
    assert_nothing_else_reachable(&iommu, &layout);

    dev.detach().unwrap();
    assert!(iommu.mappings().is_empty());
    assert!(iommu.write(0x1000, b"x").is_err());
}

#[test]
fn hot_add_and_remove_while_attached() {
    let mem = ram(&[(0, 0x10_0000)]);
    let iommu = Arc::new(SoftwareIommu::new("t"));
    let dma = Arc::new(
        GuestMemoryDma::with_guest_memory(iommu.clone(), &mem, DmaOptions::default()).unwrap(),
    );
    let _dev = dma.attach_device("dev").unwrap();

    let added = region(0x2_0000_0000, 0x20_0000);
    let report = dma.add_region(&added).unwrap();
    assert_eq!(report.kind, RegionKind::Ram);
    assert_eq!(
        report.mapped,
        vec![IovaRange::new(0x2_0000_0000, 0x20_0000).unwrap()]
    );
    assert!(report.excluded.is_empty());
    let mem = mem.insert_region(Arc::new(added)).unwrap();
    assert_all_ram_reachable(&iommu, &mem, 7);
    assert_eq!(iommu.mappings().len(), 2);

    // Overlapping hot-add: refused, nothing changes.
    let before = iommu.report();
    let err = dma
        .add_region(&region(0x2_0010_0000, 0x20_0000))
        .unwrap_err();
    assert!(matches!(err, DmaError::RegionOverlap { .. }), "{err}");
    assert!(err.to_string().contains("0x200100000-0x2002fffff"), "{err}");
    assert!(err.to_string().contains("0x200000000-0x2001fffff"), "{err}");
    assert_eq!(iommu.report(), before);

    // Removing something never added, or with the wrong size: refused, nothing changes.
    for (gpa, size) in [(0x3_0000_0000, 0x1000), (0x2_0000_0000, 0x1000)] {
        let err = dma.remove_region(GuestAddress(gpa), size).unwrap_err();
        assert!(matches!(err, DmaError::RegionNotFound { .. }), "{err}");
        assert_eq!(iommu.report(), before);
    }

    dma.remove_region(GuestAddress(0x2_0000_0000), 0x20_0000)
        .unwrap();
    assert_eq!(
        iommu.report().reachable_ranges(),
        vec![IovaRange::new(0, 0x10_0000).unwrap()]
    );
    assert!(iommu.write(0x2_0000_0000, b"x").is_err());
    assert_eq!(dma.report().regions.len(), 1);
}

#[test]
fn hot_add_while_detached_is_mapped_at_attach() {
    let iommu = Arc::new(SoftwareIommu::new("t"));
    let dma = Arc::new(GuestMemoryDma::new(iommu.clone(), DmaOptions::default()));
    let r = region(0x4000_0000, 0x4000);
    let report = dma.add_region(&r).unwrap();
    assert!(report.mapped.is_empty());
    assert!(iommu.mappings().is_empty());
    let dev = dma.attach_device("dev").unwrap();
    assert_eq!(iommu.mappings().len(), 1);
    drop(dev);
    assert!(iommu.mappings().is_empty());
    // Removal while detached needs no unmap.
    dma.remove_region(GuestAddress(0x4000_0000), 0x4000)
        .unwrap();
    assert!(dma.report().regions.is_empty());
}

#[test]
fn two_devices_share_one_set_of_mappings() {
    let layout = [(0, 0x20_0000), (0x1_0000_0000, 0x10_0000)];
    let mem = ram(&layout);
    let iommu = Arc::new(SoftwareIommu::new("shared"));
    let dma = Arc::new(
        GuestMemoryDma::with_guest_memory(iommu.clone(), &mem, DmaOptions::default()).unwrap(),
    );
    let a = dma.attach_device("0000:01:00.0").unwrap();
    let after_first = iommu.mappings();
    let b = dma.attach_device("0000:02:00.0").unwrap();
    assert_eq!(
        iommu.mappings(),
        after_first,
        "the second device maps nothing new"
    );
    assert_eq!(dma.attached_devices(), vec!["0000:01:00.0", "0000:02:00.0"]);
    assert_eq!(b.device(), "0000:02:00.0");

    a.detach().unwrap();
    assert_eq!(
        iommu.mappings(),
        after_first,
        "still in use by the second device"
    );
    assert_all_ram_reachable(&iommu, &mem, 3);

    b.detach().unwrap();
    assert!(iommu.mappings().is_empty());
    assert!(dma.attached_devices().is_empty());

    // Attach again: everything comes back.
    let c = dma.attach_device("0000:03:00.0").unwrap();
    assert_eq!(iommu.mappings().len(), 2);
    assert_all_ram_reachable(&iommu, &mem, 9);
    drop(c);
    assert!(iommu.mappings().is_empty());
}

#[test]
fn region_across_the_msi_window_is_split_and_the_hole_reported() {
    // 32 MiB of RAM at 0xfe000000 crosses the MSI window 0xfee00000-0xfeefffff.
    let layout = [(0, 0x10_0000), (0xfe00_0000, 0x200_0000)];
    let mem = ram(&layout);
    let iommu = Arc::new(SoftwareIommu::with_limits("t", HostIommuLimits::x86_vtd()));
    let dma = Arc::new(
        GuestMemoryDma::with_guest_memory(iommu.clone(), &mem, DmaOptions::default()).unwrap(),
    );
    let _dev = dma.attach_device("dev").unwrap();

    let hole = IovaRange::from_inclusive(0xfee0_0000, 0xfeef_ffff).unwrap();
    assert_eq!(
        iommu.report().reachable_ranges(),
        vec![
            IovaRange::new(0, 0x10_0000).unwrap(),
            IovaRange::from_inclusive(0xfe00_0000, 0xfedf_ffff).unwrap(),
            IovaRange::from_inclusive(0xfef0_0000, 0xffff_ffff).unwrap(),
        ]
    );
    assert_eq!(
        iommu.mappings().len(),
        3,
        "one region, two mappings; nothing per page"
    );

    let report = dma.report();
    let split = &report.regions[1];
    assert_eq!(split.mapped.len(), 2);
    assert_eq!(split.excluded, vec![hole]);
    let text = report.to_string();
    assert!(
        text.contains(
            "guest RAM 0xfe000000-0xffffffff (32 MiB): 2 mappings; NOT mappable (outside the \
             host's valid IOVA ranges, no DMA possible): 0xfee00000-0xfeefffff"
        ),
        "{text}"
    );

    // Both sides of the hole translate to the right guest bytes; the hole faults.
    for gpa in [0xfedf_f000u64, 0xfef0_0000, 0xffff_f000] {
        iommu.write(gpa, &pattern(gpa, 64, 1)).unwrap();
        let mut seen = vec![0u8; 64];
        mem.read_slice(&mut seen, GuestAddress(gpa)).unwrap();
        assert_eq!(seen, pattern(gpa, 64, 1), "{gpa:#x}");
    }
    let fault = iommu.write(0xfee0_0000, &[0xff; 4]).unwrap_err();
    assert_eq!(fault.fault_iova, 0xfee0_0000);
    let mut seen = [0u8; 4];
    mem.read_slice(&mut seen, GuestAddress(0xfee0_0000))
        .unwrap();
    assert_eq!(seen, [0; 4], "the hole's RAM was not written");
}

#[test]
fn detached_report_shows_what_would_be_excluded() {
    let mem = ram(&[(0xfee0_0000, 0x10_0000)]);
    let iommu = Arc::new(SoftwareIommu::with_limits("t", HostIommuLimits::x86_vtd()));
    let dma = GuestMemoryDma::with_guest_memory(iommu, &mem, DmaOptions::default()).unwrap();
    let report = dma.report();
    assert_eq!(
        report.regions[0].excluded,
        vec![IovaRange::new(0xfee0_0000, 0x10_0000).unwrap()]
    );
    assert!(
        report
            .to_string()
            .contains("no device attached, nothing mapped")
    );
}

#[test]
fn guest_memory_stays_alive_while_mapped() {
    let iommu = Arc::new(SoftwareIommu::new("t"));
    let dev = {
        let mem = ram(&[(0, 0x4000)]);
        let dma = Arc::new(
            GuestMemoryDma::with_guest_memory(iommu.clone(), &mem, DmaOptions::default()).unwrap(),
        );
        dma.attach_device("dev").unwrap()
        // `mem` and `dma` dropped here; the attachment keeps both alive.
    };
    iommu.write(0x3ff0, b"still here").unwrap();
    let mut back = [0u8; 10];
    iommu.read(0x3ff0, &mut back).unwrap();
    assert_eq!(&back, b"still here");
    drop(dev);
    assert!(iommu.mappings().is_empty());
}

#[test]
fn memlock_shortfall_fails_attach_with_both_numbers_and_changes_nothing() {
    let mem = ram(&[(0, 0x20_0000), (0x1_0000_0000, 0x20_0000)]);
    let mapper = Arc::new(TestMapper::new(HostIommuLimits::x86_vtd()));
    *mapper.budget.lock().unwrap() = Some(MemlockBudget {
        limit: Some(0x30_0000),
        already_locked: 0x1000,
        cap_ipc_lock: false,
    });
    let dma = Arc::new(
        GuestMemoryDma::with_guest_memory(mapper.clone(), &mem, DmaOptions::default()).unwrap(),
    );
    let err = dma.attach_device("0000:01:00.0").unwrap_err();
    assert!(matches!(err, DmaError::Memlock { .. }), "{err}");
    let msg = err.to_string();
    for want in [
        "software IOMMU 'test'",
        "0000:01:00.0",
        "4194304 bytes (4 MiB)",
        "4096 bytes (4 KiB)",
        "3145728 bytes (3 MiB)",
        "ulimit -l",
        "LimitMEMLOCK",
        "CAP_IPC_LOCK",
    ] {
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
    }
    assert!(mapper.mappings().is_empty());
    assert!(dma.attached_devices().is_empty());

    // With CAP_IPC_LOCK the limit does not apply.
    mapper.budget.lock().unwrap().as_mut().unwrap().cap_ipc_lock = true;
    let dev = dma.attach_device("0000:01:00.0").unwrap();
    assert_eq!(mapper.mappings().len(), 2);

    // Hot-add beyond the limit while attached: refused, nothing changes.
    {
        // A kernel would now count the 4 MiB pinned at attach.
        let mut budget = mapper.budget.lock().unwrap();
        let budget = budget.as_mut().unwrap();
        budget.cap_ipc_lock = false;
        budget.already_locked = 0x40_0000;
    }
    let before = mapper.report();
    let err = dma
        .add_region(&region(0x2_0000_0000, 0x10_0000))
        .unwrap_err();
    assert!(matches!(err, DmaError::Memlock { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("hot-added guest RAM 0x200000000-0x2000fffff")
    );
    assert_eq!(mapper.report(), before);
    assert_eq!(dma.report().regions.len(), 2);
    drop(dev);
}

#[test]
fn failed_attach_rolls_back_every_mapping() {
    // Three regions, but the host allows two mappings: the third map fails.
    let mem = ram(&[(0, 0x1000), (0x10_0000, 0x1000), (0x20_0000, 0x1000)]);
    let limits = HostIommuLimits::new(vec![IovaRange::FULL], PAGE, Some(2)).unwrap();
    let iommu = Arc::new(SoftwareIommu::with_limits("small", limits));
    let dma = Arc::new(
        GuestMemoryDma::with_guest_memory(iommu.clone(), &mem, DmaOptions::default()).unwrap(),
    );
    let err = dma.attach_device("dev").unwrap_err();
    assert!(
        matches!(err, DmaError::TooManyMappings { limit: 2, .. }),
        "{err}"
    );
    assert!(iommu.mappings().is_empty(), "rolled back");
    assert!(dma.attached_devices().is_empty());
    assert!(dma.report().regions.iter().all(|r| r.mapped.is_empty()));
}

#[test]
fn a_device_that_narrows_the_valid_ranges_is_refused() {
    let mem = ram(&[(0xfee0_0000, 0x10_0000)]);
    let mapper = Arc::new(TestMapper::new(HostIommuLimits::unrestricted()));
    let dma = Arc::new(
        GuestMemoryDma::with_guest_memory(mapper.clone(), &mem, DmaOptions::default()).unwrap(),
    );
    let first = dma.attach_device("first").unwrap();
    let before = mapper.report();
    // The second device's group reserves the MSI window, where RAM is mapped already.
    *mapper.refreshed_limits.lock().unwrap() = Some(HostIommuLimits::x86_vtd());
    let err = dma.attach_device("second").unwrap_err();
    assert!(matches!(err, DmaError::OutsideValidRanges { .. }), "{err}");
    assert!(err.to_string().contains("after attaching second"), "{err}");
    assert_eq!(mapper.report(), before);
    assert_eq!(dma.attached_devices(), vec!["first"]);
    drop(first);
}

#[test]
fn unmap_failure_at_detach_is_reported_and_the_mapping_stays_recorded() {
    let mem = ram(&[(0, 0x1000), (0x10_0000, 0x1000)]);
    let mapper = Arc::new(TestMapper::new(HostIommuLimits::unrestricted()));
    let dma = Arc::new(
        GuestMemoryDma::with_guest_memory(mapper.clone(), &mem, DmaOptions::default()).unwrap(),
    );
    let dev = dma.attach_device("dev").unwrap();
    mapper.failing_unmaps.lock().unwrap().push(0x10_0000);
    let err = dev.detach().unwrap_err();
    assert!(matches!(err, DmaError::Incomplete { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("1 mapping(s) could not be unmapped"), "{msg}");
    assert!(msg.contains("0x100000-0x100fff"), "{msg}");
    assert!(msg.contains("Device or resource busy"), "{msg}");
    // What is still mapped is exactly what the report says.
    let report = dma.report();
    assert_eq!(mapper.mappings().len(), 1);
    assert_eq!(report.regions[0].mapped, vec![]);
    assert_eq!(
        report.regions[1].mapped,
        vec![IovaRange::new(0x10_0000, 0x1000).unwrap()]
    );
}

#[test]
fn peer_bars_are_off_by_default_and_mapped_when_enabled() {
    let bar = MmapRegion::<()>::new(0x4000).unwrap();
    let mem = ram(&[(0, 0x10_0000)]);

    let iommu = Arc::new(SoftwareIommu::new("t"));
    let dma = Arc::new(
        GuestMemoryDma::with_guest_memory(iommu.clone(), &mem, DmaOptions::default()).unwrap(),
    );
    let _dev = dma.attach_device("dev").unwrap();
    // SAFETY: `bar` outlives `dma`'s use of it (it is not tracked at all when disabled).
    let status =
        unsafe { dma.add_peer_bar("0000:01:00.0 BAR0", 0xc000_0000, bar.as_ptr(), 0x4000) };
    assert_eq!(status.unwrap(), PeerBarStatus::Disabled);
    assert_eq!(iommu.mappings().len(), 1);

    let iommu = Arc::new(SoftwareIommu::new("p2p"));
    let opts = DmaOptions {
        peer_to_peer: true,
        ..DmaOptions::default()
    };
    let dma = Arc::new(GuestMemoryDma::with_guest_memory(iommu.clone(), &mem, opts).unwrap());
    let dev = dma.attach_device("dev").unwrap();
    // SAFETY: `bar` lives until the end of the test, after the BAR is removed.
    let status =
        unsafe { dma.add_peer_bar("0000:01:00.0 BAR0", 0xc000_0000, bar.as_ptr(), 0x4000) };
    assert_eq!(status.unwrap(), PeerBarStatus::Tracked);
    iommu.write(0xc000_0010, b"doorbell").unwrap();
    // SAFETY: reading the test's own mapping with no DMA in flight.
    let seen = unsafe { std::slice::from_raw_parts(bar.as_ptr().add(0x10), 8) };
    assert_eq!(seen, b"doorbell");
    assert!(
        dma.report()
            .to_string()
            .contains("peer BAR 0000:01:00.0 BAR0 0xc0000000-0xc0003fff")
    );

    // A BAR over RAM is refused.
    // SAFETY: refused before anything is recorded.
    let err = unsafe { dma.add_peer_bar("bad", 0x8000, bar.as_ptr(), 0x4000) }.unwrap_err();
    assert!(matches!(err, DmaError::RegionOverlap { .. }), "{err}");
    // A host address whose page offset differs from the guest address is refused.
    // SAFETY: refused before anything is recorded.
    let err =
        unsafe { dma.add_peer_bar("odd", 0xd000_0000, bar.as_ptr().wrapping_add(0x800), 0x1000) }
            .unwrap_err();
    assert!(matches!(err, DmaError::BadRegion { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("offset within a 0x1000-byte IOMMU page"),
        "{err}"
    );

    dma.remove_peer_bar(0xc000_0000, 0x4000).unwrap();
    assert!(iommu.write(0xc000_0010, b"x").is_err());
    drop(dev);
    assert!(iommu.mappings().is_empty());
}

#[test]
fn read_only_ram_option() {
    let mem = ram(&[(0, 0x1000)]);
    let iommu = Arc::new(SoftwareIommu::new("t"));
    let opts = DmaOptions {
        ram_perm: DmaPerm::ReadOnly,
        ..DmaOptions::default()
    };
    let dma = Arc::new(GuestMemoryDma::with_guest_memory(iommu.clone(), &mem, opts).unwrap());
    let _dev = dma.attach_device("dev").unwrap();
    assert!(iommu.write(0, b"x").is_err());
    let mut b = [0u8; 1];
    iommu.read(0, &mut b).unwrap();
}

#[test]
fn full_report_reads_well() {
    let mem = ram(&[(0, 0x10_0000), (0x1_0000_0000, 0x10_0000)]);
    let iommu = Arc::new(SoftwareIommu::with_limits(
        "doc",
        HostIommuLimits::x86_vtd(),
    ));
    let dma =
        Arc::new(GuestMemoryDma::with_guest_memory(iommu, &mem, DmaOptions::default()).unwrap());
    let _a = dma.attach_device("0000:01:00.0").unwrap();
    let _b = dma.attach_device("0000:02:00.0").unwrap();
    let text = dma.report().to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "guest memory DMA via software IOMMU 'doc': 2 device(s) attached (0000:01:00.0, \
         0000:02:00.0)"
    );
    assert_eq!(lines[1], "  guest RAM 0x0-0xfffff (1 MiB): 1 mapping");
    assert_eq!(
        lines[2],
        "  guest RAM 0x100000000-0x1000fffff (1 MiB): 1 mapping"
    );
    assert_eq!(
        lines[3],
        "software IOMMU 'doc': 2 mappings (limit 65535), 2 MiB mapped (0x200000 bytes)"
    );
    assert!(lines[6].starts_with("  0x0-0xfffff "), "{text}");
}
