//! `--device test`: a small emulated PCI function, a test aid for the bus, the BAR placement and
//! the guest-driven host tests, needing neither VFIO nor a simulated backend.
//!
//! It looks like a minimal passthrough target, with the same shape as the pages `trap-map` plans
//! for a real device:
//!
//! | BAR0 (16 KiB, 32-bit memory) | treatment |
//! |---|---|
//! | page 0 `+0x0000` registers | trapped. A write to `+0x0` (doorbell) raises MSI-X vector 0; a write of N to `+0x4` raises vector N; `+0x8` reads the doorbell count |
//! | page 1 `+0x1000` memory | mapped: a memfd page added as a KVM memory slot (stores cause no exit) |
//! | page 2 `+0x2000` MSI-X table (2 vectors) | trapped, emulated by `trap-map`'s `MsixTable` |
//! | page 3 `+0x3000` MSI-X PBA | trapped, emulated |
//!
//! IDs 1b36:0005 (QEMU's `pci-testdev`), class ff:00:00. BAR moves and memory decode changes
//! re-register the trapped ranges and move the mapped page; the memfd keeps its contents while
//! decode is off, as device memory does.
//!
//! What a guest may do wrong, and what happens (the VMM keeps running in every case):
//! - BAR0 programmed over guest RAM, the ECAM window or the APIC range: the BAR is not decoded
//!   (nothing is registered or mapped; RAM stays RAM) and a warning names both ranges.
//! - BAR0 sized while decode is on: `pci-config` reports no move for the all-ones probe, so the
//!   BAR stays decoded where it was until the guest writes an address; and a BAR that still holds
//!   its sizing mask when decode is turned on is not decoded (as QEMU does). Nothing is ever
//!   mapped at the mask address.
//! - Over another device's range: the trapped ranges that collide are refused by the device bus
//!   and the mapped page by the memory-slot manager, each with a warning.
//! - MSI-X messages whose address is not in the local APIC window `0xFEE0_0000-0xFEEF_FFFF`: not
//!   delivered, counted and logged; the guest never reaches anything but its own APIC.
//! - Writes to read-only and reserved configuration bits: dropped by `pci-config`'s masks.

use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::{AsFd, FromRawFd};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use kvm_runloop::reexports::vm_device::DeviceMmio;
use kvm_runloop::reexports::vm_device::bus::{MmioAddress, MmioAddressOffset};
use kvm_runloop::{MemoryAccess, MsiMessage, SlotId, Vm};
use log_limit::{LogLimiter, suppressed_note};
use pci_config::capability::{BarOffset, MsixCapability};
use pci_config::{
    BarDef, ConfigEvent, ConfigSize, ConfigSpace, DeviceIds, HeaderType, PciFunction,
};
use trap_map::{FireOutcome, MsixEvent, MsixTable, MtreeKind, mtree_line};
use vfio_pci::ReservedRange;

const PAGE: u64 = 0x1000;
const BAR_SIZE: u64 = 4 * PAGE;
const VECTORS: u16 = 2;
const MSIX_TABLE: u64 = 2 * PAGE;
const MSIX_PBA: u64 = 3 * PAGE;
/// The local APIC MSI window: the only addresses an x86 MSI may target.
const MSI_WINDOW: (u64, u64) = (0xfee0_0000, 0xfef0_0000);

/// Counters of the test function, for `--show-counters`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TestCounters {
    /// Doorbell writes (MSI-X fires requested).
    pub doorbells: u64,
    /// MSI-X messages injected.
    pub delivered: u64,
    /// Messages not injected because their address is outside the APIC window.
    pub refused_msi: u64,
    /// BAR placements refused (over RAM, ECAM, the APIC, or another device).
    pub refused_placements: u64,
}

struct State {
    name: String,
    space: ConfigSpace,
    msix_cap: u16,
    msix: MsixTable,
    vm: Weak<Vm>,
    reserved: Vec<ReservedRange>,
    memfd: File,
    /// Where BAR0 is decoded now, and what was registered there.
    mapped: Option<Mapped>,
    counters: TestCounters,
}

/// BAR0 decoded: its two trapped ranges on the bus at `base` and `base + MSIX_TABLE`, and
/// its memory page in `slot`.
struct Mapped {
    base: u64,
    slot: SlotId,
}

/// Lines a guest triggers at will (a BAR placed over something, an MSI aimed outside the
/// APIC window): ten at once, then one a second, for all test functions together.
static GUEST_LOG: LazyLock<LogLimiter> =
    LazyLock::new(|| LogLimiter::new(10, std::time::Duration::from_secs(1)));

