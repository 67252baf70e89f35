//! Mapping a large BAR into a KVM slot, with the mmap aligned for huge pages (vfio-pci's
//! default) and without (the kernel's placement): a 1 GiB 64-bit prefetchable BAR of the
//! simulated backend (a sparse memfd, as QEMU's ivshmem-plain is host memory), attached with
//! `vfio_pci::ports::KvmPorts`, placed at 64 GiB by config writes as a firmware would.
//!
//! One sample: attach, place the BAR (mmap + KVM slot), and, for `+populate`, fault every page
//! of the mapping in for writing (`MADV_POPULATE_WRITE`, what the guest's first pass over the
//! BAR makes the host do); detaching is not timed. Attaching resets the device, which frees
//! the memfd's pages (a hole punched over the BAR), so every `+populate` sample includes the
//! kernel zeroing 1 GiB of fresh pages, as a new ivshmem memory backend would.
//!
//! What this host can show: huge pages for a memfd need shmem THP
//! (/sys/kernel/mm/transparent_hugepage/shmem_enabled), printed at start; with `never`, both
//! placements get 4 KiB pages and time the same. The gain the alignment is for, VFIO's huge
//! pfnmap of a real BAR (Linux 6.12+, 0fd06844de5d), needs a VFIO device: the nested test bed.
//!
//! Run: `cargo bench -p passthrough-benches --bench large_bar_map`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use kvm_runloop::{HostPages, Vm, VmConfig};
use pci_config::{BarDef, ConfigSize, ConfigSpace, DeviceIds, HeaderType, PciFunction};
use vfio_pci::ports::{KvmPorts, MsiWindow};
use vfio_pci::sim::{SimBackend, SimBar, SimSpec};
use vfio_pci::{AttachContext, PassthroughDevice, PassthroughOptions};

const GIB: u64 = 1 << 30;
const BAR_GPA: u64 = 64 * GIB;

/// QEMU's ivshmem-plain (`1af4:1110`): BAR0 256 bytes of registers, BAR2 1 GiB of memory.
fn ivshmem() -> Arc<SimBackend> {
    let bar = |index, def| SimBar {
        index,
        def,
        sparse: None,
        msix_mappable: false,
    };
    let ids = DeviceIds {
        vendor_id: 0x1af4,
        device_id: 0x1110,
        class_code: 0x050000,
        ..Default::default()
    };
    Arc::new(
        SimBackend::new(SimSpec {
            name: "ivshmem".into(),
            config: ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Conventional, ids),
            bars: vec![
                bar(0, BarDef::memory32(256)),
                bar(2, BarDef::memory64(GIB).prefetchable()),
            ],
            rom_size: 0,
            intx: false,
            msi_vectors: 0,
            msix_vectors: 0,
            doorbell: None,
        })
        .expect("sim ivshmem"),
    )
}

/// Attach, place BAR2, optionally populate: the time taken, the slot's host address and what
/// backs it.
fn map_once(
    vm: &Arc<Vm>,
    sim: &Arc<SimBackend>,
    aligned: bool,
    populate: bool,
) -> (Duration, u64, Option<HostPages>) {
    let start = Instant::now();
    let mut d = PassthroughDevice::attach(
        sim.clone(),
        AttachContext::new(Arc::new(KvmPorts::new(vm.clone())), MsiWindow::x86()),
        PassthroughOptions {
            huge_page_alignment: aligned,
            ..Default::default()
        },
    )
    .expect("attach");
    d.config_write(0x18, &(BAR_GPA as u32).to_le_bytes());
    d.config_write(0x1c, &((BAR_GPA >> 32) as u32).to_le_bytes());
    d.config_write(0x04, &0x0002u16.to_le_bytes());
    let slot = vm
        .slots()
        .regions()
        .into_iter()
        .find(|r| r.name.contains("BAR2"))
        .expect("BAR2 is a slot");
    if populate {
        // SAFETY: the slot's whole host mapping, which the device keeps while attached;
        // MADV_POPULATE_WRITE faults pages in without changing their contents.
        let r = unsafe {
            libc::madvise(
                slot.host_addr as *mut libc::c_void,
                slot.size as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
        assert_eq!(r, 0, "populate: {}", std::io::Error::last_os_error());
    }
    let took = start.elapsed();
    let pages = HostPages::of(slot.host_addr, slot.size);
    d.detach().expect("detach");
    (took, slot.host_addr, pages)
}

fn large_bar(c: &mut Criterion) {
    if kvm_runloop::testing::kvm_or_skip().is_none() {
        return;
    }
    println!(
        "1 GiB memfd BAR into a KVM slot; shmem THP mode: {}",
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
            .unwrap_or_else(|_| "unknown".into())
            .trim()
    );
    let vm = Arc::new(
        Vm::new(&VmConfig {
            ram: vec![(0, 2 << 20)],
            ..Default::default()
        })
        .expect("VM"),
    );
    let sim = ivshmem();
    let mut g = c.benchmark_group("large_bar_map_1GiB");
    g.sample_size(10).warm_up_time(Duration::from_millis(1));
    for populate in [false, true] {
        for aligned in [true, false] {
            let name = format!(
                "{}{}",
                if aligned { "aligned" } else { "unaligned" },
                if populate { "+populate" } else { "" }
            );
            let mut last = None;
            g.bench_function(&name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (t, host, pages) = map_once(&vm, &sim, aligned, populate);
                        total += t;
                        last = Some((host, pages));
                    }
                    total
                })
            });
            if let Some((host, pages)) = last {
                let align = 1u64 << host.trailing_zeros().min(40);
                println!(
                    "large_bar_map_1GiB/{name}: host address {host:#x} (aligned to {} KiB), {}",
                    align >> 10,
                    pages.map_or("pages=unknown".into(), |p| p.to_string())
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, large_bar);
criterion_main!(benches);
