//! Creating and prefaulting guest RAM per backing, the start-up cost every passthrough VM pays
//! (VFIO pins all of guest RAM, and first-touch zeroing is most of it: Linux 4d83de6da265).
//!
//! For 256 MiB, 1 GiB and 2 GiB of RAM, and each backing `kvm_runloop::RamBacking` offers
//! (`anon`, `thp`, `hugetlb:2M` when the host has enough free 2 MiB pages, skipped with the
//! reason otherwise), one sample is `Vm::new` with the RAM prefaulted by one thread per host CPU,
//! then dropping the VM (not timed). At 1 GiB, `anon` and `thp` also run with one prefault
//! thread, to show what the parallel prefault buys. Each line ends with seconds per GiB.
//!
//! Run: `cargo bench -p passthrough-benches --bench guest_ram_backing` (a few minutes on 2
//! cores: 10 samples of up to 2 GiB each).

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kvm_runloop::{
    GuestRamBacking, HUGEPAGES_SYSFS, HostPages, HugePagePool, HugePageSize, RamBacking, Vm,
    VmConfig,
};

const MIB: u64 = 1 << 20;
const SIZES: [u64; 3] = [256 * MIB, 1024 * MIB, 2048 * MIB];

/// One sample: the time, and what backs the RAM (`/proc/self/smaps`, read after the timing).
fn create(size: u64, backing: RamBacking, threads: usize) -> (Duration, Option<HostPages>) {
    let start = Instant::now();
    let vm = Vm::new(&VmConfig {
        ram: vec![(0, size as usize)],
        ram_backing: GuestRamBacking {
            backing,
            prefault_threads: threads,
        },
        ..VmConfig::default()
    })
    .unwrap_or_else(|e| panic!("guest RAM {size:#x} backing {backing}: {e}"));
    let took = start.elapsed();
    let pages = vm
        .slots()
        .regions()
        .first()
        .and_then(|r| HostPages::of(r.host_addr, r.size));
    drop(vm);
    (took, pages)
}

/// Why `hugetlb:2M` cannot run for `size` bytes here, if it cannot.
fn hugetlb_missing(size: u64) -> Option<String> {
    match HugePagePool::read(Path::new(HUGEPAGES_SYSFS), HugePageSize::Size2MiB) {
        Err(e) => Some(e.to_string()),
        Ok(pool) => pool
            .check(Path::new(HUGEPAGES_SYSFS), HugePageSize::Size2MiB, size)
            .err()
            .map(|e| e.to_string()),
    }
}

fn guest_ram(c: &mut Criterion) {
    if kvm_runloop::testing::kvm_or_skip().is_none() {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "guest RAM create + prefault, {cpus} prefault thread(s); THP mode: {}",
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_else(|_| "unknown".into())
            .trim()
    );
    let mut g = c.benchmark_group("guest_ram");
    g.sample_size(10).warm_up_time(Duration::from_millis(1));
    let hugetlb = RamBacking::Hugetlb {
        page_size: HugePageSize::Size2MiB,
    };
    let mut runs: Vec<(u64, RamBacking, usize)> = Vec::new();
    for size in SIZES {
        for backing in [RamBacking::Anonymous, RamBacking::Thp, hugetlb] {
            runs.push((size, backing, cpus));
            if size == 1024 * MIB && backing != hugetlb && cpus > 1 {
                runs.push((size, backing, 1));
            }
        }
    }
    for (size, backing, threads) in runs {
        if backing == hugetlb {
            if let Some(why) = hugetlb_missing(size) {
                println!("guest_ram/{backing}/{}M: skipped: {why}", size / MIB);
                continue;
            }
        }
        let id = BenchmarkId::new(
            format!("{backing}/{threads}thr"),
            format!("{}M", size / MIB),
        );
        let mut samples = Vec::new();
        let mut pages = None;
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (t, p) = create(size, backing, threads);
                    samples.push(t);
                    pages = p;
                    total += t;
                }
                total
            })
        });
        samples.sort();
        let median = samples[samples.len() / 2].as_secs_f64();
        println!(
            "guest_ram/{backing}/{threads}thr/{}M: median {median:.3} s = {:.3} s/GiB; {}",
            size / MIB,
            median / (size as f64 / (1024.0 * MIB as f64)),
            pages.map_or("pages=unknown".into(), |p| p.to_string())
        );
    }
    g.finish();
}

criterion_group!(benches, guest_ram);
criterion_main!(benches);
