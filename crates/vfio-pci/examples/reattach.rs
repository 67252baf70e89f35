//! Attach, detach and attach again one real host device in one process, as a VMM that
//! hot-unplugs a device or retries does (issue 12, item 6). Exits 0 when both attaches
//! worked and `vfio-ioctls` reported no teardown error (a group left in its container says
//! `Could not unbind VFIO group` / `VFIO_GROUP_UNSET_CONTAINER ... Device or resource busy`),
//! 1 otherwise. For the test bed: `cargo run -p vfio-pci --example reattach -- 0000:00:05.0`
//! with the device bound to vfio-pci (`refvmm bind`). Needs /dev/kvm and the VFIO nodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kvm_runloop::{Vm, VmConfig};
use vfio_pci::host::{HostPaths, PciAddress};
use vfio_pci::ports::{KvmPorts, MsiWindow};
use vfio_pci::{
    AttachContext, DmaSetup, PassthroughDevice, PassthroughOptions, VfioBackend,
    create_kvm_vfio_device,
};

/// Prints warnings and errors, and counts the errors (vfio-ioctls logs teardown failures).
struct Stderr {
    errors: AtomicUsize,
}

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if r.level() == log::Level::Error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if self.enabled(r.metadata()) {
            eprintln!("{} {}: {}", r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOG: Stderr = Stderr {
    errors: AtomicUsize::new(0),
};

fn main() {
    log::set_logger(&LOG).expect("logger");
    log::set_max_level(log::LevelFilter::Warn);
    let Some(bdf) = std::env::args().nth(1) else {
        eprintln!("usage: reattach BDF (a device bound to vfio-pci, e.g. 0000:00:05.0)");
        std::process::exit(2);
    };
    match run(&bdf) {
        Ok(()) if LOG.errors.load(Ordering::Relaxed) == 0 => {
            println!("{bdf}: attached, detached and attached again; teardown clean");
        }
        Ok(()) => {
            eprintln!("{bdf}: attached twice, but teardown logged errors (see above)");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{bdf}: {e}");
            std::process::exit(1);
        }
    }
}

fn run(bdf: &str) -> Result<(), Box<dyn std::error::Error>> {
    let address: PciAddress = bdf.parse()?;
    let vm = Arc::new(Vm::new(&VmConfig {
        irqchip: true,
        ..Default::default()
    })?);
    let kvm_vfio = create_kvm_vfio_device(vm.fd())?;
    let ports = Arc::new(KvmPorts::new(vm.clone()));
    for round in 1..=2 {
        let backend = VfioBackend::open(&HostPaths::default(), address, Some(kvm_vfio.clone()))
            .map_err(|e| format!("attach {round}: {e}"))?;
        let ctx = AttachContext {
            dma: DmaSetup::GuestMemory(vm.memory().clone()),
            ..AttachContext::new(ports.clone(), MsiWindow::x86())
        };
        let device = PassthroughDevice::attach(backend, ctx, PassthroughOptions::default())
            .map_err(|e| format!("attach {round}: {e}"))?;
        device
            .detach()
            .map_err(|e| format!("detach {round}: {e}"))?;
        println!("{bdf}: round {round}: attached and detached");
    }
    Ok(())
}
