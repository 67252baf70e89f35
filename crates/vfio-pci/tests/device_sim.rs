//! The passthrough device over the simulated backend on a real KVM VM: config space, BARs
//! following the guest, bad guest input, MSI-X/MSI/INTx wiring, DMA, views.
//! Skips without /dev/kvm; fails instead when REQUIRE_KVM=1.

use std::sync::Arc;

use iommu_dma::DmaMapper;
use kvm_runloop::{MsiMessage, Route, Vm, VmConfig};
use pci_config::{CapId, ExtCapabilityId, PciFunction, capability};
use vfio_pci::host::IrqKind;
use vfio_pci::ports::{KvmPorts, MsiWindow};
use vfio_pci::sim::{Fired, SimBackend};
use vfio_pci::{AttachContext, DmaSetup, PassthroughDevice, PassthroughOptions, ReservedRange};

const RAM: usize = 2 << 20;
const BAR_BASE: u64 = 0xc000_0000;
const INTX_GSI: u32 = 10;

fn vm() -> Option<Arc<Vm>> {
    kvm_runloop::testing::kvm_or_skip()?;
    Some(Arc::new(
        Vm::new(&VmConfig {
            ram: vec![(0, RAM)],
            irqchip: true,
            ..Default::default()
        })
        .expect("VM"),
    ))
}

fn attach(vm: &Arc<Vm>, sim: &Arc<SimBackend>) -> PassthroughDevice {
    attach_with(vm, sim, PassthroughOptions::default())
}

fn attach_with(
    vm: &Arc<Vm>,
    sim: &Arc<SimBackend>,
    options: PassthroughOptions,
) -> PassthroughDevice {
    PassthroughDevice::attach(
        sim.clone(),
        AttachContext {
            dma: DmaSetup::GuestMemory(vm.memory().clone()),
            intx_gsi: Some(INTX_GSI),
            reserved: Vec::new(),
            ..AttachContext::new(Arc::new(KvmPorts::new(vm.clone())), MsiWindow::x86())
        },
        options,
    )
    .expect("attach")
}

fn nvme() -> Arc<SimBackend> {
    Arc::new(SimBackend::nvme().expect("sim nvme"))
}

fn nic() -> Arc<SimBackend> {
    Arc::new(SimBackend::nic().expect("sim nic"))
}

fn r32(d: &mut PassthroughDevice, off: u16) -> u32 {
    let mut b = [0u8; 4];
    d.config_read(off, &mut b);
    u32::from_le_bytes(b)
}

fn r16(d: &mut PassthroughDevice, off: u16) -> u16 {
    let mut b = [0u8; 2];
    d.config_read(off, &mut b);
    u16::from_le_bytes(b)
}

fn w32(d: &mut PassthroughDevice, off: u16, v: u32) {
    d.config_write(off, &v.to_le_bytes());
}

fn w16(d: &mut PassthroughDevice, off: u16, v: u16) {
    d.config_write(off, &v.to_le_bytes());
}

/// The whole config space as the guest reads it.
fn guest_config(d: &mut PassthroughDevice) -> Vec<u8> {
    (0..1024u16)
        .flat_map(|i| r32(d, i * 4).to_le_bytes())
        .collect()
}

fn memory_on(d: &mut PassthroughDevice) {
    let cmd = r16(d, 0x04);
    w16(d, 0x04, cmd | 0x2);
}

fn memory_off(d: &mut PassthroughDevice) {
    let cmd = r16(d, 0x04);
    w16(d, 0x04, cmd & !0x2);
}

/// Slots named after `dev`, as (guest address, size, host address).
fn device_slots(vm: &Vm, dev: &str) -> Vec<(u64, u64, u64)> {
    let mut v: Vec<_> = vm
        .slots()
        .regions()
        .into_iter()
        .filter(|r| r.name.starts_with(dev))
        .map(|r| (r.guest_addr, r.size, r.host_addr))
        .collect();
    v.sort();
    v
}

/// Bus ranges named after `dev`, as (base, size, name).
fn device_ranges(vm: &Vm, dev: &str) -> Vec<(u64, u64, String)> {
    vm.bus()
        .device_counts()
        .into_iter()
        .filter(|c| c.name.starts_with(dev))
        .map(|c| (c.base, c.size, c.name))
        .collect()
}

fn msix_cap(d: &mut PassthroughDevice) -> u16 {
    let cfg = guest_config(d);
    capability::capabilities(&cfg)
        .unwrap()
        .into_iter()
        .find(|c| c.id == CapId::Standard(pci_config::CapabilityId::MSIX))
        .expect("MSI-X capability visible")
        .offset
}

