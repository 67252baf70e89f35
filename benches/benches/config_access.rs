//! pci-config: cost of one guest config access (ns) through `ConfigSpace` and through the
//! virtualized view with an in-memory backend (so the numbers are the crate's own overhead, not
//! a VFIO pread).
//!
//! Run briefly: `cargo bench -p passthrough-benches --bench config_access -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pci_config::capability::PowerManagement;
use pci_config::{BarDef, ConfigSize, ConfigSpace, DeviceIds, HeaderType};

// The in-memory device and the passthrough view the pci-config tests use.
#[path = "../../crates/pci-config/tests/common/mod.rs"]
mod common;
use common::{MockDevice, msix_in_bar0, passthrough_view};

fn nvme() -> ConfigSpace {
    let ids = DeviceIds {
        vendor_id: 0x1b36,
        device_id: 0x0010,
        class_code: 0x010802,
        ..Default::default()
    };
    let mut c = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Extended, ids);
    c.set_bar(0, BarDef::memory64(0x4000).at(0xfebd_0000))
        .unwrap();
    c.add_capability(msix_in_bar0(65)).unwrap();
    c.add_capability(PowerManagement::new(true)).unwrap();
    c
}

fn config_space(c: &mut Criterion) {
    let mut g = c.benchmark_group("config_space");
    let mut space = nvme();
    g.bench_function("read_u32 vendor/device", |b| {
        b.iter(|| space.read_u32(black_box(0)).unwrap())
    });
    g.bench_function("write_u32 BAR0 (event path)", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            let v = if flip { 0xc000_0004 } else { 0xfebd_0004 };
            black_box(space.write_u32(black_box(0x10), v).unwrap())
        })
    });
    g.bench_function("write_u16 cache line size (no side effect)", |b| {
        b.iter(|| black_box(space.write(black_box(0x0c), &[0x10]).unwrap()))
    });
    g.finish();
}

fn virtualized(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtualized");
    let backend = MockDevice::quiet(nvme().bytes());
    let mut v = passthrough_view(&backend);
    g.bench_function("read_u32 passthrough (IDs)", |b| {
        b.iter(|| v.read_u32(black_box(0)).unwrap())
    });
    g.bench_function("read_u32 emulated (BAR0)", |b| {
        b.iter(|| v.read_u32(black_box(0x10)).unwrap())
    });
    g.bench_function("read_u16 mixed (Status)", |b| {
        b.iter(|| v.read_u16(black_box(0x06)).unwrap())
    });
    g.bench_function("write_u16 Command (shadow + forward)", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            black_box(
                v.write_u16(black_box(0x04), if flip { 0x6 } else { 0x2 })
                    .unwrap(),
            )
        })
    });
    g.bench_function("write_u16 Status (mixed byte, read-modify-write)", |b| {
        b.iter(|| black_box(v.write_u16(black_box(0x06), 0xf900).unwrap()))
    });
    g.bench_function("write_u32 BAR0 (emulated, event)", |b| {
        let mut flip = false;
        b.iter(|| {
            flip = !flip;
            black_box(
                v.write_u32(
                    black_box(0x10),
                    if flip { 0xc000_0004 } else { 0xd000_0004 },
                )
                .unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, config_space, virtualized);
criterion_main!(benches);
