//! The L3 guest of the test bed's large-BAR comparison (issue 15): stores into a passed-through
//! device's BAR, timed by the TSC, to compare with the same stores made by L2 into the VFIO mmap
//! of that BAR (tests/testbed/speed/barstores.c does those, with the same two passes).
//!
//! Command line: `device=VVVV:DDDD` (the function, by vendor and device ID), `bar=N` (default 2),
//! `bytes=N` (the warm pass's bytes of 8-byte stores, default 64 MiB). The BARs are placed from
//! the 3-4 GiB window (largest first), the part of the address space the boot page tables map,
//! so a BAR the VMM put above 4 GiB is moved there.
//!
//! Three passes, each timed by the TSC: `cold` (one store per 4 KiB page: the first touch, which
//! makes KVM map each page), `warm` (`bytes` of 8-byte stores over the whole BAR, again and
//! again) and `hot` (as many stores over its first [`HOT_WINDOW`] bytes only: few pages, so no
//! TLB misses, neither the CPU's nor, in the test bed, TCG's software TLB).
//!
//! Output: `MARK cold`, `MARK warm`, `MARK hot`, `MARK end` (the bed's meter reads KVM's
//! counters at each), each followed by a 300 ms pause so the meter reads them before the next
//! pass starts, then `GUEST: NOTE bar-stores bar-bytes=N cold-pages=N cold-tsc=T warm-bytes=N
//! warm-tsc=T hot-bytes=N hot-tsc=T`.

#![no_std]
#![no_main]

use guests::pci::{self, Bars, Conf1, MmioWindow, reg};
use guests::{BootInfo, Report, io::rdtsc, note, println, time};

guests::guest_main!(main);

const KNOWN_OPTIONS: &[&str] = &["device", "bar", "bytes"];
/// The window the BARs are placed in: mapped by the boot page tables (3-4 GiB), below the IOAPIC.
const WINDOW: (u64, u64) = (0xc000_0000, 0xfec0_0000);
/// The `hot` pass's window: 1 MiB.
const HOT_WINDOW: u64 = 1 << 20;
/// How long to wait after each mark for the meter to read KVM's counters.
const MARK_PAUSE_MS: u64 = 300;

fn mark(name: &str) {
    println!("MARK {name}");
    let mut d = time::Deadline::after_ms(MARK_PAUSE_MS);
    while !d.expired() {
        core::hint::spin_loop();
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
        c.number("bytes").map(|v| v.unwrap_or(64 << 20)),
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
    let words = b.size / 8;
    let pages = b.size / 4096;

    // Cold: the first store to each page (KVM maps the page into the guest on its fault).
    mark("cold");
    let t = rdtsc();
    for i in 0..pages {
        // SAFETY: inside the BAR this guest placed and enabled; device memory, nothing else aliases it.
        unsafe { core::ptr::write_volatile(base.add((i * 512) as usize), i) };
    }
    let cold = rdtsc().wrapping_sub(t);

    // Warm: `bytes` of 8-byte stores over the BAR, again and again.
    mark("warm");
    let stores = bytes / 8;
    let mut w = 0;
    let t = rdtsc();
    for i in 0..stores {
        // SAFETY: as above; `w` < `words`.
        unsafe { core::ptr::write_volatile(base.add(w as usize), i) };
        w += 1;
        if w == words {
            w = 0;
        }
    }
    let warm = rdtsc().wrapping_sub(t);

    // Hot: as many stores over the first HOT_WINDOW bytes.
    mark("hot");
    let hot_words = words.min(HOT_WINDOW / 8);
    let mut w = 0;
    let t = rdtsc();
    for i in 0..stores {
        // SAFETY: as above; `w` < `hot_words` <= `words`.
        unsafe { core::ptr::write_volatile(base.add(w as usize), i) };
        w += 1;
        if w == hot_words {
            w = 0;
        }
    }
    let hot = rdtsc().wrapping_sub(t);
    mark("end");

    // A read back: the last store of the hot pass reached the BAR.
    let ok = stores.checked_sub(1).is_none_or(|i| {
        // SAFETY: as above; `i % hot_words` < `words`.
        let got = unsafe { core::ptr::read_volatile(base.add((i % hot_words) as usize)) };
        got == i
    });
    report.check(
        "stores",
        ok,
        format_args!(
            "{stores} stores over BAR{bar} at {:#x}; the last one reads back",
            b.address
        ),
    );
    note!(
        "bar-stores bar-bytes={} cold-pages={pages} cold-tsc={cold} warm-bytes={} warm-tsc={warm} \
         hot-bytes={} hot-tsc={hot}",
        b.size,
        stores * 8,
        stores * 8
    );
}
