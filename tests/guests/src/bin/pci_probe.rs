//! The tiny guest of the issue-6 host tests: scan, size and program BARs, enable MSI-X, touch a
//! mapped page and a trapped register, and receive an MSI-X interrupt.
//!
//! Written to run few instructions (ring-0 guest code may be interpreted): no loops beyond the
//! bus scan and the bounded waits. See README.md for the command line and the output.

#![no_std]
#![no_main]

use guests::idt::{MSIX_VECTOR_BASE, irq_count};
use guests::io::{Mmio, Registers};
use guests::pci::{self, Bars, Bdf, Conf1, MmioWindow, MsixCapability, MsixTable, reg};
use guests::{BootInfo, Cmdline, Report, note, paging, println, time};

guests::guest_main!(main);

const KNOWN_OPTIONS: &[&str] = &[
    "device",
    "bdf",
    "mmio",
    "mmio-end",
    "bars",
    "page",
    "page-value",
    "trap",
    "trap-value",
    "poke",
    "irq-timeout-ms",
    "mem",
];

/// The vector MSI-X entry 0 is programmed with.
const VECTOR: u8 = MSIX_VECTOR_BASE;
/// Written to the mapped page and read back.
const PAGE_VALUE: u64 = 0x5a5a_c0de;

/// Where in which BAR: `BAR:OFFSET`.
#[derive(Clone, Copy)]
struct Place {
    bar: u8,
    offset: u64,
}

fn parse_place(s: &str) -> Option<Place> {
    let (bar, offset) = s.split_once(':')?;
    let bar = bar.parse::<u8>().ok().filter(|b| *b < 6)?;
    let offset = guests::cmdline::parse_number(offset).filter(|o| o % 4 == 0)?;
    Some(Place { bar, offset })
}

struct Options<'a> {
    device: Option<(u16, u16)>,
    bdf: Option<Bdf>,
    mmio: (u64, u64),
    keep_bars: bool,
    page: Option<Place>,
    page_value: u32,
    trap: Place,
    trap_value: u32,
    pokes: Option<&'a str>,
    irq_timeout_ms: u64,
}

fn options<'a>(c: &Cmdline<'a>, report: &mut Report) -> Option<Options<'a>> {
    if let Some(k) = c.unknown(KNOWN_OPTIONS) {
        note!("unknown option '{k}' ignored (known: {KNOWN_OPTIONS:?})");
    }
    let mut bad = |what: &str, v: &str| {
        report.fail(
            "options",
            format_args!("{what}={v}: see README.md for the format"),
        );
    };
    let num = |key: &'a str, default: u64| c.number(key).ok().map(|v| v.unwrap_or(default));
    let device = match c.value("device") {
        None => None,
        Some(v) => match v
            .split_once(':')
            .map(|(a, b)| (u16::from_str_radix(a, 16), u16::from_str_radix(b, 16)))
        {
            Some((Ok(a), Ok(b))) => Some((a, b)),
            _ => {
                bad("device", v);
                return None;
            }
        },
    };
    let bdf = match c.value("bdf") {
        None => None,
        Some(v) => match Bdf::parse(v) {
            Some(b) => Some(b),
            None => {
                bad("bdf", v);
                return None;
            }
        },
    };
    let keep_bars = match c.value("bars") {
        None | Some("assign") => false,
        Some("keep") => true,
        Some(v) => {
            bad("bars", v);
            return None;
        }
    };
    let page = match c.value("page") {
        None => Some(Place {
            bar: 0,
            offset: 0x1000,
        }),
        Some("none") => None,
        Some(v) => match parse_place(v) {
            Some(p) => Some(p),
            None => {
                bad("page", v);
                return None;
            }
        },
    };
    let trap = match c.value("trap") {
        None => Place { bar: 0, offset: 0 },
        Some(v) => match parse_place(v) {
            Some(p) => p,
            None => {
                bad("trap", v);
                return None;
            }
        },
    };
    let (Some(mmio), Some(mmio_end), Some(page_value), Some(trap_value), Some(irq_timeout_ms)) = (
        num("mmio", 0xc000_0000),
        num("mmio-end", 0xfec0_0000),
        num("page-value", PAGE_VALUE),
        num("trap-value", 1),
        num("irq-timeout-ms", 1000),
    ) else {
        report.fail(
            "options",
            format_args!("a number option does not parse: {:?}", c),
        );
        return None;
    };
    Some(Options {
        device,
        bdf,
        mmio: (mmio, mmio_end),
        keep_bars,
        page,
        page_value: page_value as u32,
        trap,
        trap_value: trap_value as u32,
        pokes: c.value("poke"),
        irq_timeout_ms,
    })
}

