//! `refvmm explain`: what a register is, how the trap/map plan treats it, and what to check when
//! a write to it "does nothing".
//!
//! It bridges two teams' names for one thing: the NVMe engineer's `SQ3TDBL` and the
//! virtualization engineer's `bar0+0x1018` (names from `pci_regnames`). The device comes from
//! an `lspci -vv` file, offline, exactly as `refvmm plan` reads it, or from a host device by BDF
//! through sysfs, read-only (see `explain/live.rs`).

mod live;

use std::path::PathBuf;

use clap::Args;
use pci_config::capability::{BarOffset, MsixCapability, PowerManagement};
use pci_config::lspci::LspciDevice;
use pci_config::{BarKind, Bdf, CapId, CapabilityId, Command};
use pci_regnames::{DeviceFacts, Field, Location, Region, Registry, parse_offset};
use trap_map::view::{self, GuestPlacement};
use trap_map::{DevicePlan, MsixRelocation, PageSize, Policy, SegmentKind, TrapHandling};
use vfio_pci::host::PciAddress;

use crate::CmdResult;
use crate::host::HostRootArg;
use crate::plan;

/// Options of `refvmm explain`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  refvmm explain nvme.lspci bar0+0x1018        the register at BAR0 offset 0x1018
  refvmm explain nvme.lspci nvme:SQ3TDBL       where the doorbell of I/O queue 3 is
  refvmm explain 0000:01:00.0 SQ3TDBL          the same, live from the host device (sysfs only)
  refvmm explain nic.lspci msix:MSIX[2].CTRL --policy trap-all

Offline, nothing is read from the device: values are lspci's, and what lspci cannot tell is
assumed and said (e.g. the NVMe doorbell stride). Live, the device is only read (config, resource,
and as root single registers through a read-only mmap of resourceN, when memory decode is on).")]
pub struct ExplainArgs {
    /// An `lspci -vv` file (`-` for standard input), or a host device (0000:01:00.0, 01:00.0).
    #[arg(value_name = "FILE|BDF")]
    pub target: String,
    /// The register: REGION+OFFSET (bar0+0x1018, config+0x4, rom+0x0) or a name, optionally
    /// with its decoder (`nvme:SQ3TDBL`, `SQ3TDBL`, `COMMAND`, `msix:MSIX[3].CTRL`).
    #[arg(value_name = "REGISTER")]
    pub register: String,
    /// The device to explain, when the lspci input holds several.
    #[arg(long, value_name = "BDF")]
    pub device: Option<Bdf>,
    /// Access width in bytes (1, 2, 4 or 8); default: the register's size.
    #[arg(long, value_name = "BYTES", value_parser = parse_width)]
    pub width: Option<u8>,
    /// A value written, to decode (e.g. 8 or 0x8).
    #[arg(long, value_name = "VALUE", value_parser = parse_value)]
    pub value: Option<u64>,
    /// Host page size for the plan: 4K, 16K or 64K; default: this host's (as `plan` and `run`).
    #[arg(long, value_name = "SIZE")]
    pub page_size: Option<PageSize>,
    /// trap-map policy, comma-separated, as `refvmm run` and `plan` take it: `default`, `trap-all`
    /// (every BAR byte trapped, QEMU's x-no-mmap), `trap-pba` (the PBA trapped even on a page of
    /// its own).
    #[arg(long, value_name = "POLICY", default_value = "default", value_parser = crate::run::parse_policy)]
    pub policy: Policy,
    /// MSI-X relocation of the plan: off, auto, or bar0..bar5.
    #[arg(long, value_name = "WHERE", default_value = "off")]
    pub msix_relocation: MsixRelocation,
    #[command(flatten)]
    pub root: HostRootArg,
}

fn parse_width(s: &str) -> Result<u8, String> {
    match s.trim() {
        "1" => Ok(1),
        "2" => Ok(2),
        "4" => Ok(4),
        "8" => Ok(8),
        _ => Err(format!("`{s}` is not a width: use 1, 2, 4 or 8")),
    }
}

fn parse_value(s: &str) -> Result<u64, String> {
    parse_offset(s).map_err(|_| format!("`{s}` is not a value: use hex (0x8) or decimal"))
}

