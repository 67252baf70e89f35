//! The run loop on real KVM: every exit kind a guest can produce here, every access size, failing
//! devices, stops from a handler and from another thread, two vCPUs.
//!
//! Each test skips (printing why) without /dev/kvm and fails instead when REQUIRE_KVM=1. Guests
//! run in ring 0, which some hosts interpret: they are kept to a few dozen instructions.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use kvm_runloop::asm::{Asm, Reg, Width};
use kvm_runloop::reexports::kvm_bindings::{
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, kvm_guest_debug,
};
use kvm_runloop::reexports::vm_device::DevicePio;
use kvm_runloop::reexports::vm_device::bus::{MmioAddress, PioAddress};
use kvm_runloop::{
    CpuMode, DeviceBus, DeviceError, ExitKind, FallibleMmio, GuestEntry, Privilege, StopHandle,
    Vcpu, VcpuStop,
};

fn read_u64(vm: &kvm_runloop::Vm, addr: u64) -> u64 {
    let mut b = [0u8; 8];
    vm.read_memory(addr, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// Runs `vcpu` on its own thread; the result arrives on the returned channel.
fn spawn(mut vcpu: Vcpu) -> mpsc::Receiver<kvm_runloop::Result<VcpuStop>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(vcpu.run());
    });
    rx
}

/// A liveness bound for a vCPU thread, generous so a loaded machine cannot fail it.
const PATIENCE: Duration = Duration::from_secs(20);

#[test]
fn one_instruction_guest_sets_rax_and_halts() {
    let Some(vm) = vm(false) else { return };
    let mut a = Asm::new();
    a.mov_imm(Reg::Rax, 7); // mov $7, %rax
    a.hlt(); //                hlt
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt);
    assert_eq!(vcpu.regs().unwrap().rax, 7);
    let counts = vm.exit_counts();
    assert_eq!(counts.get(ExitKind::Hlt), 1);
    assert_eq!(counts.total(), 1);
}

#[test]
fn real_and_protected_mode_helpers_start_guests() {
    for mode in [CpuMode::Real, CpuMode::Protected] {
        let Some(vm) = vm(false) else { return };
        let rec = Arc::new(Recorder::default());
        vm.bus().register_pio("rec", 0x10, 1, rec.clone()).unwrap();
        // The same bytes mean the same thing in 16- and 32-bit mode here:
        vm.write_memory(
            0x7000,
            &[
                0xb0, 0x07, // mov $7, %al
                0xe6, 0x10, // out %al, $0x10
                0xf4, //       hlt
            ],
        )
        .unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        // Set up for long mode first: switching the set-up to another mode must not keep
        // long-mode state (EFER.LMA, CR4.PAE, 64-bit segments). Its page tables go at 1 MiB,
        // clear of the code at 0x7000.
        vcpu.setup(
            vm.memory(),
            &GuestEntry {
                mode: CpuMode::Long,
                privilege: Privilege::Kernel,
                entry: 0x7000,
                stack: 0x6000,
                tables: 0x10_0000,
            },
        )
        .unwrap();
        let tables = vcpu
            .setup(
                vm.memory(),
                &GuestEntry {
                    mode,
                    privilege: Privilege::Kernel,
                    entry: 0x7000,
                    stack: 0x6000,
                    tables: TABLES,
                },
            )
            .unwrap();
        assert_eq!(tables.is_some(), mode == CpuMode::Protected);
        assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt, "{mode:?}");
        let seen = rec.take();
        assert_eq!(seen.len(), 1, "{mode:?}");
        assert_eq!(seen[0].data, [7]);
        let sregs = vcpu.fd().get_sregs().unwrap();
        assert_eq!(sregs.cr0 & 1, u64::from(mode == CpuMode::Protected));
        assert_eq!(
            sregs.efer & (1 << 10),
            0,
            "{mode:?}: long mode still active"
        );
    }
}

