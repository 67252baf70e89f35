//! Random guest behaviour against the passthrough device (over the simulated backend, on a
//! real KVM VM): whatever the guest writes to config space, BARs and the MSI-X table, the VMM
//! keeps running, no device page is ever mapped over guest RAM or outside what the guest
//! programmed, and no route points outside the interrupt window.
//! Skips without /dev/kvm; fails instead when REQUIRE_KVM=1.

use std::sync::Arc;

use iommu_dma::DmaMapper;
use kvm_runloop::{Route, Vm, VmConfig};
use pci_config::PciFunction;
use proptest::prelude::*;
use vfio_pci::ports::{KvmPorts, MsiWindow};
use vfio_pci::sim::SimBackend;
use vfio_pci::{AttachContext, DmaSetup, PassthroughDevice, PassthroughOptions};

const RAM: u64 = 2 << 20;

#[derive(Debug, Clone)]
enum Op {
    Config {
        offset: u16,
        value: u32,
        size: u8,
    },
    ConfigRead {
        offset: u16,
    },
    /// Place BAR `bar` at `address` and turn memory and I/O decode on.
    Place {
        bar: u16,
        address: u32,
    },
    Mmio {
        addr: u64,
        value: u64,
        size: u8,
        write: bool,
    },
    Pio {
        port: u16,
        value: u8,
    },
    Fire {
        vector: u32,
    },
    Poll,
}

fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..RAM,
        (0xc000_0000u64..0xc004_0000),
        (0xd000_0000u64..0xd002_0000),
        any::<u64>(),
    ]
}

/// Values that make BAR and capability writes interesting: addresses in RAM, in the MMIO
/// windows, sizing probes, decode bits, MSI-X control bits.
fn value() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0xffff_ffffu32),
        Just(0),
        Just(0x0000_0007),
        Just(0xc000_0000),
        Just(0xd000_0000),
        Just(0x0010_0000),
        Just(0x8000),
        Just(0xc000),
        Just(0xfee0_0000),
        any::<u32>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![0u16..0x100, 0x100u16..0x1000], value(), prop_oneof![Just(1u8), Just(2), Just(4)])
            .prop_map(|(offset, value, size)| Op::Config { offset, value, size }),
        1 => (0u16..0x1000).prop_map(|offset| Op::ConfigRead { offset }),
        4 => (addr(), any::<u64>(), prop_oneof![Just(1u8), Just(2), Just(4), Just(8)], any::<bool>())
            .prop_map(|(addr, value, size, write)| Op::Mmio { addr, value, size, write }),
        1 => (0xc000u16..0xc040, any::<u8>()).prop_map(|(port, value)| Op::Pio { port, value }),
        1 => (0u32..70).prop_map(|vector| Op::Fire { vector }),
        1 => Just(Op::Poll),
        2 => (0u16..6, value()).prop_map(|(bar, address)| Op::Place { bar, address }),
    ]
}

fn check(vm: &Vm, names: &[&str]) {
    for r in vm.slots().regions() {
        if names.iter().any(|n| r.name.starts_with(n)) {
            assert!(
                r.guest_addr >= RAM,
                "device slot {} at {:#x} over guest RAM",
                r.name,
                r.guest_addr
            );
        }
    }
    for (_, route) in vm.interrupts().unwrap().routes() {
        if let Route::Msi(m) = route {
            assert_eq!(m.address >> 20, 0xfee, "route to {:#x}", m.address);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_guests_cannot_hurt_the_vmm(ops in proptest::collection::vec(op(), 1..60), nic in any::<bool>()) {
        let Some(_) = kvm_runloop::testing::kvm_or_skip() else { return Ok(()) };
        let vm = Arc::new(Vm::new(&VmConfig { ram: vec![(0, RAM as usize)], irqchip: true, ..Default::default() }).unwrap());
        let sim = Arc::new(if nic { SimBackend::nic() } else { SimBackend::nvme() }.unwrap());
        let ids = sim.config().read_u32(0).unwrap();
        let name = sim.spec().name.clone();
        let mut d = PassthroughDevice::attach(
            sim.clone(),
            AttachContext {
                dma: DmaSetup::GuestMemory(vm.memory().clone()),
                intx_gsi: Some(10),
                reserved: Vec::new(),
                ..AttachContext::new(Arc::new(KvmPorts::new(vm.clone())), MsiWindow::x86())
            },
            PassthroughOptions::default(),
        ).unwrap();
        for op in ops {
            match op {
                Op::Config { offset, value, size } => {
                    let bytes = value.to_le_bytes();
                    d.config_write(offset, &bytes[..size as usize]);
                }
                Op::ConfigRead { offset } => {
                    let mut b = [0u8; 4];
                    d.config_read(offset, &mut b);
                }
                Op::Mmio { addr, value, size, write } => {
                    let bytes = value.to_le_bytes();
                    if write {
                        vm.bus().mmio_write(addr, &bytes[..size as usize]);
                    } else {
                        let mut b = [0u8; 8];
                        vm.bus().mmio_read(addr, &mut b[..size as usize]);
                    }
                }
                Op::Pio { port, value } => {
                    vm.bus().pio_write(port, &[value]);
                }
                Op::Place { bar, address } => {
                    d.config_write(0x10 + 4 * bar, &address.to_le_bytes());
                    d.config_write(0x04, &7u16.to_le_bytes());
                }
                Op::Fire { vector } => {
                    sim.fire(vector).unwrap();
                }
                Op::Poll => d.poll_interrupts(),
            }
            check(&vm, &[&name]);
        }
        let mut b = [0u8; 4];
        d.config_read(0, &mut b);
        prop_assert_eq!(u32::from_le_bytes(b), ids);
        prop_assert_eq!(vm.bus().counts().device_panics, 0);
        d.detach().unwrap();
        prop_assert!(vm.slots().regions().iter().all(|r| !r.name.starts_with(&name)));
        prop_assert!(vm.bus().device_counts().iter().all(|c| !c.name.starts_with(&name)));
        prop_assert!(sim.iommu().mappings().is_empty());
    }
}
