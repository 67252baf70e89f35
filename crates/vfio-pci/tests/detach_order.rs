//! Detach order (issue 12, item 6): everything that keeps the host device open (the BAR
//! mmaps) is released before the backend goes, whatever order the BARs come in. On VFIO an mmap
//! left behind keeps the device file open, and `vfio-ioctls` then fails to take the group out of
//! its container (`VFIO_GROUP_UNSET_CONTAINER ... Device or resource busy`), as passing QEMU's
//! `ivshmem-plain` through showed: its registers (BAR0) are trapped, its shared memory (BAR2)
//! is mapped, and the last reference to the backend went with BAR0, before BAR2's mmap.
//! A second attach of the same device in the same process then works. Runs anywhere.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pci_config::{BarDef, ConfigSize, ConfigSpace, HeaderType, PciFunction};

#[path = "support/ivshmem_ids.rs"]
mod ivshmem_ids;
use ivshmem_ids::IVSHMEM_IDS;
use vfio_pci::ports::{AddressSpace, InMemoryPorts, MsiWindow};
use vfio_pci::sim::{SimBackend, SimBar, SimSpec};
use vfio_pci::{AttachContext, PassthroughDevice, PassthroughOptions};

/// Like QEMU's `ivshmem-plain` (1af4:1110): 256 bytes of registers the host does not let us
/// mmap, and 64 KiB of shared memory it does.
fn ivshmem(name: &str) -> SimBackend {
    SimBackend::new(SimSpec {
        name: name.into(),
        config: ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Conventional, IVSHMEM_IDS),
        bars: vec![
            SimBar {
                index: 0,
                def: BarDef::memory32(0x100).at(0xfebf_1000),
                sparse: Some(Vec::new()),
                msix_mappable: false,
            },
            SimBar {
                index: 2,
                def: BarDef::memory64(0x1_0000).at(0xfe00_0000),
                sparse: None,
                msix_mappable: false,
            },
        ],
        rom_size: 0,
        intx: true,
        msi_vectors: 0,
        msix_vectors: 0,
        doorbell: None,
    })
    .unwrap()
}

fn attach_and_place(vm: &Arc<InMemoryPorts>, sim: SimBackend) -> PassthroughDevice {
    let mut d = PassthroughDevice::attach(
        Arc::new(sim),
        AttachContext::new(vm.clone(), MsiWindow::x86()),
        PassthroughOptions::default(),
    )
    .unwrap();
    d.config_write(0x10, &0xc000_0000u32.to_le_bytes());
    d.config_write(0x18, &0xc001_0000u32.to_le_bytes());
    d.config_write(0x1c, &0u32.to_le_bytes());
    d.config_write(0x04, &0x0002u16.to_le_bytes());
    assert_eq!(d.bar_address(0), Some(0xc000_0000));
    assert_eq!(d.bar_address(2), Some(0xc001_0000));
    d
}

#[test]
fn the_backend_outlives_every_bar_mmap_and_a_second_attach_works() {
    let vm = Arc::new(InMemoryPorts::new());
    vm.reserve(AddressSpace::Memory, 0, 1 << 30, "guest RAM")
        .unwrap();
    for round in 0..2 {
        let sim = ivshmem("0000:00:07.0 detach-order");
        let probe = sim.left_mapped_probe();
        // The device holds the only reference to the backend: it goes during detach.
        let d = attach_and_place(&vm, sim);
        d.detach().unwrap();
        assert!(
            !probe.load(Ordering::Relaxed),
            "round {round}: the backend was dropped while a BAR mmap was still in place"
        );
        assert!(
            vm.placed().iter().all(|r| r.kind().is_none()),
            "round {round}"
        );
    }
    // Dropped without detach: the same order.
    let sim = ivshmem("0000:00:07.0 detach-order");
    let probe = sim.left_mapped_probe();
    drop(attach_and_place(&vm, sim));
    assert!(!probe.load(Ordering::Relaxed));
}