/// The emulated function (what the bus holds).
pub struct TestFunction {
    state: Arc<Mutex<State>>,
}

/// A handle to read the function's state while it sits on the bus.
#[derive(Clone)]
pub struct TestHandle {
    state: Arc<Mutex<State>>,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl TestFunction {
    /// A function named `name` (its BDF, for range names) in `vm`, never decoding BAR0 over
    /// `reserved`.
    pub fn new(
        name: &str,
        vm: &Arc<Vm>,
        reserved: Vec<ReservedRange>,
    ) -> std::io::Result<(Self, TestHandle)> {
        let ids = DeviceIds {
            vendor_id: 0x1b36,
            device_id: 0x0005,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            revision: 0,
            class_code: 0xff_00_00,
        };
        let mut space = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Extended, ids);
        space
            .set_bar(0, BarDef::memory32(BAR_SIZE as u32))
            .map_err(std::io::Error::other)?;
        let msix_cap = space
            .add_capability(MsixCapability::new(
                VECTORS,
                BarOffset {
                    bir: 0,
                    offset: MSIX_TABLE as u32,
                },
                BarOffset {
                    bir: 0,
                    offset: MSIX_PBA as u32,
                },
            ))
            .map_err(std::io::Error::other)?;
        // SAFETY: memfd_create with a valid NUL-terminated name and flags; the result is checked.
        let fd = unsafe { libc::memfd_create(c"refvmm-test-bar0".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let memfd = unsafe { File::from_raw_fd(fd) };
        memfd.set_len(PAGE)?;
        let state = Arc::new(Mutex::new(State {
            name: name.to_string(),
            space,
            msix_cap,
            msix: MsixTable::new(VECTORS).map_err(std::io::Error::other)?,
            vm: Arc::downgrade(vm),
            reserved,
            memfd,
            mapped: None,
            counters: TestCounters::default(),
        }));
        Ok((
            TestFunction {
                state: state.clone(),
            },
            TestHandle { state },
        ))
    }
}

impl TestHandle {
    /// The counters.
    pub fn counters(&self) -> TestCounters {
        lock(&self.state).counters
    }

    /// An `info mtree -f`-style view of BAR0 as decoded now.
    pub fn mtree(&self) -> String {
        let s = lock(&self.state);
        let mut out = String::new();
        match &s.mapped {
            None => {
                let _ = writeln!(out, "  {} BAR0: not decoded", s.name);
            }
            Some(m) => {
                let b = m.base;
                // The same words and kinds as the VM's flat view (report.rs): the memory page is
                // a memfd slot (`ramd`), the rest traps (`i/o`).
                let line = |out: &mut String, lo: u64, hi: u64, what: &str| {
                    let kind = if what == "memory" {
                        MtreeKind::RamDevice
                    } else {
                        MtreeKind::Io
                    };
                    let name = format!("{} BAR0 {what}", s.name);
                    let _ = writeln!(out, "{}", mtree_line(b + lo, b + hi - 1, kind, &name));
                };
                line(&mut out, 0, PAGE, "registers");
                line(&mut out, PAGE, 2 * PAGE, "memory");
                line(&mut out, MSIX_TABLE, BAR_SIZE, "msix-table+pba");
            }
        }
        out
    }
}

impl State {
    fn bar0(&self) -> Option<u64> {
        self.space.bar(0).map(|b| b.address)
    }

    /// Where BAR0 should be decoded, if anywhere.
    fn wanted(&mut self) -> Option<u64> {
        if !self.space.command().memory() {
            return None;
        }
        let base = self.bar0()?;
        // The sizing mask (all address bits set) is not an address: a probe in progress.
        if base == 0 || base == (!(BAR_SIZE - 1)) & 0xffff_ffff {
            return None;
        }
        let end = base + BAR_SIZE;
        if let Some(r) = self.reserved.iter().find(|r| r.overlaps(base, end)) {
            log::warn!(
                "{}: BAR0 programmed at {base:#x}-{:#x}, over {} {:#x}-{:#x}: not decoded (a \
                 device must never cover it); reprogram BAR0 inside the PCI window",
                self.name,
                end - 1,
                r.what,
                r.base,
                r.end - 1
            );
            self.counters.refused_placements += 1;
            return None;
        }
        Some(base)
    }

    fn update_mapping(&mut self, me: &Arc<Mutex<State>>) {
        let wanted = self.wanted();
        if self.mapped.as_ref().map(|m| m.base) == wanted {
            return;
        }
        let Some(vm) = self.vm.upgrade() else { return };
        if let Some(m) = self.mapped.take() {
            let _ = vm.bus().unregister_mmio(m.base);
            let _ = vm.bus().unregister_mmio(m.base + MSIX_TABLE);
            let _ = vm.slots().remove(m.slot);
        }
        let Some(base) = wanted else { return };
        // All or nothing, against the VM's one address map (slots and bus ranges alike, any
        // device's, the VMM's windows): a part that cannot be placed undoes the others, so
        // the BAR is either wholly decoded or not at all.
        let placed = self.place(&vm, me, base);
        if placed.is_none() {
            self.counters.refused_placements += 1;
        }
        self.mapped = placed;
    }

    fn place(&self, vm: &Vm, me: &Arc<Mutex<State>>, base: u64) -> Option<Mapped> {
        let refused = |what: &str, e: kvm_runloop::Error| {
            // A guest can reprogram BAR0 at exit rate: rate-limited.
            if let Some(suppressed) = GUEST_LOG.allow() {
                log::warn!(
                    "{}: BAR0 at {base:#x} not decoded: {what}: {e}; reprogram BAR0 inside the \
                     PCI window{}",
                    self.name,
                    suppressed_note(suppressed)
                );
            }
        };
        let bus = vm.bus();
        if let Err(e) = bus.register_mmio(
            &format!("{} BAR0 registers", self.name),
            base,
            PAGE,
            Arc::new(Registers(me.clone())),
        ) {
            refused("registers", e);
            return None;
        }
        if let Err(e) = bus.register_mmio(
            &format!("{} BAR0 msix-table+pba", self.name),
            base + MSIX_TABLE,
            BAR_SIZE - MSIX_TABLE,
            Arc::new(MsixPages(me.clone())),
        ) {
            refused("MSI-X pages", e);
            let _ = bus.unregister_mmio(base);
            return None;
        }
        match vm.slots().add_file(
            &format!("{} BAR0 memory", self.name),
            base + PAGE,
            PAGE,
            self.memfd.as_fd(),
            0,
            MemoryAccess::ReadWrite,
        ) {
            Ok(slot) => Some(Mapped { base, slot }),
            Err(e) => {
                refused("page 1", e);
                let _ = bus.unregister_mmio(base);
                let _ = bus.unregister_mmio(base + MSIX_TABLE);
                None
            }
        }
    }

    fn inject(&mut self, address: u64, data: u32) {
        if !(MSI_WINDOW.0..MSI_WINDOW.1).contains(&address) {
            self.counters.refused_msi += 1;
            if let Some(suppressed) = GUEST_LOG.allow() {
                log::warn!(
                    "{}: MSI-X message to {address:#x} (data {data:#x}) not delivered: x86 MSIs \
                     target the local APIC window {:#x}-{:#x}{}",
                    self.name,
                    MSI_WINDOW.0,
                    MSI_WINDOW.1 - 1,
                    suppressed_note(suppressed)
                );
            }
            return;
        }
        let Some(vm) = self.vm.upgrade() else { return };
        match vm
            .interrupts()
            .and_then(|i| i.signal_msi(MsiMessage { address, data }))
        {
            Ok(_) => self.counters.delivered += 1,
            Err(e) => log::warn!("{}: MSI-X delivery failed: {e}", self.name),
        }
    }

    fn fire(&mut self, vector: u16) {
        match self.msix.fire(vector) {
            Ok(FireOutcome::Deliver { address, data }) => self.inject(address, data),
            Ok(_) => {}
            Err(e) => log::debug!("{}: {e}", self.name),
        }
    }

    fn msix_events(&mut self, events: Vec<MsixEvent>) {
        for e in events {
            if let MsixEvent::DeliverPending { address, data, .. } = e {
                self.inject(address, data);
            }
        }
    }
}

impl PciFunction for TestFunction {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        let s = lock(&self.state);
        if s.space.read(offset, data).is_err() {
            data.fill(0xff);
        }
    }

    fn config_read_u32(&mut self, offset: u16) -> u32 {
        lock(&self.state).space.read_u32(offset).unwrap_or(u32::MAX)
    }

    fn config_read_u16(&mut self, offset: u16) -> u16 {
        lock(&self.state).space.read_u16(offset).unwrap_or(u16::MAX)
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let me = self.state.clone();
        let mut s = lock(&self.state);
        let events = match s.space.write(offset, data) {
            Ok(ev) => ev,
            Err(e) => {
                log::debug!("{}: config write at {offset:#x} dropped: {e}", s.name);
                return;
            }
        };
        let mut remap = false;
        for e in events.iter() {
            match e {
                ConfigEvent::BarMoved { .. } | ConfigEvent::DecodeChanged { .. } => remap = true,
                ConfigEvent::MsixChanged { .. } => {
                    let at = s.msix_cap + 2;
                    let control = s.space.read_u16(at).unwrap_or(0);
                    let ev = s.msix.write_message_control(control);
                    s.msix_events(ev);
                }
                _ => {}
            }
        }
        if remap {
            s.update_mapping(&me);
        }
    }
}

/// Page 0: the registers.
struct Registers(Arc<Mutex<State>>);

impl DeviceMmio for Registers {
    fn mmio_read(&self, _: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        let s = lock(&self.0);
        let v: u64 = if offset == 8 { s.counters.doorbells } else { 0 };
        let bytes = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn mmio_write(&self, _: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        let mut s = lock(&self.0);
        let mut v = [0u8; 8];
        let n = data.len().min(8);
        v[..n].copy_from_slice(&data[..n]);
        let value = u64::from_le_bytes(v);
        match offset {
            0 => {
                s.counters.doorbells += 1;
                s.fire(0);
            }
            4 => {
                s.counters.doorbells += 1;
                s.fire(value as u16);
            }
            _ => {}
        }
    }
}

/// Pages 2-3: the MSI-X table and PBA.
struct MsixPages(Arc<Mutex<State>>);

impl DeviceMmio for MsixPages {
    fn mmio_read(&self, _: MmioAddress, offset: MmioAddressOffset, data: &mut [u8]) {
        let s = lock(&self.0);
        if offset < PAGE {
            s.msix.read_table(offset, data);
        } else {
            s.msix.read_pba(offset - PAGE, data);
        }
    }