#[test]
fn config_space_is_virtualized() {
    let Some(vm) = vm() else { return };
    let sim = nvme();
    let mut d = attach(&vm, &sim);
    assert_eq!(sim.resets(), 1, "reset at attach");

    // IDs come from the device; writes to them are ignored.
    assert_eq!(r32(&mut d, 0x00), 0x0010_1b36);
    w32(&mut d, 0x00, 0xdead_beef);
    assert_eq!(r32(&mut d, 0x00), 0x0010_1b36);
    // One function: the multi-function bit is clear.
    assert_eq!(r32(&mut d, 0x0c) >> 16 & 0x80, 0);

    // BAR0 is emulated: unassigned, 64-bit, sized from the region (16 KiB).
    assert_eq!(r32(&mut d, 0x10), 0x4);
    w32(&mut d, 0x10, 0xffff_ffff);
    w32(&mut d, 0x14, 0xffff_ffff);
    assert_eq!(r32(&mut d, 0x10), 0xffff_c004);
    assert_eq!(r32(&mut d, 0x14), 0xffff_ffff);
    w32(&mut d, 0x10, 0xc000_0000);
    w32(&mut d, 0x14, 0);
    assert_eq!(r32(&mut d, 0x10), 0xc000_0004);
    // ... and never reaches the device, which keeps its host address.
    assert_eq!(sim.config().read_u32(0x10).unwrap(), 0xfebd_0004);
    // Unimplemented BARs read zero and ignore writes.
    w32(&mut d, 0x18, 0xffff_ffff);
    assert_eq!(r32(&mut d, 0x18), 0);

    // Hidden extended capabilities are not in the guest's chain; the rest of the chain is.
    let cfg = guest_config(&mut d);
    let caps = capability::capabilities(&cfg).expect("the guest's chain parses");
    let ids: Vec<CapId> = caps.iter().map(|c| c.id).collect();
    assert!(
        !ids.contains(&CapId::Extended(ExtCapabilityId::SRIOV)),
        "{ids:?}"
    );
    assert!(
        !ids.contains(&CapId::Extended(ExtCapabilityId::ARI)),
        "{ids:?}"
    );
    assert!(ids.contains(&CapId::Standard(pci_config::CapabilityId::MSIX)));
    assert!(ids.contains(&CapId::Standard(pci_config::CapabilityId::EXPRESS)));
    // Writes to a hidden capability do not reach the device.
    let sriov = sim
        .config()
        .find_extended_capability(ExtCapabilityId::SRIOV)
        .unwrap()
        .offset;
    let before = sim.config().read_u32(sriov + 8).unwrap();
    w32(&mut d, sriov + 8, 0xffff_ffff);
    assert_eq!(r32(&mut d, sriov + 8), 0);
    assert_eq!(sim.config().read_u32(sriov + 8).unwrap(), before);

    // The MSI-X table/PBA locations are the plan's.
    let cap = msix_cap(&mut d);
    let p = *d.plan().msix().unwrap();
    assert_eq!(r32(&mut d, cap + 4), p.table_register());
    assert_eq!(r32(&mut d, cap + 8), p.pba_register());

    // Passthrough registers reach the device: bus master in Command, PCIe Device Control.
    let cmd = r16(&mut d, 0x04);
    w16(&mut d, 0x04, cmd | 0x4);
    assert!(sim.config().command().bus_master());
    let exp = sim.config().express().unwrap().offset;
    w16(&mut d, exp + 8, 0x0010);
    assert_eq!(sim.config().read_u16(exp + 8).unwrap() & 0x0010, 0x0010);

    // INTx: pin A from the device, line = the GSI the VMM gave.
    assert_eq!(r32(&mut d, 0x3c) & 0xffff, 0x0100 | INTX_GSI);
    assert_eq!(d.intx_gsi(), Some(INTX_GSI));
    assert_eq!(sim.enabled_vectors(IrqKind::Intx), 1);

    // Bad accesses: past the end, odd sizes: harmless.
    let mut three = [0u8; 3];
    d.config_read(0x40, &mut three);
    d.config_write(0xfff, &[1, 2, 3, 4]);
    d.config_write(0x1000, &[1]);
    assert_eq!(r32(&mut d, 0x00), 0x0010_1b36);

    drop(d);
    assert_eq!(sim.resets(), 2, "reset at detach");
}

