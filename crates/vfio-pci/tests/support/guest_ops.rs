//! A whole VM's worth of hostile guest: two passthrough devices (a simulated NVMe and NIC) on
//! one `InMemoryPorts` map with guest RAM and the VMM's windows reserved, driven by a byte
//! string read as a sequence of guest operations (config reads and writes of every width, BAR
//! sizing and moves with 64-bit halves in either order, decode on and off, ROM enable, MSI and
//! MSI-X programming and masking, MMIO and port accesses anywhere, BAR accesses, device
//! interrupts). After every step the invariants hold or [`run`] panics naming the step:
//!
//! - nothing placed overlaps anything else (RAM, the VMM's windows, the other device, itself);
//! - every range placed for a BAR is where the device says that BAR is, and a BAR the device
//!   says is placed has all its ranges placed (the device's view, the slots and the bus agree);
//! - every MSI route targets the MSI window and belongs to exactly one vector of one device;
//!   every irqfd is on a routed GSI.
//!
//! Used by the `passthrough_device` fuzz target and by `tests/guest_ops_fuzz.rs` (random
//! inputs on stable, in every `cargo test`).

use std::collections::BTreeMap;
use std::sync::Arc;

use pci_config::PciFunction;
use vfio_pci::ports::{AddressSpace, InMemoryPorts, MsiWindow};
use vfio_pci::sim::SimBackend;
use vfio_pci::{AttachContext, PassthroughDevice, PassthroughOptions};

const RAM: (u64, u64) = (0, 1 << 30);
const ECAM: (u64, u64) = (0xe000_0000, 0x1000_0000);
const APIC: (u64, u64) = (0xfec0_0000, 0x40_0000);
/// Ports the VMM owns: the PIC, COM1, conf1.
const PORTS: [(u64, u64, &str); 3] = [(0x20, 2, "PIC"), (0x3f8, 8, "COM1"), (0xcf8, 8, "conf1")];

/// Addresses worth trying: in RAM, in the 32-bit window, over the VMM's windows, sizing masks.
const ADDRESSES: [u32; 12] = [
    0x0000_4000,
    0xc000_0000,
    0xc000_2000,
    0xc000_4000,
    0xc001_0000,
    0xc002_0000,
    0xd000_0000,
    0xe000_0000,
    0xfec0_0000,
    0xfee0_0000,
    0xffff_ffff,
    0xffff_c000,
];
const PORT_ADDRESSES: [u32; 6] = [0x20, 0x3f8, 0xc000, 0xc020, 0xcf8, 0xfff0];

/// Reads the input a few bytes at a time; zeros past the end.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn width(&mut self) -> usize {
        [1, 2, 4, 8][usize::from(self.u8() % 4)]
    }
}

/// The VM: the map and two devices with their simulated hardware.
pub struct Vm {
    ports: Arc<InMemoryPorts>,
    devices: Vec<(PassthroughDevice, Arc<SimBackend>)>,
}

impl Vm {
    /// Guest RAM and the VMM's windows reserved; an NVMe and a NIC attached.
    pub fn new() -> Vm {
        let ports = Arc::new(InMemoryPorts::new());
        for (base, len, what) in [
            (RAM.0, RAM.1, "guest RAM"),
            (ECAM.0, ECAM.1, "ECAM"),
            (APIC.0, APIC.1, "IOAPIC/LAPIC"),
        ] {
            ports
                .reserve(AddressSpace::Memory, base, len, what)
                .unwrap();
        }
        for (base, len, what) in PORTS {
            ports.reserve(AddressSpace::Io, base, len, what).unwrap();
        }
        let devices = [SimBackend::nvme(), SimBackend::nic()]
            .into_iter()
            .map(|sim| {
                let sim = Arc::new(sim.unwrap());
                let ctx = AttachContext {
                    intx_gsi: Some(10),
                    ..AttachContext::new(ports.clone(), MsiWindow::x86())
                };
                let d = PassthroughDevice::attach(sim.clone(), ctx, PassthroughOptions::default())
                    .unwrap();
                (d, sim)
            })
            .collect();
        Vm { ports, devices }
    }

