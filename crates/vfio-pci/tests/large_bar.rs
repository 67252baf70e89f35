//! A large BAR (1 GiB, 64-bit prefetchable, a sparse memfd over the simulated backend) in a
//! KVM slot: its mmap is aligned so that huge pages can back it on the host (Linux
//! 0fd06844de5d, "vfio/pci: huge pfnmap") and its guest address agrees with it modulo 1 GiB,
//! which KVM needs to map it with huge pages too. Skips without /dev/kvm; fails instead when
//! REQUIRE_KVM=1.

use std::sync::Arc;

use kvm_runloop::{Vm, VmConfig};
use pci_config::{BarDef, ConfigSize, ConfigSpace, HeaderType, PciFunction};

#[path = "support/ivshmem_ids.rs"]
mod ivshmem_ids;
use ivshmem_ids::IVSHMEM_IDS;
use vfio_pci::ports::{KvmPorts, MsiWindow};
use vfio_pci::sim::{SimBackend, SimBar, SimSpec};
use vfio_pci::{AttachContext, PassthroughDevice, PassthroughOptions};

const GIB: u64 = 1 << 30;

/// `1af4:1110` (QEMU's ivshmem-plain): BAR0 256 bytes of registers, BAR2 `size` bytes of
/// shared memory, 64-bit prefetchable.
fn ivshmem(size: u64) -> Arc<SimBackend> {
    let bar = |index, def| SimBar {
        index,
        def,
        sparse: None,
        msix_mappable: false,
    };
    Arc::new(
        SimBackend::new(SimSpec {
            name: "0000:00:03.0".into(),
            config: ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Conventional, IVSHMEM_IDS),
            bars: vec![
                bar(0, BarDef::memory32(256)),
                bar(2, BarDef::memory64(size).prefetchable()),
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

fn w32(d: &mut PassthroughDevice, off: u16, v: u32) {
    d.config_write(off, &v.to_le_bytes());
}

#[test]
fn a_1gib_bar_is_mapped_at_a_1gib_aligned_host_and_guest_address() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let vm = Arc::new(
        Vm::new(&VmConfig {
            ram: vec![(0, 2 << 20)],
            ..Default::default()
        })
        .expect("VM"),
    );
    let sim = ivshmem(GIB);
    let mut d = PassthroughDevice::attach(
        sim.clone(),
        AttachContext::new(Arc::new(KvmPorts::new(vm.clone())), MsiWindow::x86()),
        PassthroughOptions::default(),
    )
    .expect("attach");
    // Where a firmware (or pci-bus's allocator) puts it: naturally aligned, above 4 GiB.
    let gpa = 64 * GIB;
    w32(&mut d, 0x18, gpa as u32);
    w32(&mut d, 0x1c, (gpa >> 32) as u32);
    w32(&mut d, 0x10, 0xc000_0000);
    d.config_write(0x04, &0x0002u16.to_le_bytes());
    let slot = vm
        .slots()
        .regions()
        .into_iter()
        .find(|r| r.name.contains("BAR2"))
        .expect("BAR2 is a slot");
    assert_eq!((slot.guest_addr, slot.size), (gpa, GIB));
    assert_eq!(
        slot.host_addr % GIB,
        0,
        "host address {:#x}",
        slot.host_addr
    );
    assert_eq!(slot.guest_addr % GIB, slot.host_addr % GIB);
    // It is the BAR: a store by the "device" shows through the mapping, at the far end too.
    sim.poke(2, GIB - 8, &0x1122_3344_5566_7788u64.to_le_bytes())
        .unwrap();
    let at = (slot.host_addr + GIB - 8) as *const u64;
    // SAFETY: the last 8 bytes of the slot's host mapping, which the device keeps mapped
    // while it is attached.
    assert_eq!(unsafe { at.read_volatile() }, 0x1122_3344_5566_7788);
    // A move keeps the huge-page agreement when the new address is aligned as the BAR is.
    w32(&mut d, 0x1c, ((gpa + GIB) >> 32) as u32);
    w32(&mut d, 0x18, (gpa + GIB) as u32);
    let moved = vm
        .slots()
        .regions()
        .into_iter()
        .find(|r| r.name.contains("BAR2"))
        .expect("BAR2 is a slot");
    assert_eq!(moved.guest_addr % GIB, moved.host_addr % GIB);
    d.detach().expect("detach");
}
