//! Host faults injected through the simulated backend (issue 12): region reads and writes that
//! fail, an mmap that fails, interrupt set-up that fails, DMA maps that fail (ENOMEM, EBUSY,
//! the IOMMU's mapping limit), a reset that fails, a device that vanishes mid-run. Each gives
//! an error that names the device and what to do; attach is all or nothing; detach leaves no
//! range, route, irqfd or DMA mapping behind. Over the KVM-free ports: runs anywhere.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use iommu_dma::DmaMapper;
use pci_config::PciFunction;
use vfio_pci::ports::{AddressSpace, InMemoryPorts, MsiWindow};
use vfio_pci::sim::SimBackend;
use vfio_pci::{AttachContext, AttachError, DmaSetup, PassthroughDevice, PassthroughOptions};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const NAME: &str = "0000:01:00.0";
const BAR: u64 = 0xc000_0000;
const TABLE: u64 = BAR + 0x2000;

fn vm() -> Arc<InMemoryPorts> {
    let vm = Arc::new(InMemoryPorts::new());
    vm.reserve(AddressSpace::Memory, 0, 1 << 20, "guest RAM")
        .unwrap();
    vm
}

fn attach(
    vm: &Arc<InMemoryPorts>,
    sim: &Arc<SimBackend>,
) -> Result<PassthroughDevice, AttachError> {
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let ctx = AttachContext {
        intx_gsi: Some(10),
        dma: DmaSetup::GuestMemory(ram),
        ..AttachContext::new(vm.clone(), MsiWindow::x86())
    };
    PassthroughDevice::attach(sim.clone(), ctx, PassthroughOptions::default())
}

/// Places BAR0, turns decode and bus mastering on, programs vector 0 and enables MSI-X.
fn run(vm: &InMemoryPorts, d: &mut PassthroughDevice) {
    d.config_write(0x10, &(BAR as u32).to_le_bytes());
    d.config_write(0x14, &0u32.to_le_bytes());
    d.config_write(0x04, &0x0006u16.to_le_bytes());
    vm.mmio_write(TABLE, &0xfee0_0000u32.to_le_bytes());
    vm.mmio_write(TABLE + 8, &0x41u32.to_le_bytes());
    vm.mmio_write(TABLE + 12, &0u32.to_le_bytes());
    let cap = d.config().model().msix().unwrap().offset;
    d.config_write(cap + 2, &0x8000u16.to_le_bytes());
}

/// Nothing of the device is left: no range, route, irqfd or DMA mapping.
fn assert_nothing_left(vm: &InMemoryPorts, sim: &SimBackend) {
    assert!(
        vm.placed().iter().all(|r| r.bar_range.is_none()),
        "{:?}",
        vm.placed()
    );
    assert!(vm.routes().is_empty(), "{:?}", vm.routes());
    assert!(vm.irqfds().is_empty(), "{:?}", vm.irqfds());
    assert!(
        sim.iommu().mappings().is_empty(),
        "{:?}",
        sim.iommu().mappings()
    );
}

#[test]
fn failing_region_io_reads_ones_and_names_the_device() {
    let vm = vm();
    let sim = Arc::new(SimBackend::nvme().unwrap());
    let mut d = attach(&vm, &sim).unwrap();
    run(&vm, &mut d);
    sim.faults().region_io.store(true, Ordering::Relaxed);
    // A trapped register (page 0 of BAR0) through the VMM's dispatch: all-ones, counted.
    let mut r = [0u8; 4];
    vm.mmio_read(BAR + 0x1c, &mut r);
    assert_eq!(r, [0xff; 4]);
    assert!(d.exit_counters().iter().any(|c| c.errors == 1));
    // Directly: the error names the device, the access and what to do.
    let e = d.bar_read(0, 0x1c, &mut r).unwrap_err().to_string();
    assert!(e.contains(NAME) && e.contains("dmesg"), "{e}");
    sim.faults().region_io.store(false, Ordering::Relaxed);
    d.detach().unwrap();
    assert_nothing_left(&vm, &sim);
}