#[test]
fn pio_every_size_read_and_write_with_exact_data() {
    let Some(vm) = vm(false) else { return };
    let rec = Arc::new(Recorder::default());
    vm.bus().register_pio("rec", 0x10, 8, rec.clone()).unwrap();
    let mut a = Asm::new();
    a.mov_imm(Reg::Rax, 0x1122_3344); // mov $0x11223344, %rax
    a.out_imm(Width::W1, 0x10); //       out %al, $0x10
    a.out_imm(Width::W2, 0x10); //       out %ax, $0x10
    a.out_imm(Width::W4, 0x10); //       out %eax, $0x10
    a.movabs(Reg::Rsi, DATA); //         movabs $DATA, %rsi
    for (i, w) in [Width::W1, Width::W2, Width::W4].into_iter().enumerate() {
        a.in_imm(w, 0x12); //                in $0x12, %al/%ax/%eax
        a.store(w, Reg::Rsi, 8 * i as i8, Reg::Rax); // mov %al/%ax/%eax, 8*i(%rsi)
    }
    a.hlt();
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt);

    let seen = rec.take();
    let writes: Vec<_> = seen.iter().filter(|s| s.write).collect();
    assert_eq!(writes.len(), 3);
    assert_eq!(writes[0].data, [0x44]);
    assert_eq!(writes[1].data, [0x44, 0x33]);
    assert_eq!(writes[2].data, [0x44, 0x33, 0x22, 0x11]);
    assert!(writes.iter().all(|w| w.offset == 0));
    let reads: Vec<_> = seen.iter().filter(|s| !s.write).collect();
    assert_eq!(
        reads
            .iter()
            .map(|r| (r.offset, r.data.len()))
            .collect::<Vec<_>>(),
        [(2, 1), (2, 2), (2, 4)]
    );
    for (i, len) in [1usize, 2, 4].into_iter().enumerate() {
        let got = read_u64(&vm, DATA + 8 * i as u64).to_le_bytes();
        assert_eq!(
            got[..len],
            Recorder::read_pattern(2, len)[..],
            "in of {len} bytes"
        );
    }
    let c = vm.exit_counts();
    assert_eq!((c.get(ExitKind::PioOut), c.get(ExitKind::PioIn)), (3, 3));
}

#[test]
fn mmio_every_size_read_and_write_with_exact_data() {
    let Some(vm) = vm(false) else { return };
    let rec = Arc::new(Recorder::default());
    vm.bus()
        .register_mmio("rec", MMIO_BASE, 0x100, rec.clone())
        .unwrap();
    let mut a = Asm::new();
    a.movabs(Reg::Rax, 0x1122_3344_5566_7788); // movabs $0x1122334455667788, %rax
    a.movabs(Reg::Rdi, MMIO_BASE); //             movabs $MMIO_BASE, %rdi
    a.movabs(Reg::Rsi, DATA); //                  movabs $DATA, %rsi
    for (i, w) in Width::ALL.into_iter().enumerate() {
        a.store(w, Reg::Rdi, 8 * i as i8, Reg::Rax); // mov %al..%rax, 8*i(%rdi)
    }
    for (i, w) in Width::ALL.into_iter().enumerate() {
        a.load(w, Reg::Rbx, Reg::Rdi, 0x20 + 8 * i as i8); // mov 0x20+8*i(%rdi), %bl..%rbx
        a.store(w, Reg::Rsi, 8 * i as i8, Reg::Rbx); //      mov %bl..%rbx, 8*i(%rsi)
    }
    a.hlt();
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt);

    let seen = rec.take();
    let value = 0x1122_3344_5566_7788u64.to_le_bytes();
    let writes: Vec<_> = seen.iter().filter(|s| s.write).collect();
    assert_eq!(writes.len(), 4);
    for (i, w) in writes.iter().enumerate() {
        let len = 1 << i;
        assert_eq!(w.offset, 8 * i as u64);
        assert_eq!(w.data, value[..len], "write of {len} bytes");
    }
    let reads: Vec<_> = seen.iter().filter(|s| !s.write).collect();
    assert_eq!(reads.len(), 4);
    for (i, r) in reads.iter().enumerate() {
        let (len, offset) = (1usize << i, 0x20 + 8 * i as u64);
        assert_eq!((r.offset, r.data.len()), (offset, len));
        let got = read_u64(&vm, DATA + 8 * i as u64).to_le_bytes();
        assert_eq!(
            got[..len],
            Recorder::read_pattern(offset, len)[..],
            "read of {len} bytes"
        );
    }
    let c = vm.exit_counts();
    assert_eq!(
        (c.get(ExitKind::MmioWrite), c.get(ExitKind::MmioRead)),
        (4, 4)
    );
    let d = &vm.bus().device_counts()[0];
    assert_eq!((d.reads, d.writes, d.traps()), (4, 4, 8));
}

