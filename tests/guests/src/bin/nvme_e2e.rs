//! The L3 guest of the nested VFIO test bed: a small NVMe driver that tells the truth.
//!
//! Scans bus 0 for an NVMe controller (class 01:08:02), programs BAR0 and MSI-X, brings the
//! controller up with admin queues in guest RAM, checks the serial number, creates I/O queue
//! pair 3, writes a block, reads it back and reads the test bed's pattern block, and accounts for
//! every completion: by MSI-X interrupt, or (reported as a failure of the interrupt path) by
//! polling. See README.md for the command line and the output.

#![no_std]
#![no_main]

use guests::dma::{DmaPage, PAGE_SIZE};
use guests::idt::{MSIX_VECTOR_BASE, irq_count};
use guests::nvme::{
    Controller, Done, IdentifyController, IdentifyNamespace, NvmeError, Sqe, Timeouts, ascii_field,
};
use guests::pattern::{self, BLOCK};
use guests::pci::{self, Bars, Bdf, ClassCode, Conf1, MmioWindow, MsixCapability, MsixTable, reg};
use guests::{BootInfo, Cmdline, Report, note, paging, println, time};

guests::guest_main!(main);

/// Build-time defaults (`GUEST_NVME_SERIAL`, `GUEST_PATTERN_LBA`), overridden by the command line.
const DEFAULT_SERIAL: &str = match option_env!("GUEST_NVME_SERIAL") {
    Some(s) => s,
    None => "REFVMM-TESTBED-0001",
};
const DEFAULT_PATTERN_LBA: &str = match option_env!("GUEST_PATTERN_LBA") {
    Some(s) => s,
    None => "100",
};

const KNOWN_OPTIONS: &[&str] = &[
    "serial",
    "lba",
    "write-lba",
    "device",
    "mmio",
    "mmio-end",
    "bars",
    "qid",
    "repeat",
    "dma-fault",
    "timeout-ms",
    "irq-grace-ms",
    "mem",
];

/// MSI-X entry 0 serves the admin queue (NVMe fixes that), entry 1 the I/O queue.
const ADMIN_VECTOR: u8 = MSIX_VECTOR_BASE;
const IO_MSIX_ENTRY: u16 = 1;
const IO_VECTOR: u8 = MSIX_VECTOR_BASE + 1;
const QUEUE_ENTRIES: u16 = 16;
const NSID: u32 = 1;

static ADMIN_SQ: DmaPage = DmaPage::new();
static ADMIN_CQ: DmaPage = DmaPage::new();
static IO_SQ: DmaPage = DmaPage::new();
static IO_CQ: DmaPage = DmaPage::new();
static IDENTIFY: DmaPage = DmaPage::new();
static WRITE_BUF: DmaPage = DmaPage::new();
static READ_BUF: DmaPage = DmaPage::new();

struct Options<'a> {
    serial: &'a str,
    pattern_lba: u64,
    write_lba: u64,
    device: Option<(u16, u16)>,
    mmio: (u64, u64),
    keep_bars: bool,
    qid: u16,
    repeat: u64,
    dma_fault: Option<u64>,
    timeouts: Timeouts,
}