    /// Applies one operation read from `input`; `None` at the end of the input.
    fn step(&mut self, input: &mut Bytes<'_>) -> Option<String> {
        if input.0.is_empty() {
            return None;
        }
        let op = input.u8();
        let which = usize::from(input.u8() % 2);
        let (d, sim) = &mut self.devices[which];
        let what = match op % 14 {
            0 => {
                let (offset, width, value) =
                    (input.u16() % 4096, input.width().min(4), input.u32());
                d.config_write(offset, &value.to_le_bytes()[..width]);
                format!("config write {offset:#x} {value:#x} ({width} bytes)")
            }
            1 => {
                let (offset, width) = (input.u16() % 4096, input.width().min(4));
                let mut buf = [0u8; 4];
                d.config_read(offset, &mut buf[..width]);
                format!("config read {offset:#x} ({width} bytes)")
            }
            2 => {
                // A BAR register, 64-bit halves in either order.
                let bar = u16::from(input.u8() % 6);
                let low = ADDRESSES[usize::from(input.u8()) % ADDRESSES.len()];
                let high = u32::from(input.u8() % 2);
                let reg = 0x10 + bar * 4;
                if input.u8() % 2 == 0 {
                    d.config_write(reg, &low.to_le_bytes());
                    d.config_write(reg + 4, &high.to_le_bytes());
                } else {
                    d.config_write(reg + 4, &high.to_le_bytes());
                    d.config_write(reg, &low.to_le_bytes());
                }
                format!("BAR{bar} = {high:#x}:{low:#x}")
            }
            3 => {
                let bar = u16::from(input.u8() % 6);
                let port = PORT_ADDRESSES[usize::from(input.u8()) % PORT_ADDRESSES.len()];
                d.config_write(0x10 + bar * 4, &(port | 1).to_le_bytes());
                format!("BAR{bar} = port {port:#x}")
            }
            4 => {
                let command = u16::from(input.u8() & 0x7);
                d.config_write(0x04, &command.to_le_bytes());
                format!("command {command:#x}")
            }
            5 => {
                let rom = ADDRESSES[usize::from(input.u8()) % ADDRESSES.len()] | 1;
                d.config_write(0x30, &rom.to_le_bytes());
                format!("ROM = {rom:#x}")
            }
            6 => {
                // MSI-X Message Control: enable and function mask in any combination.
                let control = u16::from(input.u8() & 0x3) << 14;
                if let Some(cap) = d.config().model().msix().map(|m| m.offset) {
                    d.config_write(cap + 2, &control.to_le_bytes());
                }
                format!("MSI-X control {control:#x}")
            }
            7 => {
                // MSI: address, data, enable, mask bits (the NIC has MSI).
                let (address, data, control) = (input.u32(), input.u16(), input.u8());
                let msi = d.config().model().msi().map(|m| m.offset);
                if let Some(cap) = msi {
                    d.config_write(cap + 4, &address.to_le_bytes());
                    d.config_write(cap + 8, &0u32.to_le_bytes());
                    d.config_write(cap + 12, &data.to_le_bytes());
                    d.config_write(cap + 2, &u16::from(control & 0x71).to_le_bytes());
                }
                format!("MSI {address:#x} {data:#x} control {control:#x}")
            }
            8 => {
                // An MSI-X table entry, through whatever is mapped or trapped there.
                let base = [0xc000_2000u64, 0xc000_0000, 0xd000_0000][usize::from(input.u8() % 3)];
                let entry = u64::from(input.u8() % 8) * 16 + u64::from(input.u8() % 4) * 4;
                let value =
                    [0xfee0_0000, 0x1000, 0x41, 0, 1, input.u32()][usize::from(input.u8() % 6)];
                let hit = self.ports.mmio_write(base + entry, &value.to_le_bytes());
                format!("MMIO write {:#x} = {value:#x} (hit: {hit})", base + entry)
            }
            9 => {
                let addr = u64::from(ADDRESSES[usize::from(input.u8()) % ADDRESSES.len()])
                    + u64::from(input.u16());
                let width = input.width();
                let mut buf = [0u8; 8];
                if input.u8() % 2 == 0 {
                    self.ports.mmio_read(addr, &mut buf[..width]);
                    format!("MMIO read {addr:#x} ({width} bytes)")
                } else {
                    self.ports
                        .mmio_write(addr, &input.u32().to_le_bytes()[..width.min(4)]);
                    format!("MMIO write {addr:#x}")
                }
            }
            10 => {
                let port = (PORT_ADDRESSES[usize::from(input.u8()) % PORT_ADDRESSES.len()] as u16)
                    .wrapping_add(u16::from(input.u8() % 32));
                let mut buf = [0u8; 4];
                if input.u8() % 2 == 0 {
                    self.ports.pio_read(port, &mut buf[..2]);
                } else {
                    self.ports.pio_write(port, &[input.u8()]);
                }
                format!("port access {port:#x}")
            }
            11 => {
                let (bar, offset, width) = (input.u8() % 7, u64::from(input.u16()), input.width());
                let mut buf = [0u8; 8];
                let r = if input.u8() % 2 == 0 {
                    d.bar_read(bar, offset, &mut buf[..width])
                } else {
                    d.bar_write(bar, offset, &buf[..width])
                };
                format!(
                    "BAR{bar} access +{offset:#x} ({width} bytes): {}",
                    r.is_ok()
                )
            }
            12 => {
                let vector = u32::from(input.u8() % 8);
                let _ = sim.fire(vector);
                format!("device fires vector {vector}")
            }
            _ => {
                d.poll_interrupts();
                "poll".to_string()
            }
        };
        Some(format!("device {which}: {what}"))
    }