#[test]
fn string_port_io_reaches_the_device_element_by_element() {
    let Some(vm) = vm(false) else { return };
    let rec = Arc::new(Recorder::default());
    vm.bus().register_pio("rec", 0x10, 2, rec.clone()).unwrap();
    vm.write_memory(DATA, &[1, 2, 3, 4, 5, 6]).unwrap();
    let mut a = Asm::new();
    a.mov_imm(Reg::Rdx, 0x10); //          mov $0x10, %rdx
    a.movabs(Reg::Rsi, DATA); //           movabs $DATA, %rsi
    a.mov_imm(Reg::Rcx, 3); //             mov $3, %rcx
    a.rep_outs(Width::W2); //              rep outsw
    a.movabs(Reg::Rdi, DATA + 0x100); //   movabs $DATA+0x100, %rdi
    a.mov_imm(Reg::Rcx, 4); //             mov $4, %rcx
    a.rep_ins(Width::W1); //               rep insb
    a.hlt();
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt);
    let seen = rec.take();
    let writes: Vec<_> = seen
        .iter()
        .filter(|s| s.write)
        .map(|s| s.data.clone())
        .collect();
    assert_eq!(writes, [vec![1, 2], vec![3, 4], vec![5, 6]]);
    let reads = seen.iter().filter(|s| !s.write).count();
    assert_eq!(reads, 4);
    let mut got = [0u8; 4];
    vm.read_memory(DATA + 0x100, &mut got).unwrap();
    assert_eq!(got, [Recorder::read_pattern(0, 1)[0]; 4]);
}

#[test]
fn access_hitting_no_device_reads_all_ones_and_is_counted() {
    let Some(vm) = vm(false) else { return };
    let mut a = Asm::new();
    a.movabs(Reg::Rsi, DATA); //              movabs $DATA, %rsi
    a.mov_imm(Reg::Rax, 0); //                mov $0, %rax
    a.in_imm(Width::W2, 0x70); //             in $0x70, %ax
    a.store(Width::W8, Reg::Rsi, 0, Reg::Rax); // mov %rax, 0(%rsi)
    a.movabs(Reg::Rdi, 0xe000_0000); //       movabs $0xe0000000, %rdi
    a.mov_imm(Reg::Rax, 0); //                mov $0, %rax
    a.load(Width::W4, Reg::Rax, Reg::Rdi, 0); // mov 0(%rdi), %eax
    a.store(Width::W8, Reg::Rsi, 8, Reg::Rax); // mov %rax, 8(%rsi)
    a.store(Width::W4, Reg::Rdi, 0, Reg::Rax); // mov %eax, 0(%rdi)
    a.hlt();
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt);
    assert_eq!(read_u64(&vm, DATA), 0xffff);
    assert_eq!(read_u64(&vm, DATA + 8), 0xffff_ffff);
    let c = vm.exit_counts();
    assert_eq!((c.bus.unhandled_pio, c.bus.unhandled_mmio), (1, 2));
}

