//! Rendering a configuration space as `lspci -vvnn` text: the device line, header registers,
//! BARs, bridge windows and ROM (line formats of pciutils `lspci.c`); capabilities are in
//! `render_caps.rs`.

use std::fmt::Write;

use crate::bar::{decode_bars, flags, format_size};
use crate::bdf::Bdf;
use crate::header::{Command, HeaderType, Status, offset};
use crate::space::ConfigSpace;

use super::hex::render_hex;
use super::names::class_name;
use super::render_caps::render_capabilities;

/// How much of a hex dump to append, like `lspci -x`/`-xxx`/`-xxxx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HexDump {
    /// No hex dump.
    #[default]
    None,
    /// The 64-byte header (`-x`).
    Header,
    /// The 256-byte conventional space (`-xxx`).
    Standard,
    /// The whole space, 4096 bytes for PCI Express (`-xxxx`).
    Extended,
}

/// Options for [`render`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RenderOptions {
    /// Hex dump to append.
    pub hex: HexDump,
    /// A `Kernel driver in use:` line to print.
    pub kernel_driver: Option<String>,
}

pub(super) fn pm(b: bool) -> char {
    if b { '+' } else { '-' }
}

pub(super) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

pub(super) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Renders `space` as the `lspci -vvnn` entry of device `bdf` (plus the chosen hex dump),
/// ending with a blank line like lspci.
pub fn render(space: &ConfigSpace, bdf: Bdf, opts: &RenderOptions) -> String {
    let b = space.bytes();
    let mut out = String::new();
    let ids = space.ids();
    let class = (ids.class_code >> 8) as u16;
    let slot = if bdf.domain == 0 {
        bdf.short()
    } else {
        bdf.to_string()
    };
    let cname = class_name(class).map_or(format!("Class {class:04x}"), str::to_string);
    let _ = write!(
        out,
        "{slot} {cname} [{class:04x}]: Device [{:04x}:{:04x}]",
        ids.vendor_id, ids.device_id
    );
    if ids.revision != 0 {
        let _ = write!(out, " (rev {:02x})", ids.revision);
    }
    let prog_if = ids.class_code as u8;
    if prog_if != 0 {
        let _ = write!(out, " (prog-if {prog_if:02x})");
    }
    out.push('\n');
    let header = space.header_type();
    if header == HeaderType::Endpoint && !matches!(ids.subsystem_vendor_id, 0 | 0xffff) {
        let _ = writeln!(
            out,
            "\tSubsystem: Device [{:04x}:{:04x}]",
            ids.subsystem_vendor_id, ids.subsystem_id
        );
    }
    render_control_status(&mut out, space.command(), space.status());
    let cmd = space.command();
    if cmd.bus_master() {
        let _ = write!(out, "\tLatency: {}", b[offset::LATENCY_TIMER as usize]);
        if header == HeaderType::Endpoint {
            let (min_gnt, max_lat) = (b[offset::MIN_GNT as usize], b[offset::MAX_LAT as usize]);
            if min_gnt != 0 || max_lat != 0 {
                out.push_str(" (");
                if min_gnt != 0 {
                    let _ = write!(out, "{}ns min", min_gnt as u32 * 250);
                }
                if min_gnt != 0 && max_lat != 0 {
                    out.push_str(", ");
                }
                if max_lat != 0 {
                    let _ = write!(out, "{}ns max", max_lat as u32 * 250);
                }
                out.push(')');
            }
        }
        let cls = b[offset::CACHE_LINE_SIZE as usize];
        if cls != 0 {
            let _ = write!(out, ", Cache Line Size: {} bytes", cls as u32 * 4);
        }
        out.push('\n');
    }
    let pin = b[offset::INTERRUPT_PIN as usize];
    if pin != 0 {
        let p = if pin <= 4 {
            (b'A' + pin - 1) as char
        } else {
            '?'
        };
        let _ = writeln!(
            out,
            "\tInterrupt: pin {p} routed to IRQ {}",
            b[offset::INTERRUPT_LINE as usize]
        );
    }
    render_bars(&mut out, space);
    if header == HeaderType::Bridge {
        render_bridge(&mut out, b);
    }
    render_rom(&mut out, space);
    render_capabilities(&mut out, b, space.status());
    if let Some(d) = &opts.kernel_driver {
        let _ = writeln!(out, "\tKernel driver in use: {d}");
    }
    let hex_len = match opts.hex {
        HexDump::None => 0,
        HexDump::Header => 64,
        HexDump::Standard => 256,
        HexDump::Extended => b.len(),
    };
    if hex_len > 0 {
        out.push_str(&render_hex(&b[..hex_len.min(b.len())]));
    }
    out.push('\n');
    out
}

