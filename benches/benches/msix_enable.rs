//! vfio-pci: VMM time for a guest enabling MSI-X on a function with 2,048 programmed vectors
//! (the most PCI allows): host vectors set up, 2,048 MSI routes installed (one
//! `KVM_SET_GSI_ROUTING` for all, issue 12 item 7) and 2,048 irqfds bound. Over `KvmPorts` on
//! a real VM (skipped without /dev/kvm) and over the KVM-free `InMemoryPorts` (the device's
//! own cost). Goal: a few milliseconds per enable on KVM.
//!
//! Run briefly: `cargo bench -p passthrough-benches --bench msix_enable -- --warm-up-time 1 --measurement-time 5`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use kvm_runloop::{Vm, VmConfig};
use pci_config::PciFunction;
use vfio_pci::ports::{InMemoryPorts, KvmPorts, MsiWindow};
use vfio_pci::sim::SimBackend;
use vfio_pci::{AttachContext, PassthroughDevice, PassthroughOptions};

const VECTORS: u16 = 2048;
const BAR: u64 = 0xc000_0000;

/// Attaches a 2,048-vector function, places BAR 0 and programs every vector (unmasked, MSI-X
/// still disabled). `write` is the guest's MMIO store into the table.
fn programmed(
    ctx: AttachContext,
    write: impl Fn(&mut PassthroughDevice, u64, u32),
) -> (PassthroughDevice, u16) {
    let sim = Arc::new(SimBackend::msix_only("0000:05:00.0", VECTORS).expect("sim"));
    let mut d = PassthroughDevice::attach(sim, ctx, PassthroughOptions::default()).expect("attach");
    d.config_write(0x10, &(BAR as u32).to_le_bytes());
    d.config_write(0x14, &0u32.to_le_bytes());
    d.config_write(0x04, &0x0006u16.to_le_bytes());
    for v in 0..u64::from(VECTORS) {
        write(&mut d, v * 16, 0xfee0_0000);
        write(&mut d, v * 16 + 8, 0x30 + (v as u32 % 200));
        write(&mut d, v * 16 + 12, 0);
    }
    let cap = d.config().model().msix().expect("MSI-X").offset;
    (d, cap)
}

/// Times MSI-X Enable (one guest config write); the disable between samples is not timed.
fn time_enables(d: &mut PassthroughDevice, cap: u16, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        d.config_write(cap + 2, &0u16.to_le_bytes());
        let start = Instant::now();
        d.config_write(cap + 2, &0x8000u16.to_le_bytes());
        total += start.elapsed();
        assert!(d.msix_vector(VECTORS - 1).and_then(|v| v.gsi).is_some());
    }
    total
}

fn msix_enable(c: &mut Criterion) {
    let mut g = c.benchmark_group("msix_enable_2048");
    g.sample_size(10);

    let ports = Arc::new(InMemoryPorts::new());
    let (mut d, cap) = programmed(AttachContext::new(ports, MsiWindow::x86()), |d, off, v| {
        d.bar_write(0, off, &v.to_le_bytes()).expect("table write")
    });
    g.bench_function("InMemoryPorts", |b| {
        b.iter_custom(|iters| time_enables(&mut d, cap, iters))
    });
    d.detach().expect("detach");

    if kvm_runloop::testing::kvm_or_skip().is_some() {
        let vm = Arc::new(
            Vm::new(&VmConfig {
                irqchip: true,
                ..Default::default()
            })
            .expect("VM"),
        );
        let ctx = AttachContext::new(Arc::new(KvmPorts::new(vm.clone())), MsiWindow::x86());
        let (mut d, cap) = programmed(ctx, |_, off, v| {
            assert!(vm.bus().mmio_write(BAR + off, &v.to_le_bytes()));
        });
        g.bench_function("KvmPorts", |b| {
            b.iter_custom(|iters| time_enables(&mut d, cap, iters))
        });
        d.detach().expect("detach");
    }
    g.finish();
}

criterion_group!(benches, msix_enable);
criterion_main!(benches);
