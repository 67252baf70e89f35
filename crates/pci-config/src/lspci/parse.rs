//! Parser for `lspci -v`/`-vv` text (with or without `-n`/`-nn`, `-k`, `-D`, `-x`/`-xxx`/`-xxxx`).
//!
//! The parser is line-oriented and keyword-driven: a device starts at a line beginning with a
//! slot address, known keywords (`Region`, `Capabilities:`, ...) are decoded, a capability's
//! detail lines are those indented deeper than its `Capabilities:` line, and anything it does
//! not know is skipped, so text from other lspci versions still parses. Lines it knows but
//! cannot decode (a `Region` line with a bad address) are errors with the line number.

use crate::bar::BarKind;
use crate::bdf::Bdf;
use crate::capability::{CapId, CapabilityId, MsiCapability, MsixCapability, capabilities_lenient};
use crate::header::Command;

use super::LspciError;
use super::device::{LspciCapability, LspciDevice, LspciMsi, LspciMsix};
use super::hex::{HexLines, parse_hex_line};
use super::lines::{
    bar_offset, field, flag, hex2, hex4, parse_bar, parse_capability, parse_control, parse_rom,
    parse_status, split_ids,
};

/// Parses every device in `text` (output of `lspci -vv`, `lspci -vvnn -xxx`, ...), in order.
pub fn parse_devices(text: &str) -> Result<Vec<LspciDevice>, LspciError> {
    let mut devices = Vec::new();
    let mut cur: Option<Current> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_end();
        let t = line.trim_start();
        if t.is_empty() {
            continue;
        }
        if let Some((bdf, rest)) = device_header(t) {
            if let Some(c) = cur.take() {
                devices.push(c.finish());
            }
            cur = Some(Current::start(bdf, rest));
            continue;
        }
        if let Some(hex) = parse_hex_line(t) {
            let (off, bytes) = hex.map_err(|what| LspciError::BadLine {
                line: line_no,
                what,
                text: t.into(),
            })?;
            let Some(c) = cur.as_mut() else {
                return Err(LspciError::BadLine {
                    line: line_no,
                    what: "hex dump line before any device line",
                    text: t.into(),
                });
            };
            c.hex.insert(line_no, off, bytes)?;
            continue;
        }
        if let Some(c) = cur.as_mut() {
            c.detail(indent_of(line), t)
                .map_err(|what| LspciError::BadLine {
                    line: line_no,
                    what,
                    text: t.into(),
                })?;
        }
    }
    if let Some(c) = cur.take() {
        devices.push(c.finish());
    }
    if devices.is_empty() {
        return Err(LspciError::NoDevices);
    }
    Ok(devices)
}