fn main(boot: &BootInfo, report: &mut Report) {
    let Some(opt) = options(&boot.cmdline, report) else {
        return;
    };
    let mut cfg = Conf1;

    // Scan bus 0; take the device asked for, else the first one that is not a bridge.
    let mut target: Option<pci::Function> = None;
    let n = pci::scan_bus(&mut cfg, 0, |f| {
        println!("  pci {f}");
        let hit = match (opt.bdf, opt.device) {
            (Some(b), _) => f.bdf == b,
            (None, Some((v, d))) => f.vendor == v && f.device == d,
            (None, None) => !f.is_bridge(),
        };
        if hit && target.is_none() {
            target = Some(*f);
        }
    });
    let Some(dev) = target else {
        report.fail(
            "pci-scan",
            format_args!("{n} functions on bus 0, none matches (bdf=, device=, or any non-bridge)"),
        );
        return;
    };
    report.pass("pci-scan", format_args!("{n} functions; target {dev}"));
    let bdf = dev.bdf;

    // Size and program every memory BAR.
    let mut bars: Bars = pci::probe_bars(&mut cfg, bdf);
    let keep = opt.keep_bars && pci::memory_bars_placed(&bars);
    let mut window = MmioWindow::new(opt.mmio.0, opt.mmio.1);
    if keep {
        // The boot page tables map 0-4 GiB; a 64-bit BAR may have been placed above.
        let mapped = paging::map_bars_above_4g(&bars, |b, pages| {
            note!("bars=keep: {b} is above 4 GiB: mapped it uncached ({pages} new 2 MiB pages)")
        });
        if let Err((b, e)) = mapped {
            report.fail(
                "bars",
                format_args!(
                    "bars=keep: {b} is above 4 GiB and cannot be mapped: {e}; use bars=assign"
                ),
            );
            return;
        }
    } else {
        if let Err(e) = pci::assign_memory_bars(&mut cfg, bdf, &mut bars, &mut window) {
            report.fail("bars", format_args!("{e}"));
            return;
        }
    }
    let mut memory_bars = 0;
    for b in bars.iter().flatten() {
        println!("  {bdf} {b}");
        memory_bars += usize::from(b.is_memory());
    }
    if !report.check(
        "bars",
        memory_bars > 0,
        format_args!(
            "{memory_bars} memory BARs {}",
            if keep {
                "kept where they were (bars=keep)"
            } else {
                "placed from the mmio= window"
            }
        ),
    ) {
        return;
    }
    let command = pci::update_command(
        &mut cfg,
        bdf,
        reg::COMMAND_MEMORY | reg::COMMAND_BUS_MASTER | reg::COMMAND_INTX_DISABLE,
        reg::COMMAND_IO,
    );
    report.check(
        "command",
        command & (reg::COMMAND_MEMORY | reg::COMMAND_BUS_MASTER)
            == reg::COMMAND_MEMORY | reg::COMMAND_BUS_MASTER,
        format_args!("COMMAND={command:#06x}"),
    );

    // Capabilities, MSI-X entry 0 -> VECTOR.
    let mut msix_at = None;
    let walked = pci::capabilities(&mut cfg, bdf, |c| {
        println!("  {bdf} capability {c}");
        if c.id == pci::CAP_ID_MSIX && msix_at.is_none() {
            msix_at = Some(c.offset);
        }
    });
    match walked {
        Ok(count) => report.pass("capabilities", format_args!("{count} capabilities")),
        Err(e) => report.fail("capabilities", format_args!("{e}")),
    }
    let msix = msix_at.map(|at| MsixCapability::read(&mut cfg, bdf, at));
    let table = match msix.map(|m| (m, MsixTable::locate(&m, &bars))) {
        None => {
            report.fail("msix", format_args!("no MSI-X capability"));
            None
        }
        Some((_, Err(e))) => {
            report.fail("msix", format_args!("{e}"));
            None
        }
        Some((m, Ok(t))) => {
            pci::enable_msix(&mut cfg, bdf, &m, true, true);
            let programmed = t.program(0, boot.apic.id, VECTOR);
            let control = pci::enable_msix(&mut cfg, bdf, &m, true, false);
            let entry = t.read(0);
            let ok = programmed.is_ok()
                && pci::is_enabled_unmasked(control)
                && matches!(entry, Ok((_, d, 0)) if d == u32::from(VECTOR));
            let (a, d, c) = entry.unwrap_or_default();
            report.check(
                "msix",
                ok,
                format_args!("{m}; control={control:#06x}; entry 0 addr={a:#x} data={d:#x} ctrl={c} (vector {VECTOR:#x})"),
            );
            Some(t)
        }
    };

    // A store to (what the VMM maps as) an ordinary page, read back.
    match opt.page.map(|p| (p, bar_register(&bars, p, 4))) {
        None => report.skip("mapped-page", format_args!("page=none")),
        Some((p, None)) => report.skip(
            "mapped-page",
            format_args!(
                "BAR{} has no offset {:#x} (page=BAR:OFFSET picks another place)",
                p.bar, p.offset
            ),
        ),
        Some((p, Some(mmio))) => {
            mmio.write32(0, opt.page_value);
            let got = mmio.read32(0);
            report.check(
                "mapped-page",
                got == opt.page_value,
                format_args!(
                    "BAR{}+{:#x} at {:#x}: wrote {:#x}, read {got:#x}",
                    p.bar,
                    p.offset,
                    mmio.base(),
                    opt.page_value
                ),
            );
        }
    }

    // Device-specific set-up writes (poke=BAR:OFF=VAL,...), e.g. to make a real device raise MSI-X.
    if let Some(pokes) = opt.pokes {
        for poke in pokes.split(',') {
            let parsed = poke.split_once('=').and_then(|(place, v)| {
                Some((parse_place(place)?, guests::cmdline::parse_number(v)?))
            });
            match parsed.and_then(|(p, v)| Some((p, v, bar_register(&bars, p, 4)?))) {
                Some((p, v, mmio)) => {
                    mmio.write32(0, v as u32);
                    println!("  poke BAR{}+{:#x} = {v:#x}", p.bar, p.offset);
                }
                None => report.fail(
                    "poke",
                    format_args!("'{poke}' is not BAR:OFFSET=VALUE inside a memory BAR"),
                ),
            }
        }
    }

    // A store to a trapped register; the host answers by raising MSI-X entry 0.
    let before = irq_count(VECTOR);
    let trapped = bar_register(&bars, opt.trap, 4);
    match trapped {
        Some(mmio) => {
            mmio.write32(0, opt.trap_value);
            report.pass(
                "trapped-write",
                format_args!(
                    "BAR{}+{:#x} at {:#x} = {:#x}",
                    opt.trap.bar,
                    opt.trap.offset,
                    mmio.base(),
                    opt.trap_value
                ),
            );
        }
        None => report.fail(
            "trapped-write",
            format_args!("BAR{} has no offset {:#x}", opt.trap.bar, opt.trap.offset),
        ),
    }

    match (table, trapped) {
        (Some(_), Some(_)) => match time::wait_until(opt.irq_timeout_ms, || irq_count(VECTOR) > before) {
            Ok(us) => report.pass("msix-interrupt", format_args!("vector {VECTOR:#x} after {us}us")),
            Err(t) => report.fail(
                "msix-interrupt",
                format_args!(
                    "no interrupt on vector {VECTOR:#x} within {}ms ({} waits); the host must raise MSI-X entry 0 after the trapped write",
                    t.waited_us / 1000,
                    t.iterations
                ),
            ),
        },
        _ => report.skip("msix-interrupt", format_args!("no MSI-X table or no trapped register")),
    }
}

/// The register `place` of a programmed memory BAR, if `width` bytes fit there.
fn bar_register(bars: &Bars, place: Place, width: u64) -> Option<Mmio> {
    let bar = bars
        .get(usize::from(place.bar))
        .copied()
        .flatten()
        .filter(|b| b.is_memory() && b.address != 0)?;
    (place.offset + width <= bar.size).then(|| {
        // SAFETY: inside a memory BAR this guest programmed, with memory decode on.
        unsafe { Mmio::new(bar.address + place.offset) }
    })
}
