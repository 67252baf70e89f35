//! Configuration space: the predefined header of type 0 (endpoint) and type 1 (bridge), and
//! the fields of the capabilities `pci_config` walks (PM, MSI, MSI-X, Express, vendor, AER,
//! DSN; other capabilities by their name and offset).
//!
//! References: PCI Local Bus 3.0 §6.2 and §6.8, PCI-to-PCI Bridge 1.2 §3.2, PCI Power
//! Management 1.2 §3.2, PCI Express Base 4.0 §7.5.3 (Express) and §7.8.4 (AER).

use pci_config::capability::Capability;
use pci_config::{CapId, CapabilityId, ExtCapabilityId};

use crate::device::DeviceFacts;
use crate::field::{Field, ValueFormatter, bits, flag};
use crate::region::{Location, Region};
use crate::registry::RegisterDecoder;

/// Names configuration space registers of any PCI function.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfigDecoder;

/// Length of the predefined header.
const HEADER_LEN: u64 = 0x40;

/// One register of a table: offset, size, name, description, formatter.
type Row = (u16, u8, &'static str, &'static str, Option<ValueFormatter>);

const COMMON_START: &[Row] = &[
    (0x00, 2, "VENDOR_ID", "Vendor ID", None),
    (0x02, 2, "DEVICE_ID", "Device ID", None),
    (0x04, 2, "COMMAND", "Command register", Some(command)),
    (0x06, 2, "STATUS", "Status register", Some(status)),
    (0x08, 1, "REVISION_ID", "Revision ID", None),
    (
        0x09,
        1,
        "PROG_IF",
        "Class code: programming interface",
        None,
    ),
    (0x0a, 1, "SUBCLASS", "Class code: sub-class", None),
    (0x0b, 1, "BASE_CLASS", "Class code: base class", None),
    (0x0c, 1, "CACHE_LINE_SIZE", "Cache Line Size", None),
    (0x0d, 1, "LATENCY_TIMER", "Latency Timer", None),
    (
        0x0e,
        1,
        "HEADER_TYPE",
        "Header Type (bit 7: multi-function)",
        None,
    ),
    (0x0f, 1, "BIST", "Built-in Self Test", None),
    (0x34, 1, "CAP_PTR", "Capabilities Pointer", None),
    (0x3c, 1, "INTERRUPT_LINE", "Interrupt Line", None),
    (
        0x3d,
        1,
        "INTERRUPT_PIN",
        "Interrupt Pin (1..4 = INTA#..INTD#)",
        None,
    ),
];

const TYPE0: &[Row] = &[
    (0x10, 4, "BAR0", "Base Address Register 0", Some(bar)),
    (0x14, 4, "BAR1", "Base Address Register 1", Some(bar)),
    (0x18, 4, "BAR2", "Base Address Register 2", Some(bar)),
    (0x1c, 4, "BAR3", "Base Address Register 3", Some(bar)),
    (0x20, 4, "BAR4", "Base Address Register 4", Some(bar)),
    (0x24, 4, "BAR5", "Base Address Register 5", Some(bar)),
    (0x28, 4, "CARDBUS_CIS", "CardBus CIS Pointer", None),
    (0x2c, 2, "SUBSYSTEM_VENDOR_ID", "Subsystem Vendor ID", None),
    (0x2e, 2, "SUBSYSTEM_ID", "Subsystem ID", None),
    (
        0x30,
        4,
        "ROM_ADDRESS",
        "Expansion ROM Base Address",
        Some(rom),
    ),
    (0x3e, 1, "MIN_GNT", "Min_Gnt", None),
    (0x3f, 1, "MAX_LAT", "Max_Lat", None),
];