#[test]
fn bars_follow_the_guest() {
    let Some(vm) = vm() else { return };
    let sim = nvme();
    let mut d = attach(&vm, &sim);
    let dev = "0000:01:00.0 ";

    w32(&mut d, 0x10, BAR_BASE as u32);
    w32(&mut d, 0x14, 0);
    assert!(
        device_slots(&vm, dev).is_empty(),
        "nothing before decode is on"
    );
    assert!(device_ranges(&vm, dev).is_empty());

    memory_on(&mut d);
    assert_eq!(d.bar_address(0), Some(BAR_BASE));
    // Mapped: the doorbell page and the PBA page (the host's sparse areas).
    let slots = device_slots(&vm, dev);
    let at: Vec<(u64, u64)> = slots.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        at,
        [(BAR_BASE + 0x1000, 0x1000), (BAR_BASE + 0x3000, 0x1000)]
    );
    // Trapped: page 0 (not mmappable), the MSI-X table and the rest of its page.
    let ranges = device_ranges(&vm, dev);
    let names: Vec<&str> = ranges.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(ranges[0].0, BAR_BASE);
    assert_eq!(ranges[0].1, 0x1000);
    assert!(names[0].starts_with("0000:01:00.0 BAR0 +0x0"), "{names:?}");
    assert!(
        ranges.iter().any(|r| r.0 == BAR_BASE + 0x2000
            && r.1 == 65 * 16
            && r.2 == "0000:01:00.0 BAR0 msix-table"),
        "{ranges:?}"
    );

    // A mapped page is the device's memory; a trapped access reaches the device and is counted.
    sim.poke(0, 0x1008, &0x1234_5678u32.to_le_bytes()).unwrap();
    let slot = vm.slots().find(BAR_BASE + 0x1008).unwrap();
    let mapping = vm.slots().mapping(slot.slot).unwrap();
    // SAFETY: the mapping is live (the slot exists) and at least one page long.
    let seen = unsafe { std::ptr::read_volatile(mapping.as_ptr().add(8) as *const u32) };
    assert_eq!(seen, 0x1234_5678);
    assert!(vm.bus().mmio_write(BAR_BASE + 0x40, &7u32.to_le_bytes()));
    let mut b = [0u8; 4];
    sim.peek(0, 0x40, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 7);
    let mut r = [0u8; 4];
    assert!(vm.bus().mmio_read(BAR_BASE + 0x40, &mut r));
    assert_eq!(u32::from_le_bytes(r), 7);
    let counters = d.exit_counters();
    let page0 = counters.iter().find(|c| c.at.raw() == BAR_BASE).unwrap();
    assert_eq!((page0.reads, page0.writes), (1, 1));

    // Move with decode on: slots follow, same host memory (mmaps are not redone).
    let new = BAR_BASE + 0x10_0000;
    w32(&mut d, 0x10, new as u32);
    assert_eq!(d.bar_address(0), Some(new));
    let moved = device_slots(&vm, dev);
    assert_eq!(moved.len(), 2);
    for (a, b) in slots.iter().zip(&moved) {
        assert_eq!(b.0, a.0 - BAR_BASE + new);
        assert_eq!(b.2, a.2, "same mmap");
    }
    assert!(device_ranges(&vm, dev).iter().all(|r| r.0 >= new));
    // Counters survive the move.
    assert_eq!(
        d.exit_counters()
            .iter()
            .find(|c| c.at.raw() == new)
            .unwrap()
            .writes,
        1
    );

    // A sizing probe mid-move keeps the mapping; the next address moves it.
    w32(&mut d, 0x10, 0xffff_ffff);
    assert_eq!(d.bar_address(0), Some(new));
    w32(&mut d, 0x10, BAR_BASE as u32);
    assert_eq!(d.bar_address(0), Some(BAR_BASE));

    // Decode off: everything goes; on: it comes back at the same place, same mmaps.
    memory_off(&mut d);
    assert!(device_slots(&vm, dev).is_empty());
    assert!(device_ranges(&vm, dev).is_empty());
    assert_eq!(d.bar_address(0), None);
    memory_on(&mut d);
    assert_eq!(device_slots(&vm, dev), slots);

    // The view shows it.
    let mtree = d.mtree();
    assert!(
        mtree.contains(
            "  00000000c0001000-00000000c0001fff (prio 0, ramd): 0000:01:00.0 BAR0 mmap +0x1000"
        ),
        "{mtree}"
    );
    assert!(
        mtree.contains(
            "  00000000c0002000-00000000c000240f (prio 0, i/o): 0000:01:00.0 BAR0 msix-table"
        ),
        "{mtree}"
    );
    assert!(d.render_exit_counters().contains("0000:01:00.0 BAR0 +0x0"));

    d.detach().unwrap();
    assert!(device_slots(&vm, dev).is_empty());
    assert!(device_ranges(&vm, dev).is_empty());
}

#[test]
fn bars_stay_clear_of_the_vmms_reserved_windows() {
    let Some(vm) = vm() else { return };
    let sim = nvme();
    let ecam = ReservedRange {
        base: 0xb000_0000,
        end: 0xc000_0000,
        what: "the ECAM window".into(),
    };
    let mut nvme = PassthroughDevice::attach(
        sim.clone(),
        AttachContext {
            dma: DmaSetup::None,
            intx_gsi: None,
            reserved: vec![ecam],
            ..AttachContext::new(Arc::new(KvmPorts::new(vm.clone())), MsiWindow::x86())
        },
        PassthroughOptions::default(),
    )
    .expect("attach");

    // BAR0 (16 KiB, so the register keeps 0xbfffc000) in the window's last pages: refused,
    // nothing of it in the guest.
    w32(&mut nvme, 0x10, 0xbfff_f000);
    w32(&mut nvme, 0x14, 0);
    memory_on(&mut nvme);
    assert_eq!(nvme.bar_address(0), None);
    assert!(device_slots(&vm, "0000:01:00.0 ").is_empty());
    assert!(device_ranges(&vm, "0000:01:00.0 ").is_empty());
    let mtree = nvme.mtree();
    assert!(
        mtree.contains("refused at 0xbfffc000")
            && mtree.contains("overlap the ECAM window [0xb0000000-0xbfffffff]"),
        "{mtree}"
    );

    // Just past the window: placed, mapped and trapped as usual.
    w32(&mut nvme, 0x10, BAR_BASE as u32);
    assert_eq!(nvme.bar_address(0), Some(BAR_BASE));
    assert!(!device_slots(&vm, "0000:01:00.0 ").is_empty());
    assert!(!device_ranges(&vm, "0000:01:00.0 ").is_empty());
}

