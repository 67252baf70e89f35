//! The software IOMMU on its own: translation, faults, permissions, and bad input that must
//! leave the mapper unchanged.

use iommu_dma::{
    DmaAccess, DmaError, DmaMapper, DmaMapping, DmaPerm, FaultReason, HostIommuLimits, IovaRange,
    SoftwareIommu,
};
use vm_memory::MmapRegion;

const PAGE: u64 = 4096;

/// Page-aligned host memory that lives for the whole test.
fn host_memory(size: usize) -> MmapRegion<()> {
    MmapRegion::new(size).expect("anonymous mmap")
}

fn host(mem: &MmapRegion<()>) -> u64 {
    mem.as_ptr() as u64
}

fn bytes_at(mem: &MmapRegion<()>, offset: usize, len: usize) -> Vec<u8> {
    // SAFETY: the test reads its own mapping while no DMA is in flight.
    unsafe { std::slice::from_raw_parts(mem.as_ptr().add(offset), len).to_vec() }
}

fn map(iommu: &SoftwareIommu, iova: u64, size: u64, host_addr: u64, perm: DmaPerm) {
    // SAFETY: every host range mapped in these tests is a live MmapRegion owned by the test
    // for longer than the IOMMU, and only accessed through raw pointers.
    unsafe {
        iommu
            .map(DmaMapping {
                iova,
                size,
                host_addr,
                perm,
            })
            .expect("valid mapping");
    }
}

#[test]
fn write_then_read_through_a_mapping() {
    let mem = host_memory(4 * PAGE as usize);
    let iommu = SoftwareIommu::new("t");
    map(&iommu, 0x10_0000, 4 * PAGE, host(&mem), DmaPerm::ReadWrite);
    iommu.write(0x10_0ff8, b"0123456789abcdef").unwrap();
    assert_eq!(bytes_at(&mem, 0xff8, 16), b"0123456789abcdef");
    let mut back = [0u8; 16];
    iommu.read(0x10_0ff8, &mut back).unwrap();
    assert_eq!(&back, b"0123456789abcdef");
    assert_eq!(iommu.fault_count(), 0);
}

#[test]
fn access_across_adjacent_mappings_is_split_correctly() {
    let a = host_memory(PAGE as usize);
    let b = host_memory(PAGE as usize);
    let iommu = SoftwareIommu::new("t");
    map(&iommu, 0x2000, PAGE, host(&a), DmaPerm::ReadWrite);
    map(&iommu, 0x3000, PAGE, host(&b), DmaPerm::ReadWrite);
    iommu.write(0x2ffc, b"ABCDEFGH").unwrap();
    assert_eq!(bytes_at(&a, 0xffc, 4), b"ABCD");
    assert_eq!(bytes_at(&b, 0, 4), b"EFGH");
    let segs = iommu.translate(0x2ffc, 8, DmaAccess::Read).unwrap();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[0].host_addr, host(&a) + 0xffc);
    assert_eq!(segs[1].host_addr, host(&b));
}

#[test]
fn dma_to_unmapped_iova_is_a_fault_and_writes_nothing() {
    let mem = host_memory(2 * PAGE as usize);
    let iommu = SoftwareIommu::new("t");
    map(&iommu, 0x1000, PAGE, host(&mem), DmaPerm::ReadWrite);
    // Starts mapped, runs into the unmapped page after it.
    let fault = iommu.write(0x1ff0, &[0xaa; 0x20]).unwrap_err();
    assert_eq!(fault.fault_iova, 0x2000);
    assert_eq!(fault.reason, FaultReason::NotMapped);
    assert_eq!(fault.access, DmaAccess::Write);
    // Not even the mapped head was written: the access is checked before any byte moves.
    assert!(bytes_at(&mem, 0, 2 * PAGE as usize).iter().all(|&b| b == 0));
    // Entirely unmapped.
    let mut buf = [0x55u8; 8];
    let fault = iommu.read(0xdead_0000, &mut buf).unwrap_err();
    assert_eq!(fault.fault_iova, 0xdead_0000);
    assert_eq!(buf, [0x55; 8], "a faulting read leaves the buffer alone");
    assert_eq!(iommu.fault_count(), 2);
    let faults = iommu.faults();
    assert_eq!(faults.len(), 2);
    assert_eq!(
        faults[1].to_string(),
        "DMA read of 8 bytes at IOVA 0xdead0000 faulted at 0xdead0000: not mapped"
    );
    assert_eq!(iommu.take_faults().len(), 2);
    assert!(iommu.faults().is_empty());
    assert_eq!(iommu.fault_count(), 2, "the count survives take_faults");
}