#[test]
fn shutdown_internal_error_and_debug_exits_are_typed_outcomes() {
    // Shutdown: `ud2` with no IDT entry: #UD, then #DF, then a triple fault.
    let Some(vm) = vm(false) else { return };
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &[0x0f, 0x0b], Privilege::Kernel); // ud2
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Shutdown);
    assert_eq!(vm.exit_counts().get(ExitKind::Shutdown), 1);

    // Internal error: fetching instructions from an address with no memory cannot be emulated.
    let vm = common::vm(false).unwrap();
    let mut a = Asm::new();
    a.movabs(Reg::Rax, MMIO_BASE); // movabs $MMIO_BASE, %rax
    a.raw(&[0xff, 0xe0]); //          jmp *%rax
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    match vcpu.run().unwrap() {
        VcpuStop::InternalError { suberror, .. } => assert_eq!(suberror, 1, "emulation failure"),
        other => panic!("expected an internal error, got {other:?}"),
    }
    assert_eq!(vm.exit_counts().get(ExitKind::InternalError), 1);

    // Debug: single-stepping stops after the first instruction.
    let vm = common::vm(false).unwrap();
    let mut a = Asm::new();
    a.mov_imm(Reg::Rax, 1); // mov $1, %rax
    a.mov_imm(Reg::Rax, 2); // mov $2, %rax
    a.hlt();
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    let debug = kvm_guest_debug {
        control: KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP,
        ..Default::default()
    };
    vcpu.fd().set_guest_debug(&debug).unwrap();
    assert_eq!(
        vcpu.run().unwrap(),
        VcpuStop::Debug {
            exception: 1,
            pc: CODE + 7
        }
    );
    assert_eq!(vcpu.regs().unwrap().rax, 1);
    assert_eq!(vm.exit_counts().get(ExitKind::Debug), 1);
}

struct Panicky;
impl DevicePio for Panicky {
    fn pio_read(&self, _: PioAddress, _: u16, data: &mut [u8]) {
        data.fill(0x12);
        panic!("Panicky::pio_read (this panic is part of the test)");
    }
    fn pio_write(&self, _: PioAddress, _: u16, _: &[u8]) {
        panic!("Panicky::pio_write (this panic is part of the test)");
    }
}

struct Failing;
impl FallibleMmio for Failing {
    fn try_mmio_read(&self, _: MmioAddress, _: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        data.fill(0);
        Err("backing fd returned EIO (part of the test)".into())
    }
    fn try_mmio_write(&self, _: MmioAddress, _: u64, _: &[u8]) -> Result<(), DeviceError> {
        Ok(())
    }
}

#[test]
fn panicking_or_failing_device_does_not_take_the_vmm_down() {
    let Some(vm) = vm(false) else { return };
    let rec = Arc::new(Recorder::default());
    vm.bus().register_pio("rec", 0x10, 4, rec.clone()).unwrap();
    vm.bus()
        .register_pio("panicky", 0x60, 1, Arc::new(Panicky))
        .unwrap();
    vm.bus()
        .register_fallible_mmio("failing", MMIO_BASE, 0x1000, Arc::new(Failing))
        .unwrap();
    let mut a = Asm::new();
    a.out_imm(Width::W1, 0x60); //              out %al, $0x60      (panics: device fenced)
    a.in_imm(Width::W1, 0x60); //               in $0x60, %al       (fenced: all-ones)
    a.out_imm(Width::W1, 0x10); //              out %al, $0x10      (report)
    a.movabs(Reg::Rdi, MMIO_BASE); //           movabs $MMIO_BASE, %rdi
    a.load(Width::W4, Reg::Rax, Reg::Rdi, 0); // mov 0(%rdi), %eax   (error: all-ones)
    a.out_imm(Width::W4, 0x10); //              out %eax, $0x10     (report)
    a.store(Width::W4, Reg::Rdi, 0, Reg::Rax); // mov %eax, 0(%rdi)  (still served)
    a.hlt();
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt);
    let reports: Vec<_> = rec.take().into_iter().map(|s| s.data).collect();
    assert_eq!(reports, [vec![0xff], vec![0xff; 4]]);
    let devices = vm.bus().device_counts();
    let panicky = devices.iter().find(|d| d.name == "panicky").unwrap();
    assert_eq!(
        (panicky.panics, panicky.fenced, panicky.traps()),
        (1, true, 2)
    );
    let failing = devices.iter().find(|d| d.name == "failing").unwrap();
    assert_eq!(
        (failing.errors, failing.fenced, failing.traps()),
        (1, false, 2)
    );
    let bus = vm.exit_counts().bus;
    assert_eq!((bus.device_panics, bus.device_errors), (1, 1));
}

