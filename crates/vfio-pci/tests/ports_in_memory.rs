//! The passthrough device over the KVM-free ports (`InMemoryPorts`): what it asks the VMM for
//! at attach, on BAR placement and moves, on MSI-X programming and at detach, with no
//! `/dev/kvm`. Runs everywhere.

use std::sync::{Arc, Barrier};
use std::thread;

use pci_config::PciFunction;
use vfio_pci::ports::{
    AddressSpace, BarRangeKind, InMemoryPorts, MsiMessage, MsiWindow, PlacedRange, ROM_INDEX,
};
use vfio_pci::sim::SimBackend;
use vfio_pci::{AttachContext, BarAccessFault, PassthroughDevice, PassthroughOptions};
use vm_memory::GuestAddress;

const RAM_END: u64 = 0x8000_0000;
const INTX_GSI: u32 = 10;

/// A "VM" with 2 GiB of RAM at 0 that no BAR may cover.
fn vm() -> Arc<InMemoryPorts> {
    let vm = Arc::new(InMemoryPorts::new());
    vm.reserve(AddressSpace::Memory, 0, RAM_END, "guest RAM")
        .unwrap();
    vm
}

fn attach<B: vfio_pci::DeviceBackend + 'static>(
    vm: &Arc<InMemoryPorts>,
    sim: B,
) -> PassthroughDevice {
    let ctx = AttachContext {
        intx_gsi: Some(INTX_GSI),
        ..AttachContext::new(vm.clone(), MsiWindow::x86())
    };
    PassthroughDevice::attach(sim, ctx, PassthroughOptions::default()).expect("attach")
}

fn w32(d: &mut PassthroughDevice, off: u16, v: u32) {
    d.config_write(off, &v.to_le_bytes());
}

fn w16(d: &mut PassthroughDevice, off: u16, v: u16) {
    d.config_write(off, &v.to_le_bytes());
}

/// Places the NVMe's 64-bit BAR0 at `base` with memory decode on.
fn place_nvme(d: &mut PassthroughDevice, base: u64) {
    w32(d, 0x10, base as u32);
    w32(d, 0x14, (base >> 32) as u32);
    w16(d, 0x04, 0x0006);
}

/// What the device has placed (not the RAM).
fn device_ranges(vm: &InMemoryPorts) -> Vec<PlacedRange> {
    vm.placed()
        .into_iter()
        .filter(|r| r.kind().is_some())
        .collect()
}

fn kinds_at(vm: &InMemoryPorts, base: u64) -> Vec<(u64, BarRangeKind)> {
    device_ranges(vm)
        .iter()
        .filter(|r| r.space == AddressSpace::Memory && r.base >= base)
        .map(|r| (r.base - base, r.kind().unwrap()))
        .collect()
}

/// Programs MSI-X vector `v` of a table at `table` through the trapped range.
fn program_vector(vm: &InMemoryPorts, table: u64, v: u64, address: u32, data: u32, masked: bool) {
    let e = table + v * 16;
    assert!(vm.mmio_write(e, &address.to_le_bytes()));
    assert!(vm.mmio_write(e + 4, &0u32.to_le_bytes()));
    assert!(vm.mmio_write(e + 8, &data.to_le_bytes()));
    assert!(vm.mmio_write(e + 12, &u32::from(masked).to_le_bytes()));
}

fn msix_control(d: &mut PassthroughDevice, value: u16) {
    let cap = d.config().model().msix().unwrap().offset;
    w16(d, cap + 2, value);
}

#[test]
fn attach_places_nothing_until_the_guest_does() {
    let vm = vm();
    let d = attach(&vm, SimBackend::nvme().unwrap());
    assert!(device_ranges(&vm).is_empty());
    assert!(vm.routes().is_empty());
    // INTx: one eventfd with a resample fd on the VMM's GSI, nothing else.
    let irqfds = vm.irqfds();
    assert_eq!(irqfds.len(), 1, "{irqfds:?}");
    assert_eq!((irqfds[0].gsi, irqfds[0].resample), (INTX_GSI, true));
    assert_eq!(d.intx_gsi(), Some(INTX_GSI));
}

