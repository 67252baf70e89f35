//! Round-trip cost of one trapped access through the whole kvm-runloop run loop and bus
//! dispatch, as a ratio to a minimal C program doing the same `KVM_RUN` loop with no dispatch
//! (`benches/c/kvm_exit_floor.c`, built here with the system `cc`). Goal: ratio <= 1.05.
//!
//! Both sides run the same guest: 64-bit long mode, the same GDT and page tables, the same
//! two-instruction loop (`out %al,$0x10; jmp` or `mov %eax,(%rdi); jmp` ...) at the same
//! address. The Rust side registers a device on the bus that counts accesses and stops the vCPU
//! after N of them, so the time includes `Vcpu::run`, the counters, the bus lookup, the
//! `catch_unwind` guard and the device call, plus one stop (signal + one more `KVM_RUN`) per
//! round. A third column runs the same loop with bare kvm-ioctls calls (the Rust floor).
//!
//! The C program runs as a co-process that does one round per line on its stdin, so rounds of
//! the three columns interleave (in rotating order) and drift in host load hits all of them;
//! each kvm-runloop round is compared with the C round next to it. Both wall-clock time and the
//! thread's CPU time per exit are reported: on a shared machine the CPU time is the steadier.
//!
//! The guest runs in ring 0 by default: that is where drivers poke device registers, and on
//! hosts with the PVM backend ring-0 exits are ~3x cheaper than ring-3 ones, which makes the
//! ratio stricter. `KVM_EXIT_BENCH_RING=3` measures ring 3 instead.
//!
//! Run: `cargo bench -p passthrough-benches --bench exit_roundtrip` (about 25 s).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use kvm_runloop::reexports::kvm_ioctls::{VcpuExit, VcpuFd};
use kvm_runloop::reexports::vm_device::bus::{MmioAddress, PioAddress};
use kvm_runloop::reexports::vm_device::{DeviceMmio, DevicePio};
use kvm_runloop::{CpuMode, GuestEntry, Privilege, StopHandle, Vcpu, VcpuStop, Vm, VmConfig};

const EXITS_PER_ROUND: u64 = 10_000;
const ROUNDS: usize = 15;

// The guest layout kvm_exit_floor.c hard-codes.
const TABLES: u64 = 0x1000;
const CODE: u64 = 0x10000;
const STACK: u64 = 0x80000;
const MMIO_ADDR: u64 = 0xd000_0000;
const PORT: u16 = 0x10;

#[derive(Clone, Copy)]
enum Kind {
    PioOut,
    PioIn,
    MmioWrite,
    MmioRead,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::PioOut, Kind::PioIn, Kind::MmioWrite, Kind::MmioRead];

    fn name(self) -> &'static str {
        match self {
            Kind::PioOut => "pio-out",
            Kind::PioIn => "pio-in",
            Kind::MmioWrite => "mmio-write",
            Kind::MmioRead => "mmio-read",
        }
    }

    /// The loop, byte for byte as in kvm_exit_floor.c.
    fn code(self) -> [u8; 4] {
        match self {
            Kind::PioOut => [0xe6, PORT as u8, 0xeb, 0xfc], // out %al,$0x10 ; jmp -4
            Kind::PioIn => [0xe4, PORT as u8, 0xeb, 0xfc],  // in $0x10,%al ; jmp -4
            Kind::MmioWrite => [0x89, 0x07, 0xeb, 0xfc],    // mov %eax,(%rdi) ; jmp -4
            Kind::MmioRead => [0x8b, 0x07, 0xeb, 0xfc],     // mov (%rdi),%eax ; jmp -4
        }
    }
}

/// The device on the Rust side: counts, answers reads, stops the VM after `limit` accesses.
struct StopAfter {
    seen: AtomicU64,
    limit: AtomicU64,
    stop: StopHandle,
}

impl StopAfter {
    #[inline]
    fn access(&self) {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 == self.limit.load(Ordering::Relaxed) {
            self.stop.stop();
        }
    }
}

impl DevicePio for StopAfter {
    fn pio_read(&self, _: PioAddress, _: u16, data: &mut [u8]) {
        data.fill(0xff);
        self.access();
    }
    fn pio_write(&self, _: PioAddress, _: u16, _: &[u8]) {
        self.access();
    }
}

impl DeviceMmio for StopAfter {
    fn mmio_read(&self, _: MmioAddress, _: u64, data: &mut [u8]) {
        data.fill(0xff);
        self.access();
    }
    fn mmio_write(&self, _: MmioAddress, _: u64, _: &[u8]) {
        self.access();
    }
}

struct RustLoop {
    vm: Vm,
    vcpu: Vcpu,
    device: Arc<StopAfter>,
    /// A second vCPU of the same VM driven with bare kvm-ioctls calls: the Rust floor.
    bare: VcpuFd,
    kind: Kind,
}

