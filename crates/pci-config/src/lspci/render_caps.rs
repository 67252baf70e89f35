//! Rendering the capability lines of `lspci -vv` (formats of pciutils `ls-caps.c` and
//! `ls-ecaps.c`): PM, MSI, MSI-X, PCI Express device and link registers, vendor-specific, and the
//! extended capabilities by name.

use std::fmt::Write;

use crate::capability::{
    CapId, CapabilityError, CapabilityId, ExpressCapability, ExtCapabilityId, MsiCapability,
    MsixCapability, PortType, PowerManagement, capabilities_lenient,
};
use crate::header::Status;

use super::render::{pm, u16_at, u32_at};

pub(super) fn render_capabilities(out: &mut String, b: &[u8], status: Status) {
    if !status.has_capabilities() {
        return;
    }
    let (caps, err) = capabilities_lenient(b);
    let mut port = None;
    let mut std_err_shown = false;
    for c in caps.iter().filter(|c| !c.id.is_extended()) {
        let _ = write!(out, "\tCapabilities: [{:02x}] ", c.offset);
        let CapId::Standard(id) = c.id else { continue };
        render_standard(out, b, c.offset, id, &mut port);
    }
    if let Some(e) = &err {
        let std_chain = match e {
            CapabilityError::PointerBelowExtended { .. } => false,
            CapabilityError::Broken { offset }
            | CapabilityError::Loop { target: offset, .. }
            | CapabilityError::Truncated { offset, .. }
            | CapabilityError::Overlap { offset, .. } => *offset < 0x100,
            CapabilityError::PointerIntoHeader { pointer, .. } => *pointer < 0x100,
            _ => true,
        };
        if std_chain {
            std_err_shown = true;
            render_chain_error(out, e, false);
        }
    }
    for c in caps.iter().filter(|c| c.id.is_extended()) {
        let _ = write!(out, "\tCapabilities: [{:03x} v{}] ", c.offset, c.version);
        let CapId::Extended(id) = c.id else { continue };
        render_extended(out, b, c.offset as usize, id);
    }
    if let (Some(e), false) = (&err, std_err_shown) {
        render_chain_error(out, e, true);
    }
}

fn render_chain_error(out: &mut String, e: &CapabilityError, extended: bool) {
    let (at, what) = match e {
        CapabilityError::Loop { target, .. } => (*target, "<chain looped>"),
        CapabilityError::Broken { offset } => (*offset, "<chain broken>"),
        CapabilityError::Truncated { offset, .. } | CapabilityError::Overlap { offset, .. } => {
            (*offset, "<chain broken>")
        }
        CapabilityError::PointerIntoHeader { pointer, .. }
        | CapabilityError::PointerBelowExtended { pointer, .. } => (*pointer, "<chain broken>"),
        _ => return,
    };
    if extended {
        let _ = writeln!(out, "\tCapabilities: [{at:03x}] {what}");
    } else {
        let _ = writeln!(out, "\tCapabilities: [{at:02x}] {what}");
    }
}

