//! `refvmm demo`: the one-instruction machine. A KVM guest whose only instruction of interest is
//! `mov $7, %rax`, run with `kvm-runloop`, to show trap-and-emulate at its smallest:
//!
//! - `refvmm demo`: run it once, print RAX and the exit that ended the run;
//! - `--repeat N`: run it N times in a guest loop, trapping to the VMM after each run (or, with
//!   `--no-trap`, only at the end); print exits per kind and the time per exit;
//! - `--trap-vs-map`: store to a mapped page, then to a trapped page; print the exits and the time
//!   per store side by side. This is the difference passthrough is built on.
//!
//! Loops run in ring 3 by default: on some KVM hosts ring-0 guest code is interpreted, which
//! would time the interpreter instead of the machine. The guest times its own loops with
//! `rdtsc`; the VMM converts with the vCPU's TSC frequency (or falls back to its own clock).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use kvm_runloop::asm::{Asm, Reg, Width};
use kvm_runloop::reexports::vm_device::bus::{MmioAddress, MmioAddressOffset, PioAddress};
use kvm_runloop::reexports::vm_device::{DeviceMmio, DevicePio};
use kvm_runloop::reexports::vm_memory::{Bytes, VolatileMemory};
use kvm_runloop::{
    BusKind, CpuMode, ExitCounts, ExitKind, GuestEntry, MemoryAccess, Privilege, StopHandle, Vcpu,
    VcpuStop, Vm, VmConfig,
};

use crate::CmdResult;

type DemoResult<T> = Result<T, Box<dyn std::error::Error>>;

/// `writeln!` into the report `String` (writing to a `String` cannot fail).
macro_rules! outln {
    ($out:expr) => {
        $out.push('\n')
    };
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Prints the report; a reader that went away (`refvmm demo | head`) is not an error.
fn emit(out: &str) -> CmdResult {
    use std::io::Write;
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Options of `refvmm demo`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  refvmm demo                          run `mov $7, %rax` once and show RAX and the exit
  refvmm demo --repeat 1000            trap to the VMM after each of 1000 runs: time per exit
  refvmm demo --repeat 1000 --no-trap  the same loop with no exit until the end
  refvmm demo --trap-vs-map            stores to a mapped page vs a trapped page

Needs /dev/kvm (read and write access).")]
pub struct DemoArgs {
    /// Run the instruction N times in a guest loop and show the exits per kind and the time per
    /// exit.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: Option<u64>,
    /// With --repeat: stay in the guest for the whole loop (one exit at the end) instead of
    /// writing AL to port 0x10 (which traps) after each run.
    #[arg(long, requires = "repeat")]
    pub no_trap: bool,
    /// Store RAX to a mapped page, then to a trapped page (MMIO), and compare exits and time per
    /// store.
    #[arg(long, conflicts_with = "repeat")]
    pub trap_vs_map: bool,
    /// With --trap-vs-map: stores to each page.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..),
        requires = "trap_vs_map"
    )]
    pub stores: u64,
    /// Privilege ring of the looping guests (--repeat, --trap-vs-map): 3 runs natively on every
    /// KVM host; 0 is where device drivers run, but some hosts interpret ring-0 code.
    #[arg(long, value_name = "RING", default_value_t = 3, value_parser = parse_ring)]
    pub ring: u8,
    /// The KVM device node.
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    pub kvm_device: std::path::PathBuf,
}

fn parse_ring(s: &str) -> Result<u8, String> {
    match s {
        "0" => Ok(0),
        "3" => Ok(3),
        _ => Err(format!("{s:?}: the demo runs guests in ring 0 or ring 3")),
    }
}

/// Runs `refvmm demo`.
pub fn run(args: DemoArgs) -> CmdResult {
    let vm = Vm::new(&VmConfig {
        kvm_device: args.kvm_device.clone(),
        ..VmConfig::default()
    })
    .map_err(|e| -> Box<dyn std::error::Error> {
        match e {
            kvm_runloop::Error::OpenKvm { .. } => Box::new(DemoError::NoKvm(Box::new(e))),
            other => Box::new(other),
        }
    })?;
    if args.trap_vs_map {
        trap_vs_map(&vm, args.stores, args.ring)
    } else if let Some(n) = args.repeat {
        repeat(&vm, n, !args.no_trap, args.ring)
    } else {
        once(&vm)
    }
}