#[test]
fn bars_follow_the_guest_and_moves_keep_mappings_and_counters() {
    let vm = vm();
    let mut d = attach(&vm, SimBackend::nvme().unwrap());
    let base = 0xc000_0000;
    place_nvme(&mut d, base);
    assert_eq!(d.bar_address(0), Some(base));
    // Page 0 is not mmappable (trapped, forwarded), the doorbells and the PBA page are mapped
    // (the default policy leaves the PBA mapped), the MSI-X table is emulated and the rest of
    // its page forwarded.
    assert_eq!(
        kinds_at(&vm, base),
        [
            (0, BarRangeKind::Device),
            (0x1000, BarRangeKind::Mapped),
            (0x2000, BarRangeKind::MsixTable),
            (0x2410, BarRangeKind::Device),
            (0x3000, BarRangeKind::Mapped),
        ]
    );
    // A trapped read is counted by the device itself.
    let mut b = [0u8; 4];
    assert!(vm.mmio_read(base + 0x40, &mut b));
    assert!(vm.mmio_write(base + 0x40, &7u32.to_le_bytes()));
    assert!(vm.mmio_write(base + 0x1008, &9u32.to_le_bytes()));

    // Move above 4 GiB: every range moves, the counts and the mapped page's contents stay.
    let high = 0x1_0000_0000;
    place_nvme(&mut d, high);
    assert_eq!(d.bar_address(0), Some(high));
    assert_eq!(kinds_at(&vm, high).len(), 5);
    assert!(device_ranges(&vm).iter().all(|r| r.base >= high));
    let page0 = d
        .exit_counters()
        .into_iter()
        .find(|c| c.range.offset == 0)
        .unwrap();
    assert_eq!((page0.at.raw(), page0.reads, page0.writes), (high, 1, 1));
    assert!(vm.mmio_read(high + 0x1008, &mut b));
    assert_eq!(u32::from_le_bytes(b), 9, "the same mmap moved");

    // Decode off: nothing left in the guest; on: back at the same place.
    w16(&mut d, 0x04, 0);
    assert!(device_ranges(&vm).is_empty());
    assert_eq!(d.bar_address(0), None);
    w16(&mut d, 0x04, 0x0006);
    assert_eq!(kinds_at(&vm, high).len(), 5);
}

#[test]
fn overlapping_placements_are_refused_whole() {
    let vm = vm();
    let mut nvme = attach(&vm, SimBackend::nvme().unwrap());
    let mut nic = attach(&vm, SimBackend::nic().unwrap());

    // Over guest RAM: refused, nothing of it placed.
    place_nvme(&mut nvme, 0x1000_0000);
    assert_eq!(nvme.bar_address(0), None);
    assert!(device_ranges(&vm).is_empty());
    assert!(
        nvme.mtree().contains("refused at 0x10000000"),
        "{}",
        nvme.mtree()
    );

    // Placed clear of RAM; then the NIC's 16 KiB MSI-X BAR (3) over the NVMe's BAR (the
    // address is aligned down to 0xc0000000): refused as a whole, and the NVMe's ranges are
    // untouched.
    place_nvme(&mut nvme, 0xc000_0000);
    let before = device_ranges(&vm);
    assert_eq!(before.len(), 5);
    w32(&mut nic, 0x1c, 0xc000_2000);
    w16(&mut nic, 0x04, 0x0002);
    assert_eq!(nic.bar_address(3), None);
    assert_eq!(device_ranges(&vm), before);
    let mtree = nic.mtree();
    assert!(
        mtree.contains("BAR3: not mapped: refused at 0xc0000000"),
        "{mtree}"
    );
    assert!(mtree.contains("overlaps \"0000:01:00.0 BAR0"), "{mtree}");

    // I/O space is one map too: the NIC's 32 ports over a reserved range are refused.
    vm.reserve(AddressSpace::Io, 0xcf8, 8, "PCI conf1").unwrap();
    w32(&mut nic, 0x18, 0xce0);
    w16(&mut nic, 0x04, 0x0001);
    assert_eq!(nic.bar_address(2), None);
    w32(&mut nic, 0x18, 0xc000);
    assert_eq!(nic.bar_address(2), Some(0xc000));
    assert!(vm.pio_write(0xc004, &[0x5a]));
}