    /// Checks every invariant; the error says which one broke.
    pub fn check(&self) -> Result<(), String> {
        let placed = self.ports.placed();
        for space in [AddressSpace::Memory, AddressSpace::Io] {
            let mut ranges: Vec<_> = placed.iter().filter(|r| r.space == space).collect();
            ranges.sort_by_key(|r| r.base);
            for w in ranges.windows(2) {
                if w[0].base + w[0].len > w[1].base {
                    return Err(format!("{:?} overlaps {:?}", w[0].name, w[1].name));
                }
            }
        }
        // The device's view and the map agree, both ways.
        for (d, sim) in &self.devices {
            let name = sim.spec().name.as_str();
            for r in placed
                .iter()
                .filter_map(|p| Some((p, p.bar_range.as_ref()?)))
            {
                let (p, range) = r;
                if &*range.device != name {
                    continue;
                }
                if d.bar_address(range.bar) != Some(p.base - range.offset) {
                    return Err(format!(
                        "{} placed at {:#x}, but the device says BAR{} is at {:?}",
                        range.name,
                        p.base,
                        range.bar,
                        d.bar_address(range.bar)
                    ));
                }
            }
            for bar in 0..=6u8 {
                let Some(at) = d.bar_address(bar) else {
                    continue;
                };
                let found = placed.iter().any(|p| {
                    p.bar_range.as_ref().is_some_and(|r| {
                        &*r.device == name && r.bar == bar && p.base == at + r.offset
                    })
                });
                if !found {
                    return Err(format!(
                        "{name} BAR{bar} says {at:#x} but nothing of it is placed"
                    ));
                }
            }
        }
        // Routes: in the window, each owned by exactly one vector.
        let window = MsiWindow::x86();
        let routes: BTreeMap<u32, _> = self.ports.routes().into_iter().collect();
        let mut owners: BTreeMap<u32, String> = BTreeMap::new();
        for (d, sim) in &self.devices {
            let name = &sim.spec().name;
            let msix = (0..).map_while(|v| d.msix_vector(v).map(|s| (v, s.gsi)));
            let msi = d
                .msi_gsis()
                .into_iter()
                .enumerate()
                .map(|(v, g)| (v as u16 + 10_000, g));
            for (v, gsi) in msix.chain(msi) {
                let Some(gsi) = gsi else { continue };
                if let Some(other) = owners.insert(gsi, format!("{name} vector {v}")) {
                    return Err(format!("GSI {gsi} owned by {other} and {name} vector {v}"));
                }
                if !routes.contains_key(&gsi) {
                    return Err(format!(
                        "{name} vector {v} holds GSI {gsi}, which has no route"
                    ));
                }
            }
        }
        for (gsi, msg) in &routes {
            if !window.contains(msg.address) {
                return Err(format!(
                    "GSI {gsi} routed to {:#x}, outside the MSI window",
                    msg.address.0
                ));
            }
            if !owners.contains_key(gsi) {
                return Err(format!("GSI {gsi} is routed but no vector owns it"));
            }
        }
        for f in self.ports.irqfds() {
            if f.gsi != 10 && !routes.contains_key(&f.gsi) {
                return Err(format!("irqfd on GSI {} without a route", f.gsi));
            }
        }
        Ok(())
    }

    /// Detaches both devices; nothing of theirs may be left.
    pub fn detach(self) {
        for (d, _) in self.devices {
            d.detach().unwrap();
        }
        assert!(self.ports.placed().iter().all(|r| r.bar_range.is_none()));
        assert!(self.ports.routes().is_empty());
        assert!(self.ports.irqfds().is_empty());
    }
}

/// Runs `data` as a guest operation sequence, checking the invariants after every step.
pub fn run(data: &[u8]) {
    let mut vm = Vm::new();
    let mut input = Bytes(data);
    let mut steps = Vec::new();
    while let Some(step) = vm.step(&mut input) {
        steps.push(step);
        if let Err(e) = vm.check() {
            let tail = steps.len().saturating_sub(8);
            panic!("{e}\nafter (last steps):\n  {}", steps[tail..].join("\n  "));
        }
    }
    vm.detach();
}