const TYPE1: &[Row] = &[
    (0x10, 4, "BAR0", "Base Address Register 0", Some(bar)),
    (0x14, 4, "BAR1", "Base Address Register 1", Some(bar)),
    (0x18, 1, "PRIMARY_BUS", "Primary Bus Number", None),
    (0x19, 1, "SECONDARY_BUS", "Secondary Bus Number", None),
    (0x1a, 1, "SUBORDINATE_BUS", "Subordinate Bus Number", None),
    (
        0x1b,
        1,
        "SEC_LATENCY_TIMER",
        "Secondary Latency Timer",
        None,
    ),
    (0x1c, 1, "IO_BASE", "I/O Base", None),
    (0x1d, 1, "IO_LIMIT", "I/O Limit", None),
    (0x1e, 2, "SEC_STATUS", "Secondary Status", None),
    (0x20, 2, "MEMORY_BASE", "Memory Base", None),
    (0x22, 2, "MEMORY_LIMIT", "Memory Limit", None),
    (
        0x24,
        2,
        "PREF_MEMORY_BASE",
        "Prefetchable Memory Base",
        None,
    ),
    (
        0x26,
        2,
        "PREF_MEMORY_LIMIT",
        "Prefetchable Memory Limit",
        None,
    ),
    (
        0x28,
        4,
        "PREF_BASE_UPPER32",
        "Prefetchable Base Upper 32 Bits",
        None,
    ),
    (
        0x2c,
        4,
        "PREF_LIMIT_UPPER32",
        "Prefetchable Limit Upper 32 Bits",
        None,
    ),
    (0x30, 2, "IO_BASE_UPPER16", "I/O Base Upper 16 Bits", None),
    (0x32, 2, "IO_LIMIT_UPPER16", "I/O Limit Upper 16 Bits", None),
    (
        0x38,
        4,
        "ROM_ADDRESS",
        "Expansion ROM Base Address",
        Some(rom),
    ),
    (0x3e, 2, "BRIDGE_CONTROL", "Bridge Control", None),
];

const PM: &[Row] = &[
    (0x02, 2, "PMC", "Power Management Capabilities", None),
    (
        0x04,
        2,
        "PMCSR",
        "Power Management Control/Status",
        Some(pmcsr),
    ),
    (
        0x06,
        1,
        "PMCSR_BSE",
        "PMCSR Bridge Support Extensions",
        None,
    ),
    (0x07, 1, "DATA", "Power Management Data", None),
];

const MSIX: &[Row] = &[
    (
        0x02,
        2,
        "CONTROL",
        "MSI-X Message Control",
        Some(msix_control),
    ),
    (
        0x04,
        4,
        "TABLE",
        "MSI-X Table Offset/Table BIR",
        Some(bar_offset),
    ),
    (0x08, 4, "PBA", "MSI-X PBA Offset/PBA BIR", Some(bar_offset)),
];

const EXPRESS: &[Row] = &[
    (0x02, 2, "FLAGS", "PCI Express Capabilities", None),
    (0x04, 4, "DEVCAP", "Device Capabilities", None),
    (0x08, 2, "DEVCTL", "Device Control", None),
    (0x0a, 2, "DEVSTA", "Device Status", None),
    (0x0c, 4, "LNKCAP", "Link Capabilities", None),
    (0x10, 2, "LNKCTL", "Link Control", None),
    (0x12, 2, "LNKSTA", "Link Status", None),
    (0x14, 4, "SLTCAP", "Slot Capabilities", None),
    (0x18, 2, "SLTCTL", "Slot Control", None),
    (0x1a, 2, "SLTSTA", "Slot Status", None),
    (0x1c, 2, "RTCTL", "Root Control", None),
    (0x1e, 2, "RTCAP", "Root Capabilities", None),
    (0x20, 4, "RTSTA", "Root Status", None),
    (0x24, 4, "DEVCAP2", "Device Capabilities 2", None),
    (0x28, 2, "DEVCTL2", "Device Control 2", None),
    (0x2a, 2, "DEVSTA2", "Device Status 2", None),
    (0x2c, 4, "LNKCAP2", "Link Capabilities 2", None),
    (0x30, 2, "LNKCTL2", "Link Control 2", None),
    (0x32, 2, "LNKSTA2", "Link Status 2", None),
    (0x34, 4, "SLTCAP2", "Slot Capabilities 2", None),
    (0x38, 2, "SLTCTL2", "Slot Control 2", None),
    (0x3a, 2, "SLTSTA2", "Slot Status 2", None),
];

const VENDOR: &[Row] = &[(0x02, 1, "LEN", "Vendor capability length", None)];

