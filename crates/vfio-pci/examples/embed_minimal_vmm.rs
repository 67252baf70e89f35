//! A minimal VMM written straight on `kvm-ioctls`, `vm-memory` and `vm-device` (no
//! `kvm-runloop`) that embeds a [`PassthroughDevice`] through vfio-pci's ports: its own memory
//! slots for BAR pages, its own vm-device `IoManager` for trapped ranges, its own GSI routing
//! table and irqfds. A tiny real-mode guest probes the device (a simulated QEMU NVMe) over PCI
//! configuration mechanism #1, places its BAR, reads a trapped register and a mapped doorbell
//! page, writes a register and programs MSI-X vector 0; the VMM then checks what the guest saw
//! and what the device asked of it, and exits non-zero on any difference.
//!
//! `cargo run -p vfio-pci --example embed_minimal_vmm`. Without a usable `/dev/kvm` it prints
//! why and exits 0, unless `REQUIRE_KVM=1` (then it fails).

use std::collections::BTreeMap;
use std::io;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KvmIrqRouting,
    kvm_irq_routing_entry, kvm_msi, kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use pci_config::PciFunction;
use vfio_pci::ports::{
    BarMappingPort, BarRange, HostMapping, InterruptPort, MsiMessage, MsiWindow, TrapAddress,
    TrapHandler, TrapPort,
};
use vfio_pci::sim::SimBackend;
use vfio_pci::{AttachContext, PassthroughDevice, PassthroughOptions};
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM: 64 KiB at 0, enough for real-mode code and data.
const RAM_SIZE: u64 = 0x1_0000;
/// Where the guest's code starts, and where it stores what it read.
const CODE: u64 = 0x1000;
const RESULTS: u16 = 0x600;
/// Where the guest places the NVMe's 16 KiB BAR0: below 1 MiB, reachable from real mode.
const BAR0: u32 = 0x000d_0000;
/// The port the guest writes when it is done.
const DONE_PORT: u16 = 0x501;
/// PCI configuration mechanism #1 (PCI 3.0 §3.2.2.3.2).
const CONF1_ADDRESS: u16 = 0xcf8;
const CONF1_DATA: u16 = 0xcfc;
/// The device's INTx GSI (an IOAPIC pin) and the first GSI for MSI routes.
const INTX_GSI: u32 = 10;
const FIRST_MSI_GSI: u32 = 24;
/// `set_tss_address`: Intel VMX needs it to run real-mode code; three pages below 4 GiB.
const TSS_ADDRESS: usize = 0xfffb_d000;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            let why = format!("cannot open /dev/kvm: {e}");
            if std::env::var("REQUIRE_KVM").as_deref() == Ok("1") {
                eprintln!("FAIL embed_minimal_vmm: REQUIRE_KVM=1 but {why}");
                return ExitCode::FAILURE;
            }
            println!("SKIP embed_minimal_vmm: {why}");
            return ExitCode::SUCCESS;
        }
    };
    match run(&kvm) {
        Ok(()) => {
            println!("embed_minimal_vmm: the guest saw the device as expected");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("FAIL embed_minimal_vmm: {e}");
            ExitCode::FAILURE
        }
    }
}

// ----- the VMM's side of the ports ------------------------------------------------------------

/// What occupies guest-physical memory (RAM, BAR pages in slots, trapped ranges), so that no
/// placement lands on another.
struct MemoryMap(BTreeMap<u64, (u64, String)>);

impl MemoryMap {
    fn insert(&mut self, base: u64, len: u64, name: &str) -> io::Result<()> {
        let end = base
            .checked_add(len)
            .ok_or_else(|| other(format!("{name}: past 2^64")))?;
        if let Some((b, (l, n))) = self.0.range(..end).next_back() {
            if b + l > base {
                return Err(other(format!(
                    "{name} at {base:#x} would overlap {n} at {b:#x}"
                )));
            }
        }
        self.0.insert(base, (len, name.to_string()));
        Ok(())
    }