fn render_standard(
    out: &mut String,
    b: &[u8],
    at: u16,
    id: CapabilityId,
    port: &mut Option<PortType>,
) {
    match id {
        CapabilityId::POWER_MANAGEMENT => match PowerManagement::parse(b, at) {
            Ok(p) => render_pm(out, &p),
            Err(_) => out.push_str("Power Management <unreadable>\n"),
        },
        CapabilityId::MSI => match MsiCapability::parse(b, at) {
            Ok(m) => render_msi(out, &m),
            Err(_) => out.push_str("MSI: <unreadable>\n"),
        },
        CapabilityId::MSIX => {
            // Decoded without `parse`'s BIR check: lspci shows a BIR of 6 or 7 as it is.
            let m = MsixCapability::from_registers(
                at,
                u16_at(b, at as usize + 2),
                u32_at(b, at as usize + 4),
                u32_at(b, at as usize + 8),
            );
            let _ = writeln!(
                out,
                "MSI-X: Enable{} Count={} Masked{}",
                pm(m.enabled),
                m.table_size,
                pm(m.function_masked)
            );
            let _ = writeln!(
                out,
                "\t\tVector table: BAR={} offset={:08x}",
                m.table.bir, m.table.offset
            );
            let _ = writeln!(
                out,
                "\t\tPBA: BAR={} offset={:08x}",
                m.pba.bir, m.pba.offset
            );
        }
        CapabilityId::EXPRESS => match ExpressCapability::parse(b, at) {
            Ok(e) => {
                *port = Some(e.port_type());
                render_express(out, &e);
            }
            Err(_) => out.push_str("Express <unreadable>\n"),
        },
        CapabilityId::VENDOR_SPECIFIC => {
            let _ = writeln!(
                out,
                "Vendor Specific Information: Len={:02x} <?>",
                b[at as usize + 2]
            );
        }
        other => match other.name() {
            Some(n) => {
                let _ = writeln!(out, "{n}");
            }
            None => {
                let _ = writeln!(out, "#{:02x} [{:04x}]", other.0, u16_at(b, at as usize + 2));
            }
        },
    }
}

fn render_pm(out: &mut String, p: &PowerManagement) {
    const AUX: [u32; 8] = [0, 55, 100, 160, 220, 270, 320, 375];
    let c = p.pmc;
    let _ = writeln!(out, "Power Management version {}", p.version());
    let f = |bit: u16| pm(c & bit != 0);
    let _ = writeln!(
        out,
        "\t\tFlags: PMEClk{} DSI{} D1{} D2{} AuxCurrent={}mA PME(D0{},D1{},D2{},D3hot{},D3cold{})",
        f(1 << 3),
        f(1 << 5),
        f(1 << 9),
        f(1 << 10),
        AUX[((c >> 6) & 7) as usize],
        f(1 << 11),
        f(1 << 12),
        f(1 << 13),
        f(1 << 14),
        f(1 << 15)
    );
    let t = p.pmcsr;
    let _ = writeln!(
        out,
        "\t\tStatus: D{} NoSoftRst{} PME-Enable{} DSel={} DScale={} PME{}",
        t & 3,
        pm(p.no_soft_reset()),
        pm(p.pme_enabled()),
        (t >> 9) & 0xf,
        (t >> 13) & 3,
        pm(p.pme_status())
    );
}

fn render_msi(out: &mut String, m: &MsiCapability) {
    let _ = writeln!(
        out,
        "MSI: Enable{} Count={}/{} Maskable{} 64bit{}",
        pm(m.enabled()),
        m.vectors_enabled(),
        m.vectors_capable(),
        pm(m.per_vector_masking()),
        pm(m.is_64bit())
    );
    out.push_str("\t\tAddress: ");
    if m.is_64bit() {
        let _ = write!(out, "{:08x}", (m.address >> 32) as u32);
    }
    let _ = writeln!(out, "{:08x}  Data: {:04x}", m.address as u32, m.data);
    if let (Some(mask), Some(pending)) = (m.mask_bits, m.pending_bits) {
        let _ = writeln!(out, "\t\tMasking: {mask:08x}  Pending: {pending:08x}");
    }
}

fn link_speed(s: u32) -> &'static str {
    match s {
        1 => "2.5GT/s",
        2 => "5GT/s",
        3 => "8GT/s",
        4 => "16GT/s",
        5 => "32GT/s",
        6 => "64GT/s",
        _ => "unknown",
    }
}