fn options<'a>(c: &Cmdline<'a>, boot: &BootInfo, report: &mut Report) -> Option<Options<'a>> {
    if let Some(k) = c.unknown(KNOWN_OPTIONS) {
        note!("unknown option '{k}' ignored (known: {KNOWN_OPTIONS:?})");
    }
    let num = |key: &'a str, default: u64, report: &mut Report| -> Option<u64> {
        match c.number(key) {
            Ok(v) => Some(v.unwrap_or(default)),
            Err(e) => {
                report.fail("options", format_args!("{e}"));
                None
            }
        }
    };
    let pattern_lba = num(
        "lba",
        guests::cmdline::parse_number(DEFAULT_PATTERN_LBA).unwrap_or(100),
        report,
    )?;
    let device = match c.value("device") {
        None => None,
        Some(v) => match v
            .split_once(':')
            .map(|(a, b)| (u16::from_str_radix(a, 16), u16::from_str_radix(b, 16)))
        {
            Some((Ok(a), Ok(b))) => Some((a, b)),
            _ => {
                report.fail(
                    "options",
                    format_args!("device={v} is not vvvv:dddd (hex vendor:device)"),
                );
                return None;
            }
        },
    };
    let dma_fault = if c.flag("dma-fault") {
        match c.number("dma-fault") {
            Ok(Some(a)) => Some(a),
            // A bare flag: an address no guest RAM reaches (above 3.5 GiB, in the PCI hole, where
            // no BAR of this guest is placed by default).
            Ok(None) | Err(_) => Some(0xe000_0000),
        }
    } else {
        None
    };
    if let Some(addr) = dma_fault {
        // Page-aligned: the list must not be refused for its offset (an invalid PRP offset is
        // not the IOMMU's doing), and the one-block read must not spill into a PRP2 of 0.
        if addr % PAGE_SIZE as u64 != 0 {
            report.fail(
                "options",
                format_args!("dma-fault={addr:#x} is not 4 KiB aligned"),
            );
            return None;
        }
    }
    if let (Some(addr), Some(ram)) = (dma_fault, boot.ram_bytes) {
        if addr < ram {
            report.fail(
                "options",
                format_args!("dma-fault={addr:#x} is inside RAM ({ram:#x} bytes)"),
            );
            return None;
        }
    }
    let keep_bars = match c.value("bars") {
        None | Some("assign") => false,
        Some("keep") => true,
        Some(v) => {
            report.fail(
                "options",
                format_args!("bars={v}: use bars=assign or bars=keep"),
            );
            return None;
        }
    };
    let qid = num("qid", 3, report)?;
    if !(1..=64).contains(&qid) {
        report.fail("options", format_args!("qid={qid}: use 1-64"));
        return None;
    }
    Some(Options {
        serial: c.value("serial").unwrap_or(DEFAULT_SERIAL),
        pattern_lba,
        write_lba: num("write-lba", pattern_lba + 1, report)?,
        device,
        mmio: (
            num("mmio", 0xc000_0000, report)?,
            num("mmio-end", 0xfec0_0000, report)?,
        ),
        keep_bars,
        qid: qid as u16,
        repeat: num("repeat", 8, report)?.min(10_000),
        dma_fault,
        timeouts: Timeouts {
            command_ms: num("timeout-ms", 10_000, report)?,
            irq_grace_ms: num("irq-grace-ms", 1_000, report)?,
        },
    })
}

