//! Memory slots and interrupts on real KVM: slots added, moved and removed under a running guest,
//! read-only regions, ioeventfd, MSI through a route and an irqfd, `KVM_SIGNAL_MSI`, INTx with a
//! resample fd. Skips without /dev/kvm; fails instead when REQUIRE_KVM=1.

mod common;

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use kvm_runloop::asm::{Asm, Reg, Width};
use kvm_runloop::reexports::vm_device::DevicePio;
use kvm_runloop::reexports::vm_device::bus::PioAddress;
use kvm_runloop::reexports::vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use kvm_runloop::{
    DataMatch, Error, ExitKind, IoEventAddress, MemoryAccess, MsiMessage, Privilege, SlotId, Vcpu,
    VcpuStop,
};

const PATIENCE: Duration = Duration::from_secs(20);

fn spawn(mut vcpu: Vcpu) -> mpsc::Receiver<kvm_runloop::Result<VcpuStop>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(vcpu.run());
    });
    rx
}

/// A one-page memfd whose first 4 bytes are `value`.
fn memfd_page(value: u32) -> OwnedFd {
    // SAFETY: plain syscall with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"kvm-runloop-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is fresh and owned by nobody else.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(4096).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &value.to_le_bytes(), 0).unwrap();
    file.into()
}

/// Every port write the guest makes, with a way to wait for one.
#[derive(Default)]
struct Mailbox {
    writes: Mutex<Vec<(u16, u64)>>,
    changed: Condvar,
}

impl Mailbox {
    /// Waits until `pred` holds for the writes so far; panics after PATIENCE.
    fn wait_until(&self, what: &str, pred: impl Fn(&[(u16, u64)]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        let mut w = self.writes.lock().unwrap();
        while !pred(&w) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; guest wrote {:x?}",
                &*w
            );
            w = self.changed.wait_timeout(w, left).unwrap().0;
        }
    }
}

/// The last value written to `port`.
fn last_on(writes: &[(u16, u64)], port: u16) -> Option<u64> {
    writes
        .iter()
        .rev()
        .find(|(p, _)| *p == port)
        .map(|(_, v)| *v)
}