/// Why `refvmm explain` cannot explain.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The target is neither a readable file nor a host device address.
    #[error("`{target}` is neither an lspci file nor a PCI address (0000:01:00.0): {why}")]
    Target {
        /// What was given.
        target: String,
        /// Why it is neither.
        why: String,
    },
    /// No such host device.
    #[error("no PCI device at {}: check the address with `lspci -D`", dir.display())]
    NoDevice {
        /// The sysfs directory looked for.
        dir: PathBuf,
    },
    /// A sysfs file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `resource` line is not `start end flags`.
    #[error("{}: unexpected line `{line}` (want `start end flags` in hex)", path.display())]
    Resource {
        /// The file.
        path: PathBuf,
        /// The line.
        line: String,
    },
    /// The register text is neither a location nor a known name.
    #[error(
        "device {bdf}: `{register}` is not REGION+OFFSET (bar0+0x1018) and not a register name"
    )]
    Register {
        /// The device.
        bdf: Bdf,
        /// What was given.
        register: String,
        /// Why the name lookup failed.
        #[source]
        source: pci_regnames::FindError,
    },
    /// The plan could not be made.
    #[error("device {bdf}: cannot plan")]
    Plan {
        /// The device.
        bdf: Bdf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A BAR as the host has it programmed.
#[derive(Debug, Clone)]
pub struct BarFacts {
    /// BAR index.
    pub index: u8,
    /// Memory or I/O.
    pub kind: BarKind,
    /// Prefetchable.
    pub prefetchable: bool,
    /// Address the host programmed, when assigned.
    pub host_address: Option<u64>,
    /// Size in bytes.
    pub size: u64,
}

/// Everything known about the device, from lspci or sysfs.
struct Subject {
    bdf: Bdf,
    title: String,
    /// Where the facts come from, with what that implies.
    origin: String,
    /// Where values printed come from: `lspci` or `live`.
    value_source: &'static str,
    facts: DeviceFacts,
    bars: Vec<BarFacts>,
    layout: trap_map::DeviceLayout,
    command: Option<u16>,
    /// Power state (0..3 = D0..D3hot) and the PM capability's offset.
    power: Option<(u8, u16)>,
    msix: Option<MsixCapability>,
    live: Option<live::LiveDevice>,
    /// Why live register reads are not possible, when they are not.
    live_limits: Vec<String>,
}

impl Subject {
    fn from_lspci(args: &ExplainArgs) -> Result<Self, Box<dyn std::error::Error>> {
        let input = PathBuf::from(&args.target);
        let text = plan::read_input(Some(&input))?;
        let dev = plan::pick_device(&text, args.device)?;
        let layout = plan::layout_from_lspci(&dev, &[], true)?;
        let mut facts = match dev.config_bytes() {
            Some(bytes) => DeviceFacts::from_config(bytes),
            None => DeviceFacts::new(),
        };
        if let (Some(v), Some(d)) = (dev.vendor_id(), dev.device_id()) {
            facts = facts.with_ids(v, d);
        }
        if let (Some(class), Some(prog_if)) = (dev.class_code(), dev.prog_if()) {
            facts = facts.with_class((class as u32) << 8 | prog_if as u32);
        } else if let Some(c) = facts.class_code() {
            facts = facts.with_class(c);
        }
        let msix = facts.msix().copied().or_else(|| msix_from_lspci(&dev));
        if let Some(m) = msix {
            facts = facts.with_msix(m);
        }
        let bars = dev
            .bars()
            .iter()
            .map(|b| BarFacts {
                index: b.index,
                kind: b.kind,
                prefetchable: b.prefetchable,
                host_address: b.address.filter(|_| b.is_assigned()),
                size: b.size.unwrap_or(0),
            })
            .collect();
        let power = power_from_config(&facts).or_else(|| power_from_lspci(&dev));
        Ok(Subject {
            bdf: dev.bdf(),
            title: title(&dev),
            origin: format!(
                "lspci text {} (offline: nothing read from the device; values are what lspci \
                 printed)",
                args.target
            ),
            value_source: "lspci",
            command: dev.command().map(|c| c.0),
            facts,
            bars,
            layout,
            power,
            msix,
            live: None,
            live_limits: vec![
                "offline: run `refvmm explain BDF ...` on the host for live values".into(),
            ],
        })
    }

    fn from_host(
        args: &ExplainArgs,
        address: PciAddress,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let paths = args.root.paths();
        let dev = live::LiveDevice::open(&paths, address)?;
        let config = dev.config()?;
        let mut facts = DeviceFacts::from_config(&config);
        let bars = dev.bars()?;
        let msix = facts.msix().copied();
        let layout = live::layout(&bars, msix.as_ref());
        let command = facts.config_value(0x04, 2).map(|c| c as u16);
        let mut live_limits = Vec::new();
        if config.len() <= 64 {
            live_limits.push(format!(
                "{}/config gave {} bytes: capabilities (PM, MSI-X) need root",
                dev.dir().display(),
                config.len()
            ));
        }
        let decode_on = command.is_some_and(|c| c & Command::MEMORY != 0);
        if !decode_on {
            live_limits.push(
                "memory decode is off: BAR registers are not read (a read would be an \
                 Unsupported Request)"
                    .into(),
            );
        }
        // NVMe: the doorbell stride is in CAP (bar0+0x0); read it when allowed.
        if decode_on && Registry::builtin().applicable(&facts).contains(&"nvme") {
            match dev.read_bar(0, 0, 8) {
                Ok(cap) => facts = facts.with_value(Location::new(Region::Bar(0), 0), cap),
                Err(e) => live_limits.push(format!("CAP not read: {e}")),
            }
        }
        let power = power_from_config(&facts);
        let vendor = facts.vendor_id().unwrap_or(0);
        let device = facts.device_id().unwrap_or(0);
        Ok(Subject {
            bdf: address.bdf(),
            title: format!(
                "class {:06x} [{vendor:04x}:{device:04x}]",
                facts.class_code().unwrap_or(0)
            ),
            origin: format!("live host device {} (read-only)", dev.dir().display()),
            value_source: "live",
            facts,
            bars,
            layout,
            command,
            power,
            msix,
            live: decode_on.then_some(dev),
            live_limits,
        })
    }
}

fn title(dev: &LspciDevice) -> String {
    let ids = match (dev.vendor_id(), dev.device_id()) {
        (Some(v), Some(d)) => format!(" [{v:04x}:{d:04x}]"),
        _ => String::new(),
    };
    let desc = if dev.description().is_empty() {
        String::new()
    } else {
        format!(" {}", dev.description())
    };
    format!("{}{ids}{desc}", dev.class_name())
}

fn msix_from_lspci(dev: &LspciDevice) -> Option<MsixCapability> {
    let m = dev.msix()?;
    let mut cap = MsixCapability::new(m.table_size, m.table?, m.pba?);
    cap.offset = m.offset;
    cap.enabled = m.enabled;
    cap.function_masked = m.function_masked;
    Some(cap)
}

fn power_from_config(facts: &DeviceFacts) -> Option<(u8, u16)> {
    let cap = facts
        .capabilities()
        .iter()
        .find(|c| c.id == CapId::Standard(CapabilityId::POWER_MANAGEMENT))?;
    let pm = PowerManagement::parse(facts.config(), cap.offset).ok()?;
    Some((pm.power_state(), cap.offset))
}

/// lspci's `Status: D0 NoSoftRst- ...` line of the PM capability, when there is no hex dump.
fn power_from_lspci(dev: &LspciDevice) -> Option<(u8, u16)> {
    let cap = dev
        .capabilities()
        .iter()
        .find(|c| c.id == Some(CapId::Standard(CapabilityId::POWER_MANAGEMENT)))?;
    let status = cap
        .details
        .iter()
        .find_map(|l| l.trim().strip_prefix("Status: "))?;
    let state = match status.split_whitespace().next()? {
        "D0" => 0,
        "D1" => 1,
        "D2" => 2,
        "D3hot" => 3,
        _ => return None,
    };
    Some((state, cap.offset))
}

/// Runs `refvmm explain`.
pub fn run(args: ExplainArgs) -> CmdResult {
    let subject = if std::path::Path::new(&args.target).exists() || args.target == "-" {
        Subject::from_lspci(&args)?
    } else {
        match PciAddress::from_arg(&args.target) {
            Ok(address) => Subject::from_host(&args, address)?,
            Err(e) => {
                return Err(ExplainError::Target {
                    target: args.target.clone(),
                    why: format!("no such file, and {e}"),
                }
                .into());
            }
        }
    };
    print!("{}", explain(&subject, &args)?);
    Ok(())
}

fn explain(s: &Subject, args: &ExplainArgs) -> Result<String, ExplainError> {
    let registry = Registry::builtin();
    let (at, field) = match args.register.parse::<Location>() {
        Ok(at) => (at, registry.field_at(&s.facts, at)),
        Err(_) => {
            let f = registry.find(&s.facts, &args.register).map_err(|source| {
                ExplainError::Register {
                    bdf: s.bdf,
                    register: args.register.clone(),
                    source,
                }
            })?;
            (f.location, Some(f))
        }
    };
    let width = args.width.or(field.as_ref().map(|f| f.size)).unwrap_or(4);
    let decoded = registry.decode(&s.facts, at, width, args.value);
    let mut out = format!("Device {}: {}\n", s.bdf, s.title);
    out += &format!("From: {}\n", s.origin);
    out += &format!("Decoders: {}\n\n", registry.applicable(&s.facts).join(", "));

    out += &format!("Register {at} ({width} bytes): {}\n", decoded.name());
    for part in &decoded.parts {
        out += &format!(
            "  {}: {} [{} decoder]\n",
            part.name(),
            part.field.description,
            part.field.decoder
        );
        if let Some(a) = &part.field.assumption {
            out += &format!("  assumed: {a}\n");
        }
    }
    if !decoded.is_named() {
        out += "  no decoder names these bytes\n";
    }
    if let Some(v) = args.value {
        out += &format!(
            "  value {v:#x}{}\n",
            decoded
                .value_text()
                .map(|t| format!(": {t}"))
                .unwrap_or_default()
        );
    }
    out += "\n";

    let policy = Policy {
        msix_relocation: args.msix_relocation,
        ..args.policy
    };
    let plan = DevicePlan::new(
        &s.layout,
        args.page_size.unwrap_or_else(vfio_pci::host_page_size),
        policy,
    )
    .map_err(|e| ExplainError::Plan {
        bdf: s.bdf,
        source: Box::new(e),
    })?;
    let placement =
        GuestPlacement::auto(&plan, &GuestPlacement::new()).map_err(|e| ExplainError::Plan {
            bdf: s.bdf,
            source: Box::new(e),
        })?;
    out += &format!(
        "Plan (host page {}, {}):\n",
        plan.page_size(),
        if policy.trap_all {
            "trap everything"
        } else {
            "trap only what must be trapped"
        }
    );
    out += &plan_treatment(&plan, &placement, at);
    out += "\n";
    out += &format!(
        "If a write to it does nothing, check ({} values):\n",
        s.value_source
    );
    for (verdict, text) in checks(s, &plan, &placement, at, field.as_ref()) {
        out += &format!("  [{verdict}] {text}\n");
    }
    for limit in &s.live_limits {
        out += &format!("  note: {limit}\n");
    }
    Ok(out)
}

/// How the plan treats `at`: mapped (no exit) or trapped (who answers, and why).
fn plan_treatment(plan: &DevicePlan, placement: &GuestPlacement, at: Location) -> String {
    match at.region {
        Region::Config => "  config space is always trapped: the VMM's virtualized config \
                           (pci_config::VirtualizedConfig) emulates the bits it owns (BARs, \
                           MSI/MSI-X control, ...) and forwards the rest to the device through \
                           the VFIO config region\n"
            .to_string(),
        Region::Rom => "  the expansion ROM is trapped: reads are served from a copy, writes are \
                        dropped\n"
            .to_string(),
        Region::Bar(n) => {
            let Some(bar) = plan.bar(n) else {
                return format!("  the device has no BAR {n}: nothing in the plan\n");
            };
            let guest = placement
                .address(n)
                .map(|a| format!(" (guest {:#x})", a + at.offset))
                .unwrap_or_default();
            let Some(seg) = bar.segment_at(at.offset) else {
                return format!(
                    "  offset {:#x} is past the end of BAR {n} ({}): the access reaches no \
                     register of this device\n",
                    at.offset,
                    view::human_size(bar.guest_size())
                );
            };
            let range = format!(
                "{at}{guest} lies in bar{n} {:#x}..{:#x}",
                seg.offset,
                seg.end()
            );
            match seg.kind {
                SegmentKind::Map { .. } => format!(
                    "  {range}: MAPPED. A guest write goes straight to the device with no exit: \
                     the VMM never sees it, so it cannot delay, drop or trace it. To see every \
                     write, trap everything: `refvmm run --policy trap-all` (QEMU: \
                     x-no-mmap=on; `--policy trap-all` here shows that plan).\n"
                ),
                SegmentKind::Trap { reason } => {
                    let who = match reason.handling() {
                        TrapHandling::MsixTable => "the VMM's MSI-X table emulation \
                            (trap_map::MsixTable) answers it: the guest's vector addresses and \
                            masks are kept by the VMM and turned into host interrupt routes, \
                            the device's own table is never written by the guest"
                            .to_string(),
                        TrapHandling::MsixPba => "the VMM's PBA emulation answers it: reads \
                            give the emulated pending bits, writes are dropped (the PBA is \
                            read-only)"
                            .to_string(),
                        TrapHandling::Device => "the VMM forwards it to the device (a VFIO \
                            region write at the same offset): it takes effect, at the cost of \
                            one exit per access"
                            .to_string(),
                        TrapHandling::Unbacked => "no device register is behind it: reads \
                            return 0, writes are dropped"
                            .to_string(),
                    };
                    format!("  {range}: TRAPPED ({reason}); {who}.\n")
                }
            }
        }
    }
}

type Check = (&'static str, String);

fn checks(
    s: &Subject,
    plan: &DevicePlan,
    placement: &GuestPlacement,
    at: Location,
    field: Option<&Field>,
) -> Vec<Check> {
    let mut out: Vec<Check> = Vec::new();
    let bar = match at.region {
        Region::Bar(n) => s.bars.iter().find(|b| b.index == n),
        _ => None,
    };
    if let Region::Bar(n) = at.region {
        match bar {
            None => out.push(("FAIL", format!("the device has no BAR {n}"))),
            Some(b) if at.offset >= b.size => out.push((
                "FAIL",
                format!(
                    "offset {:#x} is outside BAR {n} ({} bytes, {})",
                    at.offset,
                    b.size,
                    view::human_size(b.size)
                ),
            )),
            Some(b) => out.push((
                "ok",
                format!(
                    "offset {:#x} is inside BAR {n} ({})",
                    at.offset,
                    view::human_size(b.size)
                ),
            )),
        }
    }
    let is_io = bar.is_some_and(|b| b.kind == BarKind::Io);
    match s.command {
        None => out.push(("??", "COMMAND unknown".into())),
        Some(c) => {
            let (bit, name, what) = if is_io {
                (Command::IO, "I/O+", "I/O decode")
            } else {
                (Command::MEMORY, "Mem+", "memory decode")
            };
            out.push(if c & bit != 0 {
                ("ok", format!("COMMAND {name}: {what} is on"))
            } else {
                (
                    "FAIL",
                    format!(
                        "COMMAND {}-: {what} is off, the device ignores accesses to its BARs",
                        &name[..name.len() - 1]
                    ),
                )
            });
            out.push(if c & Command::BUS_MASTER != 0 {
                ("ok", "COMMAND BusMaster+: the device may DMA".to_string())
            } else {
                (
                    "FAIL",
                    "COMMAND BusMaster-: the device cannot DMA; a doorbell is accepted but the \
                     controller cannot fetch the queue entry or post the completion"
                        .to_string(),
                )
            });
        }
    }
    if let Some(b) = bar {
        let guest = placement.address(b.index);
        match (b.host_address, guest) {
            (Some(h), Some(g)) if h != 0 => out.push((
                "ok",
                format!(
                    "BAR {} programmed on the host at {h:#x}; the guest uses {g:#x} in this plan \
                     (a guest driver must use its own BAR value, never the host address)",
                    b.index
                ),
            )),
            _ => out.push((
                "FAIL",
                format!(
                    "BAR {} has no host address assigned: the device decodes nothing",
                    b.index
                ),
            )),
        }
    }
    match s.power {
        Some((0, off)) => out.push(("ok", format!("power state D0 (PM capability at {off:#x})"))),
        Some((d, off)) => out.push((
            "FAIL",
            format!(
                "power state {} (PM capability at {off:#x}): outside D0 the device answers only \
                 config space",
                ["D0", "D1", "D2", "D3hot"][d as usize & 3]
            ),
        )),
        None => out.push(("??", "power state unknown (no PM capability read)".into())),
    }
    match &s.msix {
        None => out.push(("--", "no MSI-X capability".into())),
        Some(m) => {
            out.push(match (m.enabled, m.function_masked) {
                (true, false) => (
                    "ok",
                    format!(
                        "MSI-X enabled, function not masked (capability at {:#x})",
                        m.offset
                    ),
                ),
                (false, _) => (
                    "FAIL",
                    format!(
                        "MSI-X disabled (capability at {:#x}): the device raises no MSI-X \
                         interrupt, completions go unnoticed unless the driver polls",
                        m.offset
                    ),
                ),
                (true, true) => (
                    "FAIL",
                    format!(
                        "MSI-X function mask set (capability at {:#x}): every vector is masked",
                        m.offset
                    ),
                ),
            });
            if let Some((vector, why)) = field.and_then(queue_vector) {
                out.push(vector_check(s, plan, m, vector, why));
            }
        }
    }
    out
}

/// The MSI-X vector a register's queue interrupts on, by convention, and the convention.
fn queue_vector(field: &Field) -> Option<(u16, &'static str)> {
    if field.decoder != "nvme" {
        return None;
    }
    let qid: u16 = field
        .name
        .strip_prefix("SQ")
        .or_else(|| field.name.strip_prefix("CQ"))?
        .trim_end_matches("TDBL")
        .trim_end_matches("HDBL")
        .parse()
        .ok()?;
    Some((
        qid,
        "Linux's nvme driver gives queue n vector n when it has several vectors; the Create I/O \
         Completion Queue command's IV field decides",
    ))
}

fn vector_check(
    s: &Subject,
    plan: &DevicePlan,
    m: &MsixCapability,
    vector: u16,
    why: &str,
) -> Check {
    if vector >= m.table_size {
        return (
            "FAIL",
            format!(
                "vector {vector} is past the MSI-X table ({} vectors)",
                m.table_size
            ),
        );
    }
    let BarOffset { bir, offset } = m.table;
    let ctrl = offset as u64 + vector as u64 * 16 + 12;
    let at = Location::new(Region::Bar(bir), ctrl);
    let trapped = plan
        .segment_at(bir, ctrl)
        .is_some_and(|seg| !seg.is_mapped());
    let live = s.live.as_ref().map(|d| d.read_bar(bir, ctrl, 4));
    let emulated = if trapped {
        "; the guest's own mask bit lives in the VMM's emulated table (trapped)"
    } else {
        ""
    };
    match live {
        Some(Ok(v)) if v & 1 == 1 => (
            "FAIL",
            format!(
                "MSIX[{vector}].CTRL at {at} is masked on the device (live {v:#x}) ({why}){emulated}"
            ),
        ),
        Some(Ok(v)) => (
            "ok",
            format!(
                "MSIX[{vector}].CTRL at {at} is unmasked on the device (live {v:#x}) ({why}){emulated}"
            ),
        ),
        Some(Err(e)) => (
            "??",
            format!("MSIX[{vector}].CTRL at {at}: not read ({e}) ({why})"),
        ),
        None => (
            "??",
            format!("MSIX[{vector}].CTRL at {at}: mask bit not known offline ({why}){emulated}"),
        ),
    }
}
