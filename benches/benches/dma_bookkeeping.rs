//! iommu-dma: the bookkeeping cost of DMA mappings, without the kernel.
//!
//! What a VMM pays in this crate on top of the ioctls: validating and recording a map or
//! unmap among many mappings, a guest-memory attach/detach of many regions, a hot-add and
//! hot-remove among many regions, and a software-IOMMU translation. The kernel's own cost
//! (pinning) is not measured here; it dwarfs these numbers and belongs to the test bed.
//!
//! Run briefly: `cargo bench -p passthrough-benches --bench dma_bookkeeping --
//! --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use iommu_dma::{
    DmaAccess, DmaMapper, DmaMapping, DmaOptions, DmaPerm, GuestMemoryDma, HostIommuLimits,
    SoftwareIommu,
};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

const PAGE: u64 = 4096;
const SIZES: [u64; 3] = [64, 1024, 8192];

/// `n` one-page mappings two pages apart (so none merge), backed by one host buffer.
fn mappings(n: u64, host: &MmapRegion<()>) -> Vec<DmaMapping> {
    (0..n)
        .map(|i| DmaMapping {
            iova: 0x1_0000_0000 + i * 2 * PAGE,
            size: PAGE,
            host_addr: host.as_ptr() as u64 + i * PAGE,
            perm: DmaPerm::ReadWrite,
        })
        .collect()
}

fn map_all(iommu: &SoftwareIommu, ms: &[DmaMapping]) {
    for m in ms {
        // SAFETY: every host range lies in a MmapRegion that outlives the IOMMU.
        unsafe { iommu.map(*m) }.unwrap();
    }
}

fn map_unmap(c: &mut Criterion) {
    let mut group = c.benchmark_group("map_then_unmap_all");
    for n in SIZES {
        let host = MmapRegion::<()>::new((n * PAGE) as usize).unwrap();
        let ms = mappings(n, &host);
        group.bench_with_input(BenchmarkId::from_parameter(n), &ms, |b, ms| {
            let iommu = SoftwareIommu::with_limits("bench", HostIommuLimits::x86_vtd());
            b.iter(|| {
                map_all(&iommu, ms);
                for m in ms.iter().rev() {
                    iommu.unmap(m.iova, m.size).unwrap();
                }
            });
        });
    }
    group.finish();
}

fn one_map_among_many(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_map_unmap_among_n");
    for n in SIZES {
        let host = MmapRegion::<()>::new(((n + 1) * PAGE) as usize).unwrap();
        let ms = mappings(n, &host);
        let iommu = SoftwareIommu::with_limits("bench", HostIommuLimits::x86_vtd());
        map_all(&iommu, &ms);
        // In the middle, in a gap.
        let extra = DmaMapping {
            iova: ms[(n / 2) as usize].iova + PAGE,
            size: PAGE,
            host_addr: host.as_ptr() as u64 + n * PAGE,
            perm: DmaPerm::ReadWrite,
        };
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                // SAFETY: the host page lies in `host`, which outlives the IOMMU.
                unsafe { iommu.map(black_box(extra)) }.unwrap();
                iommu.unmap(extra.iova, extra.size).unwrap();
            });
        });
    }
    group.finish();
}

fn translate(c: &mut Criterion) {
    let mut group = c.benchmark_group("translate_among_n");
    for n in SIZES {
        let host = MmapRegion::<()>::new((n * PAGE) as usize).unwrap();
        let ms = mappings(n, &host);
        let iommu = SoftwareIommu::with_limits("bench", HostIommuLimits::x86_vtd());
        map_all(&iommu, &ms);
        let target = ms[(n * 3 / 4) as usize].iova + 0x80;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                iommu
                    .translate(black_box(target), 64, DmaAccess::Write)
                    .unwrap()
            });
        });
    }
    group.finish();
}

fn guest_ram(n: u64) -> GuestMemoryMmap<()> {
    let ranges: Vec<(GuestAddress, usize)> = (0..n)
        .map(|i| (GuestAddress(0x1_0000_0000 + i * 2 * PAGE), PAGE as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

fn attach_detach(c: &mut Criterion) {
    let mut group = c.benchmark_group("guest_memory_attach_detach");
    for n in SIZES {
        let mem = guest_ram(n);
        let iommu = Arc::new(SoftwareIommu::with_limits(
            "bench",
            HostIommuLimits::x86_vtd(),
        ));
        let dma = Arc::new(
            GuestMemoryDma::with_guest_memory(iommu, &mem, DmaOptions::default()).unwrap(),
        );
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| dma.attach_device("bench").unwrap().detach().unwrap());
        });
    }
    group.finish();
}

fn hot_add_remove(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_add_remove_among_n");
    for n in SIZES {
        let mem = guest_ram(n);
        let iommu = Arc::new(SoftwareIommu::with_limits(
            "bench",
            HostIommuLimits::x86_vtd(),
        ));
        let dma = Arc::new(
            GuestMemoryDma::with_guest_memory(iommu, &mem, DmaOptions::default()).unwrap(),
        );
        let _attached = dma.attach_device("bench").unwrap();
        let gpa = 0x1_0000_0000 + (n / 2) * 2 * PAGE + PAGE;
        let region =
            GuestRegionMmap::<()>::new(MmapRegion::new(PAGE as usize).unwrap(), GuestAddress(gpa))
                .unwrap();
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                dma.add_region(&region).unwrap();
                dma.remove_region(GuestAddress(gpa), PAGE).unwrap();
            });
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    map_unmap,
    one_map_among_many,
    translate,
    attach_detach,
    hot_add_remove
);
criterion_main!(benches);