const AER: &[Row] = &[
    (0x04, 4, "UNCOR_STATUS", "Uncorrectable Error Status", None),
    (0x08, 4, "UNCOR_MASK", "Uncorrectable Error Mask", None),
    (0x0c, 4, "UNCOR_SEVER", "Uncorrectable Error Severity", None),
    (0x10, 4, "COR_STATUS", "Correctable Error Status", None),
    (0x14, 4, "COR_MASK", "Correctable Error Mask", None),
    (
        0x18,
        4,
        "CAP_CTRL",
        "Advanced Error Capabilities and Control",
        None,
    ),
    (0x1c, 4, "HEADER_LOG0", "Header Log DW0", None),
    (0x20, 4, "HEADER_LOG1", "Header Log DW1", None),
    (0x24, 4, "HEADER_LOG2", "Header Log DW2", None),
    (0x28, 4, "HEADER_LOG3", "Header Log DW3", None),
];

const DSN: &[Row] = &[
    (0x04, 4, "SERIAL_LO", "Serial Number, lower DW", None),
    (0x08, 4, "SERIAL_HI", "Serial Number, upper DW", None),
];

/// The short prefix of a capability's register names (Linux `pci_regs.h` style).
fn prefix(id: CapId) -> String {
    match id {
        CapId::Standard(CapabilityId(n)) => match n {
            0x01 => "PM".into(),
            0x03 => "VPD".into(),
            0x05 => "MSI".into(),
            0x09 => "VNDR".into(),
            0x0d => "SSVID".into(),
            0x10 => "EXP".into(),
            0x11 => "MSIX".into(),
            0x13 => "AF".into(),
            0x14 => "EA".into(),
            _ => format!("CAP{n:02X}"),
        },
        CapId::Extended(ExtCapabilityId(n)) => match n {
            0x01 => "AER".into(),
            0x02 | 0x09 => "VC".into(),
            0x03 => "DSN".into(),
            0x04 => "PWR".into(),
            0x0b => "VSEC".into(),
            0x0d => "ACS".into(),
            0x0e => "ARI".into(),
            0x0f => "ATS".into(),
            0x10 => "SRIOV".into(),
            0x13 => "PRI".into(),
            0x15 => "REBAR".into(),
            0x18 => "LTR".into(),
            0x19 => "SECPCI".into(),
            0x1b => "PASID".into(),
            0x1d => "DPC".into(),
            0x1e => "L1SS".into(),
            0x1f => "PTM".into(),
            0x23 => "DVSEC".into(),
            _ => format!("ECAP{n:04X}"),
        },
    }
}

/// The register table of a capability, after its header.
fn cap_rows(device: &DeviceFacts, cap: &Capability) -> Vec<Row> {
    match cap.id {
        CapId::Standard(CapabilityId::POWER_MANAGEMENT) => PM.to_vec(),
        CapId::Standard(CapabilityId::MSIX) => MSIX.to_vec(),
        CapId::Standard(CapabilityId::EXPRESS) => EXPRESS.to_vec(),
        CapId::Standard(CapabilityId::VENDOR_SPECIFIC) => VENDOR.to_vec(),
        CapId::Standard(CapabilityId::MSI) => msi_rows(device, cap.offset),
        CapId::Extended(ExtCapabilityId::AER) => AER.to_vec(),
        CapId::Extended(ExtCapabilityId::DEVICE_SERIAL_NUMBER) => DSN.to_vec(),
        _ => Vec::new(),
    }
}

/// MSI's layout depends on Message Control: 64-bit address and per-vector masking move the
/// data and mask registers (PCI Local Bus 3.0 §6.8.1).
fn msi_rows(device: &DeviceFacts, offset: u16) -> Vec<Row> {
    let control = device.config_value(offset + 2, 2).unwrap_or(0);
    let addr64 = control & (1 << 7) != 0;
    let masking = control & (1 << 8) != 0;
    let mut rows: Vec<Row> = vec![
        (0x02, 2, "CONTROL", "MSI Message Control", Some(msi_control)),
        (0x04, 4, "ADDR_LO", "MSI Message Address", None),
    ];
    let data = if addr64 {
        rows.push((0x08, 4, "ADDR_HI", "MSI Message Upper Address", None));
        0x0c
    } else {
        0x08
    };
    rows.push((data, 2, "DATA", "MSI Message Data", None));
    if masking {
        let mask = data + 4;
        rows.push((mask, 4, "MASK", "MSI Mask Bits", None));
        rows.push((mask + 4, 4, "PENDING", "MSI Pending Bits", None));
    }
    rows
}