/// Parses `text` and returns the device at `bdf` (domain 0 matches lspci output without `-D`).
pub fn find_device(text: &str, bdf: Bdf) -> Result<LspciDevice, LspciError> {
    let devices = parse_devices(text)?;
    let available = devices
        .iter()
        .map(|d| d.bdf.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    devices
        .into_iter()
        .find(|d| d.bdf == bdf)
        .ok_or(LspciError::DeviceNotFound { bdf, available })
}

fn indent_of(line: &str) -> usize {
    let mut w = 0;
    for c in line.chars() {
        match c {
            ' ' => w += 1,
            '\t' => w = (w / 8 + 1) * 8,
            _ => break,
        }
    }
    w
}

fn device_header(t: &str) -> Option<(Bdf, &str)> {
    let (first, rest) = t.split_once(' ').unwrap_or((t, ""));
    if !first.contains('.') || !first.contains(':') {
        return None;
    }
    let bdf = first.parse::<Bdf>().ok()?;
    Some((bdf, rest.trim()))
}

struct Current {
    dev: LspciDevice,
    hex: HexLines,
    cap_indent: Option<usize>,
    next_bar: u8,
}

impl Current {
    fn start(bdf: Bdf, rest: &str) -> Self {
        let mut dev = LspciDevice {
            bdf,
            ..Default::default()
        };
        let (class_part, dev_part) = rest.split_once(": ").unwrap_or((rest, ""));
        let class_part = class_part.trim();
        if let Some(code) = hex4(class_part) {
            dev.class_code = Some(code);
        } else if let (Some(open), true) = (class_part.rfind(" ["), class_part.ends_with(']')) {
            dev.class_code = hex4(&class_part[open + 2..class_part.len() - 1]);
            dev.class_name = class_part[..open].to_string();
        } else {
            dev.class_code = class_part.strip_prefix("Class ").and_then(hex4);
            dev.class_name = class_part.to_string();
        }
        let cut = [dev_part.find(" (rev "), dev_part.find(" (prog-if ")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(dev_part.len());
        if let Some(p) = dev_part.find("(rev ") {
            dev.revision = dev_part.get(p + 5..p + 7).and_then(hex2);
        }
        if let Some(p) = dev_part.find("(prog-if ") {
            dev.prog_if = dev_part.get(p + 9..p + 11).and_then(hex2);
        }
        let (desc, ids) = split_ids(&dev_part[..cut]);
        dev.description = desc;
        if let Some((v, d)) = ids {
            dev.vendor_id = Some(v);
            dev.device_id = Some(d);
        }
        Current {
            dev,
            hex: HexLines::default(),
            cap_indent: None,
            next_bar: 0,
        }
    }

    fn finish(mut self) -> LspciDevice {
        if let Some((bytes, dumped)) = self.hex.finish() {
            self.dev.config = Some(bytes);
            self.dev.config_dumped = dumped;
            self.dev.fill_from_hex();
        }
        self.dev
    }

    fn detail(&mut self, indent: usize, t: &str) -> Result<(), &'static str> {
        if let Some(ci) = self.cap_indent {
            if indent > ci {
                self.cap_detail(t);
                return Ok(());
            }
            self.cap_indent = None;
        }
        let d = &mut self.dev;
        if let Some(r) = t.strip_prefix("Subsystem: ") {
            let (name, ids) = split_ids(r);
            d.subsystem = Some(name);
            d.subsystem_ids = ids;
        } else if let Some(r) = t.strip_prefix("Control: ") {
            d.command = Some(parse_control(r));
        } else if let (Some(r), true) = (t.strip_prefix("Status: "), t.contains("DEVSEL=")) {
            d.status = Some(parse_status(r));
        } else if let Some(r) = t.strip_prefix("Flags: ") {
            if r.contains("bus master") {
                d.command = Some(Command(d.command.map_or(0, |c| c.0) | Command::BUS_MASTER));
            }
            if let Some(irq) = r.split(", ").find_map(|p| p.strip_prefix("IRQ ")) {
                d.irq = irq.trim().parse().ok();
            }
        } else if let Some(r) = t.strip_prefix("Interrupt: pin ") {
            let pin = r.chars().next().unwrap_or('?');
            d.interrupt_pin = ('A'..='D').contains(&pin).then(|| pin as u8 - b'A' + 1);
            if let Some((_, irq)) = r.split_once("IRQ ") {
                d.irq = irq.trim().parse().ok();
            }
        } else if t.starts_with("Region ")
            || t.starts_with("Memory at ")
            || t.starts_with("I/O ports at ")
            || (t.starts_with("[virtual] ") && !t.contains("Expansion ROM"))
        {
            let bar = parse_bar(t, self.next_bar)?;
            self.next_bar = bar.index + if bar.kind == BarKind::Memory64 { 2 } else { 1 };
            d.bars.retain(|b| b.index != bar.index);
            d.bars.push(bar);
        } else if t.contains("Expansion ROM at ") {
            d.rom = Some(parse_rom(t)?);
        } else if let Some(r) = t.strip_prefix("Capabilities: ") {
            if r.starts_with('<') {
                if r.starts_with("<access denied>") {
                    d.capabilities_access_denied = true;
                }
                return Ok(());
            }
            let cap = parse_capability(r)?;
            self.cap_indent = Some(indent);
            if cap.text.starts_with('<') {
                // `[50] <chain looped>` / `<chain broken>`: lspci's report, not a capability.
                return Ok(());
            }
            self.on_capability(&cap);
            self.dev.capabilities.push(cap);
        } else if let Some(r) = t.strip_prefix("Kernel driver in use: ") {
            d.kernel_driver = Some(r.trim().to_string());
        } else if let Some(r) = t.strip_prefix("Kernel modules: ") {
            d.kernel_modules = r
                .split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect();
        } else if let Some(r) = t.strip_prefix("IOMMU group: ") {
            d.iommu_group = r.trim().parse().ok();
        } else if let Some(r) = t.strip_prefix("Physical Slot: ") {
            d.physical_slot = Some(r.trim().to_string());
        } else if t.starts_with("Vector table:") || t.starts_with("PBA:") {
            // Detail lines that lost their indentation in a paste.
            self.cap_detail(t);
        }
        Ok(())
    }

    fn on_capability(&mut self, cap: &LspciCapability) {
        match cap.id {
            Some(CapId::Standard(CapabilityId::MSIX)) => {
                self.dev.msix = Some(LspciMsix {
                    offset: cap.offset,
                    enabled: flag(&cap.text, "Enable").unwrap_or(false),
                    function_masked: flag(&cap.text, "Masked").unwrap_or(false),
                    table_size: field(&cap.text, "Count")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0),
                    table: None,
                    pba: None,
                });
            }
            Some(CapId::Standard(CapabilityId::MSI)) => {
                let (en, capable) = field(&cap.text, "Count")
                    .and_then(|c| c.split_once('/'))
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .unwrap_or((1, 1));
                self.dev.msi = Some(LspciMsi {
                    offset: cap.offset,
                    enabled: flag(&cap.text, "Enable").unwrap_or(false),
                    vectors_enabled: en,
                    vectors_capable: capable,
                    maskable: flag(&cap.text, "Maskable").unwrap_or(false),
                    is_64bit: flag(&cap.text, "64bit").unwrap_or(false),
                    address: None,
                    data: None,
                });
            }
            _ => {}
        }
    }

    fn cap_detail(&mut self, t: &str) {
        let Some(cap) = self.dev.capabilities.last_mut() else {
            return;
        };
        cap.details.push(t.to_string());
        match cap.id {
            Some(CapId::Standard(CapabilityId::MSIX)) => {
                if let Some(m) = self.dev.msix.as_mut() {
                    if t.starts_with("Vector table:") {
                        m.table = bar_offset(t);
                    } else if t.starts_with("PBA:") {
                        m.pba = bar_offset(t);
                    }
                }
            }
            Some(CapId::Standard(CapabilityId::MSI)) => {
                if let (Some(m), Some(r)) = (self.dev.msi.as_mut(), t.strip_prefix("Address: ")) {
                    let (addr, data) = r.split_once("Data:").unwrap_or((r, ""));
                    m.address = u64::from_str_radix(addr.trim(), 16).ok();
                    m.data = u16::from_str_radix(data.trim(), 16).ok();
                }
            }
            _ => {}
        }
    }
}