fn render_control_status(out: &mut String, c: Command, s: Status) {
    let f = |bit: u16| pm(c.0 & bit != 0);
    let _ = writeln!(
        out,
        "\tControl: I/O{} Mem{} BusMaster{} SpecCycle{} MemWINV{} VGASnoop{} ParErr{} Stepping{} \
         SERR{} FastB2B{} DisINTx{}",
        f(Command::IO),
        f(Command::MEMORY),
        f(Command::BUS_MASTER),
        f(Command::SPECIAL_CYCLES),
        f(Command::MWI),
        f(Command::VGA_PALETTE),
        f(Command::PARITY),
        f(Command::STEPPING),
        f(Command::SERR),
        f(Command::FAST_BACK),
        f(Command::INTX_DISABLE)
    );
    let g = |bit: u16| pm(s.0 & bit != 0);
    let _ = writeln!(
        out,
        "\tStatus: Cap{} 66MHz{} UDF{} FastB2B{} ParErr{} DEVSEL={} >TAbort{} <TAbort{} <MAbort{} \
         >SERR{} <PERR{} INTx{}",
        g(Status::CAP_LIST),
        g(Status::MHZ66),
        g(Status::UDF),
        g(Status::FAST_BACK),
        g(Status::PARITY),
        devsel(s.0),
        g(Status::SIG_TARGET_ABORT),
        g(Status::REC_TARGET_ABORT),
        g(Status::REC_MASTER_ABORT),
        g(Status::SIG_SYSTEM_ERROR),
        g(Status::DETECTED_PARITY),
        g(Status::INTERRUPT)
    );
}

fn devsel(status: u16) -> &'static str {
    match (status & Status::DEVSEL_MASK) >> 9 {
        0 => "fast",
        1 => "medium",
        2 => "slow",
        _ => "??",
    }
}

fn render_bars(out: &mut String, space: &ConfigSpace) {
    let b = space.bytes();
    let cmd = space.command();
    for raw in decode_bars(b, space.header_type().bar_count()) {
        let size = space.bar(raw.index).map(|i| i.size);
        let _ = write!(out, "\tRegion {}: ", raw.index);
        if raw.raw & flags::IO_SPACE != 0 {
            out.push_str("I/O ports at ");
            if raw.address != 0 || cmd.io() {
                let _ = write!(out, "{:04x}", raw.address);
            } else {
                out.push_str("<unassigned>");
            }
            if !cmd.io() {
                out.push_str(" [disabled]");
            }
        } else {
            out.push_str("Memory at ");
            if raw.address != 0 {
                let _ = write!(out, "{:08x}", raw.address);
            } else {
                out.push_str("<unassigned>");
            }
            let width = match raw.raw & flags::MEM_TYPE_MASK {
                0 => "32-bit",
                flags::MEM_TYPE_64 => "64-bit",
                flags::MEM_TYPE_1M => "low-1M",
                _ => "type 3",
            };
            let pf = if raw.prefetchable { "" } else { "non-" };
            let _ = write!(out, " ({width}, {pf}prefetchable)");
            if !cmd.memory() {
                out.push_str(" [disabled]");
            }
        }
        if let Some(s) = size {
            let _ = write!(out, " [size={}]", format_size(s));
        }
        out.push('\n');
    }
}

fn render_rom(out: &mut String, space: &ConfigSpace) {
    let b = space.bytes();
    let reg = u32_at(b, space.header_type().rom_offset() as usize);
    let info = space.rom();
    if reg == 0 && info.is_none() {
        return;
    }
    out.push_str("\tExpansion ROM at ");
    let a = reg & flags::ROM_ADDRESS_MASK;
    if a != 0 {
        let _ = write!(out, "{a:08x}");
    } else {
        out.push_str("<unassigned>");
    }
    if reg & flags::ROM_ENABLE == 0 {
        out.push_str(" [disabled]");
    } else if !space.command().memory() {
        out.push_str(" [disabled by cmd]");
    }
    if let Some(i) = info {
        let _ = write!(out, " [size={}]", format_size(i.size as u64));
    }
    out.push('\n');
}