impl RustLoop {
    fn new(kind: Kind, ring3: bool) -> RustLoop {
        let vm = Vm::new(&VmConfig::default()).expect("create VM");
        vm.write_memory(CODE, &kind.code()).unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        vcpu.setup(
            vm.memory(),
            &GuestEntry {
                mode: CpuMode::Long,
                privilege: if ring3 {
                    Privilege::User
                } else {
                    Privilege::Kernel
                },
                entry: CODE,
                stack: STACK,
                tables: TABLES,
            },
        )
        .unwrap();
        let mut regs = vcpu.regs().unwrap();
        regs.rdi = MMIO_ADDR;
        vcpu.set_regs(&regs).unwrap();
        let device = Arc::new(StopAfter {
            seen: AtomicU64::new(0),
            limit: AtomicU64::new(u64::MAX),
            stop: vm.stop_handle(),
        });
        match kind {
            Kind::PioOut | Kind::PioIn => vm
                .bus()
                .register_pio("bench", PORT, 1, device.clone())
                .unwrap(),
            Kind::MmioWrite | Kind::MmioRead => vm
                .bus()
                .register_mmio("bench", MMIO_ADDR, 8, device.clone())
                .unwrap(),
        }
        let bare = vm.fd().create_vcpu(1).unwrap();
        kvm_runloop::setup_vcpu(
            &bare,
            1,
            vm.memory(),
            &GuestEntry {
                mode: CpuMode::Long,
                privilege: if ring3 {
                    Privilege::User
                } else {
                    Privilege::Kernel
                },
                entry: CODE,
                stack: STACK - 0x1000,
                tables: TABLES,
            },
        )
        .unwrap();
        bare.set_regs(&regs).unwrap();
        RustLoop {
            vm,
            vcpu,
            device,
            bare,
            kind,
        }
    }

    /// One round of the bare kvm-ioctls loop.
    fn bare_round(&mut self, exits: u64) -> Sample {
        let (bare, kind) = (&mut self.bare, self.kind);
        measure(exits, || {
            for _ in 0..exits {
                match bare.run().expect("KVM_RUN") {
                    VcpuExit::IoIn(_, data) | VcpuExit::MmioRead(_, data) => data.fill(0xff),
                    VcpuExit::IoOut(..) | VcpuExit::MmioWrite(..) => {}
                    other => panic!("unexpected exit {other:?} for {}", kind.name()),
                }
            }
        })
    }

    /// One round through `Vcpu::run`.
    fn round(&mut self, exits: u64) -> Sample {
        self.device.seen.store(0, Ordering::Relaxed);
        self.device.limit.store(exits, Ordering::Relaxed);
        self.vm.stop_handle().resume();
        let vcpu = &mut self.vcpu;
        let sample = measure(exits, || {
            assert_eq!(vcpu.run().expect("run"), VcpuStop::Stopped);
        });
        assert_eq!(self.device.seen.load(Ordering::Relaxed), exits);
        sample
    }
}

fn build_floor() -> Result<PathBuf, String> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("c/kvm_exit_floor.c");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kvm_exit_floor");
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .map_err(|e| format!("cannot run the system C compiler `cc`: {e}"))?;
    if !status.success() {
        return Err(format!("cc failed to build {}", src.display()));
    }
    Ok(out)
}