#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("refvmm demo runs a real guest and needs KVM")]
    NoKvm(#[source] Box<kvm_runloop::Error>),
    #[error("the demo guest misbehaved: {0}")]
    Guest(String),
}

// Guest memory layout (2 MiB of RAM at 0).
const TABLES: u64 = 0x1000;
const CODE: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STACK: u64 = 0x80000;
/// The mapped page of --trap-vs-map: a KVM memory slot, as a passed-through BAR page is.
const MAPPED_PAGE: u64 = 0x4000_0000;
/// The trapped page of --trap-vs-map: no memory, an emulated device on the MMIO bus.
const TRAPPED_PAGE: u64 = 0x5000_0000;
/// Port the looping guest writes AL to after each run (when trapping).
const RESULT_PORT: u16 = 0x10;
/// Port the guest writes to when it is done; its device stops the vCPU.
const POWER_OFF_PORT: u16 = 0xf4;

/// Guest code with a line of assembly for each instruction, to show the newcomer.
struct Program {
    asm: Asm,
    lines: Vec<(usize, usize, String)>,
}

impl Program {
    fn new() -> Self {
        Program {
            asm: Asm::new(),
            lines: Vec::new(),
        }
    }

    fn ins(&mut self, text: impl Into<String>, emit: impl FnOnce(&mut Asm)) -> &mut Self {
        let start = self.asm.offset();
        emit(&mut self.asm);
        self.lines.push((start, self.asm.offset(), text.into()));
        self
    }