fn main(boot: &BootInfo, report: &mut Report) {
    let Some(opt) = options(&boot.cmdline, boot, report) else {
        return;
    };
    note!(
        "expect serial={} pattern-lba={} write-lba={} qid={} mmio={:#x}-{:#x}",
        opt.serial,
        opt.pattern_lba,
        opt.write_lba,
        opt.qid,
        opt.mmio.0,
        opt.mmio.1
    );
    let mut cfg = Conf1;

    // 1. Scan bus 0, find the controller.
    let mut found: Option<pci::Function> = None;
    let mut nvme_count = 0;
    let n = pci::scan_bus(&mut cfg, 0, |f| {
        println!("  pci {f}");
        let hit = match opt.device {
            Some((v, d)) => f.vendor == v && f.device == d,
            None => f.class == ClassCode::NVME,
        };
        if hit {
            nvme_count += 1;
            found.get_or_insert(*f);
        }
    });
    let Some(dev) = found else {
        report.fail(
            "pci-scan",
            format_args!("{n} functions on bus 0, none with class 01:08:02 (NVMe)"),
        );
        return;
    };
    report.pass(
        "pci-scan",
        format_args!("{n} functions; NVMe {} ({nvme_count} matching)", dev),
    );
    let bdf = dev.bdf;

    // 2. Size and program the BARs, enable memory decode and bus mastering.
    let Some(bars) = program_bars(&mut cfg, bdf, opt.mmio, opt.keep_bars, report) else {
        return;
    };
    let Some(bar0) = bars[0].filter(|b| b.is_memory()) else {
        report.fail(
            "bar0",
            format_args!("BAR0 is not an implemented memory BAR"),
        );
        return;
    };
    // Registers at 0-0xFFF, doorbells from 0x1000: anything smaller is not an NVMe BAR0.
    if !report.check("bar0", bar0.size >= 0x2000, format_args!("{bar0}")) {
        return;
    }
    let command = pci::update_command(
        &mut cfg,
        bdf,
        reg::COMMAND_MEMORY | reg::COMMAND_BUS_MASTER | reg::COMMAND_INTX_DISABLE,
        reg::COMMAND_IO,
    );
    if !report.check(
        "command",
        command & (reg::COMMAND_MEMORY | reg::COMMAND_BUS_MASTER)
            == reg::COMMAND_MEMORY | reg::COMMAND_BUS_MASTER,
        format_args!("COMMAND={command:#06x} (memory decode, bus master, INTx disabled)"),
    ) {
        return;
    }

    // 3. Capabilities and MSI-X: entry 0 for the admin queue, entry 1 for the I/O queue.
    let Some(msix) = walk_capabilities(&mut cfg, bdf, report) else {
        return;
    };
    let Some(_table) = program_msix(&mut cfg, bdf, &msix, &bars, boot.apic.id, report) else {
        return;
    };

    // 4. Controller reset and enable with the admin queues in guest RAM.
    // SAFETY: BAR0 of an NVMe controller, programmed (or kept, and then mapped) above with memory
    // decode on.
    let mut ctrl = unsafe { Controller::new(bar0.address, bar0.size, opt.timeouts) };
    let vs = ctrl.version();
    note!(
        "{} VS={}.{}.{} CC={:#x} CSTS={:#x}",
        ctrl.cap(),
        vs >> 16,
        vs >> 8 & 0xff,
        vs & 0xff,
        ctrl.cc(),
        ctrl.csts()
    );
    let reset_us = match ctrl.disable() {
        Ok(us) => us,
        Err(e) => {
            report.fail("controller-enable", format_args!("reset: {e}"));
            return;
        }
    };
    match ctrl.enable(&ADMIN_SQ, &ADMIN_CQ, QUEUE_ENTRIES, ADMIN_VECTOR) {
        Ok(us) => report.pass(
            "controller-enable",
            format_args!(
                "reset in {reset_us}us, ready in {us}us; CC={:#x} CSTS={:#x}",
                ctrl.cc(),
                ctrl.csts()
            ),
        ),
        Err(e) => {
            report.fail(
                "controller-enable",
                format_args!("{e}; CC={:#x}", ctrl.cc()),
            );
            return;
        }
    }

    // 5. Identify Controller: the serial number the VMM's host was given.
    let mut rtd3e_us = 0;
    let ok = step(
        report,
        "identify-controller",
        ctrl.admin_ok(Sqe::identify(1, 0, IDENTIFY.addr())),
        |done| {
            let mut raw = [0u8; 520];
            IDENTIFY.read(0, &mut raw);
            let id = IdentifyController::decode(&raw);
            rtd3e_us = id.rtd3e_us;
            let serial = ascii_field(&id.serial);
            let ok = serial == opt.serial && id.vid == dev.vendor;
            (
            ok,
            Detail(format_args!(
                "serial \"{serial}\" (want \"{}\") model \"{}\" fw \"{}\" vid {:04x} namespaces {} mdts {} rtd3e {}us; {done}",
                opt.serial,
                ascii_field(&id.model),
                ascii_field(&id.firmware),
                id.vid,
                id.namespaces,
                id.mdts,
                id.rtd3e_us
            ))
            .to_line(),
        )
        },
    );
    if !ok {
        return;
    }
    let ok = step(
        report,
        "identify-namespace",
        ctrl.admin_ok(Sqe::identify(0, NSID, IDENTIFY.addr())),
        |done| {
            let mut raw = [0u8; 192];
            IDENTIFY.read(0, &mut raw);
            let ns = IdentifyNamespace::decode(&raw);
            let last = opt.pattern_lba.max(opt.write_lba);
            let ok =
                ns.block_size == BLOCK as u64 && ns.metadata_bytes == 0 && last < ns.size_blocks;
            (
            ok,
            Detail(format_args!(
                "namespace {NSID}: {} blocks of {} bytes + {} of metadata (format {}); need 512-byte blocks without metadata and LBA {last} < size; {done}",
                ns.size_blocks, ns.block_size, ns.metadata_bytes, ns.lba_format
            ))
            .to_line(),
        )
        },
    );
    if !ok {
        return;
    }

    // 6. Number of queues, then I/O queue pair `qid`.
    let ok = step(
        report,
        "set-queues",
        ctrl.admin_ok(Sqe::set_number_of_queues(opt.qid)),
        |done| {
            let (sq, cq) = (
                (done.completion.dw0 & 0xffff) + 1,
                (done.completion.dw0 >> 16) + 1,
            );
            (
                sq >= u32::from(opt.qid) && cq >= u32::from(opt.qid),
                Detail(format_args!(
                    "asked for {0} SQ + {0} CQ, got {sq} SQ + {cq} CQ; {done}",
                    opt.qid
                ))
                .to_line(),
            )
        },
    );
    if !ok {
        return;
    }
    match ctrl.create_io_queue_pair(
        opt.qid,
        &IO_SQ,
        &IO_CQ,
        QUEUE_ENTRIES,
        IO_MSIX_ENTRY,
        IO_VECTOR,
    ) {
        Ok((cq, sq)) => {
            let (sqdb, cqdb) = ctrl.io_doorbells().unwrap_or_default();
            report.pass(
                "io-queues",
                format_args!(
                    "CQ {q} (MSI-X entry {IO_MSIX_ENTRY}) and SQ {q}, {QUEUE_ENTRIES} entries; doorbells BAR0+{sqdb:#x} (SQ tail) BAR0+{cqdb:#x} (CQ head); {cq}; {sq}",
                    q = opt.qid
                ),
            );
        }
        Err(e) => {
            report.fail("io-queues", format_args!("{e}"));
            return;
        }
    }
    let io_start = ctrl.stats();

    // 7. Write a block, flush, read it back; read the test bed's block.
    let written = pattern::guest_block(opt.write_lba);
    WRITE_BUF.write(0, &written);
    let write = ctrl.io_ok(Sqe::rw(true, NSID, opt.write_lba, 1, WRITE_BUF.addr()));
    let flush = write.and_then(|_| ctrl.io_ok(Sqe::flush(NSID)));
    match (write, flush) {
        (Ok(w), Ok(f)) => report.pass(
            "write",
            format_args!(
                "LBA {} on queue {}: \"{}\"...; {w}; flush {f}",
                opt.write_lba,
                opt.qid,
                Text(&written[..15])
            ),
        ),
        (Err(e), _) | (_, Err(e)) => {
            report.fail("write", format_args!("LBA {}: {e}", opt.write_lba));
            return;
        }
    }
    if !read_and_compare(&mut ctrl, report, "read-written", opt.write_lba, &written) {
        return;
    }
    if !read_and_compare(
        &mut ctrl,
        report,
        "read-pattern",
        opt.pattern_lba,
        &pattern::testbed_block(opt.pattern_lba),
    ) {
        return;
    }

    // Timing: `repeat` more reads of the pattern block.
    if opt.repeat > 0 {
        let before = ctrl.stats();
        let t0 = time::now_us();
        let mut failure = None;
        for _ in 0..opt.repeat {
            if let Err(e) = ctrl.io_ok(Sqe::rw(false, NSID, opt.pattern_lba, 1, READ_BUF.addr())) {
                failure = Some(e);
                break;
            }
        }
        let total = match (t0, time::now_us()) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        };
        let after = ctrl.stats();
        match failure {
            None => report.pass(
                "io-timing",
                format_args!(
                    "{} reads in {total}us: {}us per I/O, {} doorbell writes ({} per I/O), {} by MSI-X",
                    opt.repeat,
                    total / opt.repeat,
                    after.doorbell_writes - before.doorbell_writes,
                    (after.doorbell_writes - before.doorbell_writes) / opt.repeat,
                    after.by_interrupt - before.by_interrupt
                ),
            ),
            Some(e) => report.fail("io-timing", format_args!("{e}")),
        }
    } else {
        report.skip("io-timing", format_args!("repeat=0"));
    }
    let io_end = ctrl.stats();

    // Negative: the device is told to DMA outside guest RAM, where the IOMMU maps nothing.
    // Two directions, because they fail differently (PCIe): a DMA *read* by the device (a
    // non-posted request) gets an error completion back, so the controller must fail the command;
    // a DMA *write* (posted) gets no answer at all, so the controller may well report success while
    // the IOMMU drops the data; only the host's IOMMU fault log shows that one.
    //   read:  a 3-page Read whose PRP2 points at a PRP list at ADDR: the controller must fetch
    //          the list from ADDR before it moves any data (the step's verdict);
    //   write: a 1-block Read into a data buffer at ADDR (reported as a NOTE, whatever happens).
    match opt.dma_fault {
        None => report.skip(
            "dma-fault",
            format_args!("not asked for (add dma-fault or dma-fault=ADDR)"),
        ),
        Some(addr) => {
            READ_BUF.fill(0xee);
            let blocks = (3 * PAGE_SIZE / 512) as u16;
            let list = Sqe::rw(false, NSID, opt.pattern_lba, blocks, READ_BUF.addr()).prp2(addr);
            match ctrl.io(list) {
                Ok(done) => {
                    // The controller's fetch of the list failed: a Data Transfer Error (what
                    // QEMU's NVMe reports) or an Internal Error. Any other error (an invalid
                    // field, a transfer over MDTS) is not the IOMMU's doing.
                    let status = done.completion.status;
                    let faulted = status.sct() == 0 && matches!(status.sc(), 0x04 | 0x06);
                    report.check(
                        "dma-fault",
                        faulted,
                        format_args!(
                            "{blocks}-block read with its PRP list at {addr:#x} (outside RAM: the device must read it) completed with {status}{}; {done}",
                            if faulted {
                                ""
                            } else {
                                " (want SCT=0 SC=0x04 data transfer error, or SC=0x06 internal error)"
                            }
                        ),
                    );
                }
                Err(e) => report.fail(
                    "dma-fault",
                    format_args!("read with its PRP list at {addr:#x}: {e}"),
                ),
            }
            match ctrl.io(Sqe::rw(false, NSID, opt.pattern_lba, 1, addr)) {
                Ok(done) => note!(
                    "dma-fault-write read into a data buffer at {addr:#x} (outside RAM: the device writes there) completed with {}{}; {done}",
                    done.completion.status,
                    if done.completion.status.is_success() {
                        ": a posted DMA write gets no error back, the IOMMU dropped it (see the host's IOMMU fault log)"
                    } else {
                        ""
                    }
                ),
                Err(e) => note!("dma-fault-write read into {addr:#x}: {e}"),
            }
        }
    }

    // 8. The interrupt path: every completion must have come with its MSI-X interrupt.
    let s = ctrl.stats();
    report.check(
        "msix-interrupts",
        s.by_polling == 0 && s.by_interrupt == s.commands,
        format_args!(
            "{} completions: {} by MSI-X, {} found by polling; vector {ADMIN_VECTOR:#x} (admin) fired {} times, {IO_VECTOR:#x} (queue {}) {} times",
            s.commands,
            s.by_interrupt,
            s.by_polling,
            irq_count(ADMIN_VECTOR),
            opt.qid,
            irq_count(IO_VECTOR)
        ),
    );
    note!(
        "doorbell-writes total={} io-queue={} (from io-queues to io-timing) commands={} io-commands={}",
        s.doorbell_writes,
        io_end.doorbell_writes - io_start.doorbell_writes,
        s.commands,
        io_end.commands - io_start.commands
    );

    match ctrl.shutdown(rtd3e_us) {
        Ok(done) => report.pass("shutdown", format_args!("{done} (CSTS={:#x})", ctrl.csts())),
        Err(e) => report.fail("shutdown", format_args!("{e} (CSTS={:#x})", ctrl.csts())),
    }
    // Every write this driver made to BAR0's register and doorbell pages (MSI-X table writes
    // are not in it): what a VMM that traps every BAR access should count as write exits there.
    let s = ctrl.stats();
    note!(
        "bar0-writes total={} doorbell={} register={} (the whole run, shutdown included)",
        s.doorbell_writes + s.register_writes,
        s.doorbell_writes,
        s.register_writes
    );
}

