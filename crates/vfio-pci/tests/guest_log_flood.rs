//! A guest cannot flood the host's log (issue 12, item 3): 10,000 alternating bad writes (an
//! MSI-X address outside the interrupt window, a BAR over guest RAM) give a bounded number of
//! log lines, each later one saying how many were dropped. Over the KVM-free ports: runs
//! anywhere. This test binary installs its own logger, so it holds this one test only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pci_config::PciFunction;
use vfio_pci::ports::{AddressSpace, InMemoryPorts, MsiWindow};
use vfio_pci::sim::SimBackend;
use vfio_pci::{AttachContext, PassthroughDevice, PassthroughOptions};

/// Counts warnings and keeps the last one.
struct Capture {
    warnings: AtomicUsize,
    last: Mutex<String>,
}

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.level() <= log::Level::Warn {
            self.warnings.fetch_add(1, Ordering::Relaxed);
            *self.last.lock().unwrap() = r.args().to_string();
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture {
    warnings: AtomicUsize::new(0),
    last: Mutex::new(String::new()),
};

const BAR: u64 = 0xc000_0000;
const TABLE: u64 = BAR + 0x2000;

#[test]
fn ten_thousand_bad_writes_give_a_bounded_number_of_lines() {
    log::set_logger(&CAPTURE).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let vm = Arc::new(InMemoryPorts::new());
    vm.reserve(AddressSpace::Memory, 0, 1 << 30, "guest RAM")
        .unwrap();
    let sim = Arc::new(SimBackend::nvme().unwrap());
    let mut d = PassthroughDevice::attach(
        sim,
        AttachContext::new(vm.clone(), MsiWindow::x86()),
        PassthroughOptions::default(),
    )
    .unwrap();
    d.config_write(0x10, &(BAR as u32).to_le_bytes());
    d.config_write(0x14, &0u32.to_le_bytes());
    d.config_write(0x04, &0x0006u16.to_le_bytes());
    let cap = d.config().model().msix().unwrap().offset;
    vm.mmio_write(TABLE + 8, &0x41u32.to_le_bytes());
    vm.mmio_write(TABLE + 12, &0u32.to_le_bytes());
    d.config_write(cap + 2, &0x8000u16.to_le_bytes());

    let before = CAPTURE.warnings.load(Ordering::Relaxed);
    let start = Instant::now();
    for i in 0..10_000u32 {
        // An MSI address outside 0xfee00000-0xfeefffff, a new one every write.
        vm.mmio_write(TABLE, &(0x1000 * (i % 2 + 1)).to_le_bytes());
    }
    let msi_lines = CAPTURE.warnings.load(Ordering::Relaxed) - before;
    assert!(d.refused_routes() >= 10_000, "{}", d.refused_routes());

    // A second device (each has its own limit), its BAR0 placed over guest RAM.
    let mut e = PassthroughDevice::attach(
        Arc::new(SimBackend::nic().unwrap()),
        AttachContext::new(vm.clone(), MsiWindow::x86()),
        PassthroughOptions::default(),
    )
    .unwrap();
    e.config_write(0x04, &0x0002u16.to_le_bytes());
    let before = CAPTURE.warnings.load(Ordering::Relaxed);
    for i in 0..10_000u32 {
        // A new address every write (128 KiB aligned), each refused.
        e.config_write(0x10, &(0x2_0000 * (i % 2 + 1)).to_le_bytes());
    }
    let bar_lines = CAPTURE.warnings.load(Ordering::Relaxed) - before;
    assert_eq!(e.bar_address(0), None);

    // Per device: a burst of 10, then one a second.
    let bound = 2 * (10 + start.elapsed().as_secs() as usize + 1);
    assert!(
        msi_lines + bar_lines <= bound,
        "{msi_lines} + {bar_lines} lines for 20,000 bad writes (bound {bound}); last: {}",
        CAPTURE.last.lock().unwrap()
    );
    assert!(msi_lines >= 1 && bar_lines >= 1, "{msi_lines} {bar_lines}");
    d.detach().unwrap();
    e.detach().unwrap();
}