#[test]
fn bad_bar_addresses_are_refused_and_harmless() {
    let Some(vm) = vm() else { return };
    let nvme_sim = nvme();
    let nic_sim = nic();
    let mut nvme = attach(&vm, &nvme_sim);
    let mut nic = attach(&vm, &nic_sim);

    // Over guest RAM: refused, RAM untouched, nothing of the device in the guest.
    vm.write_memory(0x10_0000, b"RAM!").unwrap();
    w32(&mut nvme, 0x10, 0x10_0000);
    w32(&mut nvme, 0x14, 0);
    memory_on(&mut nvme);
    assert_eq!(nvme.bar_address(0), None);
    assert!(device_slots(&vm, "0000:01:00.0 ").is_empty());
    assert!(device_ranges(&vm, "0000:01:00.0 ").is_empty());
    let ram = vm.slots().find(0x10_0000).unwrap();
    assert_eq!(ram.name, "ram0");
    let mut b = [0u8; 4];
    vm.read_memory(0x10_0000, &mut b).unwrap();
    assert_eq!(&b, b"RAM!");
    assert!(
        nvme.mtree().contains("refused at 0x100000"),
        "{}",
        nvme.mtree()
    );

    // A BAR that is only trapped (the NIC's MSI-X BAR 3) and the ROM over RAM: refused too
    // (RAM would shadow the ranges, so they would look placed while the guest reaches RAM).
    w32(&mut nic, 0x1c, 0x4_0000);
    w32(&mut nic, 0x30, 0x8_0001);
    memory_on(&mut nic);
    assert_eq!(nic.bar_address(3), None);
    assert_eq!(nic.bar_address(6), None);
    assert!(device_ranges(&vm, "0000:02:00.0 BAR3").is_empty());
    assert!(device_ranges(&vm, "0000:02:00.0 ROM").is_empty());
    let mtree = nic.mtree();
    assert!(
        mtree.contains("BAR3: not mapped: refused at 0x40000"),
        "{mtree}"
    );
    assert!(mtree.contains("of \"ram0\""), "{mtree}");
    w32(&mut nic, 0x1c, 0);
    w32(&mut nic, 0x30, 0);
    memory_off(&mut nic);

    // Over another device's BAR: the second placement is refused, the first keeps working.
    w32(&mut nic, 0x10, BAR_BASE as u32);
    memory_on(&mut nic);
    assert_eq!(nic.bar_address(0), Some(BAR_BASE));
    w32(&mut nvme, 0x10, BAR_BASE as u32);
    assert_eq!(nvme.bar_address(0), None);
    assert_eq!(nic.bar_address(0), Some(BAR_BASE));
    assert!(device_slots(&vm, "0000:01:00.0 ").is_empty());
    assert!(!device_slots(&vm, "0000:02:00.0 ").is_empty());

    // Over its own other BAR: BAR3 on top of BAR0 is refused.
    w32(&mut nic, 0x1c, BAR_BASE as u32);
    assert_eq!(nic.bar_address(3), None);
    assert_eq!(nic.bar_address(0), Some(BAR_BASE));

    // Moving to a free place works after a refusal.
    w32(&mut nvme, 0x10, 0xd000_0000);
    assert_eq!(nvme.bar_address(0), Some(0xd000_0000));

    // 64-bit BAR programmed one half at a time with decode off, then on: mapped at the full value.
    memory_off(&mut nvme);
    w32(&mut nvme, 0x10, 0xe000_0000);
    w32(&mut nvme, 0x14, 0x1);
    assert_eq!(nvme.bar_address(0), None);
    memory_on(&mut nvme);
    assert_eq!(nvme.bar_address(0), Some(0x1_e000_0000));
    assert!(vm.slots().find(0x1_e000_1000).is_some());

    // Address 0 with decode on: "unassigned", never mapped over RAM at 0.
    w32(&mut nvme, 0x10, 0);
    w32(&mut nvme, 0x14, 0);
    assert_eq!(nvme.bar_address(0), None);
    assert_eq!(vm.slots().find(0).unwrap().name, "ram0");

    // I/O BAR: decode I/O on, the ports are trapped and forwarded.
    w32(&mut nic, 0x18, 0xc000);
    let cmd = r16(&mut nic, 0x04);
    w16(&mut nic, 0x04, cmd | 0x1);
    assert_eq!(nic.bar_address(2), Some(0xc000));
    assert!(vm.bus().pio_write(0xc004, &[0x5a]));
    let mut p = [0u8; 1];
    nic_sim.peek(2, 4, &mut p).unwrap();
    assert_eq!(p[0], 0x5a);

    // The ROM: sized, placed, enabled, readable, writes dropped.
    w32(&mut nic, 0x30, 0xffff_ffff);
    assert_eq!(r32(&mut nic, 0x30) & !0x7ff, 0xffff_0000);
    nic_sim.poke(6, 0, &[0x55, 0xaa]).unwrap();
    w32(&mut nic, 0x30, 0xd100_0001);
    assert_eq!(nic.bar_address(6), Some(0xd100_0000));
    let mut rom = [0u8; 2];
    assert!(vm.bus().mmio_read(0xd100_0000, &mut rom));
    assert_eq!(rom, [0x55, 0xaa]);
    vm.bus().mmio_write(0xd100_0000, &[0, 0]);
    nic_sim.peek(6, 0, &mut rom).unwrap();
    assert_eq!(rom, [0x55, 0xaa]);
    // The ROM was read from the host once, at the first read (each VFIO ROM read maps and
    // unmaps the host's ROM BAR): later reads, past the first bytes too, come from that copy.
    nic_sim.poke(6, 0, &[0, 0]).unwrap();
    nic_sim.poke(6, 0xfffe, &[0x12, 0x34]).unwrap();
    assert!(vm.bus().mmio_read(0xd100_0000, &mut rom));
    assert_eq!(rom, [0x55, 0xaa]);
    assert!(vm.bus().mmio_read(0xd100_fffe, &mut rom));
    assert_eq!(rom, [0, 0]);
}