fn render_bridge(out: &mut String, b: &[u8]) {
    use offset::*;
    let _ = writeln!(
        out,
        "\tBus: primary={:02x}, secondary={:02x}, subordinate={:02x}, sec-latency={}",
        b[PRIMARY_BUS as usize],
        b[SECONDARY_BUS as usize],
        b[SUBORDINATE_BUS as usize],
        b[SEC_LATENCY_TIMER as usize]
    );
    let (io_base, io_limit) = (b[IO_BASE as usize] as u32, b[IO_LIMIT as usize] as u32);
    let mut base = (io_base & 0xf0) << 8;
    let mut limit = (io_limit & 0xf0) << 8;
    if io_base & 0xf == 1 {
        base |= (u16_at(b, IO_BASE_UPPER16 as usize) as u32) << 16;
        limit |= (u16_at(b, IO_LIMIT_UPPER16 as usize) as u32) << 16;
    }
    if base <= limit {
        let _ = writeln!(
            out,
            "\tI/O behind bridge: {:08x}-{:08x}",
            base,
            limit + 0xfff
        );
    }
    let mb = ((u16_at(b, MEMORY_BASE as usize) & 0xfff0) as u32) << 16;
    let ml = ((u16_at(b, MEMORY_LIMIT as usize) & 0xfff0) as u32) << 16;
    if mb <= ml {
        let _ = writeln!(
            out,
            "\tMemory behind bridge: {:08x}-{:08x}",
            mb,
            ml + 0xfffff
        );
    }
    let pb_reg = u16_at(b, PREF_MEMORY_BASE as usize);
    let pb = ((pb_reg & 0xfff0) as u32) << 16;
    let pl = ((u16_at(b, PREF_MEMORY_LIMIT as usize) & 0xfff0) as u32) << 16;
    if pb <= pl {
        if pb_reg & 0xf == 1 {
            let _ = writeln!(
                out,
                "\tPrefetchable memory behind bridge: {:08x}{:08x}-{:08x}{:08x}",
                u32_at(b, PREF_BASE_UPPER32 as usize),
                pb,
                u32_at(b, PREF_LIMIT_UPPER32 as usize),
                pl + 0xfffff
            );
        } else {
            let _ = writeln!(
                out,
                "\tPrefetchable memory behind bridge: {:08x}-{:08x}",
                pb,
                pl + 0xfffff
            );
        }
    }
    let s = u16_at(b, SEC_STATUS as usize);
    let g = |bit: u16| pm(s & bit != 0);
    let _ = writeln!(
        out,
        "\tSecondary status: 66MHz{} FastB2B{} ParErr{} DEVSEL={} >TAbort{} <TAbort{} <MAbort{} \
         <SERR{} <PERR{}",
        g(Status::MHZ66),
        g(Status::FAST_BACK),
        g(Status::PARITY),
        devsel(s),
        g(Status::SIG_TARGET_ABORT),
        g(Status::REC_TARGET_ABORT),
        g(Status::REC_MASTER_ABORT),
        g(Status::SIG_SYSTEM_ERROR),
        g(Status::DETECTED_PARITY)
    );
    let c = u16_at(b, BRIDGE_CONTROL as usize);
    let h = |bit: u16| pm(c & bit != 0);
    let _ = writeln!(
        out,
        "\tBridgeCtl: Parity{} SERR{} NoISA{} VGA{} MAbort{} >Reset{} FastB2B{}",
        h(1),
        h(2),
        h(4),
        h(8),
        h(0x20),
        h(0x40),
        h(0x80)
    );
    let _ = writeln!(
        out,
        "\t\tPriDiscTmr{} SecDiscTmr{} DiscTmrStat{} DiscTmrSERREn{}",
        h(0x100),
        h(0x200),
        h(0x400),
        h(0x800)
    );
}