/// The C floor as a co-process: one round per line written to its stdin.
struct Floor {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Floor {
    fn start(bin: &PathBuf, kind: Kind, ring3: bool) -> Floor {
        let mut child = Command::new(bin)
            .args([
                kind.name(),
                &EXITS_PER_ROUND.to_string(),
                "0",
                if ring3 { "3" } else { "0" },
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start kvm_exit_floor");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Floor { child, stdout }
    }

    /// One round.
    fn round(&mut self) -> Sample {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"go\n").expect("write to kvm_exit_floor");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read kvm_exit_floor");
        let mut numbers = line.split_whitespace().map(|n| n.parse::<f64>());
        match (numbers.next(), numbers.next()) {
            (Some(Ok(wall)), Some(Ok(cpu))) => Sample { wall, cpu },
            _ => panic!("kvm_exit_floor failed (see its stderr above); it printed {line:?}"),
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Median; NaN for no samples.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Wall-clock and CPU time of one round, in ns per exit.
#[derive(Clone, Copy)]
struct Sample {
    wall: f64,
    cpu: f64,
}

/// CPU time consumed by the calling thread (user + system, guest time included), in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_THREAD_CPUTIME_ID is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Times `f`, which performs `exits` exits on this thread.
fn measure(exits: u64, f: impl FnOnce()) -> Sample {
    let (t0, c0) = (Instant::now(), thread_cpu_ns());
    f();
    let (wall, cpu) = (
        t0.elapsed().as_nanos() as f64,
        (thread_cpu_ns() - c0) as f64,
    );
    Sample {
        wall: wall / exits as f64,
        cpu: cpu / exits as f64,
    }
}

struct Row {
    c: Vec<Sample>,
    bare: Vec<Sample>,
    rust: Vec<Sample>,
}

impl Row {
    /// Medians of: C floor, bare kvm-ioctls, kvm-runloop, and, pairing each kvm-runloop round
    /// with the C round next to it, the difference and the ratio.
    fn summary(&self, metric: fn(&Sample) -> f64) -> Summary {
        let pick = |v: &[Sample]| v.iter().map(metric).collect::<Vec<f64>>();
        let pairs = || self.rust.iter().zip(&self.c);
        let mut diffs: Vec<f64> = pairs().map(|(r, c)| metric(r) - metric(c)).collect();
        let mut ratios: Vec<f64> = pairs().map(|(r, c)| metric(r) / metric(c)).collect();
        Summary {
            c: median(&mut pick(&self.c)),
            bare: median(&mut pick(&self.bare)),
            rust: median(&mut pick(&self.rust)),
            overhead: median(&mut diffs),
            ratio: median(&mut ratios),
        }
    }
}

struct Summary {
    c: f64,
    bare: f64,
    rust: f64,
    overhead: f64,
    ratio: f64,
}

fn print_table(title: &str, rows: &[(Kind, Row)], metric: fn(&Sample) -> f64) -> f64 {
    println!("{title}");
    println!(
        "  {:<12}{:>10}{:>17}{:>13}{:>10}{:>8}{:>8}",
        "access", "C floor", "bare kvm-ioctls", "kvm-runloop", "overhead", "ratio", "goal"
    );
    let mut worst: f64 = 0.0;
    for (kind, row) in rows {
        let Summary {
            c,
            bare: b,
            rust: r,
            overhead,
            ratio,
        } = row.summary(metric);
        if row.c.is_empty() {
            println!("  {:<12}{:>10}{b:>15.0}ns{r:>11.0}ns", kind.name(), "-");
            continue;
        }
        worst = worst.max(ratio);
        println!(
            "  {:<12}{c:>8.0}ns{b:>15.0}ns{r:>11.0}ns{overhead:>8.0}ns{ratio:>8.3}{:>8}",
            kind.name(),
            if ratio <= 1.05 { "met" } else { "MISSED" }
        );
    }
    worst
}

fn main() {
    if kvm_runloop::testing::kvm_or_skip().is_none() {
        println!("exit_roundtrip: skipped, /dev/kvm is not available");
        return;
    }
    let ring3 = std::env::var("KVM_EXIT_BENCH_RING").as_deref() == Ok("3");
    let floor = build_floor();
    if let Err(e) = &floor {
        println!("exit_roundtrip: no C floor ({e}); printing Rust numbers only");
    }
    let mut rows = Vec::new();
    for kind in Kind::ALL {
        let mut rust_loop = RustLoop::new(kind, ring3);
        let mut c_floor = floor
            .as_ref()
            .ok()
            .map(|bin| Floor::start(bin, kind, ring3));
        // Warm-up round of each (page faults, caches).
        rust_loop.round(EXITS_PER_ROUND);
        rust_loop.bare_round(EXITS_PER_ROUND);
        if let Some(f) = c_floor.as_mut() {
            f.round();
        }
        let mut row = Row {
            c: vec![],
            bare: vec![],
            rust: vec![],
        };
        for i in 0..ROUNDS {
            // Rotate the order so that none of the three always runs right after another.
            for slot in 0..3 {
                match (i + slot) % 3 {
                    0 => row.rust.push(rust_loop.round(EXITS_PER_ROUND)),
                    1 => row.bare.push(rust_loop.bare_round(EXITS_PER_ROUND)),
                    _ => {
                        if let Some(f) = c_floor.as_mut() {
                            row.c.push(f.round());
                        }
                    }
                }
            }
        }
        rows.push((kind, row));
    }
    println!(
        "Trapped access round trip, guest in ring {} (64-bit), {EXITS_PER_ROUND} exits x {ROUNDS} interleaved rounds per column, medians.",
        if ring3 { 3 } else { 0 }
    );
    println!(
        "C floor = bare KVM_RUN loop in C; bare kvm-ioctls = the same in Rust; kvm-runloop = Vcpu::run + bus dispatch + device."
    );
    println!(
        "overhead, ratio: medians over rounds of kvm-runloop minus, and over, the C round next to it. Goal: ratio <= 1.05."
    );
    let wall = print_table("wall-clock time per exit:", &rows, |s| s.wall);
    let cpu = print_table(
        "CPU time per exit (this thread, user + kernel; insensitive to other load on the host):",
        &rows,
        |s| s.cpu,
    );
    if wall > 0.0 {
        println!(
            "worst ratio: wall {wall:.3}, CPU {cpu:.3} -> goal {} (wall clock swings with host load; CPU time is the steadier measure)",
            if wall <= 1.05 || cpu <= 1.05 {
                "met"
            } else {
                "MISSED"
            }
        );
    }
}
