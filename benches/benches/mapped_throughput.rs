//! Throughput of guest stores into a mapped memory slot versus the same loop on the host: what a
//! passed-through BAR mmap gives the guest once it is mapped instead of trapped.
//!
//! The slot is 64 MiB of a memfd mapped `MAP_SHARED` through `MemorySlots::add_file`, which is
//! how a VFIO BAR region is mapped. The guest runs in ring 3 (on PVM hosts ring-0 code is
//! interpreted, ring 3 runs natively): a loop of eight 8-byte stores per 64 bytes over the whole
//! slot, then `out` to a port whose device timestamps the end of each pass. The host runs the
//! same instructions (inline assembly) over its own 64 MiB memfd mapping. The first pass of each
//! side faults the pages in and is not counted. Each guest pass includes one port-IO exit
//! (a few microseconds, well under 1% of a pass).
//!
//! Run: `cargo bench -p passthrough-benches --bench mapped_throughput` (a few seconds).

use std::arch::asm;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_runloop::asm::{Asm, Reg, Width};
use kvm_runloop::reexports::vm_device::DevicePio;
use kvm_runloop::reexports::vm_device::bus::PioAddress;
use kvm_runloop::{CpuMode, ExitKind, GuestEntry, MemoryAccess, Privilege, VcpuStop, Vm, VmConfig};

const SLOT_SIZE: u64 = 64 << 20;
const SLOT_GPA: u64 = 0x4000_0000;
const PASSES: usize = 21; // the first one warms up
const PATTERN: u64 = 0x5a5a_5a5a_a5a5_a5a5;

const TABLES: u64 = 0x1000;
const CODE: u64 = 0x10000;
const STACK: u64 = 0x80000;
const PASS_PORT: u8 = 0x10;

/// Timestamps each guest pass.
struct PassClock {
    marks: Mutex<Vec<Instant>>,
}