impl DevicePio for Mailbox {
    fn pio_read(&self, _: PioAddress, _: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn pio_write(&self, base: PioAddress, offset: u16, data: &[u8]) {
        let mut v = [0u8; 8];
        v[..data.len()].copy_from_slice(data);
        let mut w = self.writes.lock().unwrap();
        // Keep the log short for guests that report in a loop.
        if w.len() > 4096 {
            w.drain(..2048);
        }
        w.push((base.0 + offset, u64::from_le_bytes(v)));
        self.changed.notify_all();
    }
}

#[test]
fn slots_added_moved_and_removed_under_a_running_guest() {
    let Some(vm) = vm(false) else { return };
    const WINDOW: u64 = 0x1000_0000;
    let mailbox = Arc::new(Mailbox::default());
    vm.bus()
        .register_pio("mailbox", 0x10, 4, mailbox.clone())
        .unwrap();
    // The guest reads the first word of WINDOW and reports it, forever.
    let mut a = Asm::new();
    a.movabs(Reg::Rdi, WINDOW); //             movabs $WINDOW, %rdi
    let top = a.label();
    a.load(Width::W4, Reg::Rax, Reg::Rdi, 0); // mov 0(%rdi), %eax
    a.out_imm(Width::W4, 0x10); //             out %eax, $0x10
    a.jmp(top); //                             jmp top
    let (vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    let done = spawn(vcpu);
    let sees = |v: u32| {
        mailbox.wait_until(&format!("the guest to read {v:#x}"), |w| {
            w.last().is_some_and(|(_, got)| *got == u64::from(v))
        })
    };
    let slots = vm.slots();
    sees(0xffff_ffff); // nothing mapped: MMIO read of nothing

    let a_fd = memfd_page(0x1111_1111);
    let slot_a = slots
        .add_file("A", WINDOW, 4096, a_fd.as_fd(), 0, MemoryAccess::ReadWrite)
        .unwrap();
    sees(0x1111_1111);

    slots.move_region(slot_a, WINDOW + 0x10_0000).unwrap();
    sees(0xffff_ffff);
    let b_fd = memfd_page(0x2222_2222);
    let slot_b = slots
        .add_file("B", WINDOW, 4096, b_fd.as_fd(), 0, MemoryAccess::ReadWrite)
        .unwrap();
    assert_ne!(slot_a, slot_b);
    sees(0x2222_2222);

    let removed = slots.remove(slot_b).unwrap();
    assert_eq!((removed.name.as_str(), removed.guest_addr), ("B", WINDOW));
    sees(0xffff_ffff);
    slots.move_region(slot_a, WINDOW).unwrap();
    sees(0x1111_1111);

    // The slot is the memfd itself, not a copy: a host store through the mapping is what the
    // guest reads next, with no exit (the other direction is the next test).
    let map = slots.mapping(slot_a).unwrap();
    // SAFETY: the mapping is a live 4 KiB page; a volatile store races only with guest loads.
    unsafe { (map.as_ptr() as *mut u32).write_volatile(0x3333_3333) };
    sees(0x3333_3333);

    // Slot ids are reused lowest-first: B's id is free again.
    let slot_c = slots
        .add_anonymous("C", WINDOW + 0x20_0000, 4096, MemoryAccess::ReadWrite)
        .unwrap();
    assert_eq!(slot_c, slot_b);
    assert_eq!(slots.find(WINDOW).map(|r| r.slot), Some(slot_a));

    vm.stop_handle().stop();
    assert_eq!(
        done.recv_timeout(PATIENCE).unwrap().unwrap(),
        VcpuStop::Stopped
    );
    // Mapped reads never trapped; the trapped ones were only those with nothing mapped.
    let c = vm.exit_counts();
    assert_eq!(c.get(ExitKind::MmioRead), c.bus.unhandled_mmio);
    assert!(c.get(ExitKind::PioOut) > c.get(ExitKind::MmioRead));
}

#[test]
fn guest_stores_reach_the_file_behind_a_slot_without_an_exit() {
    let Some(vm) = vm(false) else { return };
    const BAR: u64 = 0x2000_0000;
    let fd = memfd_page(0);
    vm.slots()
        .add_file("bar", BAR, 4096, fd.as_fd(), 0, MemoryAccess::ReadWrite)
        .unwrap();
    let mut a = Asm::new();
    a.movabs(Reg::Rdi, BAR); //                   movabs $BAR, %rdi
    a.mov_imm(Reg::Rax, 0x7777_0001); //          mov $0x77770001, %rax
    a.store(Width::W4, Reg::Rdi, 8, Reg::Rax); // mov %eax, 8(%rdi)
    a.hlt();
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt);
    // Read the file itself, not the slot's mapping: the store went to the shared file pages.
    let mut got = [0u8; 4];
    let file = std::fs::File::from(fd);
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut got, 8).unwrap();
    assert_eq!(u32::from_le_bytes(got), 0x7777_0001);
    assert_eq!(vm.exit_counts().get(ExitKind::MmioWrite), 0);
}

#[test]
fn slot_errors_name_the_ranges_and_leave_the_table_unchanged() {
    let Some(vm) = vm(false) else { return };
    let slots = vm.slots();
    let before = slots.regions();
    assert_eq!(before.len(), 1, "boot RAM is one slot");
    let err = slots
        .add_anonymous("late", 0x10_0000, 0x20_0000, MemoryAccess::ReadWrite)
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::SlotOverlap { .. }), "{msg}");
    assert!(msg.contains("\"late\" [0x100000, 0x300000)"), "{msg}");
    assert!(msg.contains("\"ram0\" [0x0, 0x200000)"), "{msg}");
    assert!(matches!(
        slots.add_anonymous("odd", 0x1234, 4096, MemoryAccess::ReadWrite),
        Err(Error::Unaligned { .. })
    ));
    assert!(matches!(
        slots.add_anonymous("empty", 0x40_0000, 0, MemoryAccess::ReadWrite),
        Err(Error::Unaligned { .. } | Error::BadRegion { .. })
    ));
    assert!(matches!(
        slots.remove(SlotId(77)),
        Err(Error::NoSuchSlot(77))
    ));
    let s = slots
        .add_anonymous("x", 0x40_0000, 4096, MemoryAccess::ReadWrite)
        .unwrap();
    assert!(matches!(
        slots.move_region(s, 0x1000),
        Err(Error::SlotOverlap { .. })
    ));
    assert_eq!(slots.region(s).unwrap().guest_addr, 0x40_0000);
    assert_eq!(slots.regions().len(), 2);
}

