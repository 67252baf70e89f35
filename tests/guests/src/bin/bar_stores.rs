//! The L3 guest of the test bed's large-BAR comparison (issue 15): stores into a passed-through
//! device's BAR, timed by the TSC, to compare with the same stores made by L2 into the VFIO mmap
//! of that BAR (tests/testbed/speed/barstores.c does those, with the same two passes).
//!
//! Command line: `device=VVVV:DDDD` (the function, by vendor and device ID), `bar=N` (default 2),
//! `bytes=N` (the warm pass's bytes of 8-byte stores, default 64 MiB). The BARs are placed from
//! the 3-4 GiB window (largest first), the part of the address space the boot page tables map,
//! so a BAR the VMM put above 4 GiB is moved there.
//!
//! Passes timed by the TSC: `cold` (one store per 4 KiB page: the first touch, which makes KVM
//! map each page), `warm` (`bytes` of 8-byte stores over the BAR, or over its first `bytes` when
//! it is larger), `hot` (as many stores over its first [`HOT_WINDOW`] bytes only: few pages, so
//! few TLB misses, neither the CPU's nor, in the test bed, TCG's software TLB) and `ram` (the hot
//! pass's stores into [`HOT_WINDOW`] bytes of the guest's own RAM instead: the control, what a
//! store costs this guest where no device is involved). Hot and ram alternate in [`SLICES`]
//! slices, so that both sample the same stretch of time: in the test bed the emulator's speed
//! drifts between passes by more than the difference measured. Warm, hot and ram run the same
//! four-instruction loop as L2's helper.
//!
//! Output: `MARK cold`, `MARK warm`, `MARK hot` (hot and ram), `MARK end` (the bed's meter reads
//! KVM's counters at each), each followed by a 300 ms pause so the meter reads them before the
//! next pass starts, then `GUEST: NOTE bar-stores bar-bytes=N cold-pages=N cold-tsc=T
//! warm-bytes=N warm-tsc=T hot-bytes=N hot-tsc=T ram-bytes=N ram-tsc=T`.

#![no_std]
#![no_main]

use core::arch::asm;
use core::cell::UnsafeCell;

use guests::pci::{self, Bars, Conf1, MmioWindow, reg};
use guests::{BootInfo, Report, io::rdtsc, note, println, time};

guests::guest_main!(main);

const KNOWN_OPTIONS: &[&str] = &["device", "bar", "bytes"];
/// The window the BARs are placed in: mapped by the boot page tables (3-4 GiB), below the IOAPIC.
const WINDOW: (u64, u64) = (0xc000_0000, 0xfec0_0000);
/// The `hot` pass's window: 1 MiB.
const HOT_WINDOW: u64 = 1 << 20;
/// How many alternating slices the hot and ram passes are cut into.
const SLICES: u64 = 16;
/// How long to wait after each mark for the meter to read KVM's counters.
const MARK_PAUSE_MS: u64 = 300;

/// The `ram` pass's [`HOT_WINDOW`] bytes of guest RAM (in `.bss`, identity-mapped).
#[repr(C, align(4096))]
struct RamWindow(UnsafeCell<[u64; HOT_WINDOW as usize / 8]>);

// SAFETY: the guest runs on one vCPU and only `main` touches the window (through `store_pass`).
unsafe impl Sync for RamWindow {}

static RAM_WINDOW: RamWindow = RamWindow(UnsafeCell::new([0; HOT_WINDOW as usize / 8]));

fn mark(name: &str) {
    println!("MARK {name}");
    // Sleep on the tick: a deadline's iteration backstop counts sleeps (16 per ms), so spinning
    // here ended the pause after a few thousand spins, microseconds, before the meter had read.
    let mut d = time::Deadline::after_ms(MARK_PAUSE_MS);
    while !d.expired() {
        time::idle();
    }
}