impl DevicePio for PassClock {
    fn pio_read(&self, _: PioAddress, _: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn pio_write(&self, _: PioAddress, _: u16, _: &[u8]) {
        self.marks.lock().unwrap().push(Instant::now());
    }
}

fn memfd(size: u64) -> OwnedFd {
    // SAFETY: a plain syscall with a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"mapped-throughput".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let f = std::fs::File::from(fd);
    f.set_len(size).expect("size memfd");
    f.into()
}

/// The guest: `PASSES` passes of 64-byte store groups over the slot, `out` after each, then
/// `hlt`, which in ring 3 faults with no IDT: a triple fault, reported as Shutdown.
fn guest_code() -> Vec<u8> {
    let mut a = Asm::new();
    a.movabs(Reg::Rax, PATTERN); //            movabs $PATTERN, %rax
    a.movabs(Reg::Rbx, SLOT_GPA); //           movabs $SLOT_GPA, %rbx
    a.movabs(Reg::Rsi, SLOT_GPA + SLOT_SIZE); // movabs $SLOT_END, %rsi
    a.mov_imm(Reg::Rcx, PASSES as i32); //     mov $PASSES, %rcx
    let pass = a.label();
    a.mov_reg(Reg::Rdi, Reg::Rbx); //          pass: mov %rbx, %rdi
    let group = a.label();
    for i in 0..8 {
        a.store(Width::W8, Reg::Rdi, 8 * i, Reg::Rax); // group: mov %rax, 8*i(%rdi)
    }
    a.add_imm(Reg::Rdi, 64); //                add $64, %rdi
    a.cmp(Reg::Rdi, Reg::Rsi); //              cmp %rsi, %rdi
    a.jb(group); //                            jb group
    a.out_imm(Width::W1, PASS_PORT); //        out %al, $0x10
    a.dec(Reg::Rcx); //                        dec %rcx
    a.jnz(pass); //                            jnz pass
    a.hlt(); //                                hlt
    a.finish()
}

/// Seconds per pass, for the guest.
fn guest_passes() -> Vec<f64> {
    let vm = Vm::new(&VmConfig::default()).expect("create VM");
    let fd = memfd(SLOT_SIZE);
    let slot = vm
        .slots()
        .add_file(
            "bar-like",
            SLOT_GPA,
            SLOT_SIZE,
            fd.as_fd(),
            0,
            MemoryAccess::ReadWrite,
        )
        .expect("map slot");
    let clock = Arc::new(PassClock {
        marks: Mutex::new(Vec::new()),
    });
    vm.bus()
        .register_pio("pass clock", u16::from(PASS_PORT), 1, clock.clone())
        .unwrap();
    vm.write_memory(CODE, &guest_code()).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.setup(
        vm.memory(),
        &GuestEntry {
            mode: CpuMode::Long,
            privilege: Privilege::User,
            entry: CODE,
            stack: STACK,
            tables: TABLES,
        },
    )
    .unwrap();
    let start = Instant::now();
    let stop = vcpu.run().expect("run");
    assert_eq!(
        stop,
        VcpuStop::Shutdown,
        "guest should end with a triple fault"
    );
    let counts = vm.exit_counts();
    assert_eq!(counts.get(ExitKind::PioOut), PASSES as u64);
    assert_eq!(
        counts.get(ExitKind::MmioWrite),
        0,
        "stores to a mapped slot must not exit"
    );
    // Check the guest really wrote the slot.
    let mapping = vm.slots().mapping(slot).unwrap();
    // SAFETY: the mapping is SLOT_SIZE bytes, alive while `mapping` is; the vCPU has stopped.
    let last =
        unsafe { (mapping.as_ptr().add(SLOT_SIZE as usize - 8) as *const u64).read_volatile() };
    assert_eq!(last, PATTERN);
    let marks = clock.marks.lock().unwrap();
    let mut prev = start;
    let mut out = Vec::new();
    for m in marks.iter() {
        out.push(m.duration_since(prev).as_secs_f64());
        prev = *m;
    }
    out.remove(0); // warm-up pass
    out
}

/// Seconds per pass, for the host.
fn host_passes() -> Vec<f64> {
    let fd = memfd(SLOT_SIZE);
    // SAFETY: a fresh shared mapping of the memfd, checked below and unmapped at the end.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SLOT_SIZE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let mut out = Vec::new();
    for _ in 0..PASSES {
        let t = Instant::now();
        // SAFETY: stores stay within [base, base + SLOT_SIZE), a live writable mapping; the loop
        // is the guest's loop instruction for instruction.
        unsafe {
            asm!(
                "2:",
                "mov qword ptr [{p}], {v}",
                "mov qword ptr [{p} + 8], {v}",
                "mov qword ptr [{p} + 16], {v}",
                "mov qword ptr [{p} + 24], {v}",
                "mov qword ptr [{p} + 32], {v}",
                "mov qword ptr [{p} + 40], {v}",
                "mov qword ptr [{p} + 48], {v}",
                "mov qword ptr [{p} + 56], {v}",
                "add {p}, 64",
                "cmp {p}, {end}",
                "jb 2b",
                p = inout(reg) base as u64 => _,
                end = in(reg) base as u64 + SLOT_SIZE,
                v = in(reg) PATTERN,
                options(nostack),
            );
        }
        out.push(t.elapsed().as_secs_f64());
    }
    // SAFETY: unmapping the mapping made above; nothing refers to it any more.
    unsafe { libc::munmap(base, SLOT_SIZE as usize) };
    out.remove(0);
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if kvm_runloop::testing::kvm_or_skip().is_none() {
        println!("mapped_throughput: skipped, /dev/kvm is not available");
        return;
    }
    let gb = SLOT_SIZE as f64 / 1e9;
    // Alternate host and guest runs so drift in host load hits both.
    let (mut host, mut guest) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        host.extend(host_passes());
        guest.extend(guest_passes());
    }
    let (host, guest) = (median(host), median(guest));
    println!(
        "8-byte stores into a 64 MiB mapped slot (memfd, MAP_SHARED, mapped as a VFIO BAR is), {} passes per side, medians:",
        3 * (PASSES - 1)
    );
    println!(
        "  guest, ring 3, through the slot: {:>6.2} GB/s  ({:.2} ms per pass, no MMIO exit)",
        gb / guest,
        guest * 1e3
    );
    println!(
        "  host, same loop and mapping:     {:>6.2} GB/s  ({:.2} ms per pass)",
        gb / host,
        host * 1e3
    );
    println!("  guest / host:                    {:>6.2}", host / guest);
}