#[test]
fn read_only_region_is_read_directly_and_writes_trap_and_are_dropped() {
    let Some(vm) = vm(false) else { return };
    const ROM: u64 = 0x1100_0000;
    let rom = vm
        .slots()
        .add_anonymous("rom", ROM, 4096, MemoryAccess::ReadOnly)
        .unwrap();
    let map = vm.slots().mapping(rom).unwrap();
    // SAFETY: a live 4 KiB mapping no vCPU runs on yet.
    unsafe { (map.as_ptr() as *mut u32).write_volatile(0xabcd) };
    let mailbox = Arc::new(Mailbox::default());
    vm.bus()
        .register_pio("mailbox", 0x10, 4, mailbox.clone())
        .unwrap();
    let mut a = Asm::new();
    a.movabs(Reg::Rdi, ROM); //                   movabs $ROM, %rdi
    a.load(Width::W4, Reg::Rax, Reg::Rdi, 0); //  mov 0(%rdi), %eax
    a.out_imm(Width::W4, 0x10); //                out %eax, $0x10
    a.mov_imm(Reg::Rbx, 0x1234); //               mov $0x1234, %rbx
    a.store(Width::W4, Reg::Rdi, 0, Reg::Rbx); // mov %ebx, 0(%rdi)   (traps, dropped)
    a.load(Width::W4, Reg::Rax, Reg::Rdi, 0); //  mov 0(%rdi), %eax
    a.out_imm(Width::W4, 0x10); //                out %eax, $0x10
    a.hlt();
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt);
    let reports: Vec<u64> = mailbox.writes.lock().unwrap().iter().map(|w| w.1).collect();
    assert_eq!(reports, [0xabcd, 0xabcd]);
    assert_eq!(vm.slots().region(rom).unwrap().write_traps, 1);
    let c = vm.exit_counts();
    assert_eq!(
        (c.get(ExitKind::MmioWrite), c.get(ExitKind::MmioRead)),
        (1, 0)
    );
    assert_eq!((c.bus.read_only_writes, c.bus.unhandled_mmio), (1, 0));
}

#[test]
fn ioeventfd_completes_writes_without_a_userspace_exit() {
    let Some(vm) = vm(false) else { return };
    let mmio_fd = EventFd::new(EFD_NONBLOCK).unwrap();
    let port_fd = EventFd::new(EFD_NONBLOCK).unwrap();
    vm.register_ioeventfd(&mmio_fd, IoEventAddress::Mmio(MMIO_BASE), DataMatch::Any)
        .unwrap();
    vm.register_ioeventfd(&port_fd, IoEventAddress::Pio(0x30), DataMatch::U8(7))
        .unwrap();
    let mut a = Asm::new();
    a.movabs(Reg::Rdi, MMIO_BASE); //                 movabs $MMIO_BASE, %rdi
    for _ in 0..5 {
        a.store(Width::W4, Reg::Rdi, 0, Reg::Rax); // mov %eax, 0(%rdi)   (doorbell)
    }
    a.mov_imm(Reg::Rax, 7); //                        mov $7, %rax
    a.out_imm(Width::W1, 0x30); //                    out %al, $0x30      (matches)
    a.mov_imm(Reg::Rax, 8); //                        mov $8, %rax
    a.out_imm(Width::W1, 0x30); //                    out %al, $0x30      (no match: exits)
    a.hlt();
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt);
    assert_eq!(mmio_fd.read().unwrap(), 5);
    assert_eq!(port_fd.read().unwrap(), 1);
    let c = vm.exit_counts();
    assert_eq!(
        c.get(ExitKind::MmioWrite),
        0,
        "doorbell writes must not exit"
    );
    assert_eq!(
        c.get(ExitKind::PioOut),
        1,
        "only the unmatched port write exits"
    );
    vm.unregister_ioeventfd(&mmio_fd, IoEventAddress::Mmio(MMIO_BASE), DataMatch::Any)
        .unwrap();
}