/// Answers reads with 0x5a and asks the VM to stop from inside the handler.
struct StopOnRead(StopHandle);
impl DevicePio for StopOnRead {
    fn pio_read(&self, _: PioAddress, _: u16, data: &mut [u8]) {
        data.fill(0x5a);
        self.0.stop();
    }
    fn pio_write(&self, _: PioAddress, _: u16, _: &[u8]) {}
}

#[test]
fn stop_during_a_read_completes_it() {
    let Some(vm) = vm(false) else { return };
    vm.bus()
        .register_pio("stopper", 0x10, 1, Arc::new(StopOnRead(vm.stop_handle())))
        .unwrap();
    let mut a = Asm::new();
    a.mov_imm(Reg::Rax, 0); //     mov $0, %rax
    a.in_imm(Width::W1, 0x10); //  in $0x10, %al   (the device stops the VM here)
    let spin = a.label();
    a.mov_imm(Reg::Rax, -1); //    mov $-1, %rax   (must not run)
    a.jmp(spin); //                jmp spin
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Stopped);
    assert!(!vcpu.has_pending_io());
    let regs = vcpu.regs().unwrap();
    // The `in` completed (its data is in %al) and nothing after it ran.
    assert_eq!(regs.rax, 0x5a);
    assert_eq!(regs.rip, CODE + 9);
    // A stopped VM stays stopped (without entering the guest) until resumed.
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Stopped);
    assert_eq!(vcpu.regs().unwrap().rip, CODE + 9);
}

#[test]
fn run_once_reports_accesses_and_complete_pending_io_finishes_them() {
    let Some(vm) = vm(false) else { return };
    let rec = Arc::new(Recorder::default());
    vm.bus().register_pio("rec", 0x10, 1, rec.clone()).unwrap();
    let mut a = Asm::new();
    a.mov_imm(Reg::Rax, 0); //    mov $0, %rax
    a.in_imm(Width::W1, 0x10); // in $0x10, %al
    a.hlt();
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    let exit = vcpu.run_once().unwrap();
    assert_eq!(
        exit,
        kvm_runloop::Exit::Access(kvm_runloop::Access {
            kind: ExitKind::PioIn,
            addr: 0x10,
            size: 1,
            count: 1
        })
    );
    assert!(vcpu.has_pending_io());
    assert_eq!(vcpu.complete_pending_io().unwrap(), None);
    assert!(!vcpu.has_pending_io());
    let regs = vcpu.regs().unwrap();
    assert_eq!((regs.rax, regs.rip), (0x11, CODE + 9));
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt);
}

#[test]
fn stop_from_another_thread_ends_spinning_and_halted_vcpus() {
    let Some(vm) = vm(true) else { return };
    let mut spin = Asm::new();
    let top = spin.label();
    spin.jmp(top); // jmp .
    let mut halt = Asm::new();
    halt.cli(); // cli
    halt.hlt(); // hlt   (with the in-kernel irqchip this waits in the kernel forever)
    let (spinner, _) = long_mode_vcpu(&vm, 0, &spin.finish(), Privilege::Kernel);
    let (halter, _) = long_mode_vcpu(&vm, 1, &halt.finish(), Privilege::Kernel);
    let stop = vm.stop_handle();
    let (a, b) = (spawn(spinner), spawn(halter));
    while stop.running_vcpus() < 2 {
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(50));
    stop.stop();
    assert_eq!(
        a.recv_timeout(PATIENCE).unwrap().unwrap(),
        VcpuStop::Stopped
    );
    assert_eq!(
        b.recv_timeout(PATIENCE).unwrap().unwrap(),
        VcpuStop::Stopped
    );
    assert_eq!(stop.running_vcpus(), 0);
    assert!(vm.exit_counts().get(ExitKind::Interrupted) >= 2);
}