fn header_rows(device: &DeviceFacts) -> (Vec<Row>, Option<String>) {
    let (specific, assumption) = match device.config_value(0x0e, 1) {
        Some(t) if t & 0x7f == 1 => (TYPE1, None),
        Some(_) => (TYPE0, None),
        None => (
            TYPE0,
            Some("header type 0 assumed (configuration space not read)".to_string()),
        ),
    };
    let mut rows = COMMON_START.to_vec();
    rows.extend_from_slice(specific);
    (rows, assumption)
}

fn row_field(row: &Row, base: u16, name: String, description: String) -> Field {
    let (offset, size, _, _, formatter) = *row;
    let mut f = Field::new(
        Location::new(Region::Config, (base + offset) as u64),
        size,
        name,
        description,
    );
    f.formatter = formatter;
    f
}

/// The named fields of the predefined header (the first 64 bytes).
fn header_fields(device: &DeviceFacts) -> Vec<Field> {
    let (rows, assumption) = header_rows(device);
    rows.iter()
        .map(|r| {
            let f = row_field(r, 0, r.2.to_string(), r.3.to_string());
            match &assumption {
                Some(a) => f.assuming(a.clone()),
                None => f,
            }
        })
        .collect()
}

/// The named fields of one capability, from its header to its end.
fn cap_fields(device: &DeviceFacts, cap: &Capability) -> Vec<Field> {
    let mut fields = Vec::new();
    let p = instance_prefix(device, cap);
    let what = format!(
        "{} capability at {:#x}",
        cap.id.name().unwrap_or("unknown"),
        cap.offset
    );
    let header = if cap.id.is_extended() {
        vec![(0x00u16, 4u8, "HEADER", "Extended Capability Header", None)]
    } else {
        vec![
            (0x00, 1, "CAP_ID", "Capability ID", None),
            (0x01, 1, "NEXT", "Next Capability Pointer", None),
        ]
    };
    let mut named_end = 0u16;
    for r in header.iter().chain(cap_rows(device, cap).iter()) {
        if r.0 + r.1 as u16 > cap.len {
            continue;
        }
        named_end = named_end.max(r.0 + r.1 as u16);
        fields.push(row_field(
            r,
            cap.offset,
            format!("{p}.{}", r.2),
            format!("{what}: {}", r.3),
        ));
    }
    // The rest of a capability this crate has no table for: name it by its offset, so a trace
    // still says whose register it is.
    let mut at = named_end;
    while at < cap.len {
        let size = (4 - at % 4).min(cap.len - at) as u8;
        let r: Row = (at, size, "", "", None);
        fields.push(row_field(
            &r,
            cap.offset,
            format!("{p}+{at:#x}"),
            format!("{what}, byte {at:#x}"),
        ));
        at += size as u16;
    }
    fields
}

/// The prefix of `cap`'s names, unique on the device: a capability whose ID an earlier one in
/// the chain already has (several vendor-specific capabilities, as virtio devices have; or a
/// malformed chain) gets its offset too (`VNDR@0x50`), so each name finds one register.
fn instance_prefix(device: &DeviceFacts, cap: &Capability) -> String {
    let p = prefix(cap.id);
    let repeated = device
        .capabilities()
        .iter()
        .take_while(|c| c.offset != cap.offset)
        .any(|c| c.id == cap.id);
    if repeated {
        format!("{p}@{:#x}", cap.offset)
    } else {
        p
    }
}

/// Every named field of configuration space, header first then capabilities in chain order.
fn all_fields(device: &DeviceFacts) -> Vec<Field> {
    let mut fields = header_fields(device);
    for cap in device.capabilities() {
        fields.extend(cap_fields(device, cap));
    }
    fields
}