/// Reports a step whose command result is checked by `judge`; returns whether it passed.
fn step(
    report: &mut Report,
    name: &str,
    result: Result<Done, NvmeError>,
    judge: impl FnOnce(&Done) -> (bool, Line),
) -> bool {
    match result {
        Ok(done) => {
            let (ok, line) = judge(&done);
            report.check(name, ok, format_args!("{}", line.as_str()))
        }
        Err(e) => {
            report.fail(name, format_args!("{e}"));
            false
        }
    }
}

fn read_and_compare(
    ctrl: &mut Controller,
    report: &mut Report,
    name: &str,
    lba: u64,
    want: &[u8; BLOCK],
) -> bool {
    READ_BUF.fill(0xee);
    match ctrl.io_ok(Sqe::rw(false, NSID, lba, 1, READ_BUF.addr())) {
        Ok(done) => {
            let mut got = [0u8; BLOCK];
            READ_BUF.read(0, &mut got);
            match pattern::first_difference(&got, want) {
                None => {
                    report.pass(
                        name,
                        format_args!(
                            "LBA {lba}: 512 bytes match \"{}\"...; {done}",
                            Text(&got[..15])
                        ),
                    );
                    true
                }
                Some(at) => {
                    let rec = at / 16 * 16;
                    report.fail(
                        name,
                        format_args!(
                            "LBA {lba}: differs at byte {at}: record got \"{}\" want \"{}\"; {done}",
                            Text(&got[rec..rec + 15]),
                            Text(&want[rec..rec + 15])
                        ),
                    );
                    false
                }
            }
        }
        Err(e) => {
            report.fail(name, format_args!("LBA {lba}: {e}"));
            false
        }
    }
}