    fn remove(&mut self, base: u64) -> Option<(u64, String)> {
        self.0.remove(&base)
    }
}

/// The minimal VMM: its KVM VM, memory slots, trapped ranges and GSI routing.
struct MiniVm {
    vm: VmFd,
    memory: Mutex<MemoryMap>,
    /// BAR pages in KVM slots, by guest address: the slot and the mapping it points at (kept
    /// until KVM deleted the slot).
    slots: Mutex<BTreeMap<u64, (u32, Arc<HostMapping>)>>,
    io: Mutex<IoManager>,
    /// The whole GSI routing table (`KVM_SET_GSI_ROUTING` replaces it every time).
    routes: Mutex<BTreeMap<u32, kvm_irq_routing_entry>>,
    irqfds: Mutex<Vec<u32>>,
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MiniVm {
    fn set_slot(&self, slot: u32, guest: u64, len: u64, host: u64) -> io::Result<()> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: guest,
            memory_size: len,
            userspace_addr: host,
        };
        // SAFETY: `host..host + len` is a live mapping that stays mapped while the slot
        // exists: guest RAM lives as long as the VM, BAR mappings are held in `slots` until
        // their slot is deleted (len 0), and leaked if the process ends first.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(io::Error::from)
    }

    /// Sends the routing table to KVM.
    fn send_routes(&self, routes: &BTreeMap<u32, kvm_irq_routing_entry>) -> io::Result<()> {
        let entries: Vec<kvm_irq_routing_entry> = routes.values().copied().collect();
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| other(format!("routing table: {e:?}")))?;
        self.vm.set_gsi_routing(&table).map_err(io::Error::from)
    }
}

fn msi_entry(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = msg.address.0 as u32;
    e.u.msi.address_hi = (msg.address.0 >> 32) as u32;
    e.u.msi.data = msg.data;
    e
}

impl BarMappingPort for MiniVm {
    fn map(
        &self,
        range: &BarRange,
        at: GuestAddress,
        mapping: &Arc<HostMapping>,
    ) -> io::Result<()> {
        let mut slots = lock(&self.slots);
        lock(&self.memory).insert(at.0, mapping.len(), &range.name)?;
        // Slot 0 is RAM; BAR pages take the lowest free one after it.
        let used: Vec<u32> = slots.values().map(|(s, _)| *s).collect();
        let slot = (1..).find(|s| !used.contains(s)).expect("a free slot");
        if let Err(e) = self.set_slot(slot, at.0, mapping.len(), mapping.as_ptr() as u64) {
            lock(&self.memory).remove(at.0);
            return Err(e);
        }
        slots.insert(at.0, (slot, mapping.clone()));
        Ok(())
    }

    fn move_mapping(
        &self,
        range: &BarRange,
        from: GuestAddress,
        to: GuestAddress,
    ) -> io::Result<()> {
        let mut slots = lock(&self.slots);
        let (slot, mapping) = slots
            .get(&from.0)
            .cloned()
            .ok_or_else(|| other(format!("{range} is not mapped at {:#x}", from.0)))?;
        let mut memory = lock(&self.memory);
        let old = memory.remove(from.0).expect("recorded with the slot");
        if let Err(e) = memory.insert(to.0, mapping.len(), &range.name) {
            memory.0.insert(from.0, old);
            return Err(e);
        }
        // The same slot at a new guest address: KVM moves it (KVM_MR_MOVE).
        if let Err(e) = self.set_slot(slot, to.0, mapping.len(), mapping.as_ptr() as u64) {
            memory.remove(to.0);
            memory.0.insert(from.0, old);
            return Err(e);
        }
        slots.remove(&from.0);
        slots.insert(to.0, (slot, mapping));
        Ok(())
    }

    fn unmap(&self, range: &BarRange, at: GuestAddress) -> io::Result<()> {
        let mut slots = lock(&self.slots);
        let (slot, _) = *slots
            .get(&at.0)
            .ok_or_else(|| other(format!("{range} is not mapped at {:#x}", at.0)))?;
        self.set_slot(slot, at.0, 0, 0)?;
        slots.remove(&at.0);
        lock(&self.memory).remove(at.0);
        Ok(())
    }
}

