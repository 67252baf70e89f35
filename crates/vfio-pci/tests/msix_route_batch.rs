//! One routing update per guest write (issue 12, item 7): enabling MSI-X on a function with
//! 2,048 programmed vectors, or unmasking it, hands the VM all route changes in one
//! `apply_msi_routes` call (on KVM: one `KVM_SET_GSI_ROUTING`), never one call per vector.
//! Over the KVM-free ports: runs anywhere.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pci_config::PciFunction;
use vfio_pci::ports::{InMemoryPorts, InterruptPort, MsiMessage, MsiWindow, RouteChange};
use vfio_pci::sim::SimBackend;
use vfio_pci::{AttachContext, PassthroughDevice, PassthroughOptions};
use vmm_sys_util::eventfd::EventFd;

/// `InMemoryPorts`' interrupts, counting how the device calls them.
struct Counting {
    inner: Arc<InMemoryPorts>,
    single: AtomicUsize,
    batches: AtomicUsize,
    largest: AtomicUsize,
}

impl InterruptPort for Counting {
    fn add_msi_route(&self, msg: MsiMessage) -> io::Result<u32> {
        self.single.fetch_add(1, Ordering::Relaxed);
        self.inner.add_msi_route(msg)
    }
    fn update_msi_route(&self, gsi: u32, msg: MsiMessage) -> io::Result<()> {
        self.single.fetch_add(1, Ordering::Relaxed);
        self.inner.update_msi_route(gsi, msg)
    }
    fn remove_route(&self, gsi: u32) -> io::Result<()> {
        self.single.fetch_add(1, Ordering::Relaxed);
        self.inner.remove_route(gsi)
    }
    fn apply_msi_routes(&self, changes: &[RouteChange]) -> Vec<io::Result<u32>> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.largest.fetch_max(changes.len(), Ordering::Relaxed);
        self.inner.apply_msi_routes(changes)
    }
    fn add_irqfd(&self, gsi: u32, fd: &EventFd, resample: Option<&EventFd>) -> io::Result<()> {
        self.inner.add_irqfd(gsi, fd, resample)
    }
    fn remove_irqfd(&self, gsi: u32, fd: &EventFd) -> io::Result<()> {
        self.inner.remove_irqfd(gsi, fd)
    }
    fn signal_msi(&self, msg: MsiMessage) -> io::Result<bool> {
        self.inner.signal_msi(msg)
    }
}

const BAR: u64 = 0xc000_0000;
const VECTORS: u16 = 2048;

#[test]
fn enabling_2048_vectors_is_one_routing_update() {
    let vm = Arc::new(InMemoryPorts::new());
    let irq = Arc::new(Counting {
        inner: vm.clone(),
        single: AtomicUsize::new(0),
        batches: AtomicUsize::new(0),
        largest: AtomicUsize::new(0),
    });
    let sim = Arc::new(SimBackend::msix_only("0000:05:00.0", VECTORS).unwrap());
    let ctx = AttachContext {
        interrupts: Some(irq.clone()),
        ..AttachContext::new(vm.clone(), MsiWindow::x86())
    };
    let mut d = PassthroughDevice::attach(sim, ctx, PassthroughOptions::default()).unwrap();
    d.config_write(0x10, &(BAR as u32).to_le_bytes());
    d.config_write(0x14, &0u32.to_le_bytes());
    d.config_write(0x04, &0x0006u16.to_le_bytes());
    let cap = d.config().model().msix().unwrap().offset;
    // Enable with the function masked, program every vector, then unmask the function.
    d.config_write(cap + 2, &0xc000u16.to_le_bytes());
    for v in 0..u64::from(VECTORS) {
        let entry = BAR + v * 16;
        vm.mmio_write(entry, &0xfee0_0000u32.to_le_bytes());
        vm.mmio_write(entry + 8, &(0x30 + (v as u32 % 200)).to_le_bytes());
        vm.mmio_write(entry + 12, &0u32.to_le_bytes());
    }
    assert_eq!(
        irq.batches.load(Ordering::Relaxed),
        0,
        "all masked: nothing routed yet"
    );
    d.config_write(cap + 2, &0x8000u16.to_le_bytes());
    assert_eq!(irq.batches.load(Ordering::Relaxed), 1);
    assert_eq!(irq.largest.load(Ordering::Relaxed), usize::from(VECTORS));
    assert_eq!(irq.single.load(Ordering::Relaxed), 0, "no per-vector calls");
    assert_eq!(vm.routes().len(), usize::from(VECTORS));
    assert_eq!(vm.irqfds().len(), usize::from(VECTORS));
    let mut gsis: Vec<u32> = vm.routes().iter().map(|r| r.0).collect();
    gsis.dedup();
    assert_eq!(gsis.len(), usize::from(VECTORS), "one GSI per vector");
    d.detach().unwrap();
    assert!(vm.routes().is_empty() && vm.irqfds().is_empty());
}