/// Counts writes per value.
#[derive(Default)]
struct Tally(Mutex<[u64; 2]>);
impl DevicePio for Tally {
    fn pio_read(&self, _: PioAddress, _: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn pio_write(&self, _: PioAddress, _: u16, data: &[u8]) {
        self.0.lock().unwrap()[usize::from(data[0] & 1)] += 1;
    }
}

#[test]
fn two_vcpus_run_in_threads_on_one_bus() {
    let Some(vm) = vm(false) else { return };
    const N: i32 = 200;
    let tally = Arc::new(Tally::default());
    vm.bus()
        .register_pio("tally", 0x10, 1, tally.clone())
        .unwrap();
    let mut rxs = Vec::new();
    for id in 0..2u32 {
        let mut a = Asm::new();
        a.mov_imm(Reg::Rcx, N); //             mov $N, %rcx
        a.mov_imm(Reg::Rax, id as i32); //     mov $id, %rax
        let top = a.label();
        a.out_imm(Width::W1, 0x10); //         out %al, $0x10
        a.dec(Reg::Rcx); //                    dec %rcx
        a.jnz(top); //                         jnz top
        a.hlt();
        let (vcpu, _) = long_mode_vcpu(&vm, id, &a.finish(), Privilege::Kernel);
        rxs.push(spawn(vcpu));
    }
    for rx in rxs {
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap().unwrap(), VcpuStop::Hlt);
    }
    assert_eq!(*tally.0.lock().unwrap(), [N as u64, N as u64]);
    let c = vm.exit_counts();
    assert_eq!(
        (c.get(ExitKind::PioOut), c.get(ExitKind::Hlt)),
        (2 * N as u64, 2)
    );
}