#[test]
fn permissions_are_enforced() {
    let ro = host_memory(PAGE as usize);
    let wo = host_memory(PAGE as usize);
    let iommu = SoftwareIommu::new("t");
    map(&iommu, 0x1000, PAGE, host(&ro), DmaPerm::ReadOnly);
    map(&iommu, 0x2000, PAGE, host(&wo), DmaPerm::WriteOnly);

    let fault = iommu.write(0x1000, b"x").unwrap_err();
    assert_eq!(
        fault.reason,
        FaultReason::PermissionDenied {
            perm: DmaPerm::ReadOnly
        }
    );
    assert_eq!(bytes_at(&ro, 0, 1), [0]);
    let mut b = [0u8; 1];
    iommu.read(0x1000, &mut b).unwrap();

    iommu.write(0x2000, b"y").unwrap();
    assert_eq!(bytes_at(&wo, 0, 1), b"y");
    let fault = iommu.read(0x2000, &mut b).unwrap_err();
    assert_eq!(
        fault.reason,
        FaultReason::PermissionDenied {
            perm: DmaPerm::WriteOnly
        }
    );
    // A write spanning rw-less pages faults at the first refused byte.
    let fault = iommu.write(0x1ffe, b"zzzz").unwrap_err();
    assert_eq!(fault.fault_iova, 0x1ffe);
    assert_eq!(bytes_at(&wo, 0, 2), b"y\0");
}

#[test]
fn overflowing_and_empty_accesses() {
    let iommu = SoftwareIommu::new("t");
    let fault = iommu.write(u64::MAX - 1, b"abcd").unwrap_err();
    assert_eq!(fault.reason, FaultReason::AddressOverflow);
    iommu.write(0x1234, b"").unwrap();
    iommu.read(0x1234, &mut []).unwrap();
    assert_eq!(iommu.fault_count(), 1);
}

#[test]
fn fault_log_is_bounded() {
    let iommu = SoftwareIommu::new("t");
    for i in 0..1000u64 {
        let _ = iommu.write(i * PAGE, b"x");
    }
    assert_eq!(iommu.fault_count(), 1000);
    let faults = iommu.faults();
    assert_eq!(faults.len(), 256);
    assert_eq!(faults.last().unwrap().iova, 999 * PAGE);
}

#[test]
fn unmap_returns_the_mapping_and_ends_translation() {
    let mem = host_memory(PAGE as usize);
    let iommu = SoftwareIommu::new("t");
    map(&iommu, 0x5000, PAGE, host(&mem), DmaPerm::ReadWrite);
    let m = iommu.unmap(0x5000, PAGE).unwrap();
    assert_eq!(m.host_addr, host(&mem));
    assert!(iommu.mappings().is_empty());
    assert!(iommu.write(0x5000, b"x").is_err());
}

/// One bad request: what it is, the expected error, and words its message must contain.
struct Bad {
    what: &'static str,
    run: fn(&SoftwareIommu, u64) -> Result<(), DmaError>,
    check: fn(&DmaError) -> bool,
    words: &'static [&'static str],
}