const APIC_SVR: u64 = 0xfee0_00f0;
const APIC_EOI: u64 = 0xfee0_00b0;
const IOAPIC: u64 = 0xfec0_0000;
const REPORT_PORT: u8 = 0x10;
const READY_PORT: u8 = 0x11;
const VECTORS: [u8; 4] = [0x40, 0x50, 0x60, 0x70];
const INTX_PIN: u32 = 5;

/// A guest with an IDT: enables its local APIC, routes IOAPIC pin 5 (level) to vector 0x70,
/// says it is ready, then waits with `sti; hlt`. Each handler reports its vector on port 0x10
/// and EOIs.
fn interrupt_guest(vm: &kvm_runloop::Vm) -> Vcpu {
    let mut a = Asm::new();
    a.movabs(Reg::Rdi, APIC_SVR); //                 movabs $APIC_SVR, %rdi
    a.mov_imm(Reg::Rax, 0x1ff); //                   mov $0x1ff, %rax  (APIC on, spurious 0xff)
    a.store(Width::W4, Reg::Rdi, 0, Reg::Rax); //    mov %eax, 0(%rdi)
    a.movabs(Reg::Rdi, IOAPIC); //                   movabs $IOAPIC, %rdi
    let redirection = 0x10 + 2 * INTX_PIN as i32;
    a.mov_imm(Reg::Rax, redirection); //             mov $0x1a, %rax   (IOREGSEL: pin 5 low)
    a.store(Width::W4, Reg::Rdi, 0, Reg::Rax); //    mov %eax, 0(%rdi)
    a.mov_imm(Reg::Rax, 0x8070); //                  mov $0x8070, %rax (level, vector 0x70)
    a.store(Width::W4, Reg::Rdi, 0x10, Reg::Rax); // mov %eax, 0x10(%rdi)  (IOWIN)
    a.mov_imm(Reg::Rax, redirection + 1); //         mov $0x1b, %rax   (pin 5 high)
    a.store(Width::W4, Reg::Rdi, 0, Reg::Rax); //    mov %eax, 0(%rdi)
    a.mov_imm(Reg::Rax, 0); //                       mov $0, %rax      (destination APIC 0)
    a.store(Width::W4, Reg::Rdi, 0x10, Reg::Rax); // mov %eax, 0x10(%rdi)
    a.out_imm(Width::W1, READY_PORT); //             out %al, $0x11
    a.sti(); //                                      sti
    let idle = a.label();
    a.hlt(); //                                      idle: hlt
    a.jmp(idle); //                                  jmp idle
    let mut handlers = Vec::new();
    for v in VECTORS {
        handlers.push((v, a.offset() as u64));
        a.push(Reg::Rax); //                         push %rax
        a.push(Reg::Rdi); //                         push %rdi
        a.mov_imm(Reg::Rax, i32::from(v)); //        mov $v, %rax
        a.out_imm(Width::W1, REPORT_PORT); //        out %al, $0x10
        a.movabs(Reg::Rdi, APIC_EOI); //             movabs $APIC_EOI, %rdi
        a.store(Width::W4, Reg::Rdi, 0, Reg::Rax); //mov %eax, 0(%rdi)  (EOI)
        a.pop(Reg::Rdi); //                          pop %rdi
        a.pop(Reg::Rax); //                          pop %rax
        a.iretq(); //                                iretq
    }
    let (vcpu, tables) = long_mode_vcpu(vm, 0, &a.finish(), Privilege::Kernel);
    for (v, off) in handlers {
        tables
            .set_interrupt_gate(vm.memory(), v, CODE + off)
            .unwrap();
    }
    vcpu
}

fn reported_vectors(mailbox: &Mailbox) -> Vec<u64> {
    mailbox
        .writes
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| *p == u16::from(REPORT_PORT))
        .map(|(_, v)| *v)
        .collect()
}