#[test]
fn msix_programming_becomes_routes_and_irqfds() {
    let vm = vm();
    let mut d = attach(&vm, SimBackend::nvme().unwrap());
    let base = 0xc000_0000;
    place_nvme(&mut d, base);
    let table = base + 0x2000;
    program_vector(&vm, table, 0, 0xfee0_0000, 0x41, false);
    program_vector(&vm, table, 1, 0xfee0_1000, 0x42, true);
    // A guest address outside the window never becomes a route.
    program_vector(&vm, table, 2, 0xdead_0000, 0x43, false);
    msix_control(&mut d, 0x8000);

    // The unmasked vector is routed and bound; the masked one waits for its unmask; the one
    // outside the window is refused.
    let gsi0 = d.msix_vector(0).unwrap().gsi.expect("vector 0 routed");
    assert!(d.msix_vector(0).unwrap().bound);
    assert_eq!(d.msix_vector(1).unwrap().gsi, None);
    assert_eq!(d.msix_vector(2).unwrap().gsi, None);
    let msg = |address, data| MsiMessage {
        address: GuestAddress(address),
        data,
    };
    assert_eq!(vm.routes(), [(gsi0, msg(0xfee0_0000, 0x41))]);
    let msix_fds = || -> Vec<u32> {
        vm.irqfds()
            .iter()
            .filter(|f| f.gsi != INTX_GSI)
            .map(|f| f.gsi)
            .collect()
    };
    assert_eq!(msix_fds(), [gsi0]);
    assert!(d.refused_routes() > 0);

    // The guest moves vector 0 to another CPU: same GSI, new message.
    program_vector(&vm, table, 0, 0xfee0_2000, 0x51, false);
    assert_eq!(d.msix_vector(0).unwrap().gsi, Some(gsi0));
    assert!(vm.routes().contains(&(gsi0, msg(0xfee0_2000, 0x51))));

    // Unmask 1: routed and bound; disable MSI-X: every route and MSI-X irqfd goes.
    program_vector(&vm, table, 1, 0xfee0_1000, 0x42, false);
    let gsi1 = d.msix_vector(1).unwrap().gsi.expect("vector 1 routed");
    assert!(d.msix_vector(1).unwrap().bound);
    assert_ne!(gsi0, gsi1);
    assert!(vm.routes().contains(&(gsi1, msg(0xfee0_1000, 0x42))));
    assert_eq!(msix_fds().len(), 2);
    msix_control(&mut d, 0);
    assert!(vm.routes().is_empty());
    assert!(vm.irqfds().iter().all(|f| f.gsi == INTX_GSI));
}

/// Issue 12 item 2 at the device level: two devices on one VM, programmed by two vCPU threads
/// at once, never share a GSI.
#[test]
fn two_devices_programmed_at_once_never_share_a_gsi() {
    let vm = vm();
    let start = Arc::new(Barrier::new(2));
    let threads: Vec<_> = [0xc000_0000u64, 0xd000_0000]
        .into_iter()
        .map(|base| {
            let (vm, start) = (vm.clone(), start.clone());
            thread::spawn(move || {
                let mut d = attach(&vm, SimBackend::nvme().unwrap());
                place_nvme(&mut d, base);
                msix_control(&mut d, 0x8000);
                start.wait();
                for round in 0..20u32 {
                    for v in 0..16 {
                        program_vector(&vm, base + 0x2000, v, 0xfee0_0000, 0x40 + round, false);
                    }
                    // Disable and enable: every GSI is freed and allocated again.
                    msix_control(&mut d, 0);
                    msix_control(&mut d, 0x8000);
                }
                for v in 0..16 {
                    program_vector(&vm, base + 0x2000, v, 0xfee0_0000, 0x60 + v as u32, false);
                }
                let gsis: Vec<u32> = (0..16)
                    .map(|v| d.msix_vector(v).unwrap().gsi.unwrap())
                    .collect();
                (d, gsis)
            })
        })
        .collect();
    let results: Vec<(PassthroughDevice, Vec<u32>)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut all: Vec<u32> = results.iter().flat_map(|(_, g)| g.clone()).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 32, "GSIs shared between the devices' vectors");
    assert_eq!(vm.routes().len(), 32);
}