impl TrapPort for MiniVm {
    fn add_trap(&self, range: &BarRange, at: TrapAddress, handler: TrapHandler) -> io::Result<()> {
        let mut io = lock(&self.io);
        let bus_error = |e| other(format!("{range}: {e:?}"));
        match (at, handler) {
            (TrapAddress::Mmio(base), TrapHandler::Mmio(h)) => {
                lock(&self.memory).insert(base.0, range.len, &range.name)?;
                let r = MmioRange::new(MmioAddress(base.0), range.len).map_err(bus_error)?;
                io.register_mmio(r, h).map_err(|e| {
                    lock(&self.memory).remove(base.0);
                    bus_error(e)
                })
            }
            (TrapAddress::Pio(port), TrapHandler::Pio(h)) => {
                let r = PioRange::new(PioAddress(port), range.len as u16).map_err(bus_error)?;
                io.register_pio(r, h).map_err(bus_error)
            }
            _ => Err(other(format!("{range}: handler and address space differ"))),
        }
    }

    fn move_trap(&self, range: &BarRange, from: TrapAddress, to: TrapAddress) -> io::Result<()> {
        // vm-device's IoManager has no move: take the handler out and register it again.
        let handler = {
            let mut io = lock(&self.io);
            match from {
                TrapAddress::Mmio(a) => {
                    lock(&self.memory).remove(a.0);
                    io.deregister_mmio(MmioAddress(a.0))
                        .map(|(_, h)| TrapHandler::Mmio(h))
                }
                TrapAddress::Pio(p) => io
                    .deregister_pio(PioAddress(p))
                    .map(|(_, h)| TrapHandler::Pio(h)),
            }
        }
        .ok_or_else(|| other(format!("{range} is not registered at {:#x}", from.raw())))?;
        self.add_trap(range, to, handler)
    }

    fn remove_trap(&self, range: &BarRange, at: TrapAddress) -> io::Result<()> {
        let mut io = lock(&self.io);
        let removed = match at {
            TrapAddress::Mmio(a) => {
                lock(&self.memory).remove(a.0);
                io.deregister_mmio(MmioAddress(a.0)).is_some()
            }
            TrapAddress::Pio(p) => io.deregister_pio(PioAddress(p)).is_some(),
        };
        match removed {
            true => Ok(()),
            false => Err(other(format!(
                "{range} is not registered at {:#x}",
                at.raw()
            ))),
        }
    }
}

impl InterruptPort for MiniVm {
    fn add_msi_route(&self, msg: MsiMessage) -> io::Result<u32> {
        // Allocation and routing under one lock: two devices never get the same GSI.
        let mut routes = lock(&self.routes);
        let gsi = (FIRST_MSI_GSI..1024)
            .find(|g| !routes.contains_key(g))
            .ok_or_else(|| other("no free GSI".into()))?;
        let mut next = routes.clone();
        next.insert(gsi, msi_entry(gsi, msg));
        self.send_routes(&next)?;
        *routes = next;
        Ok(gsi)
    }

    fn update_msi_route(&self, gsi: u32, msg: MsiMessage) -> io::Result<()> {
        let mut routes = lock(&self.routes);
        let mut next = routes.clone();
        next.insert(gsi, msi_entry(gsi, msg));
        self.send_routes(&next)?;
        *routes = next;
        Ok(())
    }

    fn remove_route(&self, gsi: u32) -> io::Result<()> {
        let mut routes = lock(&self.routes);
        let mut next = routes.clone();
        next.remove(&gsi);
        self.send_routes(&next)?;
        *routes = next;
        Ok(())
    }