fn program_bars(
    cfg: &mut Conf1,
    bdf: Bdf,
    mmio: (u64, u64),
    keep: bool,
    report: &mut Report,
) -> Option<Bars> {
    let mut bars = pci::probe_bars(cfg, bdf);
    for b in bars.iter().flatten() {
        println!("  {bdf} {b} (as found)");
    }
    if keep && pci::memory_bars_placed(&bars) {
        note!("bars=keep: using the addresses found");
        // The boot page tables map 0-4 GiB; a 64-bit BAR may have been placed above.
        let mapped = paging::map_bars_above_4g(&bars, |b, pages| {
            note!(
                "bars=keep: {bdf} {b} is above 4 GiB: mapped it uncached ({pages} new 2 MiB pages)"
            )
        });
        if let Err((b, e)) = mapped {
            report.fail(
                "bar0",
                format_args!(
                    "bars=keep: {bdf} {b} is above 4 GiB and cannot be mapped: {e}; use bars=assign"
                ),
            );
            return None;
        }
        return Some(bars);
    }
    let mut window = MmioWindow::new(mmio.0, mmio.1);
    if let Err(e) = pci::assign_memory_bars(cfg, bdf, &mut bars, &mut window) {
        report.fail("bar0", format_args!("{e}"));
        return None;
    }
    Some(bars)
}