#[test]
fn detach_leaves_nothing_behind() {
    let vm = vm();
    let mut nvme = attach(&vm, SimBackend::nvme().unwrap());
    let mut nic = attach(&vm, SimBackend::nic().unwrap());
    place_nvme(&mut nvme, 0xc000_0000);
    program_vector(&vm, 0xc000_2000, 0, 0xfee0_0000, 0x41, false);
    msix_control(&mut nvme, 0x8000);
    // The NIC: every BAR, the ROM, and MSI.
    w32(&mut nic, 0x10, 0xd000_0000);
    w32(&mut nic, 0x18, 0xc000);
    w32(&mut nic, 0x1c, 0xd010_0000);
    w32(&mut nic, 0x30, 0xd100_0001);
    w16(&mut nic, 0x04, 0x0007);
    let msi = nic.config().model().msi().unwrap().offset;
    w32(&mut nic, msi + 4, 0xfee0_0000);
    w32(&mut nic, msi + 8, 0);
    w16(&mut nic, msi + 12, 0x45);
    w16(&mut nic, msi + 2, 0x0001);
    assert!(nic.msi_gsis()[0].is_some());
    assert!(device_ranges(&vm).len() > 6);

    nvme.detach().unwrap();
    nic.detach().unwrap();
    assert!(device_ranges(&vm).is_empty(), "{:?}", device_ranges(&vm));
    assert!(vm.routes().is_empty(), "{:?}", vm.routes());
    assert!(vm.irqfds().is_empty(), "{:?}", vm.irqfds());
    assert_eq!(vm.placed().len(), 1, "only the RAM");
}

#[test]
fn bar_read_and_write_reach_the_device_without_a_bus() {
    let vm = vm();
    let sim = Arc::new(SimBackend::nic().unwrap());
    let nic = attach(&vm, sim.clone());
    // Even before the guest places anything, a VMM that dispatches itself can call in.
    nic.bar_write(0, 0x10, &0xabcdu32.to_le_bytes()).unwrap(); // trapped page 0
    nic.bar_write(0, 0x1010, &0x1234u32.to_le_bytes()).unwrap(); // mmapped
    let mut b = [0u8; 4];
    sim.peek(0, 0x10, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0xabcd);
    sim.peek(0, 0x1010, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x1234);
    nic.bar_read(0, 0x1010, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x1234);
    let mut p = [0u8; 1];
    nic.bar_write(2, 4, &[0x5a]).unwrap(); // the I/O BAR
    nic.bar_read(2, 4, &mut p).unwrap();
    assert_eq!(p[0], 0x5a);
    sim.poke(6, 0, &[0x55, 0xaa]).unwrap();
    let mut rom = [0u8; 2];
    nic.bar_read(ROM_INDEX, 0, &mut rom).unwrap();
    assert_eq!(rom, [0x55, 0xaa]);

    // Bad accesses are errors that name the device and the BAR, never a panic.
    // The fault is a type a VMM can match on; the message says the same.
    let e = nic.bar_read(1, 0, &mut b).unwrap_err();
    assert!(matches!(e.source, BarAccessFault::NoSuchBar), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("0000:02:00.0") && e.contains("BAR 1"), "{e}");
    let e = nic.bar_read(2, 31, &mut b).unwrap_err();
    assert!(
        matches!(e.source, BarAccessFault::Outside { size: 32 }),
        "{e:?}"
    );
    assert!(e.to_string().contains("outside"), "{e}");
    let e = nic.bar_read(0, 0xffe, &mut b).unwrap_err();
    assert!(matches!(e.source, BarAccessFault::CrossesParts), "{e:?}");
    assert!(e.to_string().contains("boundary"), "{e}");
}

mod random_guests {
    //! Random guest behaviour against two devices on one address map, over the KVM-free ports
    //! (what a fuzz target does, with no `/dev/kvm`): after every step, no device range over
    //! RAM or over another, every route in the MSI window and owned by one vector, and the
    //! devices' view agrees with what is placed; after detach, nothing is left.

    use super::*;
    use iommu_dma::DmaMapper;
    use proptest::prelude::*;

    const RAM: u64 = 2 << 20;

    #[derive(Debug, Clone)]
    enum Op {
        Config {
            nic: bool,
            offset: u16,
            value: u32,
            size: u8,
        },
        Place {
            nic: bool,
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
            nic: bool,
            vector: u32,
        },
    }