/// Writes one MSI-X table entry through the trapped table.
fn program_vector(vm: &Vm, table: u64, vector: u64, address: u64, data: u32, masked: bool) {
    let e = table + vector * 16;
    assert!(vm.bus().mmio_write(e, &(address as u32).to_le_bytes()));
    assert!(
        vm.bus()
            .mmio_write(e + 4, &((address >> 32) as u32).to_le_bytes())
    );
    assert!(vm.bus().mmio_write(e + 8, &data.to_le_bytes()));
    assert!(vm.bus().mmio_write(e + 12, &(masked as u32).to_le_bytes()));
}

fn msi_route(vm: &Vm, gsi: u32) -> Option<MsiMessage> {
    vm.interrupts()
        .unwrap()
        .routes()
        .into_iter()
        .find(|(g, _)| *g == gsi)
        .and_then(|(_, r)| match r {
            Route::Msi(m) => Some(m),
            _ => None,
        })
}

#[test]
fn msix_vectors_become_routes_and_irqfds() {
    let Some(vm) = vm() else { return };
    let sim = nvme();
    let mut d = attach(&vm, &sim);
    w32(&mut d, 0x10, BAR_BASE as u32);
    w32(&mut d, 0x14, 0);
    memory_on(&mut d);
    let table = BAR_BASE + 0x2000;
    let cap = msix_cap(&mut d);

    program_vector(&vm, table, 3, 0xfee0_0000, 0x41, false);
    // A guest read of the table gives back what it wrote.
    let mut r = [0u8; 4];
    assert!(vm.bus().mmio_read(table + 3 * 16 + 8, &mut r));
    assert_eq!(u32::from_le_bytes(r), 0x41);
    assert_eq!(sim.enabled_vectors(IrqKind::Msix), 0);

    // Enable: VFIO gets eventfds for every vector (INTx goes off), KVM gets the route.
    w16(&mut d, cap + 2, 0x8000);
    assert_eq!(r16(&mut d, cap + 2) & 0xc000, 0x8000);
    assert_eq!(sim.enabled_vectors(IrqKind::Msix), 65);
    assert_eq!(sim.enabled_vectors(IrqKind::Intx), 0);
    let v3 = d.msix_vector(3).unwrap();
    assert!(v3.bound && !v3.masked);
    let gsi = v3.gsi.unwrap();
    assert_eq!(
        msi_route(&vm, gsi),
        Some(MsiMessage {
            address: 0xfee0_0000,
            data: 0x41
        })
    );
    // The device fires it: KVM takes it through the irqfd (no userspace involvement).
    assert_eq!(sim.fire(3).unwrap(), Fired::Msix);
    d.poll_interrupts();
    assert!(!d.msix_vector(3).unwrap().pending);

    // Mask: unbound; a fire becomes the pending bit; unmask delivers it once.
    assert!(
        vm.bus()
            .mmio_write(table + 3 * 16 + 12, &1u32.to_le_bytes())
    );
    let v3 = d.msix_vector(3).unwrap();
    assert!(v3.masked && !v3.bound);
    sim.fire(3).unwrap();
    d.poll_interrupts();
    assert!(d.msix_vector(3).unwrap().pending);
    assert!(
        vm.bus()
            .mmio_write(table + 3 * 16 + 12, &0u32.to_le_bytes())
    );
    let v3 = d.msix_vector(3).unwrap();
    assert!(!v3.pending && v3.bound && !v3.masked);
    assert_eq!(d.delivered_pending(), 1);

    // Moving the vector to another CPU updates the same GSI's route.
    program_vector(&vm, table, 3, 0xfee0_1000, 0x42, false);
    assert_eq!(d.msix_vector(3).unwrap().gsi, Some(gsi));
    assert_eq!(msi_route(&vm, gsi).unwrap().address, 0xfee0_1000);

    // An absurd address is never routed.
    program_vector(&vm, table, 4, 0x1234_5678_0000, 0x43, false);
    let v4 = d.msix_vector(4).unwrap();
    assert_eq!((v4.gsi, v4.bound), (None, false));
    assert!(d.refused_routes() >= 1);
    assert!(
        vm.interrupts()
            .unwrap()
            .routes()
            .iter()
            .all(|(_, r)| !matches!(r, Route::Msi(m) if m.address == 0x1234_5678_0000))
    );
    // Re-pointing a routed vector at an absurd address unroutes it.
    program_vector(&vm, table, 3, 0xdead_0000, 0x42, false);
    assert_eq!(d.msix_vector(3).unwrap().gsi, None);
    assert_eq!(msi_route(&vm, gsi), None);

    // The doorbell (BAR0 offset 0, trapped) fires vector 0 of the device; masked here, so it
    // shows up as pending.
    program_vector(&vm, table, 0, 0xfee0_0000, 0x30, true);
    let before = sim.region_writes();
    assert!(vm.bus().mmio_write(BAR_BASE, &1u32.to_le_bytes()));
    assert_eq!(sim.region_writes(), before + 1);
    d.poll_interrupts();
    assert!(d.msix_vector(0).unwrap().pending);

    // Disable: routes go, VFIO is told, INTx comes back.
    w16(&mut d, cap + 2, 0);
    assert_eq!(sim.enabled_vectors(IrqKind::Msix), 0);
    assert_eq!(sim.enabled_vectors(IrqKind::Intx), 1);
    assert!(
        vm.interrupts()
            .unwrap()
            .routes()
            .iter()
            .all(|(_, r)| !matches!(r, Route::Msi(_)))
    );
}

