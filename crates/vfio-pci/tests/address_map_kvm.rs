//! One address map on KVM (issue 12, items 1 and 4): over `KvmPorts`, a BAR's mapped pages are
//! never placed over a range another device (or the same one) traps, and no BAR is placed over
//! ports the in-kernel irqchip serves. Each placement is all or nothing, and what was there
//! keeps working. Skips without /dev/kvm; fails instead when REQUIRE_KVM=1.

use std::sync::Arc;

use kvm_runloop::{Space, Vm, VmConfig};
use pci_config::capability::BarOffset;
use pci_config::capability::MsixCapability;
use pci_config::{BarDef, ConfigSize, ConfigSpace, DeviceIds, HeaderType, PciFunction};

#[path = "support/ivshmem_ids.rs"]
mod ivshmem_ids;
use ivshmem_ids::IVSHMEM_IDS;
use vfio_pci::ports::{KvmPorts, MsiWindow};
use vfio_pci::sim::{SimBackend, SimBar, SimSpec};
use vfio_pci::{AttachContext, PassthroughDevice, PassthroughOptions};

fn vm() -> Option<Arc<Vm>> {
    kvm_runloop::testing::kvm_or_skip()?;
    Some(Arc::new(
        Vm::new(&VmConfig {
            ram: vec![(0, 2 << 20)],
            irqchip: true,
            ..Default::default()
        })
        .expect("VM"),
    ))
}

fn attach(ports: &Arc<KvmPorts>, sim: SimBackend) -> PassthroughDevice {
    PassthroughDevice::attach(
        Arc::new(sim),
        AttachContext::new(ports.clone(), MsiWindow::x86()),
        PassthroughOptions::default(),
    )
    .expect("attach")
}

/// A device whose only BAR (4 KiB, memory) the host lets us mmap whole: it becomes one slot.
fn plain(name: &str) -> SimBackend {
    SimBackend::new(SimSpec {
        name: name.into(),
        config: ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Conventional, IVSHMEM_IDS),
        bars: vec![SimBar {
            index: 0,
            def: BarDef::memory32(0x1000).at(0xfea0_0000),
            sparse: None,
            msix_mappable: false,
        }],
        rom_size: 0,
        intx: false,
        msi_vectors: 0,
        msix_vectors: 0,
        doorbell: None,
    })
    .expect("sim")
}

/// A device with an I/O BAR of 4 ports and MSI-X in a memory BAR of its own (all trapped).
fn io_device(name: &str) -> SimBackend {
    let ids = DeviceIds {
        vendor_id: 0x8086,
        device_id: 0x100e,
        class_code: 0x020000,
        revision: 0,
        subsystem_vendor_id: 0x8086,
        subsystem_id: 0x001e,
    };
    let mut config = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Conventional, ids);
    config
        .add_capability(MsixCapability::new(
            2,
            BarOffset { bir: 1, offset: 0 },
            BarOffset {
                bir: 1,
                offset: 0x800,
            },
        ))
        .unwrap();
    SimBackend::new(SimSpec {
        name: name.into(),
        config,
        bars: vec![
            SimBar {
                index: 0,
                def: BarDef::io(4).at(0xc000),
                sparse: None,
                msix_mappable: false,
            },
            SimBar {
                index: 1,
                def: BarDef::memory32(0x1000).at(0xfeb0_0000),
                sparse: None,
                msix_mappable: false,
            },
        ],
        rom_size: 0,
        intx: false,
        msi_vectors: 0,
        msix_vectors: 2,
        doorbell: None,
    })
    .expect("sim")
}

fn w32(d: &mut PassthroughDevice, off: u16, v: u32) {
    d.config_write(off, &v.to_le_bytes());
}

fn command(d: &mut PassthroughDevice, bits: u16) {
    d.config_write(0x04, &bits.to_le_bytes());
}

fn slots_of(vm: &Vm, dev: &str) -> usize {
    vm.slots()
        .regions()
        .iter()
        .filter(|r| r.name.starts_with(dev))
        .count()
}

/// Everything placed in the map, checked for the invariant the map exists for.
fn assert_map_disjoint(vm: &Vm) {
    for space in [Space::Memory, Space::Io] {
        let claims = vm.address_map().claims(space);
        for w in claims.windows(2) {
            assert!(w[0].end <= w[1].start, "{:?} overlaps {:?}", w[0], w[1]);
        }
    }
}