    fn value() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0xffff_ffffu32),
            Just(0),
            Just(0x0000_0007),
            Just(0xc000_0000),
            Just(0xc000_2000),
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
            4 => (any::<bool>(), prop_oneof![0u16..0x100, 0x100u16..0x1000], value(), prop_oneof![Just(1u8), Just(2), Just(4)])
                .prop_map(|(nic, offset, value, size)| Op::Config { nic, offset, value, size }),
            3 => (any::<bool>(), 0u16..7, value())
                .prop_map(|(nic, bar, address)| Op::Place { nic, bar, address }),
            4 => (prop_oneof![0xc000_0000u64..0xc004_0000, 0xd000_0000u64..0xd002_0000, any::<u64>()],
                  any::<u64>(), prop_oneof![Just(1u8), Just(2), Just(4), Just(8)], any::<bool>())
                .prop_map(|(addr, value, size, write)| Op::Mmio { addr, value, size, write }),
            1 => (0xc000u16..0xc040, any::<u8>()).prop_map(|(port, value)| Op::Pio { port, value }),
            1 => (any::<bool>(), 0u32..70).prop_map(|(nic, vector)| Op::Fire { nic, vector }),
        ]
    }

    /// The invariants, after every step.
    fn check(vm: &InMemoryPorts, devices: &[&PassthroughDevice]) {
        let placed = vm.placed();
        let mut memory: Vec<&PlacedRange> = placed
            .iter()
            .filter(|r| r.space == AddressSpace::Memory)
            .collect();
        memory.sort_by_key(|r| r.base);
        for w in memory.windows(2) {
            assert!(w[0].base + w[0].len <= w[1].base, "{w:?} overlap");
        }
        for r in placed
            .iter()
            .filter_map(|r| Some((r, r.bar_range.as_ref()?)))
        {
            let (placed, range) = r;
            assert!(
                placed.space == AddressSpace::Io || placed.base >= RAM,
                "{placed:?} over RAM"
            );
            let d = devices
                .iter()
                .find(|d| d.name() == &*range.device)
                .expect("a range of an attached device");
            assert_eq!(
                d.bar_address(range.bar).map(|b| b + range.offset),
                Some(placed.base),
                "the device's view and the address map disagree on {placed:?}"
            );
        }
        let window = MsiWindow::x86();
        let routes = vm.routes();
        for (gsi, msg) in &routes {
            assert!(window.contains(msg.address), "GSI {gsi} routes to {msg:?}");
        }
        let mut owned: Vec<u32> = devices
            .iter()
            .flat_map(|d| {
                let msix = (0..=u16::MAX)
                    .map_while(|v| d.msix_vector(v))
                    .filter_map(|v| v.gsi);
                msix.chain(d.msi_gsis().into_iter().flatten())
                    .collect::<Vec<_>>()
            })
            .collect();
        owned.sort_unstable();
        let routed: Vec<u32> = routes.iter().map(|(g, _)| *g).collect();
        assert_eq!(owned, routed, "every route owned by exactly one vector");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn random_guests_keep_the_address_map_and_routes_sound(ops in proptest::collection::vec(op(), 1..80)) {
            let vm = Arc::new(InMemoryPorts::new());
            vm.reserve(AddressSpace::Memory, 0, RAM, "guest RAM").unwrap();
            let nvme_sim = Arc::new(SimBackend::nvme().unwrap());
            let nic_sim = Arc::new(SimBackend::nic().unwrap());
            let mut nvme = attach(&vm, nvme_sim.clone());
            let mut nic = attach(&vm, nic_sim.clone());
            for op in ops {
                match op {
                    Op::Config { nic: n, offset, value, size } => {
                        let d = if n { &mut nic } else { &mut nvme };
                        d.config_write(offset, &value.to_le_bytes()[..size as usize]);
                    }
                    Op::Place { nic: n, bar, address } => {
                        let d = if n { &mut nic } else { &mut nvme };
                        let reg = if bar == 6 { 0x30 } else { 0x10 + 4 * bar };
                        d.config_write(reg, &(address | u32::from(bar == 6)).to_le_bytes());
                        d.config_write(0x04, &7u16.to_le_bytes());
                    }
                    Op::Mmio { addr, value, size, write } => {
                        let bytes = value.to_le_bytes();
                        if write {
                            vm.mmio_write(addr, &bytes[..size as usize]);
                        } else {
                            let mut b = [0u8; 8];
                            vm.mmio_read(addr, &mut b[..size as usize]);
                        }
                    }
                    Op::Pio { port, value } => {
                        vm.pio_write(port, &[value]);
                    }
                    Op::Fire { nic: n, vector } => {
                        let _ = if n { nic_sim.fire(vector) } else { nvme_sim.fire(vector) };
                        if n { nic.poll_interrupts() } else { nvme.poll_interrupts() }
                    }
                }
                check(&vm, &[&nvme, &nic]);
            }
            nvme.detach().unwrap();
            nic.detach().unwrap();
            prop_assert_eq!(vm.placed().len(), 1, "only the RAM is left");
            prop_assert!(vm.routes().is_empty());
            prop_assert!(vm.irqfds().is_empty());
            prop_assert!(nvme_sim.iommu().mappings().is_empty());
        }
    }
}