fn render_express(out: &mut String, e: &ExpressCapability) {
    use PortType::*;
    const L0S: [&str; 8] = [
        "<64ns",
        "<128ns",
        "<256ns",
        "<512ns",
        "<1us",
        "<2us",
        "<4us",
        "unlimited",
    ];
    const L1: [&str; 8] = [
        "<1us",
        "<2us",
        "<4us",
        "<8us",
        "<16us",
        "<32us",
        "<64us",
        "unlimited",
    ];
    let ty = e.port_type();
    let name = match ty {
        RootPort | DownstreamPort | PciToPcieBridge => {
            format!("{} (Slot{})", ty.lspci_name(), pm(e.slot_implemented()))
        }
        _ => ty.lspci_name(),
    };
    let _ = writeln!(
        out,
        "Express (v{}) {name}, MSI {:02x}",
        e.version(),
        e.interrupt_message_number()
    );
    let t = e.device_capabilities;
    let _ = write!(
        out,
        "\t\tDevCap:\tMaxPayload {} bytes, PhantFunc {}",
        128u32 << (t & 7).min(5),
        (1u32 << ((t >> 3) & 3)) - 1
    );
    let endpoint = matches!(ty, Endpoint | LegacyEndpoint);
    if endpoint {
        let _ = write!(
            out,
            ", Latency L0s {}, L1 {}",
            L0S[((t >> 6) & 7) as usize],
            L1[((t >> 9) & 7) as usize]
        );
    }
    let _ = write!(out, "\n\t\t\tExtTag{}", pm(t & 0x20 != 0));
    if matches!(
        ty,
        Endpoint | LegacyEndpoint | UpstreamPort | PcieToPciBridge
    ) {
        let _ = write!(
            out,
            " AttnBtn{} AttnInd{} PwrInd{}",
            pm(t & 0x1000 != 0),
            pm(t & 0x2000 != 0),
            pm(t & 0x4000 != 0)
        );
    }
    let _ = write!(out, " RBE{}", pm(t & 0x8000 != 0));
    if endpoint {
        let _ = write!(out, " FLReset{}", pm(e.flr_capable()));
    }
    if matches!(ty, Endpoint | UpstreamPort | PcieToPciBridge) {
        let scale = [1.0f64, 0.1, 0.01, 0.001][((t >> 26) & 3) as usize];
        let _ = write!(
            out,
            " SlotPowerLimit {:.3}W",
            ((t >> 18) & 0xff) as f64 * scale
        );
    }
    out.push('\n');
    let w = e.device_control;
    let f = |bit: u16| pm(w & bit != 0);
    let _ = writeln!(
        out,
        "\t\tDevCtl:\tCorrErr{} NonFatalErr{} FatalErr{} UnsupReq{}",
        f(1),
        f(2),
        f(4),
        f(8)
    );
    let _ = write!(
        out,
        "\t\t\tRlxdOrd{} ExtTag{} PhantFunc{} AuxPwr{} NoSnoop{}",
        f(0x10),
        f(0x100),
        f(0x200),
        f(0x400),
        f(0x800)
    );
    if ty == PcieToPciBridge {
        let _ = write!(out, " BrConfRtry{}", f(0x8000));
    }
    if endpoint && e.flr_capable() {
        let _ = write!(out, " FLReset{}", f(0x8000));
    }
    let _ = writeln!(
        out,
        "\n\t\t\tMaxPayload {} bytes, MaxReadReq {} bytes",
        128u32 << ((w >> 5) & 7).min(5),
        128u32 << ((w >> 12) & 7).min(5)
    );
    let s = e.device_status;
    let g = |bit: u16| pm(s & bit != 0);
    let _ = writeln!(
        out,
        "\t\tDevSta:\tCorrErr{} NonFatalErr{} FatalErr{} UnsupReq{} AuxPwr{} TransPend{}",
        g(1),
        g(2),
        g(4),
        g(8),
        g(0x10),
        g(0x20)
    );
    if !ty.has_link() {
        return;
    }
    let l = e.link_capabilities;
    let aspm = (l >> 10) & 3;
    let _ = write!(
        out,
        "\t\tLnkCap:\tPort #{}, Speed {}, Width x{}, ASPM {}",
        l >> 24,
        link_speed(l & 0xf),
        (l >> 4) & 0x3f,
        ["not supported", "L0s", "L1", "L0s L1"][aspm as usize]
    );
    if aspm != 0 {
        out.push_str(", Exit Latency ");
        if aspm & 1 != 0 {
            let _ = write!(out, "L0s {}", L0S[((l >> 12) & 7) as usize]);
        }
        if aspm & 2 != 0 {
            let sep = if aspm & 1 != 0 { ", " } else { "" };
            let _ = write!(out, "{sep}L1 {}", L1[((l >> 15) & 7) as usize]);
        }
    }
    let h = |bit: u32| pm(l & bit != 0);
    let _ = writeln!(
        out,
        "\n\t\t\tClockPM{} Surprise{} LLActRep{} BwNot{} ASPMOptComp{}",
        h(1 << 18),
        h(1 << 19),
        h(1 << 20),
        h(1 << 21),
        h(1 << 22)
    );
    let c = e.link_control;
    let k = |bit: u16| pm(c & bit != 0);
    let _ = write!(
        out,
        "\t\tLnkCtl:\tASPM {};",
        ["Disabled", "L0s Enabled", "L1 Enabled", "L0s L1 Enabled"][(c & 3) as usize]
    );
    if matches!(ty, RootPort | Endpoint | LegacyEndpoint | PcieToPciBridge) {
        let _ = write!(out, " RCB {} bytes,", if c & 8 != 0 { 128 } else { 64 });
    }
    let _ = writeln!(
        out,
        " Disabled{} CommClk{}\n\t\t\tExtSynch{} ClockPM{} AutWidDis{} BWInt{} AutBWInt{}",
        k(0x10),
        k(0x40),
        k(0x80),
        k(0x100),
        k(0x200),
        k(0x400),
        k(0x800)
    );
    let st = e.link_status;
    let cmp = |a: u32, b: u32| match a.cmp(&b) {
        std::cmp::Ordering::Less => "downgraded",
        std::cmp::Ordering::Greater => "strange",
        std::cmp::Ordering::Equal => "ok",
    };
    let (sp, wd) = ((st & 0xf) as u32, ((st >> 4) & 0x3f) as u32);
    let _ = writeln!(
        out,
        "\t\tLnkSta:\tSpeed {} ({}), Width x{} ({})",
        link_speed(sp),
        cmp(sp, l & 0xf),
        wd,
        cmp(wd, (l >> 4) & 0x3f)
    );
    let m = |bit: u16| pm(st & bit != 0);
    let _ = writeln!(
        out,
        "\t\t\tTrErr{} Train{} SlotClk{} DLActive{} BWMgmt{} ABWMgmt{}",
        m(0x400),
        m(0x800),
        m(0x1000),
        m(0x2000),
        m(0x4000),
        m(0x8000)
    );
}

fn render_extended(out: &mut String, b: &[u8], at: usize, id: ExtCapabilityId) {
    match id {
        ExtCapabilityId::DEVICE_SERIAL_NUMBER => {
            let (lo, hi) = (u32_at(b, at + 4), u32_at(b, at + 8));
            let s: Vec<String> = hi
                .to_be_bytes()
                .iter()
                .chain(lo.to_be_bytes().iter())
                .map(|x| format!("{x:02x}"))
                .collect();
            let _ = writeln!(out, "Device Serial Number {}", s.join("-"));
        }
        ExtCapabilityId::VENDOR_SPECIFIC => {
            let h = u32_at(b, at + 4);
            let _ = writeln!(
                out,
                "Vendor Specific Information: ID={:04x} Rev={} Len={:03x} <?>",
                h & 0xffff,
                (h >> 16) & 0xf,
                h >> 20
            );
        }
        other => match other.name() {
            Some(n) => {
                let _ = writeln!(out, "{n}");
            }
            None => {
                let _ = writeln!(out, "Extended Capability ID {:#x}", other.0);
            }
        },
    }
}