fn walk_capabilities(cfg: &mut Conf1, bdf: Bdf, report: &mut Report) -> Option<MsixCapability> {
    let mut list = Line::new();
    let mut msix_at = None;
    let walked = pci::capabilities(cfg, bdf, |c| {
        list.push_fmt(format_args!("{c}; "));
        if c.id == pci::CAP_ID_MSIX && msix_at.is_none() {
            msix_at = Some(c.offset);
        }
    });
    match (walked, msix_at) {
        (Ok(_), Some(at)) => {
            let msix = MsixCapability::read(cfg, bdf, at);
            report.pass(
                "capabilities",
                format_args!("{}MSI-X: {msix}", list.as_str()),
            );
            Some(msix)
        }
        (Ok(n), None) => {
            report.fail(
                "capabilities",
                format_args!("{n} capabilities, no MSI-X: {}", list.as_str()),
            );
            None
        }
        (Err(e), _) => {
            report.fail(
                "capabilities",
                format_args!("{e} (after {})", list.as_str()),
            );
            None
        }
    }
}

fn program_msix(
    cfg: &mut Conf1,
    bdf: Bdf,
    msix: &MsixCapability,
    bars: &Bars,
    apic_id: u8,
    report: &mut Report,
) -> Option<MsixTable> {
    let table = match MsixTable::locate(msix, bars) {
        Ok(t) => t,
        Err(e) => {
            report.fail("msix", format_args!("{e}"));
            return None;
        }
    };
    if msix.table_size <= IO_MSIX_ENTRY {
        report.fail(
            "msix",
            format_args!(
                "only {} vectors; need entries 0 and {IO_MSIX_ENTRY}",
                msix.table_size
            ),
        );
        return None;
    }
    // Enable with the function masked, program, then unmask (PCI 3.0, 6.8.3.4).
    pci::enable_msix(cfg, bdf, msix, true, true);
    let programmed = table
        .program(0, apic_id, ADMIN_VECTOR)
        .and_then(|_| table.program(IO_MSIX_ENTRY, apic_id, IO_VECTOR));
    let control = pci::enable_msix(cfg, bdf, msix, true, false);
    let e0 = table.read(0);
    let e1 = table.read(IO_MSIX_ENTRY);
    let ok = programmed.is_ok()
        && pci::is_enabled_unmasked(control)
        && matches!(e0, Ok((a, d, 0)) if a == u64::from(guests::lapic::msi_address(apic_id)) && d == u32::from(ADMIN_VECTOR))
        && matches!(e1, Ok((_, d, 0)) if d == u32::from(IO_VECTOR));
    let (a0, d0, c0) = e0.unwrap_or_default();
    let (_, d1, c1) = e1.unwrap_or_default();
    report.check(
        "msix",
        ok,
        format_args!(
            "table at {:#x}; control={control:#06x}; entry 0 addr={a0:#x} data={d0:#x} ctrl={c0} (admin); entry {IO_MSIX_ENTRY} data={d1:#x} ctrl={c1} (io)",
            table.address()
        ),
    )
    .then_some(table)
}

/// A fixed-size text buffer for detail lines built before a step is reported.
struct Line {
    buf: [u8; 480],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 480],
            len: 0,
        }
    }

    fn push_fmt(&mut self, args: core::fmt::Arguments<'_>) {
        let _ = core::fmt::Write::write_fmt(self, args);
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        // Truncate (on a character boundary: these strings are ASCII) rather than fail.
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

struct Detail<'a>(core::fmt::Arguments<'a>);

impl Detail<'_> {
    fn to_line(&self) -> Line {
        let mut l = Line::new();
        l.push_fmt(self.0);
        l
    }
}

/// Bytes shown as text, with `\n` and other control bytes as `.`.
struct Text<'a>(&'a [u8]);

impl core::fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for &b in self.0 {
            let c = if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            };
            core::fmt::Write::write_char(f, c)?;
        }
        Ok(())
    }
}