    fn mmio_write(&self, _: MmioAddress, offset: MmioAddressOffset, data: &[u8]) {
        let mut s = lock(&self.0);
        if offset < PAGE {
            let ev = s.msix.write_table(offset, data);
            s.msix_events(ev);
        } else {
            s.msix.write_pba(offset - PAGE, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_runloop::VmConfig;

    fn vm() -> Option<Arc<Vm>> {
        kvm_runloop::testing::kvm_or_skip()?;
        Some(Arc::new(
            Vm::new(&VmConfig {
                irqchip: true,
                ..VmConfig::default()
            })
            .unwrap(),
        ))
    }

    fn reserved() -> Vec<ReservedRange> {
        vec![ReservedRange {
            base: 0,
            end: 2 << 20,
            what: "guest RAM".into(),
        }]
    }

    fn w32(f: &mut TestFunction, off: u16, v: u32) {
        f.config_write(off, &v.to_le_bytes());
    }

    fn r32(f: &mut TestFunction, off: u16) -> u32 {
        let mut d = [0u8; 4];
        f.config_read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn ranges(vm: &Vm) -> Vec<(String, u64)> {
        vm.bus()
            .device_counts()
            .into_iter()
            .map(|c| (c.name, c.base))
            .collect()
    }

    #[test]
    fn sizing_mid_move_never_maps_anything_at_the_mask() {
        let Some(vm) = vm() else { return };
        let (mut f, h) = TestFunction::new("00:01.0", &vm, reserved()).unwrap();
        w32(&mut f, 0x10, 0xc000_0000);
        f.config_write(4, &[0x02, 0]); // memory decode on
        assert_eq!(
            vm.slots().find(0xc000_1000).unwrap().name,
            "00:01.0 BAR0 memory"
        );
        // The guest sizes BAR0 with decode still on.
        w32(&mut f, 0x10, 0xffff_ffff);
        assert_eq!(
            r32(&mut f, 0x10),
            0xffff_c000,
            "16 KiB, 32-bit, non-prefetchable"
        );
        // pci-config reports no move for a sizing probe, so the BAR stays decoded where it was;
        // nothing ever appears at the mask address.
        assert!(
            vm.slots().find(0xffff_d000).is_none(),
            "never mapped at the mask"
        );
        assert!(
            ranges(&vm).iter().all(|(_, base)| *base < 0xffff_0000),
            "{:?}",
            ranges(&vm)
        );
        // Restored: mapped where it was.
        w32(&mut f, 0x10, 0xc000_0000);
        assert!(vm.slots().find(0xc000_1000).is_some());
        assert_eq!(ranges(&vm).len(), 2);
        assert!(h.mtree().contains("00000000c0001000-00000000c0001fff"));
        // Moved: follows.
        w32(&mut f, 0x10, 0xd000_0000);
        assert!(vm.slots().find(0xc000_1000).is_none());
        assert!(vm.slots().find(0xd000_1000).is_some());
        assert_eq!(h.counters().refused_placements, 0);
    }

    #[test]
    fn bars_over_ram_or_over_another_device_are_refused_and_the_first_keeps_working() {
        let Some(vm) = vm() else { return };
        let (mut a, _) = TestFunction::new("00:01.0", &vm, reserved()).unwrap();
        let (mut b, hb) = TestFunction::new("00:02.0", &vm, reserved()).unwrap();
        w32(&mut a, 0x10, 0xc000_0000);
        a.config_write(4, &[0x02, 0]);
        // B over guest RAM: nothing decoded, RAM untouched.
        w32(&mut b, 0x10, 0x0010_0000);
        b.config_write(4, &[0x02, 0]);
        assert_eq!(hb.counters().refused_placements, 1);
        assert_eq!(vm.slots().find(0x10_1000).unwrap().name, "ram0");
        // B over A: the bus and the slot manager refuse B's ranges; A's stay.
        w32(&mut b, 0x10, 0xc000_0000);
        assert_eq!(hb.counters().refused_placements, 2);
        assert_eq!(
            vm.slots().find(0xc000_1000).unwrap().name,
            "00:01.0 BAR0 memory"
        );
        let names: Vec<String> = ranges(&vm).into_iter().map(|r| r.0).collect();
        assert!(names.iter().all(|n| n.starts_with("00:01.0")), "{names:?}");
        // B moves away: it gets its own ranges, A is still there.
        w32(&mut b, 0x10, 0xc001_0000);
        assert_eq!(
            vm.slots().find(0xc001_1000).unwrap().name,
            "00:02.0 BAR0 memory"
        );
        assert_eq!(
            vm.slots().find(0xc000_1000).unwrap().name,
            "00:01.0 BAR0 memory"
        );
    }

    #[test]
    fn a_bar_is_never_half_placed_over_another_devices_range_or_slot() {
        let Some(vm) = vm() else { return };
        let (mut f, h) = TestFunction::new("00:01.0", &vm, reserved()).unwrap();
        // Another device's trapped page where BAR0's memory page would go (base + 0x1000).
        vm.bus()
            .register_mmio("other", 0xc001_1000, PAGE, Arc::new(Nothing))
            .unwrap();
        w32(&mut f, 0x10, 0xc001_0000);
        f.config_write(4, &[0x02, 0]);
        assert_eq!(h.counters().refused_placements, 1);
        assert!(
            vm.slots().find(0xc001_1000).is_none(),
            "no slot over \"other\""
        );
        let names: Vec<String> = ranges(&vm).into_iter().map(|r| r.0).collect();
        assert_eq!(names, ["other"], "all or nothing");
        // Another device's slot where BAR0's registers (trapped) would go.
        vm.slots()
            .add_anonymous("other memory", 0xc002_0000, PAGE, MemoryAccess::ReadWrite)
            .unwrap();
        w32(&mut f, 0x10, 0xc002_0000);
        assert_eq!(h.counters().refused_placements, 2);
        let names: Vec<String> = ranges(&vm).into_iter().map(|r| r.0).collect();
        assert_eq!(names, ["other"], "all or nothing");
        // A free place works.
        w32(&mut f, 0x10, 0xc003_0000);
        assert!(vm.slots().find(0xc003_1000).is_some());
        assert_eq!(ranges(&vm).len(), 3);
    }

    struct Nothing;
    impl DeviceMmio for Nothing {
        fn mmio_read(&self, _: MmioAddress, _: MmioAddressOffset, _: &mut [u8]) {}
        fn mmio_write(&self, _: MmioAddress, _: MmioAddressOffset, _: &[u8]) {}
    }

    #[test]
    fn read_only_registers_ignore_writes() {
        let Some(vm) = vm() else { return };
        let (mut f, _) = TestFunction::new("00:01.0", &vm, reserved()).unwrap();
        let ids = r32(&mut f, 0);
        let class = r32(&mut f, 8);
        w32(&mut f, 0, 0xdead_beef);
        w32(&mut f, 8, 0x1234_5678);
        assert_eq!((r32(&mut f, 0), r32(&mut f, 8)), (ids, class));
        // The MSI-X table offset/BIR and PBA registers are read-only too.
        let cap = 0x40u16;
        assert_eq!(r32(&mut f, cap) & 0xff, 0x11, "MSI-X at 0x40");
        let table = r32(&mut f, cap + 4);
        w32(&mut f, cap + 4, 0x0000_0005);
        assert_eq!(r32(&mut f, cap + 4), table);
    }
}