    fn listing(&self) -> String {
        let code = self.asm.clone().finish();
        let mut out = String::new();
        for (start, end, text) in &self.lines {
            let bytes = &code[*start..*end];
            let hex = if bytes.len() > 10 {
                format!("({} bytes)", bytes.len())
            } else {
                bytes
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let _ = writeln!(out, "    {:#07x}  {hex:<30} {text}", CODE + *start as u64);
        }
        out
    }
}

/// Counts writes and remembers the last value.
#[derive(Default)]
struct Latch {
    writes: AtomicU64,
    last: AtomicU64,
}

impl Latch {
    fn record(&self, data: &[u8]) {
        let mut v = [0u8; 8];
        v[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
        self.last.store(u64::from_le_bytes(v), Ordering::Relaxed);
        self.writes.fetch_add(1, Ordering::Relaxed);
    }
}

impl DevicePio for Latch {
    fn pio_read(&self, _: PioAddress, _: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn pio_write(&self, _: PioAddress, _: u16, data: &[u8]) {
        self.record(data);
    }
}

impl DeviceMmio for Latch {
    fn mmio_read(&self, _: MmioAddress, _: MmioAddressOffset, data: &mut [u8]) {
        data.fill(0);
    }
    fn mmio_write(&self, _: MmioAddress, _: MmioAddressOffset, data: &[u8]) {
        self.record(data);
    }
}

/// The power-off port: a write stops the vCPU.
struct PowerOff(StopHandle);

impl PowerOff {
    /// Puts the power-off port on `vm`'s bus.
    fn install(vm: &Vm) -> DemoResult<()> {
        vm.bus().register_pio(
            "power-off",
            POWER_OFF_PORT,
            1,
            Arc::new(PowerOff(vm.stop_handle())),
        )?;
        Ok(())
    }
}

impl DevicePio for PowerOff {
    fn pio_read(&self, _: PioAddress, _: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn pio_write(&self, _: PioAddress, _: u16, _: &[u8]) {
        self.0.stop();
    }
}

fn start_vcpu(vm: &Vm, program: &Program, ring: u8) -> DemoResult<Vcpu> {
    vm.write_memory(CODE, &program.asm.clone().finish())?;
    let vcpu = vm.create_vcpu(0)?;
    vcpu.setup(
        vm.memory(),
        &GuestEntry {
            mode: CpuMode::Long,
            privilege: if ring == 3 {
                Privilege::User
            } else {
                Privilege::Kernel
            },
            entry: CODE,
            stack: STACK,
            tables: TABLES,
        },
    )?;
    Ok(vcpu)
}

/// Reads the time stamp counter into `DATA + 8 * slot` (`%rsi` holds DATA), keeping `%rax`.
/// One listing line: the guest times its own loops.
fn timestamp(p: &mut Program, slot: i8) {
    let text = format!(
        "(rdtsc to {:#x}(%rsi), keeping %rax: the guest's clock)",
        8 * slot
    );
    p.ins(text, |a| {
        a.mov_reg(Reg::Rbp, Reg::Rax); //                     mov %rax, %rbp
        a.raw(&[0x0f, 0x31]); //                              rdtsc
        a.store(Width::W4, Reg::Rsi, 8 * slot, Reg::Rax); //  mov %eax, 8*slot(%rsi)
        a.store(Width::W4, Reg::Rsi, 8 * slot + 4, Reg::Rdx); // mov %edx, 8*slot+4(%rsi)
        a.mov_reg(Reg::Rax, Reg::Rbp); //                     mov %rbp, %rax
    });
}

/// Converts the guest's timestamps (slots `from` and `to`) to a duration; `None` if KVM does not
/// report the TSC frequency.
fn guest_time(vm: &Vm, vcpu: &Vcpu, from: u64, to: u64) -> DemoResult<Option<Duration>> {
    let Ok(khz) = vcpu.fd().get_tsc_khz() else {
        return Ok(None);
    };
    let read = |slot: u64| -> DemoResult<u64> {
        let mut b = [0u8; 8];
        vm.read_memory(DATA + 8 * slot, &mut b)?;
        Ok(u64::from_le_bytes(b))
    };
    let cycles = read(to)?.wrapping_sub(read(from)?);
    Ok(Some(Duration::from_nanos(
        (u128::from(cycles) * 1_000_000 / u128::from(khz.max(1))) as u64,
    )))
}

fn per(d: Duration, n: u64) -> String {
    let ns = d.as_nanos() as f64 / n.max(1) as f64;
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.2} ns")
    }
}

/// One line of the side-by-side table of --trap-vs-map.
fn row(out: &mut String, label: &str, mapped: String, trapped: String) {
    outln!(out, "  {label:<22}{mapped:<26}{trapped}");
}

fn print_exits(out: &mut String, counts: &ExitCounts) {
    outln!(out, "  exits by kind:");
    for (kind, n) in counts.nonzero() {
        outln!(
            out,
            "    {:<13}{n:>10}   {}",
            kind.name(),
            kind.description()
        );
    }
}

fn print_traps_by_device(out: &mut String, vm: &Vm) {
    outln!(out, "  traps by device:");
    for d in vm.bus().device_counts() {
        let at = match d.bus {
            BusKind::Pio => format!("port {:#x}", d.base),
            BusKind::Mmio => format!("MMIO {:#x}", d.base),
        };
        outln!(out, "    {at:<18}{:<16}{:>10}", d.name, d.traps());
    }
}

/// `refvmm demo`: once, in ring 0, ending with `hlt`.
fn once(vm: &Vm) -> CmdResult {
    let mut out = String::new();
    let mut p = Program::new();
    p.ins("mov $7, %rax", |a| {
        a.mov_imm(Reg::Rax, 7);
    });
    p.ins("hlt", |a| {
        a.hlt();
    });
    let mut vcpu = start_vcpu(vm, &p, 0)?;
    let stop = vcpu.run()?;
    let rax = vcpu.regs()?.rax;
    outln!(
        out,
        "The one-instruction machine: a 64-bit KVM guest whose only instruction of interest is `mov $7, %rax`."
    );
    outln!(out);
    outln!(out, "  guest code (ring 0):");
    out.push_str(&p.listing());
    outln!(out);
    outln!(out, "  RAX = {rax}");
    outln!(out, "  ended by: {stop}");
    print_exits(&mut out, &vm.exit_counts());
    outln!(out);
    outln!(
        out,
        "What happened: the CPU ran the guest's code itself until `hlt`, which hands control back to the VMM"
    );
    outln!(
        out,
        "(a \"VM exit\"); the VMM then read the guest's registers. Next: `refvmm demo --repeat 1000`, `refvmm demo --trap-vs-map`."
    );
    emit(&out)?;
    if stop != VcpuStop::Hlt || rax != 7 {
        return Err(DemoError::Guest(format!(
            "expected RAX = 7 and HLT, got RAX = {rax} and {stop}"
        ))
        .into());
    }
    Ok(())
}

/// `refvmm demo --repeat N [--no-trap]`.
fn repeat(vm: &Vm, n: u64, trap: bool, ring: u8) -> CmdResult {
    let mut out = String::new();
    let result = Arc::new(Latch::default());
    vm.bus()
        .register_pio("result port", RESULT_PORT, 1, result.clone())?;
    PowerOff::install(vm)?;

    let mut p = Program::new();
    p.ins("movabs $DATA, %rsi", |a| {
        a.movabs(Reg::Rsi, DATA);
    });
    p.ins("movabs $N, %rcx", |a| {
        a.movabs(Reg::Rcx, n);
    });
    timestamp(&mut p, 0);
    let top = p.asm.label();
    p.ins("top: mov $7, %rax", |a| {
        a.mov_imm(Reg::Rax, 7);
    });
    if trap {
        p.ins("out %al, $0x10        # traps", |a| {
            a.out_imm(Width::W1, RESULT_PORT as u8);
        });
    }
    p.ins("dec %rcx", |a| {
        a.dec(Reg::Rcx);
    });
    p.ins("jnz top", |a| {
        a.jnz(top);
    });
    timestamp(&mut p, 1);
    p.ins("out %al, $0xf4        # power off", |a| {
        a.out_imm(Width::W1, POWER_OFF_PORT as u8);
    });

    let mut vcpu = start_vcpu(vm, &p, ring)?;
    let t0 = Instant::now();
    let stop = vcpu.run()?;
    let wall = t0.elapsed();
    let rax = vcpu.regs()?.rax;
    let counts = vm.exit_counts();
    let loop_time = guest_time(vm, &vcpu, 0, 1)?;

    outln!(
        out,
        "refvmm demo --repeat {n}{}: the guest (ring {ring}) runs `mov $7, %rax` {n} times{}",
        if trap { "" } else { " --no-trap" },
        if trap {
            ", and after each run writes AL to port 0x10."
        } else {
            " without leaving the guest."
        }
    );
    if trap {
        outln!(
            out,
            "Each `out` traps: KVM exits to the VMM, which hands the byte to the device on port 0x10, then resumes the guest."
        );
    }
    outln!(out);
    outln!(out, "  guest code:");
    out.push_str(&p.listing());
    outln!(out);
    outln!(out, "  RAX = {rax}");
    outln!(
        out,
        "  ended by: {stop} (the guest wrote to the power-off port)"
    );
    print_exits(&mut out, &counts);
    print_traps_by_device(&mut out, vm);
    let (time, clock) = match loop_time {
        Some(t) => (t, "guest TSC"),
        None => (wall, "VMM clock, vCPU start-up included"),
    };
    if trap {
        let exits = result.writes.load(Ordering::Relaxed);
        outln!(
            out,
            "  time: {exits} trapped runs in {time:.2?} ({clock}): {} per exit, round trip to the VMM included",
            per(time, exits)
        );
        outln!(out);
        outln!(
            out,
            "What you see: one exit per run. An exit costs microseconds; the instruction alone costs nanoseconds"
        );
        outln!(
            out,
            "(try --no-trap). Every register access a VMM traps pays this price."
        );
    } else {
        outln!(
            out,
            "  time: {n} runs in {time:.2?} ({clock}): {} per run, one exit in total",
            per(time, n)
        );
        outln!(out);
        outln!(
            out,
            "What you see: no exit until the end; the guest runs at the speed of the CPU (compare with the default,"
        );
        outln!(out, "which traps after each run).");
    }
    emit(&out)?;
    let want = if trap { n } else { 0 };
    if stop != VcpuStop::Stopped || rax != 7 || result.writes.load(Ordering::Relaxed) != want {
        return Err(DemoError::Guest(format!(
            "expected RAX = 7, {want} writes to port 0x10 and a power-off; got RAX = {rax}, {} writes, {stop}",
            result.writes.load(Ordering::Relaxed)
        ))
        .into());
    }
    Ok(())
}

/// `refvmm demo --trap-vs-map`.
fn trap_vs_map(vm: &Vm, n: u64, ring: u8) -> CmdResult {
    let mut out = String::new();
    let mapped =
        vm.slots()
            .add_anonymous("mapped page", MAPPED_PAGE, 4096, MemoryAccess::ReadWrite)?;
    let trapped = Arc::new(Latch::default());
    vm.bus()
        .register_mmio("trapped page", TRAPPED_PAGE, 4096, trapped.clone())?;
    PowerOff::install(vm)?;

    let mut p = Program::new();
    p.ins("movabs $DATA, %rsi", |a| {
        a.movabs(Reg::Rsi, DATA);
    });
    p.ins("mov $7, %rax", |a| {
        a.mov_imm(Reg::Rax, 7);
    });
    for (slot, page, name) in [
        (0i8, MAPPED_PAGE, "movabs $MAPPED_PAGE, %rdi"),
        (2, TRAPPED_PAGE, "movabs $TRAPPED_PAGE, %rdi"),
    ] {
        p.ins(name, |a| {
            a.movabs(Reg::Rdi, page);
        });
        p.ins("movabs $N, %rcx", |a| {
            a.movabs(Reg::Rcx, n);
        });
        timestamp(&mut p, slot);
        let top = p.asm.label();
        p.ins("1: mov %rax, (%rdi)", |a| {
            a.store(Width::W8, Reg::Rdi, 0, Reg::Rax);
        });
        p.ins("dec %rcx", |a| {
            a.dec(Reg::Rcx);
        });
        p.ins("jnz 1b", |a| {
            a.jnz(top);
        });
        timestamp(&mut p, slot + 1);
    }
    p.ins("out %al, $0xf4        # power off", |a| {
        a.out_imm(Width::W1, POWER_OFF_PORT as u8);
    });

    let mut vcpu = start_vcpu(vm, &p, ring)?;
    let stop = vcpu.run()?;
    let counts = vm.exit_counts();
    let map_time = guest_time(vm, &vcpu, 0, 1)?;
    let trap_time = guest_time(vm, &vcpu, 2, 3)?;
    let in_page: u64 = vm
        .slots()
        .mapping(mapped)
        .ok_or_else(|| DemoError::Guest("the mapped page vanished".into()))?
        .as_volatile_slice()
        .read_obj(0)?;
    let trapped_exits = vm
        .bus()
        .device_counts()
        .into_iter()
        .find(|d| d.name == "trapped page")
        .map_or(0, |d| d.traps());

    outln!(
        out,
        "refvmm demo --trap-vs-map: the guest (ring {ring}) stores RAX (7) {n} times to a mapped page, then {n} times"
    );
    outln!(
        out,
        "to a trapped page. Same instruction, same loop; only what backs the address differs."
    );
    outln!(out);
    row(&mut out, "", "mapped page".into(), "trapped page".into());
    row(
        &mut out,
        "guest address",
        format!("{MAPPED_PAGE:#x}"),
        format!("{TRAPPED_PAGE:#x}"),
    );
    row(
        &mut out,
        "what is there",
        "memory (a KVM slot)".into(),
        "no memory: a device".into(),
    );
    row(&mut out, "stores", n.to_string(), n.to_string());
    row(
        &mut out,
        "exits (traps)",
        // Every MMIO exit that did not reach the trapped page's device would be the mapped one.
        counts
            .get(ExitKind::MmioWrite)
            .saturating_sub(trapped_exits)
            .to_string(),
        trapped_exits.to_string(),
    );
    match (map_time, trap_time) {
        (Some(m), Some(t)) => row(&mut out, "time per store", per(m, n), per(t, n)),
        _ => row(
            &mut out,
            "time per store",
            "(this KVM does not report its TSC frequency)".into(),
            String::new(),
        ),
    }
    row(
        &mut out,
        "value seen",
        format!("{in_page} in the page"),
        format!("{} in the device", trapped.last.load(Ordering::Relaxed)),
    );
    print_exits(&mut out, &counts);
    outln!(out);
    outln!(
        out,
        "Mapped: the page is memory in a KVM slot, as a passed-through BAR page is: stores go straight to it."
    );
    outln!(
        out,
        "Trapped: nothing backs the page, so each store exits to the VMM, which hands it to the device (as for an"
    );
    outln!(
        out,
        "MSI-X table page). That gap is why passthrough maps every page it safely can."
    );

    emit(&out)?;
    if stop != VcpuStop::Stopped
        || in_page != 7
        || trapped.writes.load(Ordering::Relaxed) != n
        || counts.get(ExitKind::MmioWrite) != n
    {
        return Err(DemoError::Guest(format!(
            "expected 7 in the mapped page, {n} trapped stores and none mapped, and a power-off; \
             got {in_page} in the page, {} MMIO exits, {} device writes, {stop}",
            counts.get(ExitKind::MmioWrite),
            trapped.writes.load(Ordering::Relaxed)
        ))
        .into());
    }
    Ok(())
}
