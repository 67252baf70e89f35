//! Decoders for the individual lines of `lspci -vv` output: the device line's IDs, `Region`,
//! `Expansion ROM`, `Capabilities:` and the `Control:`/`Status:` flag lines. Each returns a
//! reason string on malformed input, which the parser turns into an error with the line number.

use crate::bar::BarKind;
use crate::capability::{BarOffset, CapId, CapabilityId, ExtCapabilityId};
use crate::header::{Command, Status};

use super::device::{LspciBar, LspciCapability, LspciRom};

pub(super) fn hex4(s: &str) -> Option<u16> {
    (s.len() == 4 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u16::from_str_radix(s, 16).ok())
        .flatten()
}

pub(super) fn hex2(s: &str) -> Option<u8> {
    (s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u8::from_str_radix(s, 16).ok())
        .flatten()
}

/// `vvvv:dddd`.
pub(super) fn id_pair(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once(':')?;
    Some((hex4(a)?, hex4(b)?))
}

/// Splits a trailing `[vvvv:dddd]` (from `-nn`) or `vvvv:dddd` token (from `-n`, or names
/// missing from pci.ids) off a description.
pub(super) fn split_ids(desc: &str) -> (String, Option<(u16, u16)>) {
    let d = desc.trim();
    if let (Some(open), true) = (d.rfind('['), d.ends_with(']')) {
        if let Some(ids) = id_pair(&d[open + 1..d.len() - 1]) {
            return (d[..open].trim().to_string(), Some(ids));
        }
    }
    let (head, last) = d.rsplit_once(' ').unwrap_or(("", d));
    if let Some(ids) = id_pair(last) {
        return (head.trim().to_string(), Some(ids));
    }
    (d.to_string(), None)
}

/// `+`/`-` flag named `name` among whitespace-separated tokens.
pub(super) fn flag(text: &str, name: &str) -> Option<bool> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .find_map(|tok| {
            let rest = tok.strip_prefix(name)?;
            match rest {
                "+" => Some(true),
                "-" => Some(false),
                _ => None,
            }
        })
}

/// `key=value` among tokens.
pub(super) fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .find_map(|tok| tok.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// `16K`, `1M`, `256`, `2G`.
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        b'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// The `[...]` groups of a line, e.g. `[disabled]`, `[size=16K]`.
pub(super) fn bracket_groups(s: &str) -> impl Iterator<Item = &str> {
    s.split('[')
        .skip(1)
        .filter_map(|g| g.split_once(']').map(|(inside, _)| inside))
}

pub(super) fn parse_address(tok: &str) -> Result<Option<u64>, &'static str> {
    if tok.starts_with('<') {
        return Ok(None);
    }
    u64::from_str_radix(tok, 16)
        .map(Some)
        .map_err(|_| "BAR address is not hexadecimal")
}