#[test]
fn msix_in_its_own_bar_and_msi() {
    let Some(vm) = vm() else { return };
    let sim = nic();
    // BAR3 holds only the MSI-X table and PBA, each on its own page; with `trap_pba` both are
    // trapped and emulated (by default the PBA page would be mapped, as QEMU does).
    let options = PassthroughOptions {
        policy: trap_map::Policy {
            trap_pba: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut d = attach_with(&vm, &sim, options);
    w32(&mut d, 0x1c, 0xd000_0000);
    memory_on(&mut d);
    assert_eq!(d.bar_address(3), Some(0xd000_0000));
    let names: Vec<String> = device_ranges(&vm, "0000:02:00.0 BAR3")
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert!(
        names.contains(&"0000:02:00.0 BAR3 msix-table".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"0000:02:00.0 BAR3 msix-pba".to_string()),
        "{names:?}"
    );
    let cap = msix_cap(&mut d);
    // Enable with the function masked, program vector 1, fire it: the emulated PBA shows it.
    w16(&mut d, cap + 2, 0xc000);
    program_vector(&vm, 0xd000_0000, 1, 0xfee0_0000, 0x51, false);
    assert!(d.msix_vector(1).unwrap().masked);
    sim.fire(1).unwrap();
    let mut pba = [0u8; 8];
    assert!(vm.bus().mmio_read(0xd000_2000, &mut pba));
    assert_eq!(u64::from_le_bytes(pba), 1 << 1);
    // Function unmask delivers it.
    w16(&mut d, cap + 2, 0x8000);
    assert!(vm.bus().mmio_read(0xd000_2000, &mut pba));
    assert_eq!(u64::from_le_bytes(pba), 0);
    assert_eq!(d.delivered_pending(), 1);
    assert!(d.msix_vector(1).unwrap().bound);
    w16(&mut d, cap + 2, 0);

    // MSI: program address and data, then enable.
    let cfg = guest_config(&mut d);
    let msi = pci_config::capability::standard_capabilities(&cfg)
        .unwrap()
        .into_iter()
        .find(|c| c.id == CapId::Standard(pci_config::CapabilityId::MSI))
        .unwrap()
        .offset;
    w32(&mut d, msi + 4, 0xfee0_0000);
    w32(&mut d, msi + 8, 0);
    w16(&mut d, msi + 12, 0x61);
    let ctl = r16(&mut d, msi + 2);
    w16(&mut d, msi + 2, ctl | 1);
    assert_eq!(sim.enabled_vectors(IrqKind::Msi), 1);
    let gsi = d.msi_gsis()[0].expect("MSI routed");
    assert_eq!(
        msi_route(&vm, gsi),
        Some(MsiMessage {
            address: 0xfee0_0000,
            data: 0x61
        })
    );
    // The device's own MSI registers were never written by the guest.
    let host_msi = sim.config().msi().unwrap();
    assert_eq!(host_msi.address, 0);
    assert!(!host_msi.enabled());
    // Disable.
    let ctl = r16(&mut d, msi + 2);
    w16(&mut d, msi + 2, ctl & !1);
    assert_eq!(sim.enabled_vectors(IrqKind::Msi), 0);
    assert_eq!(msi_route(&vm, gsi), None);
    assert_eq!(sim.enabled_vectors(IrqKind::Intx), 1);
}

#[test]
fn guest_ram_is_reachable_for_dma_only_while_attached() {
    let Some(vm) = vm() else { return };
    let sim = nvme();
    let d = attach(&vm, &sim);
    vm.write_memory(0x8000, b"queue entry").unwrap();
    let mut buf = [0u8; 11];
    sim.iommu()
        .read(0x8000, &mut buf)
        .expect("GPA reachable at IOVA = GPA");
    assert_eq!(&buf, b"queue entry");
    sim.iommu().write(0x9000, b"completion").unwrap();
    let mut seen = [0u8; 10];
    vm.read_memory(0x9000, &mut seen).unwrap();
    assert_eq!(&seen, b"completion");
    // Past the end of RAM: a fault, not a write.
    assert!(sim.iommu().write(RAM as u64, b"x").is_err());
    d.detach().unwrap();
    assert!(sim.iommu().mappings().is_empty());
    assert!(sim.iommu().read(0x8000, &mut buf).is_err());
}

#[test]
fn relocated_msix_is_where_the_capability_says() {
    let Some(vm) = vm() else { return };
    let sim = nvme();
    let options = PassthroughOptions {
        policy: trap_map::Policy {
            msix_relocation: trap_map::MsixRelocation::Bar(2),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut d = attach_with(&vm, &sim, options);
    let placement = *d.plan().msix().unwrap();
    assert_eq!(placement.table_bar, 2);
    let cap = msix_cap(&mut d);
    assert_eq!(r32(&mut d, cap + 4), placement.table_register());
    assert_eq!(r32(&mut d, cap + 4) & 7, 2);
    // BAR2 exists for the guest (sizable) though the device has no BAR2.
    let size = d.plan().bar(2).unwrap().guest_size();
    w32(&mut d, 0x18, 0xffff_ffff);
    assert_eq!(u64::from(!(r32(&mut d, 0x18) & !0xf)) + 1, size);
    w32(&mut d, 0x10, BAR_BASE as u32);
    w32(&mut d, 0x14, 0);
    w32(&mut d, 0x18, 0xd000_0000);
    memory_on(&mut d);
    assert_eq!(d.bar_address(2), Some(0xd000_0000));
    // The old table page of BAR0 is forwarded to the device (the host filters it), the guest's
    // table is the emulated one in BAR2.
    let ranges = device_ranges(&vm, "0000:01:00.0 BAR2");
    assert!(
        ranges.iter().any(|r| r.2 == "0000:01:00.0 BAR2 msix-table"),
        "{ranges:?}"
    );
    w16(&mut d, cap + 2, 0x8000);
    program_vector(
        &vm,
        0xd000_0000 + placement.table_offset,
        7,
        0xfee0_0000,
        0x47,
        false,
    );
    let gsi = d.msix_vector(7).unwrap().gsi.expect("routed");
    assert_eq!(msi_route(&vm, gsi).unwrap().data, 0x47);
    // Nothing of it reached the device's own table (BAR0 0x2000 in the memfd).
    let mut e = [0u8; 16];
    sim.peek(0, 0x2000 + 7 * 16, &mut e).unwrap();
    assert_eq!(e, [0u8; 16]);
}

#[test]
fn no_interrupt_routing_leaves_everything_unwired_but_works() {
    let Some(vm) = vm() else { return };
    let sim = nvme();
    let mut d = PassthroughDevice::attach(
        sim.clone(),
        AttachContext {
            interrupts: None,
            dma: DmaSetup::None,
            intx_gsi: Some(INTX_GSI),
            reserved: Vec::new(),
            ..AttachContext::new(Arc::new(KvmPorts::new(vm.clone())), MsiWindow::x86())
        },
        PassthroughOptions::default(),
    )
    .unwrap();
    // No INTx for the guest: pin 0, line 0xff.
    assert_eq!(r32(&mut d, 0x3c) & 0xffff, 0x00ff);
    assert_eq!(d.intx_gsi(), None);
    w32(&mut d, 0x10, BAR_BASE as u32);
    w32(&mut d, 0x14, 0);
    memory_on(&mut d);
    let cap = msix_cap(&mut d);
    w16(&mut d, cap + 2, 0x8000);
    program_vector(&vm, BAR_BASE + 0x2000, 0, 0xfee0_0000, 0x41, false);
    assert_eq!(d.msix_vector(0).unwrap().gsi, None);
    assert!(d.dma().is_none());
    assert!(sim.iommu().mappings().is_empty());
}

/// A function with a 4-vector MSI capability (64-bit, per-vector masking) and no MSI-X.
fn multi_msi() -> Arc<SimBackend> {
    use pci_config::capability::MsiCapability;
    use pci_config::{BarDef, ConfigSize, ConfigSpace, DeviceIds, HeaderType};
    use vfio_pci::sim::{SimBar, SimSpec};
    let ids = DeviceIds {
        vendor_id: 0x8086,
        device_id: 0x1234,
        class_code: 0x088000,
        revision: 0,
        subsystem_vendor_id: 0x8086,
        subsystem_id: 0,
    };
    let mut config = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Conventional, ids);
    config
        .add_capability(MsiCapability::new(4, true, true))
        .unwrap();
    Arc::new(
        SimBackend::new(SimSpec {
            name: "0000:03:00.0".into(),
            config,
            bars: vec![SimBar {
                index: 0,
                def: BarDef::memory32(0x1000),
                sparse: None,
                msix_mappable: false,
            }],
            rom_size: 0,
            intx: true,
            msi_vectors: 4,
            msix_vectors: 0,
            doorbell: None,
        })
        .expect("sim multi-MSI"),
    )
}

#[test]
fn msi_vector_count_changes_while_enabled() {
    let Some(vm) = vm() else { return };
    let sim = multi_msi();
    let mut d = attach(&vm, &sim);
    let cfg = guest_config(&mut d);
    let msi = pci_config::capability::standard_capabilities(&cfg)
        .unwrap()
        .into_iter()
        .find(|c| c.id == CapId::Standard(pci_config::CapabilityId::MSI))
        .unwrap()
        .offset;
    // 64-bit with per-vector masking: address 4, upper 8, data 12, mask 16.
    w32(&mut d, msi + 4, 0xfee0_0000);
    w32(&mut d, msi + 8, 0);
    w16(&mut d, msi + 12, 0x40);
    let ctl = r16(&mut d, msi + 2);
    w16(&mut d, msi + 2, ctl | 1);
    assert_eq!(sim.enabled_vectors(IrqKind::Msi), 1);
    assert_eq!(
        sim.enabled_vectors(IrqKind::Intx),
        0,
        "INTx off while MSI is on"
    );

    // Multiple Message Enable 4 (MME = 2 in bits 6:4) while MSI stays enabled: VFIO cannot grow
    // an enabled block, so the device must disable and re-enable with four vectors.
    w16(&mut d, msi + 2, (ctl & !0x70) | (2 << 4) | 1);
    assert_eq!(sim.enabled_vectors(IrqKind::Msi), 4);
    assert_eq!(
        sim.enabled_vectors(IrqKind::Intx),
        0,
        "INTx stays off meanwhile"
    );
    let gsis: Vec<u32> = d.msi_gsis().into_iter().map(|g| g.unwrap()).collect();
    assert_eq!(gsis.len(), 4);
    for (i, gsi) in gsis.iter().enumerate() {
        assert_eq!(
            msi_route(&vm, *gsi),
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x40 | i as u32,
            }),
            "vector {i}"
        );
    }
    // A device signal on vector 2 reaches its eventfd (VFIO holds the new ones).
    assert_eq!(sim.fire(2).unwrap(), Fired::Msi);

    // Disable: host MSI off, routes gone, INTx back.
    w16(&mut d, msi + 2, ctl & !1);
    assert_eq!(sim.enabled_vectors(IrqKind::Msi), 0);
    assert!(gsis.iter().all(|g| msi_route(&vm, *g).is_none()));
    assert_eq!(sim.enabled_vectors(IrqKind::Intx), 1);
    d.detach().unwrap();
    assert_eq!(
        sim.enabled_vectors(IrqKind::Intx),
        0,
        "detach leaves nothing enabled"
    );
}

/// Issue 12 item 2 on KVM: two devices, each with its own `KvmPorts` (two routers on one VM),
/// programmed by two threads at once, never end on the same GSI. With the former two-step
/// `allocate_gsi` then `set_msi_route`, both could get the lowest free GSI.
#[test]
fn two_routers_on_one_vm_never_share_a_gsi() {
    let Some(vm) = vm() else { return };
    let start = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = [0xc000_0000u64, 0xd000_0000]
        .into_iter()
        .map(|base| {
            let (vm, start) = (vm.clone(), start.clone());
            std::thread::spawn(move || {
                let mut d = attach(&vm, &nvme());
                w32(&mut d, 0x10, base as u32);
                w32(&mut d, 0x14, 0);
                memory_on(&mut d);
                let cap = d.config().model().msix().unwrap().offset;
                w16(&mut d, cap + 2, 0x8000);
                start.wait();
                for round in 0..5u32 {
                    for v in 0..16 {
                        program_vector(&vm, base + 0x2000, v, 0xfee0_0000, 0x40 + round, false);
                    }
                    w16(&mut d, cap + 2, 0);
                    w16(&mut d, cap + 2, 0x8000);
                }
                for v in 0..16 {
                    program_vector(&vm, base + 0x2000, v, 0xfee0_0000, 0x60 + v as u32, false);
                }
                let gsis: Vec<u32> = (0..16)
                    .map(|v| d.msix_vector(v).unwrap().gsi.expect("routed"))
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
    assert_eq!(
        all.len(),
        32,
        "GSIs shared between the two devices' vectors"
    );
}