#[test]
fn msi_reaches_a_guest_through_a_route_and_irqfd_and_through_signal_msi() {
    let Some(vm) = vm(true) else { return };
    let mailbox = Arc::new(Mailbox::default());
    vm.bus()
        .register_pio("mailbox", 0x10, 2, mailbox.clone())
        .unwrap();
    let done = spawn(interrupt_guest(&vm));
    mailbox.wait_until("the guest to be ready", |w| {
        w.iter().any(|(p, _)| *p == u16::from(READY_PORT))
    });
    let irq = vm.interrupts().unwrap();

    // MSI route + irqfd: the path a VFIO MSI-X vector takes.
    let gsi = irq.add_msi_route(MsiMessage::x86(0, 0x40)).unwrap();
    assert!(gsi >= kvm_runloop::FIRST_MSI_GSI);
    let vector_fd = EventFd::new(EFD_NONBLOCK).unwrap();
    irq.register_irqfd(&vector_fd, gsi).unwrap();
    vector_fd.write(1).unwrap();
    mailbox.wait_until("vector 0x40", |w| last_on(w, 0x10) == Some(0x40));

    // The guest moves the vector: update the route while the vCPU runs; same irqfd.
    irq.set_msi_route(gsi, MsiMessage::x86(0, 0x50)).unwrap();
    vector_fd.write(1).unwrap();
    mailbox.wait_until("vector 0x50", |w| last_on(w, 0x10) == Some(0x50));

    // KVM_SIGNAL_MSI, no route.
    assert!(irq.signal_msi(MsiMessage::x86(0, 0x60)).unwrap());
    mailbox.wait_until("vector 0x60", |w| last_on(w, 0x10) == Some(0x60));

    assert!(
        irq.routes()
            .iter()
            .any(|(g, r)| *g == gsi && *r == kvm_runloop::Route::Msi(MsiMessage::x86(0, 0x50)))
    );
    irq.unregister_irqfd(&vector_fd, gsi).unwrap();
    irq.remove_route(gsi).unwrap();
    vm.stop_handle().stop();
    assert_eq!(
        done.recv_timeout(PATIENCE).unwrap().unwrap(),
        VcpuStop::Stopped
    );
    assert_eq!(reported_vectors(&mailbox), [0x40, 0x50, 0x60]);
    // hlt waited in the kernel: no HLT exits with the irqchip.
    assert_eq!(vm.exit_counts().get(ExitKind::Hlt), 0);
}

#[test]
fn level_intx_through_irqfd_is_resampled_on_guest_eoi() {
    let Some(vm) = vm(true) else { return };
    let mailbox = Arc::new(Mailbox::default());
    vm.bus()
        .register_pio("mailbox", 0x10, 2, mailbox.clone())
        .unwrap();
    let irq = vm.interrupts().unwrap();
    irq.set_irqchip_route(INTX_PIN, None, INTX_PIN).unwrap();
    let done = spawn(interrupt_guest(&vm));
    mailbox.wait_until("the guest to be ready", |w| {
        w.iter().any(|(p, _)| *p == u16::from(READY_PORT))
    });
    let line = EventFd::new(EFD_NONBLOCK).unwrap();
    let resample = EventFd::new(EFD_NONBLOCK).unwrap();
    irq.register_irqfd_with_resample(&line, &resample, INTX_PIN)
        .unwrap();
    line.write(1).unwrap();
    mailbox.wait_until("vector 0x70", |w| last_on(w, 0x10) == Some(0x70));
    // The guest's EOI de-asserted the line and told us through the resample fd.
    let deadline = Instant::now() + PATIENCE;
    let resampled = loop {
        match resample.read() {
            Ok(n) => break n,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("no resample after the guest's EOI: {e}"),
        }
    };
    assert_eq!(resampled, 1);
    vm.stop_handle().stop();
    assert_eq!(
        done.recv_timeout(PATIENCE).unwrap().unwrap(),
        VcpuStop::Stopped
    );
    assert_eq!(reported_vectors(&mailbox), [0x70]);
}

