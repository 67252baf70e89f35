//! Several vCPU threads programming several devices at once over `KvmPorts` on a real VM (issue
//! 12): BAR moves (onto each other too), decode on and off, MSI-X table writes through the bus,
//! MSI-X enable, mask and disable, config writes. Bounded by an iteration count, not by time.
//! Afterwards: nothing placed over anything else (the VM's address map, its slots and its bus
//! agree), each device's BARs are where it says, every MSI route is in the window and owned by
//! exactly one vector, and detach leaves no slot, range or route behind.
//! Skips without /dev/kvm; fails instead when REQUIRE_KVM=1.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_runloop::{Route, Space, Vm, VmConfig};
use pci_config::PciFunction;
use vfio_pci::ports::{KvmPorts, MsiWindow};
use vfio_pci::sim::SimBackend;
use vfio_pci::{AttachContext, PassthroughDevice, PassthroughOptions};

const THREADS: u64 = 4;
const ITERATIONS: u64 = 1500;
/// BAR addresses the threads pick from: a few slots in the 32-bit window (so devices collide),
/// and guest RAM.
const ADDRESSES: [u32; 6] = [
    0xc000_0000,
    0xc002_0000,
    0xc004_0000,
    0xc010_0000,
    0x4000,
    0,
];

/// A tiny xorshift: reproducible per thread, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Device {
    name: String,
    dev: Mutex<PassthroughDevice>,
    msix_cap: u16,
}

#[test]
fn threads_programming_devices_at_once_keep_every_invariant() {
    let Some(_) = kvm_runloop::testing::kvm_or_skip() else {
        return;
    };
    let vm = Arc::new(
        Vm::new(&VmConfig {
            ram: vec![(0, 2 << 20)],
            irqchip: true,
            ..Default::default()
        })
        .unwrap(),
    );
    let ports = Arc::new(KvmPorts::new(vm.clone()));
    let sims = [
        SimBackend::nvme().unwrap(),
        SimBackend::nic().unwrap(),
        SimBackend::msix_only("0000:05:00.0", 64).unwrap(),
    ];
    let devices: Vec<Arc<Device>> = sims
        .into_iter()
        .map(|sim| {
            let name = sim.spec().name.clone();
            let d = PassthroughDevice::attach(
                Arc::new(sim),
                AttachContext::new(ports.clone(), MsiWindow::x86()),
                PassthroughOptions::default(),
            )
            .unwrap();
            let msix_cap = d.config().model().msix().unwrap().offset;
            Arc::new(Device {
                name,
                dev: Mutex::new(d),
                msix_cap,
            })
        })
        .collect();

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (vm, devices) = (vm.clone(), devices.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                for _ in 0..ITERATIONS {
                    let d = &devices[rng.below(devices.len() as u64) as usize];
                    match rng.below(6) {
                        0 | 1 => {
                            // Move BAR0 (or the NIC's MSI-X BAR3) somewhere, decode on.
                            let reg = if rng.below(2) == 0 { 0x10 } else { 0x1c };
                            let at = ADDRESSES[rng.below(ADDRESSES.len() as u64) as usize];
                            let mut dev = d.dev.lock().unwrap();
                            dev.config_write(reg, &at.to_le_bytes());
                            dev.config_write(0x04, &0x0006u16.to_le_bytes());
                        }
                        2 => {
                            let mut dev = d.dev.lock().unwrap();
                            dev.config_write(0x04, &0u16.to_le_bytes());
                        }
                        3 => {
                            // MSI-X control: enable / function mask / off.
                            let control = [0x8000u16, 0xc000, 0][rng.below(3) as usize];
                            let mut dev = d.dev.lock().unwrap();
                            dev.config_write(d.msix_cap + 2, &control.to_le_bytes());
                        }
                        _ => {
                            // A table entry through the bus, without the device's lock (a vCPU
                            // exit), wherever the guest thinks BAR0's table is.
                            let base =
                                [0xc000_2000u64, 0xc000_0000, 0xc002_0000][rng.below(3) as usize];
                            let entry = base + rng.below(8) * 16 + rng.below(4) * 4;
                            let value = [0xfee0_0000u32, 0x1000, 0x41, 0, 1][rng.below(5) as usize];
                            vm.bus().mmio_write(entry, &value.to_le_bytes());
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a thread panicked");
    }

    // The one address map: disjoint, and it is what the slots and the bus hold.
    let claims = vm.address_map().claims(Space::Memory);
    for w in claims.windows(2) {
        assert!(w[0].end <= w[1].start, "{:?} overlaps {:?}", w[0], w[1]);
    }
    for r in vm.slots().regions() {
        assert!(
            claims
                .iter()
                .any(|c| c.start == r.guest_addr && c.end == r.guest_addr + r.size)
        );
    }
    for c in vm.bus().device_counts() {
        let space = match c.bus {
            kvm_runloop::BusKind::Mmio => Space::Memory,
            kvm_runloop::BusKind::Pio => Space::Io,
        };
        assert!(vm.address_map().find(space, c.base).is_some(), "{}", c.name);
    }
    // Each device's BARs are where it says, and nothing of a BAR it says is unplaced is left.
    for d in &devices {
        let dev = d.dev.lock().unwrap();
        let prefix = format!("{} ", d.name);
        for c in vm.address_map().claims(Space::Memory) {
            let Some(rest) = c.name.strip_prefix(&prefix) else {
                continue;
            };
            let bar: u8 = rest
                .strip_prefix("BAR")
                .and_then(|r| r[..1].parse().ok())
                .unwrap_or(6);
            let at = dev.bar_address(bar);
            assert!(
                at.is_some_and(|a| c.start >= a),
                "{} at {:#x}, but the device says {at:?}",
                c.name,
                c.start
            );
        }
    }
    // Routes: each MSI route in the window and owned by exactly one vector.
    let mut owners = BTreeMap::new();
    for d in &devices {
        let dev = d.dev.lock().unwrap();
        for v in (0..).map_while(|v| dev.msix_vector(v)) {
            if let Some(gsi) = v.gsi {
                assert!(
                    owners.insert(gsi, d.name.clone()).is_none(),
                    "GSI {gsi} twice"
                );
            }
        }
    }
    let irq = vm.interrupts().unwrap();
    for (gsi, route) in irq.routes() {
        if let Route::Msi(m) = route {
            assert!(MsiWindow::x86().contains(vm_memory::GuestAddress(m.address)));
            assert!(
                owners.contains_key(&gsi),
                "GSI {gsi} routed, owned by no vector"
            );
        }
    }

    // Detach: nothing of the devices is left.
    let devices: Vec<Device> = devices
        .into_iter()
        .map(|d| Arc::try_unwrap(d).ok().unwrap())
        .collect();
    for d in devices {
        d.dev.into_inner().unwrap().detach().unwrap();
    }
    assert!(
        vm.slots()
            .regions()
            .iter()
            .all(|r| r.name.starts_with("ram"))
    );
    assert!(vm.bus().device_counts().is_empty());
    assert!(irq.routes().iter().all(|(g, _)| *g < 24));
}