fn main(boot: &BootInfo, report: &mut Report) {
    let c = &boot.cmdline;
    if let Some(k) = c.unknown(KNOWN_OPTIONS) {
        note!("unknown option '{k}' ignored (known: {KNOWN_OPTIONS:?})");
    }
    let id = c.value("device").and_then(|v| {
        let (a, b) = v.split_once(':')?;
        Some((
            u16::from_str_radix(a, 16).ok()?,
            u16::from_str_radix(b, 16).ok()?,
        ))
    });
    let (Some((vendor, device)), Ok(bar), Ok(bytes)) = (
        id,
        c.number("bar").map(|v| v.unwrap_or(2)),
        c.number("bytes").map(|v| v.unwrap_or(64 << 20) & !7),
    ) else {
        report.fail(
            "options",
            format_args!("give device=VVVV:DDDD (hex IDs), bar=0-5, bytes=N"),
        );
        return;
    };

    let mut cfg = Conf1;
    let mut target = None;
    let n = pci::scan_bus(&mut cfg, 0, |f| {
        println!("  pci {f}");
        if f.vendor == vendor && f.device == device && target.is_none() {
            target = Some(f.bdf);
        }
    });
    let Some(bdf) = target else {
        report.fail(
            "pci-scan",
            format_args!("{n} functions on bus 0, none is {vendor:04x}:{device:04x}"),
        );
        return;
    };
    report.pass(
        "pci-scan",
        format_args!("{vendor:04x}:{device:04x} at {bdf}"),
    );

    let mut bars: Bars = pci::probe_bars(&mut cfg, bdf);
    let mut window = MmioWindow::new(WINDOW.0, WINDOW.1);
    if let Err(e) = pci::assign_memory_bars(&mut cfg, bdf, &mut bars, &mut window) {
        report.fail("bars", format_args!("{e}"));
        return;
    }
    let Some(b) = bars
        .get(bar as usize)
        .copied()
        .flatten()
        .filter(|b| b.is_memory() && b.size >= 4096)
    else {
        report.fail(
            "bars",
            format_args!("BAR{bar} is not a memory BAR of at least 4 KiB"),
        );
        return;
    };
    pci::update_command(&mut cfg, bdf, reg::COMMAND_MEMORY, reg::COMMAND_IO);
    report.pass("bars", format_args!("{b}"));

    let base = b.address as *mut u64;
    let pages = b.size / 4096;

    // Cold: the first store to each page (KVM maps the page into the guest on its fault).
    mark("cold");
    let t = rdtsc();
    for i in 0..pages {
        // SAFETY: inside the BAR this guest placed and enabled; device memory, nothing else aliases it.
        unsafe { core::ptr::write_volatile(base.add((i * 512) as usize), i) };
    }
    let cold = rdtsc().wrapping_sub(t);

    // Warm: `bytes` of stores over the BAR (its first `bytes` when it is larger), then as many over its
    // first HOT_WINDOW (hot).
    let warm_len = b.size.min(bytes);
    let warm_reps = bytes / warm_len;
    mark("warm");
    let t = rdtsc();
    store_pass(b.address, warm_len, 0, warm_reps);
    let warm = rdtsc().wrapping_sub(t);
    let hot_len = b.size.min(HOT_WINDOW);
    let hot_reps = (bytes / hot_len).max(1);
    // The RAM window takes one untimed round first, so that its timed ones, like the hot pass's
    // (after the warm pass), find every page mapped.
    let ram_addr = RAM_WINDOW.0.get() as u64;
    store_pass(ram_addr, HOT_WINDOW, 0, 1);
    mark("hot");
    let (mut hot, mut ram) = (0u64, 0u64);
    for slice in 0..SLICES {
        let (first, end) = (hot_reps * slice / SLICES, hot_reps * (slice + 1) / SLICES);
        let t = rdtsc();
        store_pass(b.address, hot_len, first, end - first);
        let m = rdtsc();
        store_pass(ram_addr, HOT_WINDOW, first, end - first);
        hot += m.wrapping_sub(t);
        ram += rdtsc().wrapping_sub(m);
    }
    mark("end");

    // A read back: the hot pass's last round stored its number to the BAR's first quadword.
    // SAFETY: as above.
    let got = unsafe { core::ptr::read_volatile(base) };
    report.check(
        "stores",
        got == hot_reps - 1,
        format_args!(
            "{warm_reps} x {warm_len} and {hot_reps} x {hot_len} bytes stored at {:#x}; read back {got}",
            b.address
        ),
    );
    note!(
        "bar-stores bar-bytes={} cold-pages={pages} cold-tsc={cold} warm-bytes={} warm-tsc={warm} \
         hot-bytes={} hot-tsc={hot} ram-bytes={} ram-tsc={ram}",
        b.size,
        warm_len * warm_reps,
        hot_len * hot_reps,
        HOT_WINDOW * hot_reps
    );
}

/// Rounds `first..first + reps` of one 8-byte store (of the round's number) to every quadword of
/// `[addr, addr + len)`: the same four-instruction loop as tests/testbed/speed/barstores.c runs in
/// L2, so both sides execute the same instructions per store (in the test bed every instruction
/// is emulated, and compiled loops differ).
fn store_pass(addr: u64, len: u64, first: u64, reps: u64) {
    for round in first..first + reps {
        // SAFETY: `[addr, addr + len)` is inside a memory BAR this guest placed and enabled, or
        // is `RAM_WINDOW`; nothing else in the guest uses either; `len` is a non-zero multiple
        // of 8.
        unsafe {
            asm!(
                "2:",
                "mov qword ptr [{p}], {v}",
                "add {p}, 8",
                "cmp {p}, {e}",
                "jne 2b",
                p = inout(reg) addr => _,
                e = in(reg) addr + len,
                v = in(reg) round,
                options(nostack),
            )
        };
    }
}