    fn add_irqfd(&self, gsi: u32, fd: &EventFd, resample: Option<&EventFd>) -> io::Result<()> {
        match resample {
            Some(r) => self.vm.register_irqfd_with_resample(fd, r, gsi),
            None => self.vm.register_irqfd(fd, gsi),
        }
        .map_err(io::Error::from)?;
        lock(&self.irqfds).push(gsi);
        Ok(())
    }

    fn remove_irqfd(&self, gsi: u32, fd: &EventFd) -> io::Result<()> {
        self.vm.unregister_irqfd(fd, gsi).map_err(io::Error::from)?;
        let mut irqfds = lock(&self.irqfds);
        if let Some(i) = irqfds.iter().position(|g| *g == gsi) {
            irqfds.remove(i);
        }
        Ok(())
    }

    fn signal_msi(&self, msg: MsiMessage) -> io::Result<bool> {
        let msi = kvm_msi {
            address_lo: msg.address.0 as u32,
            address_hi: (msg.address.0 >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .map(|n| n > 0)
            .map_err(io::Error::from)
    }
}

// ----- the guest -------------------------------------------------------------------------------

/// 16-bit real-mode code, assembled by hand (each helper names the instruction it emits).
#[derive(Default)]
struct RealModeCode(Vec<u8>);

impl RealModeCode {
    /// `mov dx, port`
    fn dx(&mut self, port: u16) -> &mut Self {
        self.0.push(0xba);
        self.0.extend(port.to_le_bytes());
        self
    }

    /// `mov eax, value`
    fn eax(&mut self, value: u32) -> &mut Self {
        self.0.extend([0x66, 0xb8]);
        self.0.extend(value.to_le_bytes());
        self
    }

    /// `mov ds, ax` after `mov ax, segment`
    fn ds(&mut self, segment: u16) -> &mut Self {
        self.0.push(0xb8);
        self.0.extend(segment.to_le_bytes());
        self.0.extend([0x8e, 0xd8]);
        self
    }

    /// Selects config register `reg` of 00:00.0: `out 0xcf8, eax` with the enable bit.
    fn select(&mut self, reg: u16) -> &mut Self {
        self.dx(CONF1_ADDRESS)
            .eax(0x8000_0000 | u32::from(reg & !3));
        self.0.extend([0x66, 0xef]);
        self
    }

    /// Config dword write: select, then `out 0xcfc, eax`.
    fn config_write32(&mut self, reg: u16, value: u32) -> &mut Self {
        self.select(reg).dx(CONF1_DATA).eax(value);
        self.0.extend([0x66, 0xef]);
        self
    }

    /// Config word write: select, then `out 0xcfc + (reg & 3), ax`.
    fn config_write16(&mut self, reg: u16, value: u16) -> &mut Self {
        self.select(reg).dx(CONF1_DATA + (reg & 3));
        self.0.push(0xb8);
        self.0.extend(value.to_le_bytes());
        self.0.push(0xef);
        self
    }

    /// Config dword read into `es:[at]`: select, `in eax, 0xcfc`, `mov es:[at], eax`.
    fn config_read32(&mut self, reg: u16, at: u16) -> &mut Self {
        self.select(reg).dx(CONF1_DATA);
        self.0.extend([0x66, 0xed]);
        self.store_eax(at)
    }

    /// `mov eax, ds:[at]`
    fn load_eax(&mut self, at: u16) -> &mut Self {
        self.0.extend([0x66, 0xa1]);
        self.0.extend(at.to_le_bytes());
        self
    }

    /// `mov es:[at], eax` (ES stays 0: RAM)
    fn store_eax(&mut self, at: u16) -> &mut Self {
        self.0.extend([0x26, 0x66, 0xa3]);
        self.0.extend(at.to_le_bytes());
        self
    }

    /// `mov dword ds:[at], value`
    fn store_imm(&mut self, at: u16, value: u32) -> &mut Self {
        self.0.extend([0x66, 0xc7, 0x06]);
        self.0.extend(at.to_le_bytes());
        self.0.extend(value.to_le_bytes());
        self
    }

    /// `out DONE_PORT, al`, then `hlt`.
    fn done(&mut self) -> &mut Self {
        self.dx(DONE_PORT);
        self.0.extend([0xee, 0xf4]);
        self
    }
}

/// The guest: probe, place BAR0, read and write it, program MSI-X vector 0 and enable MSI-X.
fn guest_code(msix_cap: u16) -> Vec<u8> {
    let mut code = RealModeCode::default();
    code.config_read32(0x00, RESULTS) // vendor and device ID
        .config_write32(0x10, BAR0) // BAR0, 64-bit: low half
        .config_write32(0x14, 0) // and high half
        .config_write16(0x04, 0x0006) // memory decode, bus master
        .ds((BAR0 >> 4) as u16)
        .load_eax(0x40) // a register in page 0 (trapped, forwarded to the device)
        .store_eax(RESULTS + 4)
        .load_eax(0x1008) // the doorbell page (a KVM slot over the device's mmap)
        .store_eax(RESULTS + 8)
        .store_imm(0x44, 0x5a5a_5a5a) // a trapped register write
        .store_imm(0x2000, 0xfee0_0000) // MSI-X entry 0: address (local APIC 0)
        .store_imm(0x2004, 0)
        .store_imm(0x2008, 0x41) // data: vector 0x41
        .store_imm(0x200c, 0) // unmasked
        .ds(0)
        .config_write16(msix_cap + 2, 0x8000) // Message Control: MSI-X Enable
        .done();
    code.0
}

// ----- putting it together ---------------------------------------------------------------------

fn run(kvm: &Kvm) -> Result<()> {
    let vm = kvm.create_vm()?;
    vm.set_tss_address(TSS_ADDRESS)?;
    vm.create_irq_chip()?;
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)])?;
    let host = ram.get_host_address(GuestAddress(0))? as u64;
    let mini = Arc::new(MiniVm {
        vm,
        memory: Mutex::new(MemoryMap(BTreeMap::new())),
        slots: Mutex::new(BTreeMap::new()),
        io: Mutex::new(IoManager::new()),
        routes: Mutex::new(BTreeMap::new()),
        irqfds: Mutex::new(Vec::new()),
    });
    mini.set_slot(0, 0, RAM_SIZE, host)?;
    lock(&mini.memory).insert(0, RAM_SIZE, "guest RAM")?;
    // The routes KVM installed with the irqchip, which every KVM_SET_GSI_ROUTING replaces:
    // GSI n to IOAPIC pin n, so INTx keeps working once MSI routes are added.
    {
        let mut routes = lock(&mini.routes);
        for gsi in 0..24 {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
            e.u.irqchip.pin = gsi;
            routes.insert(gsi, e);
        }
    }

    // The device, through the ports (the simulated backend: no /dev/vfio needed).
    let sim = Arc::new(SimBackend::nvme()?);
    let ctx = AttachContext {
        intx_gsi: Some(INTX_GSI),
        ..AttachContext::new(mini.clone(), MsiWindow::x86())
    };
    let mut nvme = PassthroughDevice::attach(sim.clone(), ctx, PassthroughOptions::default())?;
    // What the guest should find (after attach: it resets the device).
    sim.poke(0, 0x40, &0xcafe_f00du32.to_le_bytes())?;
    sim.poke(0, 0x1008, &0x1234_5678u32.to_le_bytes())?;
    let msix_cap = nvme
        .config()
        .model()
        .msix()
        .ok_or("the NVMe shows no MSI-X capability")?
        .offset;

    ram.write_slice(&guest_code(msix_cap), GuestAddress(CODE))?;
    let mut vcpu = mini.vm.create_vcpu(0)?;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;

    // The run loop: conf1 goes to the device's config space, everything else to the bus.
    let mut conf1_address = 0u32;
    loop {
        match vcpu.run()? {
            VcpuExit::IoOut(DONE_PORT, _) => break,
            VcpuExit::IoOut(CONF1_ADDRESS, data) if data.len() == 4 => {
                conf1_address = u32::from_le_bytes(data.try_into().expect("4 bytes"));
            }
            VcpuExit::IoOut(port, data) if (CONF1_DATA..CONF1_DATA + 4).contains(&port) => {
                if let Some(reg) = conf1_register(conf1_address, port) {
                    nvme.config_write(reg, data);
                }
            }
            VcpuExit::IoIn(port, data) if (CONF1_DATA..CONF1_DATA + 4).contains(&port) => {
                match conf1_register(conf1_address, port) {
                    Some(reg) => nvme.config_read(reg, data),
                    None => data.fill(0xff),
                }
            }
            VcpuExit::IoOut(port, data) => {
                let _ = lock(&mini.io).pio_write(PioAddress(port), data);
            }
            VcpuExit::IoIn(port, data) => {
                if lock(&mini.io).pio_read(PioAddress(port), data).is_err() {
                    data.fill(0xff);
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                if lock(&mini.io).mmio_read(MmioAddress(addr), data).is_err() {
                    data.fill(0xff);
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                let _ = lock(&mini.io).mmio_write(MmioAddress(addr), data);
            }
            other => return Err(format!("unexpected vCPU exit: {other:?}").into()),
        }
    }

    // What the guest saw.
    let seen = |at: u16| -> Result<u32> { Ok(ram.read_obj::<u32>(GuestAddress(u64::from(at)))?) };
    check("vendor/device ID over conf1", seen(RESULTS)?, 0x0010_1b36)?;
    check(
        "trapped register BAR0+0x40",
        seen(RESULTS + 4)?,
        0xcafe_f00d,
    )?;
    check(
        "mapped doorbell page BAR0+0x1008",
        seen(RESULTS + 8)?,
        0x1234_5678,
    )?;
    let mut written = [0u8; 4];
    sim.peek(0, 0x44, &mut written)?;
    check(
        "trapped write at BAR0+0x44",
        u32::from_le_bytes(written),
        0x5a5a_5a5a,
    )?;

    // What the device asked of this VMM.
    check(
        "BAR0 address",
        nvme.bar_address(0).unwrap_or(0),
        u64::from(BAR0),
    )?;
    let vector = nvme.msix_vector(0).ok_or("no MSI-X vector 0")?;
    let gsi = vector.gsi.ok_or("MSI-X vector 0 was not routed")?;
    let route = lock(&mini.routes)
        .get(&gsi)
        .copied()
        .ok_or("no route for the vector's GSI")?;
    // SAFETY: the entry was written through the `msi` member (`msi_entry`).
    let (address, data) = unsafe { (route.u.msi.address_lo, route.u.msi.data) };
    check("MSI-X route address", address, 0xfee0_0000)?;
    check("MSI-X route data", data, 0x41)?;
    if !vector.bound || !lock(&mini.irqfds).contains(&gsi) {
        return Err("MSI-X vector 0's eventfd is not bound to its GSI".into());
    }
    print!("{}", nvme.mtree());
    print!("{}", nvme.render_exit_counters());

    nvme.detach()?;
    if !lock(&mini.slots).is_empty()
        || lock(&mini.routes).len() != 24
        || !lock(&mini.irqfds).is_empty()
    {
        return Err("detach left slots, routes or irqfds behind".into());
    }
    Ok(())
}

/// The config register an access to `port` (0xcfc-0xcff) reaches, for function 00:00.0 (the
/// only one on this bus); `None` for any other function or with the enable bit clear.
fn conf1_register(address: u32, port: u16) -> Option<u16> {
    let enabled = address & 0x8000_0000 != 0;
    let bdf = (address >> 8) & 0xffff;
    (enabled && bdf == 0).then(|| (address & 0xfc) as u16 + (port - CONF1_DATA))
}

fn check<T: PartialEq + std::fmt::LowerHex>(what: &str, got: T, want: T) -> Result<()> {
    if got == want {
        println!("ok   {what}: {got:#x}");
        Ok(())
    } else {
        Err(format!("{what}: the guest saw {got:#x}, expected {want:#x}").into())
    }
}