impl RegisterDecoder for ConfigDecoder {
    fn name(&self) -> &'static str {
        "config"
    }

    fn applies_to(&self, _device: &DeviceFacts) -> bool {
        true
    }

    fn field_at(&self, device: &DeviceFacts, at: Location) -> Option<Field> {
        if at.region != Region::Config {
            return None;
        }
        // Only the table holding the offset is built: the trace names every access.
        let fields = if at.offset < HEADER_LEN {
            header_fields(device)
        } else {
            let cap = device
                .capabilities()
                .iter()
                .find(|c| c.contains(u16::try_from(at.offset).unwrap_or(u16::MAX)))?;
            cap_fields(device, cap)
        };
        fields.into_iter().find(|f| f.contains(at.offset))
    }

    fn field_named(&self, device: &DeviceFacts, name: &str) -> Option<Field> {
        all_fields(device)
            .into_iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

fn command(v: u64) -> String {
    [
        flag(v, 0, "I/O"),
        flag(v, 1, "Mem"),
        flag(v, 2, "BusMaster"),
        flag(v, 6, "ParErr"),
        flag(v, 8, "SERR"),
        flag(v, 10, "DisINTx"),
    ]
    .join(" ")
}

fn status(v: u64) -> String {
    [
        flag(v, 3, "INTx"),
        flag(v, 4, "Cap"),
        flag(v, 11, ">TAbort"),
        flag(v, 12, "<TAbort"),
        flag(v, 13, "<MAbort"),
        flag(v, 14, ">SERR"),
        flag(v, 15, "<PERR"),
    ]
    .join(" ")
}

fn bar(v: u64) -> String {
    if v & 1 == 1 {
        return format!("I/O at {:#x}", v & !0x3);
    }
    let kind = match bits(v, 1, 2) {
        0 => "32-bit",
        2 => "64-bit (low half)",
        _ => "reserved type",
    };
    let pf = if v & 0x8 != 0 {
        "prefetchable"
    } else {
        "non-prefetchable"
    };
    format!("memory at {:#x} ({kind}, {pf})", v & !0xf)
}

fn rom(v: u64) -> String {
    format!(
        "ROM at {:#x} [{}]",
        v & !0x7ff,
        if v & 1 == 1 { "enabled" } else { "disabled" }
    )
}

fn pmcsr(v: u64) -> String {
    let state = ["D0", "D1", "D2", "D3hot"][bits(v, 0, 1) as usize];
    format!(
        "{state} {} {}",
        flag(v, 3, "NoSoftRst"),
        flag(v, 8, "PME-Enable")
    )
}

fn msix_control(v: u64) -> String {
    format!(
        "{} {} Count={}",
        flag(v, 15, "Enable"),
        flag(v, 14, "Masked"),
        bits(v, 0, 10) + 1
    )
}

fn msi_control(v: u64) -> String {
    format!(
        "{} Count={}/{} {} {}",
        flag(v, 0, "Enable"),
        1u64 << bits(v, 4, 6),
        1u64 << bits(v, 1, 3),
        flag(v, 8, "Maskable"),
        flag(v, 7, "64bit")
    )
}

fn bar_offset(v: u64) -> String {
    format!("BAR={} offset={:#x}", v & 0x7, v & !0x7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    fn nvme_like() -> DeviceFacts {
        // QEMU NVMe's first 0x90 bytes (crates/pci-config/tests/data/qemu-nvme-1b36-0010.txt).
        let mut c = vec![0u8; 256];
        c[..0x10].copy_from_slice(&[
            0x36, 0x1b, 0x10, 0x00, 0x07, 0x05, 0x10, 0x00, 0x02, 0x02, 0x08, 0x01, 0, 0, 0, 0,
        ]);
        c[0x10..0x14].copy_from_slice(&[0x04, 0x00, 0xbf, 0xfe]);
        c[0x34] = 0x40;
        c[0x40..0x4c].copy_from_slice(&[0x11, 0x60, 0x40, 0x80, 0, 0x20, 0, 0, 0, 0x30, 0, 0]);
        c[0x60..0x64].copy_from_slice(&[0x01, 0x80, 0x03, 0x00]);
        c[0x80..0x84].copy_from_slice(&[0x10, 0x00, 0x92, 0x00]);
        DeviceFacts::from_config(&c)
    }

    /// What the register_names fuzz target found: two capabilities with one ID named the same
    /// register twice, so a name led to the wrong one. The second instance carries its offset.
    #[test]
    fn repeated_capabilities_have_names_of_their_own() {
        let mut c = vec![0u8; 256];
        c[0x06] = 0x10;
        c[0x34] = 0x40;
        c[0x40..0x43].copy_from_slice(&[0x09, 0x50, 0x08]);
        c[0x50..0x53].copy_from_slice(&[0x09, 0x00, 0x08]);
        let d = DeviceFacts::from_config(&c);
        let r = Registry::builtin();
        for at in [0x40u64, 0x50] {
            let decoded = r.decode(&d, Location::new(Region::Config, at), 1, None);
            let field = &decoded.parts[0].field;
            let query = format!("{}:{}", field.decoder, field.name);
            assert_eq!(
                r.find(&d, &query).unwrap().location,
                field.location,
                "{query}"
            );
        }
        let second = r.decode(&d, Location::new(Region::Config, 0x50), 1, None);
        assert!(
            second.parts[0].field.name.starts_with("VNDR@0x50"),
            "{second}"
        );
    }

    #[test]
    fn header_fields() {
        let r = Registry::builtin();
        let d = nvme_like();
        let cmd = r.decode(&d, Location::new(Region::Config, 4), 2, Some(0x0507));
        assert_eq!(
            cmd.to_string(),
            "COMMAND (I/O+ Mem+ BusMaster+ ParErr- SERR+ DisINTx+)"
        );
        let both = r.decode(&d, Location::new(Region::Config, 4), 4, Some(0x0010_0507));
        assert_eq!(both.name(), "COMMAND/STATUS");
        let bar0 = r.decode(
            &d,
            Location::new(Region::Config, 0x10),
            4,
            Some(0xfebf_0004),
        );
        assert_eq!(
            bar0.to_string(),
            "BAR0 (memory at 0xfebf0000 (64-bit (low half), non-prefetchable))"
        );
    }

    #[test]
    fn capability_fields_from_the_walker() {
        let r = Registry::builtin();
        let d = nvme_like();
        let ctl = r.decode(&d, Location::new(Region::Config, 0x42), 2, Some(0x8040));
        assert_eq!(ctl.to_string(), "MSIX.CONTROL (Enable+ Masked- Count=65)");
        let pm = r.decode(&d, Location::new(Region::Config, 0x64), 2, Some(3));
        assert_eq!(pm.to_string(), "PM.PMCSR (D3hot NoSoftRst- PME-Enable-)");
        assert_eq!(
            r.decode(&d, Location::new(Region::Config, 0x88), 2, None)
                .name(),
            "EXP.DEVCTL"
        );
        let f = r.find(&d, "config:pm.pmcsr").unwrap();
        assert_eq!(f.location, Location::new(Region::Config, 0x64));
        // Past every capability: unnamed.
        assert!(
            !r.decode(&d, Location::new(Region::Config, 0xf0), 4, None)
                .is_named()
        );
    }

    #[test]
    fn msi_layout_follows_control() {
        let mut c = vec![0u8; 256];
        c[0x06] = 0x10; // Status: capability list
        c[0x34] = 0x50;
        // MSI, 64-bit, per-vector masking.
        c[0x50..0x54].copy_from_slice(&[0x05, 0x00, 0x80, 0x01]);
        let d = DeviceFacts::from_config(&c);
        let r = Registry::builtin();
        let name = |o| {
            r.decode(&d, Location::new(Region::Config, o), 4, None)
                .name()
        };
        assert_eq!(name(0x58), "MSI.ADDR_HI");
        assert_eq!(name(0x5c), "MSI.DATA");
        assert_eq!(name(0x60), "MSI.MASK");
        assert_eq!(name(0x64), "MSI.PENDING");
    }

    #[test]
    fn bridge_header() {
        let mut c = vec![0u8; 64];
        c[0x0e] = 0x01;
        let d = DeviceFacts::from_config(&c);
        let r = Registry::builtin();
        assert_eq!(
            r.decode(&d, Location::new(Region::Config, 0x19), 1, None)
                .name(),
            "SECONDARY_BUS"
        );
        let offline = DeviceFacts::new();
        let f = r
            .field_at(&offline, Location::new(Region::Config, 0x30))
            .unwrap();
        assert_eq!(f.name, "ROM_ADDRESS");
        assert!(f.assumption.unwrap().contains("header type 0 assumed"));
    }
}
