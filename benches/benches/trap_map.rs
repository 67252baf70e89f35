//! trap-map: how long planning a device takes, how cheap a segment lookup is, and what one
//! guest MSI-X table access costs in the emulation (the VM exit around it is not included).
//!
//! Run briefly: `cargo bench -p passthrough-benches --bench trap_map -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use trap_map::{
    DeviceLayout, DevicePlan, HostBar, MmapArea, MsixInfo, MsixRelocation, MsixTable, PageSize,
    Policy,
};

/// QEMU's NVMe controller: one 16 KiB BAR, 65 vectors.
fn nvme() -> DeviceLayout {
    DeviceLayout {
        bars: vec![HostBar::memory64(0, 0x4000)],
        msix: Some(MsixInfo {
            entries: 65,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 0,
            pba_offset: 0x3000,
        }),
    }
}

/// A large NIC: three 64-bit BARs, one with many sparse areas, 2048 vectors.
fn big_nic() -> DeviceLayout {
    let sparse = (0..32)
        .map(|i| MmapArea {
            offset: i * 0x1_0000,
            size: 0x8000,
        })
        .collect();
    DeviceLayout {
        bars: vec![
            HostBar::memory64(0, 0x20_0000).sparse_mmap(sparse),
            HostBar::memory64(2, 0x1_0000).msix_mappable(true),
            HostBar::memory64(4, 0x400_0000).prefetchable(true),
        ],
        msix: Some(MsixInfo {
            entries: 2048,
            table_bar: 2,
            table_offset: 0x800,
            pba_bar: 2,
            pba_offset: 0x8800,
        }),
    }
}

fn plan(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    let auto = Policy {
        msix_relocation: MsixRelocation::Auto,
        ..Policy::default()
    };
    for (name, layout) in [("nvme", nvme()), ("big_nic", big_nic())] {
        for page in [PageSize::Size4K, PageSize::Size64K] {
            g.bench_with_input(
                BenchmarkId::new(format!("{name}/default"), page.bytes()),
                &layout,
                |b, l| b.iter(|| DevicePlan::new(black_box(l), page, Policy::default()).unwrap()),
            );
        }
        g.bench_with_input(
            BenchmarkId::new(format!("{name}/auto"), 4096),
            &layout,
            |b, l| b.iter(|| DevicePlan::new(black_box(l), PageSize::Size4K, auto).unwrap()),
        );
    }
    g.finish();

    let p = DevicePlan::new(&big_nic(), PageSize::Size4K, Policy::default()).unwrap();
    let bar0 = p.bar(0).unwrap();
    c.bench_function("plan/segment_at (big_nic BAR 0, 64 segments)", |b| {
        let mut offset = 0u64;
        b.iter(|| {
            offset = (offset + 0x1234) % 0x20_0000;
            black_box(bar0.segment_at(black_box(offset)))
        })
    });
}

fn msix(c: &mut Criterion) {
    let mut g = c.benchmark_group("msix");
    let mut table = MsixTable::new(2048).unwrap();
    let _ = table.write_message_control(0x8000);
    for v in 0..2048u64 {
        let _ = table.write_table(v * 16, &0xfee0_0000u64.to_le_bytes());
        let _ = table.write_table(v * 16 + 8, &(0x20 + v).to_le_bytes()[..4]);
    }
    g.bench_function("read_table_dword", |b| {
        let mut buf = [0u8; 4];
        b.iter(|| {
            table.read_table(black_box(100 * 16 + 8), &mut buf);
            black_box(buf)
        })
    });
    g.bench_function("write_address_masked (no event)", |b| {
        b.iter(|| black_box(table.write_table(black_box(7 * 16), &0xfee0_1000u32.to_le_bytes())))
    });
    g.bench_function("unmask_then_mask (events)", |b| {
        b.iter(|| {
            let a = table.write_table(black_box(9 * 16 + 12), &0u32.to_le_bytes());
            let m = table.write_table(black_box(9 * 16 + 12), &1u32.to_le_bytes());
            black_box((a, m))
        })
    });
    g.bench_function("bad_size_write (ignored)", |b| {
        b.iter(|| black_box(table.write_table(black_box(3), &[1, 2])))
    });
    g.bench_function("fire_masked_and_read_pba", |b| {
        let mut buf = [0u8; 8];
        b.iter(|| {
            let _ = table.fire(black_box(1000));
            table.read_pba(black_box(1000 / 64 * 8), &mut buf);
            black_box(buf)
        })
    });
    g.finish();
}

criterion_group!(benches, plan, msix);
criterion_main!(benches);