#[test]
fn a_failing_mmap_fails_attach_and_leaves_nothing() {
    let vm = vm();
    let sim = Arc::new(SimBackend::nvme().unwrap());
    sim.faults().mmap.store(true, Ordering::Relaxed);
    let e = attach(&vm, &sim).expect_err("attach must fail").to_string();
    assert!(e.contains(NAME) && e.contains("cannot mmap BAR 0"), "{e}");
    assert_nothing_left(&vm, &sim);
    // The host recovers: the same device attaches.
    sim.faults().mmap.store(false, Ordering::Relaxed);
    attach(&vm, &sim).unwrap().detach().unwrap();
    assert_nothing_left(&vm, &sim);
}

#[test]
fn failing_interrupt_setup_fails_attach_or_leaves_vectors_unrouted() {
    let vm = vm();
    let sim = Arc::new(SimBackend::nvme().unwrap());
    // At attach (INTx): refused as a whole.
    sim.faults().irqs.store(libc::ENOSPC, Ordering::Relaxed);
    let e = attach(&vm, &sim).expect_err("attach must fail").to_string();
    assert!(
        e.contains(NAME) && e.contains("INTx") && e.contains("fewer vectors"),
        "{e}"
    );
    assert_nothing_left(&vm, &sim);
    // Later (MSI-X enable): the guest's vectors stay unrouted, nothing is half-wired.
    sim.faults().irqs.store(0, Ordering::Relaxed);
    let mut d = attach(&vm, &sim).unwrap();
    sim.faults().irqs.store(libc::EINVAL, Ordering::Relaxed);
    run(&vm, &mut d);
    sim.faults().irqs.store(0, Ordering::Relaxed);
    d.detach().unwrap();
    assert_nothing_left(&vm, &sim);
}

#[test]
fn failing_dma_maps_fail_attach_with_what_to_do() {
    for (errno, hint) in [
        (libc::ENOMEM, "RLIMIT_MEMLOCK"),
        (libc::EBUSY, "in use"),
        (libc::ENOSPC, "dma_entry_limit"),
    ] {
        let vm = vm();
        let sim = Arc::new(SimBackend::nvme().unwrap());
        sim.faults().dma_map.store(errno, Ordering::Relaxed);
        let e = attach(&vm, &sim).expect_err("attach must fail").to_string();
        assert!(e.contains(NAME) && e.contains(hint), "{e}");
        assert_nothing_left(&vm, &sim);
    }
}

#[test]
fn a_failing_reset_still_detaches_cleanly() {
    let vm = vm();
    let sim = Arc::new(SimBackend::nvme().unwrap());
    sim.faults().reset.store(true, Ordering::Relaxed);
    let mut d = attach(&vm, &sim).unwrap();
    run(&vm, &mut d);
    assert!(!vm.routes().is_empty());
    // No reset at detach: Bus Master Enable is cleared instead, and everything is removed.
    d.detach().unwrap();
    assert_nothing_left(&vm, &sim);
    let mut command = [0u8; 2];
    use vfio_pci::DeviceBackend;
    sim.config_read(0x04, &mut command).unwrap();
    assert_eq!(u16::from_le_bytes(command) & 0x4, 0, "bus mastering off");
}

#[test]
fn a_device_that_vanishes_mid_run_reads_ones_and_detaches_cleanly() {
    let vm = vm();
    let sim = Arc::new(SimBackend::nvme().unwrap());
    let mut d = attach(&vm, &sim).unwrap();
    run(&vm, &mut d);
    sim.faults().vanished.store(true, Ordering::Relaxed);
    // The guest reads all-ones from config space and trapped registers, as from a removed
    // PCI device; its writes and interrupt changes fail quietly, never a panic.
    let mut r = [0u8; 4];
    vm.mmio_read(BAR + 0x1c, &mut r);
    assert_eq!(r, [0xff; 4]);
    d.config_read(0x2c, &mut r);
    assert_eq!(r, [0xff; 4]);
    let cap = d.config().model().msix().unwrap().offset;
    d.config_write(cap + 2, &0u16.to_le_bytes());
    d.config_write(cap + 2, &0x8000u16.to_le_bytes());
    vm.mmio_write(TABLE + 16, &0xfee0_0000u32.to_le_bytes());
    d.detach().unwrap();
    assert_nothing_left(&vm, &sim);
}