fn try_map(iommu: &SoftwareIommu, iova: u64, size: u64, host_addr: u64) -> Result<(), DmaError> {
    // SAFETY: these requests are all rejected before anything is recorded; the one valid
    // host range used is a live MmapRegion.
    unsafe {
        iommu.map(DmaMapping {
            iova,
            size,
            host_addr,
            perm: DmaPerm::ReadWrite,
        })
    }
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let mem = host_memory(16 * PAGE as usize);
    let mut limits_ranges = HostIommuLimits::x86_vtd().valid_ranges().to_vec();
    limits_ranges.truncate(2);
    let limits = HostIommuLimits::new(limits_ranges, PAGE, Some(3)).unwrap();
    let iommu = SoftwareIommu::with_limits("bad", limits);
    let h = host(&mem);
    map(&iommu, 0x10_0000, 4 * PAGE, h, DmaPerm::ReadWrite);
    map(&iommu, 0x20_0000, PAGE, h + 4 * PAGE, DmaPerm::ReadOnly);

    let cases = [
        Bad {
            what: "zero size",
            run: |i, h| try_map(i, 0x40_0000, 0, h),
            check: |e| matches!(e, DmaError::ZeroSize { .. }),
            words: &["size 0", "0x400000", "software IOMMU 'bad'"],
        },
        Bad {
            what: "unaligned IOVA",
            run: |i, h| try_map(i, 0x40_0800, PAGE, h),
            check: |e| matches!(e, DmaError::Unaligned { what: "IOVA", .. }),
            words: &["IOVA 0x400800", "0x1000", "0x400800-0x4017ff", "4 KiB"],
        },
        Bad {
            what: "unaligned size",
            run: |i, h| try_map(i, 0x40_0000, PAGE + 1, h),
            check: |e| matches!(e, DmaError::Unaligned { what: "size", .. }),
            words: &["size 0x1001"],
        },
        Bad {
            what: "unaligned host address",
            run: |i, h| try_map(i, 0x40_0000, PAGE, h + 8),
            check: |e| {
                matches!(
                    e,
                    DmaError::Unaligned {
                        what: "host address",
                        ..
                    }
                )
            },
            words: &["host address"],
        },
        Bad {
            what: "overlap from the left",
            run: |i, h| try_map(i, 0xf_f000, 2 * PAGE, h + 8 * PAGE),
            check: |e| matches!(e, DmaError::Overlap { .. }),
            words: &[
                "0xff000-0x100fff",
                "overlaps the existing mapping 0x100000-0x103fff",
            ],
        },
        Bad {
            what: "overlap inside",
            run: |i, h| try_map(i, 0x10_1000, PAGE, h + 8 * PAGE),
            check: |e| matches!(e, DmaError::Overlap { .. }),
            words: &["0x101000-0x101fff"],
        },
        Bad {
            what: "overlap covering",
            run: |i, h| try_map(i, 0, 0x30_0000, h + 8 * PAGE),
            check: |e| matches!(e, DmaError::Overlap { .. }),
            words: &["0x0-0x2fffff", "3 MiB"],
        },
        Bad {
            what: "in the MSI window",
            run: |i, h| try_map(i, 0xfee0_0000, PAGE, h + 8 * PAGE),
            check: |e| matches!(e, DmaError::OutsideValidRanges { .. }),
            words: &[
                "0xfee00000-0xfee00fff",
                "0x0-0xfedfffff, 0xfef00000-0x7fffffffff",
                "MSI window",
            ],
        },
        Bad {
            what: "straddling the MSI window edge",
            run: |i, h| try_map(i, 0xfedf_f000, 2 * PAGE, h + 8 * PAGE),
            check: |e| matches!(e, DmaError::OutsideValidRanges { .. }),
            words: &["0xfedff000-0xfee00fff"],
        },
        Bad {
            what: "beyond the IOMMU address width",
            run: |i, h| try_map(i, 0x80_0000_0000, PAGE, h + 8 * PAGE),
            check: |e| matches!(e, DmaError::OutsideValidRanges { .. }),
            words: &["0x8000000000-0x8000000fff"],
        },
        Bad {
            what: "IOVA overflow",
            run: |i, h| try_map(i, u64::MAX - PAGE + 1, 2 * PAGE, h),
            check: |e| matches!(e, DmaError::Overflow { space: "IOVA", .. }),
            words: &["IOVA 0xfffffffffffff000", "past the end"],
        },
        Bad {
            what: "host address overflow",
            run: |i, _| try_map(i, 0x40_0000, 2 * PAGE, u64::MAX - PAGE + 1),
            check: |e| {
                matches!(
                    e,
                    DmaError::Overflow {
                        space: "host address",
                        ..
                    }
                )
            },
            words: &["host address 0xfffffffffffff000"],
        },
        Bad {
            what: "unmap of something never mapped",
            run: |i, _| i.unmap(0x30_0000, PAGE).map(drop),
            check: |e| matches!(e, DmaError::NotMapped { .. }),
            words: &["0x300000-0x300fff", "nothing is mapped there"],
        },
        Bad {
            what: "partial unmap",
            run: |i, _| i.unmap(0x10_1000, PAGE).map(drop),
            check: |e| matches!(e, DmaError::PartialUnmap { .. }),
            words: &["0x101000-0x101fff", "0x100000-0x103fff", "whole mappings"],
        },
        Bad {
            what: "unmap with the right start but wrong size",
            run: |i, _| i.unmap(0x10_0000, 8 * PAGE).map(drop),
            check: |e| matches!(e, DmaError::PartialUnmap { .. }),
            words: &["0x100000-0x107fff"],
        },
        Bad {
            what: "unmap of zero bytes",
            run: |i, _| i.unmap(0x10_0000, 0).map(drop),
            check: |e| matches!(e, DmaError::ZeroSize { .. }),
            words: &["size 0"],
        },
        Bad {
            what: "unmap overflow",
            run: |i, _| i.unmap(u64::MAX, 2).map(drop),
            check: |e| matches!(e, DmaError::Overflow { .. }),
            words: &["past the end"],
        },
    ];

    for case in &cases {
        let before = iommu.report();
        let err = (case.run)(&iommu, h).expect_err(case.what);
        assert!(
            (case.check)(&err),
            "{}: unexpected error {err:?}",
            case.what
        );
        let msg = err.to_string();
        for word in case.words {
            assert!(msg.contains(word), "{}: {msg:?} lacks {word:?}", case.what);
        }
        assert!(
            !msg.contains("Error("),
            "{}: bare error in {msg:?}",
            case.what
        );
        assert_eq!(iommu.report(), before, "{}: state changed", case.what);
    }

    // The mapping count limit (3): one more fits, the next does not.
    map(&iommu, 0x30_0000, PAGE, h + 8 * PAGE, DmaPerm::ReadWrite);
    let before = iommu.report();
    let err = try_map(&iommu, 0x40_0000, PAGE, h + 9 * PAGE).unwrap_err();
    assert!(
        matches!(err, DmaError::TooManyMappings { limit: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("dma_entry_limit"));
    assert_eq!(iommu.report(), before);

    // The valid mappings still translate.
    iommu.write(0x10_0000, b"ok").unwrap();
    assert_eq!(bytes_at(&mem, 0, 2), b"ok");
}

#[test]
fn report_lists_ranges_totals_and_limit() {
    let mem = host_memory(3 * PAGE as usize);
    let iommu = SoftwareIommu::with_limits("diag", HostIommuLimits::x86_vtd());
    map(&iommu, 0, 2 * PAGE, host(&mem), DmaPerm::ReadWrite);
    map(
        &iommu,
        0x1_0000_0000,
        PAGE,
        host(&mem) + 2 * PAGE,
        DmaPerm::ReadOnly,
    );
    let report = iommu.report();
    assert_eq!(report.total_bytes(), 3 * PAGE);
    assert_eq!(
        report.reachable_ranges(),
        vec![
            IovaRange::new(0, 2 * PAGE).unwrap(),
            IovaRange::new(0x1_0000_0000, PAGE).unwrap()
        ]
    );
    let text = report.to_string();
    assert!(
        text.starts_with(
            "software IOMMU 'diag': 2 mappings (limit 65535), 12 KiB mapped (0x3000 bytes)"
        ),
        "{text}"
    );
    assert!(text.contains("0x0-0x1fff"), "{text}");
    assert!(text.contains("0x100000000-0x100000fff"), "{text}");
    assert!(text.contains(" r- "), "{text}");
}

#[test]
fn concurrent_dma_from_many_threads() {
    let mem = host_memory(8 * PAGE as usize);
    let iommu = SoftwareIommu::new("t");
    map(&iommu, 0, 8 * PAGE, host(&mem), DmaPerm::ReadWrite);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let iommu = &iommu;
            s.spawn(move || {
                for _ in 0..100 {
                    iommu.write(t * PAGE, &[t as u8 + 1; 64]).unwrap();
                }
            });
        }
    });
    for t in 0..8usize {
        assert_eq!(bytes_at(&mem, t * PAGE as usize, 64), vec![t as u8 + 1; 64]);
    }
}