#[test]
fn routes_without_an_irqchip_are_refused_with_the_fix() {
    let Some(vm) = vm(false) else { return };
    let err = vm.interrupts().expect_err("no irqchip").to_string();
    assert!(err.contains("irqchip: true"), "{err}");
}

#[test]
fn gsi_routing_keeps_the_legacy_table_and_checks_bounds() {
    let Some(vm) = vm(true) else { return };
    let irq = vm.interrupts().unwrap();
    let a = irq.add_msi_route(MsiMessage::x86(0, 0x41)).unwrap();
    let b = irq.add_msi_route(MsiMessage::x86(0, 0x42)).unwrap();
    assert_eq!(b, a + 1);
    let routes = irq.routes();
    assert_eq!(routes.len(), 26, "24 legacy lines plus two MSIs");
    assert!(matches!(
        irq.set_msi_route(1 << 20, MsiMessage::default()),
        Err(Error::GsiOutOfRange { .. })
    ));
}

/// Issue 12 item 7: the route changes of one guest write go to KVM as one table, all or
/// nothing; a batch of adds takes consecutive free GSIs.
#[test]
fn a_batch_of_route_changes_is_one_update_all_or_nothing() {
    use kvm_runloop::MsiRouteChange::{Add, Remove, Set};
    let Some(vm) = vm(true) else { return };
    let irq = vm.interrupts().unwrap();
    let first = irq.add_msi_route(MsiMessage::x86(0, 0x40)).unwrap();
    let batch: Vec<_> = (0..2000u32)
        .map(|i| Add(MsiMessage::x86(0, 0x30 + (i % 200) as u8)))
        .collect();
    let gsis = irq.apply_msi_routes(&batch).unwrap();
    assert_eq!(gsis.len(), 2000);
    assert_eq!(gsis[0], first + 1);
    assert!(gsis.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(irq.routes().len(), 24 + 1 + 2000);
    // A batch with one bad change changes nothing.
    let before = irq.routes();
    let bad = [
        Set(first, MsiMessage::x86(0, 0x99)),
        Remove(gsis[0]),
        Set(1 << 20, MsiMessage::default()),
    ];
    assert!(matches!(
        irq.apply_msi_routes(&bad),
        Err(Error::GsiOutOfRange { .. })
    ));
    assert_eq!(irq.routes(), before);
    irq.apply_msi_routes(&[Set(first, MsiMessage::x86(0, 0x99)), Remove(gsis[0])])
        .unwrap();
    assert_eq!(irq.routes().len(), 24 + 2000);
}

/// Issue 12 item 2: two devices programming MSI-X vectors at once, each through its own router
/// on one VM, must never end on the same GSI (the NIC's interrupts would arrive as the NVMe's,
/// and freeing one would remove the other's route). Allocation and routing are one step.
#[test]
fn concurrent_msi_routes_never_share_a_gsi() {
    let Some(vm) = vm(true).map(Arc::new) else {
        return;
    };
    const ROUTES_PER_DEVICE: u8 = 100;
    let start = Arc::new(std::sync::Barrier::new(2));
    let devices: Vec<_> = [0x40u8, 0x80]
        .into_iter()
        .map(|first_vector| {
            let (vm, start) = (vm.clone(), start.clone());
            thread::spawn(move || {
                let irq = vm.interrupts().unwrap();
                start.wait();
                (0..ROUTES_PER_DEVICE)
                    .map(|i| {
                        let msg = MsiMessage::x86(0, first_vector + i);
                        (irq.add_msi_route(msg).unwrap(), msg)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let routed: Vec<(u32, MsiMessage)> = devices
        .into_iter()
        .flat_map(|d| d.join().unwrap())
        .collect();
    let mut gsis: Vec<u32> = routed.iter().map(|(g, _)| *g).collect();
    gsis.sort_unstable();
    let shared: Vec<u32> = gsis
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(shared.is_empty(), "GSIs given to two vectors: {shared:?}");
    let table = vm.interrupts().unwrap().routes();
    for (gsi, msg) in routed {
        assert!(
            table.contains(&(gsi, kvm_runloop::Route::Msi(msg))),
            "GSI {gsi} does not route to {msg:?}"
        );
    }
}