/// Capabilities (and MSI/MSI-X facts) from the hex dump, for what the text did not show.
pub(crate) fn fill_capabilities_from_hex(dev: &mut LspciDevice, bytes: &[u8]) {
    let (caps, _) = capabilities_lenient(bytes);
    if dev.capabilities.is_empty() {
        for c in &caps {
            if c.offset as usize >= dev.config_dumped {
                continue;
            }
            let text = match c.id {
                CapId::Standard(id) => id.name().map_or(format!("#{:02x}", id.0), str::to_string),
                CapId::Extended(id) => id.name().map_or(
                    format!("Extended Capability ID {:#x}", id.0),
                    str::to_string,
                ),
            };
            dev.capabilities.push(LspciCapability {
                offset: c.offset,
                id: Some(c.id),
                version: c.id.is_extended().then_some(c.version),
                text,
                details: Vec::new(),
            });
        }
    }
    let find = |id: CapabilityId| caps.iter().find(|c| c.id == CapId::Standard(id));
    if let Some(m) =
        find(CapabilityId::MSIX).and_then(|c| MsixCapability::parse(bytes, c.offset).ok())
    {
        let entry = dev.msix.get_or_insert(LspciMsix {
            offset: m.offset,
            enabled: m.enabled,
            function_masked: m.function_masked,
            table_size: m.table_size,
            table: None,
            pba: None,
        });
        entry.table = entry.table.or(Some(m.table));
        entry.pba = entry.pba.or(Some(m.pba));
    }
    if let Some(m) =
        find(CapabilityId::MSI).and_then(|c| MsiCapability::parse(bytes, c.offset).ok())
    {
        let entry = dev.msi.get_or_insert(LspciMsi {
            offset: m.offset,
            enabled: m.enabled(),
            vectors_enabled: m.vectors_enabled(),
            vectors_capable: m.vectors_capable(),
            maskable: m.per_vector_masking(),
            is_64bit: m.is_64bit(),
            address: None,
            data: None,
        });
        entry.address = entry.address.or(Some(m.address));
        entry.data = entry.data.or(Some(m.data));
    }
}