/// A "config space" port: writing 1 to it moves the MMIO device (like a guest reprogramming a
/// BAR), from inside this handler, on the vCPU thread.
struct BarMover {
    bus: Arc<DeviceBus>,
    moves: AtomicU64,
}
impl DevicePio for BarMover {
    fn pio_read(&self, _: PioAddress, _: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn pio_write(&self, _: PioAddress, _: u16, _: &[u8]) {
        self.bus.move_mmio(MMIO_BASE, MMIO_BASE + 0x1000).unwrap();
        self.moves.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn device_can_move_its_bar_from_its_own_handler() {
    let Some(vm) = vm(false) else { return };
    let rec = Arc::new(Recorder::default());
    vm.bus()
        .register_mmio("bar0", MMIO_BASE, 0x100, rec.clone())
        .unwrap();
    let mover = Arc::new(BarMover {
        bus: vm.bus().clone(),
        moves: AtomicU64::new(0),
    });
    vm.bus()
        .register_pio("config", 0x20, 1, mover.clone())
        .unwrap();
    let mut a = Asm::new();
    a.movabs(Reg::Rdi, MMIO_BASE); //             movabs $MMIO_BASE, %rdi
    a.movabs(Reg::Rsi, DATA); //                  movabs $DATA, %rsi
    a.load(Width::W1, Reg::Rax, Reg::Rdi, 0); //  mov 0(%rdi), %al     (bar0 at the old base)
    a.store(Width::W1, Reg::Rsi, 0, Reg::Rax); // mov %al, 0(%rsi)
    a.out_imm(Width::W1, 0x20); //                out %al, $0x20       (move the BAR)
    a.load(Width::W1, Reg::Rax, Reg::Rdi, 0); //  mov 0(%rdi), %al     (nothing there now)
    a.store(Width::W1, Reg::Rsi, 1, Reg::Rax); // mov %al, 1(%rsi)
    a.movabs(Reg::Rdi, MMIO_BASE + 0x1000); //    movabs $NEW_BASE, %rdi
    a.load(Width::W1, Reg::Rax, Reg::Rdi, 0); //  mov 0(%rdi), %al     (bar0 at the new base)
    a.store(Width::W1, Reg::Rsi, 2, Reg::Rax); // mov %al, 2(%rsi)
    a.hlt();
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    assert_eq!(vcpu.run().unwrap(), VcpuStop::Hlt);
    let mut got = [0u8; 3];
    vm.read_memory(DATA, &mut got).unwrap();
    let p = Recorder::read_pattern(0, 1)[0];
    assert_eq!(got, [p, 0xff, p]);
    assert_eq!(mover.moves.load(Ordering::Relaxed), 1);
    let bar = vm
        .bus()
        .device_counts()
        .into_iter()
        .find(|d| d.name == "bar0")
        .unwrap();
    assert_eq!((bar.base, bar.reads), (MMIO_BASE + 0x1000, 2));
}

/// Serves 1, 2, 3, ... to successive reads.
#[derive(Default)]
struct Counter(AtomicU64);
impl DevicePio for Counter {
    fn pio_read(&self, _: PioAddress, _: u16, data: &mut [u8]) {
        let v = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        data.copy_from_slice(&(v as u32).to_le_bytes()[..data.len()]);
    }
    fn pio_write(&self, _: PioAddress, _: u16, _: &[u8]) {}
}

#[test]
fn stops_at_arbitrary_moments_never_lose_a_read() {
    let Some(vm) = vm(false) else { return };
    let counter = Arc::new(Counter::default());
    vm.bus()
        .register_pio("counter", 0x10, 4, counter.clone())
        .unwrap();
    let mut a = Asm::new();
    let top = a.label();
    a.in_imm(Width::W4, 0x10); // top: in $0x10, %eax
    a.jmp(top); //                 jmp top
    let (mut vcpu, _) = long_mode_vcpu(&vm, 0, &a.finish(), Privilege::Kernel);
    let stop = vm.stop_handle();
    for round in 0..30u64 {
        stop.resume();
        let (tx, rx) = mpsc::channel();
        let worker = thread::spawn(move || {
            let r = vcpu.run();
            let _ = tx.send(());
            (vcpu, r)
        });
        // Stop after a varying delay: in the guest, in the kernel, or inside the handler.
        thread::sleep(Duration::from_micros(137 * (round % 7)));
        stop.stop();
        rx.recv_timeout(PATIENCE).expect("vCPU did not stop");
        let (v, r) = worker.join().unwrap();
        vcpu = v;
        assert_eq!(r.unwrap(), VcpuStop::Stopped);
        let served = counter.0.load(Ordering::SeqCst);
        let rax = vcpu.regs().unwrap().rax;
        // Every value the device produced reached the guest: the last one is in %eax.
        assert_eq!(rax, served & 0xffff_ffff, "round {round}");
    }
}

/// A new vCPU has long mode in its CPUID (and its own APIC ID): without KVM_SET_CPUID2 it has
/// no CPUID at all, and kernels since 6.12.y refuse to put it in long mode (KVM_SET_SREGS
/// fails with EINVAL, seen on the test bed's own 6.12 kernel).
#[test]
fn vcpus_get_kvms_cpuid_with_long_mode_and_their_apic_id() {
    let Some(vm) = vm(false) else { return };
    for id in [0, 1] {
        let vcpu = vm.create_vcpu(id).unwrap();
        let cpuid = vcpu.fd().get_cpuid2(256).unwrap();
        let leaf = |function| {
            cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == function && e.index == 0)
                .copied()
        };
        let ext = leaf(0x8000_0001).expect("leaf 0x80000001");
        assert_ne!(ext.edx & (1 << 29), 0, "vCPU {id}: no LM in CPUID");
        assert_eq!(leaf(1).expect("leaf 1").ebx >> 24, id, "vCPU {id}: APIC ID");
    }
}