/// A `Region N: ...` line, or the `-v` form without `Region N:`.
pub(super) fn parse_bar(t: &str, next_index: u8) -> Result<LspciBar, &'static str> {
    let (index, rest) = match t.strip_prefix("Region ") {
        Some(r) => {
            let (n, rest) = r.split_once(':').ok_or("expected `Region N: ...`")?;
            let n: u8 = n.trim().parse().map_err(|_| "BAR number is not 0..5")?;
            if n > 5 {
                return Err("BAR number is not 0..5");
            }
            (n, rest.trim_start())
        }
        None => (next_index, t),
    };
    let (is_virtual, rest) = match rest.strip_prefix("[virtual] ") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (is_memory, rest) = if let Some(r) = rest.strip_prefix("Memory at ") {
        (true, r)
    } else if let Some(r) = rest.strip_prefix("I/O ports at ") {
        (false, r)
    } else {
        return Err("expected `Memory at` or `I/O ports at`");
    };
    let (addr_tok, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let address = parse_address(addr_tok)?;
    let mut bar = LspciBar {
        index,
        kind: BarKind::Io,
        prefetchable: false,
        address,
        size: None,
        disabled: false,
        is_virtual,
    };
    let mut tail = tail;
    if is_memory {
        let open = tail.find('(').ok_or("memory BAR without `(32-bit, ...)`")?;
        let close = tail[open..]
            .find(')')
            .ok_or("memory BAR without `(32-bit, ...)`")?
            + open;
        let attrs = &tail[open + 1..close];
        let (width, pf) = attrs
            .split_once(", ")
            .ok_or("memory BAR attributes unreadable")?;
        bar.kind = match width {
            "64-bit" => BarKind::Memory64,
            "32-bit" | "low-1M" | "type 3" => BarKind::Memory32,
            _ => return Err("memory BAR width is not 32-bit, 64-bit or low-1M"),
        };
        bar.prefetchable = match pf {
            "prefetchable" => true,
            "non-prefetchable" => false,
            _ => return Err("memory BAR is neither prefetchable nor non-prefetchable"),
        };
        tail = &tail[close + 1..];
    }
    for g in bracket_groups(tail) {
        match g {
            "disabled" | "disabled by cmd" => bar.disabled = true,
            "virtual" => bar.is_virtual = true,
            _ => {
                if let Some(s) = g.strip_prefix("size=") {
                    bar.size = Some(parse_size(s).ok_or("BAR size is not like 16K, 1M or 256")?);
                }
            }
        }
    }
    Ok(bar)
}

pub(super) fn parse_rom(t: &str) -> Result<LspciRom, &'static str> {
    let (is_virtual, rest) = match t.strip_prefix("[virtual] ") {
        Some(r) => (true, r),
        None => (false, t),
    };
    let rest = rest
        .strip_prefix("Expansion ROM at ")
        .ok_or("expected `Expansion ROM at`")?;
    let (addr_tok, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut rom = LspciRom {
        address: parse_address(addr_tok)?,
        size: None,
        disabled: false,
        is_virtual,
    };
    for g in bracket_groups(tail) {
        match g {
            "disabled" | "disabled by cmd" => rom.disabled = true,
            "virtual" => rom.is_virtual = true,
            _ => {
                if let Some(s) = g.strip_prefix("size=") {
                    rom.size = Some(parse_size(s).ok_or("ROM size is not like 16K, 1M or 256")?);
                }
            }
        }
    }
    Ok(rom)
}

/// The capability ID lspci's wording stands for.
pub(super) fn cap_id_from_text(text: &str, extended: bool) -> Option<CapId> {
    if !extended {
        if let Some(rest) = text.strip_prefix('#') {
            return u8::from_str_radix(rest.get(..2)?, 16)
                .ok()
                .map(|i| CapId::Standard(CapabilityId(i)));
        }
        const STD: &[(&str, u8)] = &[
            ("Power Management", 0x01),
            ("AGP3", 0x0e),
            ("AGP", 0x02),
            ("Vital Product Data", 0x03),
            ("Slot ID", 0x04),
            ("MSI-X", 0x11),
            ("MSI:", 0x05),
            ("CompactPCI hot-swap", 0x06),
            ("PCI-X", 0x07),
            ("HyperTransport", 0x08),
            ("Vendor Specific Information", 0x09),
            ("Debug port", 0x0a),
            ("CompactPCI central resource control", 0x0b),
            ("Hot-plug capable", 0x0c),
            ("Subsystem", 0x0d),
            ("Secure device", 0x0f),
            ("Express", 0x10),
            ("SATA HBA", 0x12),
            ("PCI Advanced Features", 0x13),
            ("Enhanced Allocation", 0x14),
        ];
        return STD
            .iter()
            .find(|(name, _)| text.starts_with(name))
            .map(|&(_, id)| CapId::Standard(CapabilityId(id)));
    }
    if let Some(rest) = text.strip_prefix("Extended Capability ID ") {
        let h = rest.trim().trim_start_matches("0x");
        return u16::from_str_radix(h, 16)
            .ok()
            .map(|i| CapId::Extended(ExtCapabilityId(i)));
    }
    // Older lspci printed "Resizable BAR <?>".
    if text.starts_with("Resizable BAR") {
        return Some(CapId::Extended(ExtCapabilityId::RESIZABLE_BAR));
    }
    (0..0x40u16)
        .map(ExtCapabilityId)
        .filter_map(|id| id.name().map(|n| (id, n)))
        .filter(|(_, n)| text.starts_with(n))
        // Longest name wins; on a tie (VC has two IDs) the lower ID.
        .fold(
            None,
            |best: Option<(ExtCapabilityId, &str)>, cur| match best {
                Some(b) if b.1.len() >= cur.1.len() => Some(b),
                _ => Some(cur),
            },
        )
        .map(|(id, _)| CapId::Extended(id))
}