#[test]
fn a_bar_is_never_mapped_over_another_devices_msix_table() {
    let Some(vm) = vm() else { return };
    let ports = Arc::new(KvmPorts::new(vm.clone()));
    // A: a NIC whose BAR3 holds only its MSI-X table and PBA, all trapped and emulated.
    let mut a = attach(&ports, SimBackend::nic().unwrap());
    w32(&mut a, 0x1c, 0xd000_0000);
    command(&mut a, 0x2);
    assert_eq!(a.bar_address(3), Some(0xd000_0000));

    // B: one fully mapped 4 KiB BAR, placed over A's MSI-X table page.
    let mut b = attach(&ports, plain("0000:03:00.0"));
    w32(&mut b, 0x10, 0xd000_0000);
    command(&mut b, 0x2);
    assert_eq!(
        b.bar_address(0),
        None,
        "B must not be placed over A's table"
    );
    assert_eq!(slots_of(&vm, "0000:03:00.0"), 0);
    assert!(
        b.mtree().contains("of \"0000:02:00.0 BAR3"),
        "{}",
        b.mtree()
    );

    // A's MSI-X entry still takes the guest's stores.
    assert!(vm.bus().mmio_write(0xd000_0008, &0x41u32.to_le_bytes()));
    let mut data = [0u8; 4];
    assert!(vm.bus().mmio_read(0xd000_0008, &mut data));
    assert_eq!(u32::from_le_bytes(data), 0x41);

    // B placed elsewhere works; A's table moved over B's slot is refused, and A stays usable.
    w32(&mut b, 0x10, 0xd001_0000);
    assert_eq!(b.bar_address(0), Some(0xd001_0000));
    w32(&mut a, 0x1c, 0xd001_0000);
    assert_eq!(a.bar_address(3), None);
    w32(&mut a, 0x1c, 0xd000_0000);
    assert_eq!(a.bar_address(3), Some(0xd000_0000));
    assert_map_disjoint(&vm);
    a.detach().unwrap();
    b.detach().unwrap();
    assert!(vm.address_map().find(Space::Memory, 0xd000_0000).is_none());
    assert!(vm.address_map().find(Space::Memory, 0xd001_0000).is_none());
}

#[test]
fn a_bar_is_never_mapped_over_its_own_rom() {
    let Some(vm) = vm() else { return };
    let ports = Arc::new(KvmPorts::new(vm.clone()));
    let mut nic = attach(&ports, SimBackend::nic().unwrap());
    // ROM (64 KiB, trapped) first, at 0xd001_0000.
    w32(&mut nic, 0x30, 0xd001_0001);
    command(&mut nic, 0x2);
    assert_eq!(nic.bar_address(6), Some(0xd001_0000));
    // BAR0 (128 KiB: page 0 trapped, the rest one slot) over it: refused, all of it.
    w32(&mut nic, 0x10, 0xd000_0000);
    assert_eq!(nic.bar_address(0), None);
    assert_eq!(slots_of(&vm, "0000:02:00.0 BAR0"), 0);
    assert!(vm.address_map().find(Space::Memory, 0xd000_0000).is_none());
    // The ROM still answers.
    let mut rom = [0u8; 2];
    assert!(vm.bus().mmio_read(0xd001_0000, &mut rom));
    assert_map_disjoint(&vm);
}

#[test]
fn io_bars_stay_off_the_ports_kvm_serves() {
    let Some(vm) = vm() else { return };
    let ports = Arc::new(KvmPorts::new(vm.clone()));
    let mut d = attach(&ports, io_device("0000:04:00.0"));
    // Port 0x20 is the in-kernel PIC: a BAR there would be reported placed and never reached.
    w32(&mut d, 0x10, 0x20);
    command(&mut d, 0x1);
    assert_eq!(d.bar_address(0), None);
    assert!(d.mtree().contains("in-kernel PIC"), "{}", d.mtree());
    // ELCR and the slave PIC too; a free port works.
    w32(&mut d, 0x10, 0x4d0);
    assert_eq!(d.bar_address(0), None);
    w32(&mut d, 0x10, 0xa0);
    assert_eq!(d.bar_address(0), None);
    w32(&mut d, 0x10, 0xc000);
    assert_eq!(d.bar_address(0), Some(0xc000));
    assert!(vm.bus().pio_write(0xc000, &[1]));
    // And the VMM's own ports (reserved by it, or devices on its bus) are refused the same way.
    vm.address_map()
        .reserve(Space::Io, 0x70, 2, "RTC (served by the VMM)")
        .unwrap();
    w32(&mut d, 0x10, 0x70);
    assert_eq!(d.bar_address(0), None);
    assert!(d.mtree().contains("RTC"), "{}", d.mtree());
    assert_map_disjoint(&vm);
}