/// `Capabilities: [40] MSI-X: ...` or `Capabilities: [100 v2] Advanced Error Reporting`.
pub(super) fn parse_capability(rest: &str) -> Result<LspciCapability, &'static str> {
    let inner = rest
        .strip_prefix('[')
        .ok_or("expected `Capabilities: [offset] ...`")?;
    let (head, text) = inner
        .split_once(']')
        .ok_or("expected `Capabilities: [offset] ...`")?;
    let (off, version) = match head.split_once(' ') {
        Some((o, v)) => {
            let v = v.strip_prefix('v').and_then(|v| v.parse::<u8>().ok());
            (o, Some(v.ok_or("capability version is not like v2")?))
        }
        None => (head, None),
    };
    let offset =
        u16::from_str_radix(off, 16).map_err(|_| "capability offset is not hexadecimal")?;
    if offset >= 0x1000 {
        return Err("capability offset is beyond the 4096-byte configuration space");
    }
    let text = text.trim().to_string();
    let extended = offset >= 0x100;
    Ok(LspciCapability {
        offset,
        id: cap_id_from_text(&text, extended),
        version,
        text,
        details: Vec::new(),
    })
}

pub(super) fn bar_offset(t: &str) -> Option<BarOffset> {
    let bir = field(t, "BAR")?.parse::<u8>().ok()?;
    let offset = u32::from_str_radix(field(t, "offset")?, 16).ok()?;
    Some(BarOffset { bir, offset })
}

pub(super) fn parse_control(r: &str) -> Command {
    let bits = [
        ("I/O", Command::IO),
        ("Mem", Command::MEMORY),
        ("BusMaster", Command::BUS_MASTER),
        ("SpecCycle", Command::SPECIAL_CYCLES),
        ("MemWINV", Command::MWI),
        ("VGASnoop", Command::VGA_PALETTE),
        ("ParErr", Command::PARITY),
        ("Stepping", Command::STEPPING),
        ("SERR", Command::SERR),
        ("FastB2B", Command::FAST_BACK),
        ("DisINTx", Command::INTX_DISABLE),
    ];
    Command(
        bits.iter()
            .filter(|(n, _)| flag(r, n) == Some(true))
            .fold(0, |a, (_, b)| a | b),
    )
}

pub(super) fn parse_status(r: &str) -> Status {
    let bits = [
        ("Cap", Status::CAP_LIST),
        ("66MHz", Status::MHZ66),
        ("UDF", Status::UDF),
        ("FastB2B", Status::FAST_BACK),
        ("ParErr", Status::PARITY),
        (">TAbort", Status::SIG_TARGET_ABORT),
        ("<TAbort", Status::REC_TARGET_ABORT),
        ("<MAbort", Status::REC_MASTER_ABORT),
        (">SERR", Status::SIG_SYSTEM_ERROR),
        ("<PERR", Status::DETECTED_PARITY),
        ("INTx", Status::INTERRUPT),
    ];
    let mut v = bits
        .iter()
        .filter(|(n, _)| flag(r, n) == Some(true))
        .fold(0, |a, (_, b)| a | b);
    v |= match field(r, "DEVSEL") {
        Some("medium") => 1 << 9,
        Some("slow") => 2 << 9,
        _ => 0,
    };
    Status(v)
}
