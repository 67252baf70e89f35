//! `refvmm plan`: shows which byte ranges of a device's BARs a guest would reach directly and
//! which the VMM would trap, from the device's `lspci -vv` output. No hardware, no KVM.
//!
//! Parsing is `pci_config::lspci`; planning and rendering are `trap_map`. This module only
//! reads the input, converts the parsed device into a [`DeviceLayout`]
//! ([`layout_from_lspci`]), and prints.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use clap::Args;
use pci_config::Bdf;
use pci_config::capability::MsixCapability;
use pci_config::lspci::{self, LspciDevice, LspciError};
use trap_map::view::{self, GuestPlacement};
use trap_map::{
    DeviceLayout, DevicePlan, HostBar, MsixInfo, MsixRelocation, PageSize, Policy, RelocationKind,
};

use crate::CmdResult;

/// Options of `refvmm plan`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  sudo lspci -vvnn -s 01:00.0 | refvmm plan
  refvmm plan nvme.txt --page-size 64K --msix-relocation auto
  refvmm plan all-devices.txt --device 0000:03:00.0 --at 0=0xfe000000 --policy trap-pba

lspci cannot tell what the host kernel allows to mmap, so every memory BAR is assumed
mmappable (VFIO_REGION_INFO_FLAG_MMAP) with its MSI-X table pages mmappable too
(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, Linux 4.16+ with interrupt remapping); use
--not-mmappable and --no-msix-mappable to describe other hosts.")]
pub struct PlanArgs {
    /// File with `lspci -vv` output (optionally with `-nn` and `-xxx` hex); `-` or nothing reads
    /// standard input.
    pub input: Option<PathBuf>,
    /// The device to plan, when the input holds several (e.g. 0000:01:00.0 or 01:00.0).
    #[arg(long, value_name = "BDF")]
    pub device: Option<Bdf>,
    /// Host page size BAR mappings are planned with: 4K, 16K or 64K; default: this host's.
    #[arg(long, value_name = "SIZE")]
    pub page_size: Option<PageSize>,
    /// trap-map policy, comma-separated: `default` (map what can be mapped), `trap-all` (trap
    /// every BAR access: trace the device), `trap-pba` (also trap a PBA on pages of its own).
    #[arg(long, value_name = "POLICY", default_value = "default", value_parser = crate::run::parse_policy)]
    pub policy: Policy,
    /// Move the MSI-X table and PBA: `off`, `auto` (when it maps more of the device), or
    /// `bar0`..`bar5` (QEMU's x-msix-relocation).
    #[arg(long, value_name = "WHERE", default_value = "off")]
    pub msix_relocation: MsixRelocation,
    /// Guest address of a BAR, BAR=ADDR with ADDR in hex (repeatable); BARs not given are placed
    /// naturally aligned from 0xc0000000 (I/O BARs from port 0xc000).
    #[arg(long = "at", value_name = "BAR=ADDR", value_parser = parse_at)]
    pub at: Vec<(u8, u64)>,
    /// Treat a BAR (`2` or `bar2`) as not mmappable by the host (repeatable).
    #[arg(long, value_name = "BAR", value_parser = parse_bar)]
    pub not_mmappable: Vec<u8>,
    /// Assume the host refuses to mmap MSI-X table pages (no VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
    /// kernels before 4.16, or no interrupt remapping).
    #[arg(long)]
    pub no_msix_mappable: bool,
    /// Also print the lines to paste into QEMU, cloud-hypervisor and Xen for this device.
    #[arg(long)]
    pub print_cmdline: bool,
}

/// Why `refvmm plan` cannot show a plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanCmdError {
    /// The input could not be read.
    #[error("cannot read {what}")]
    Read {
        /// The file, or standard input.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The lspci text could not be used.
    #[error("cannot use the lspci input")]
    Lspci(#[source] LspciError),
    /// Several devices and no `--device`.
    #[error("the input lists {count} devices ({list}): pick one with --device BDF")]
    SeveralDevices {
        /// How many.
        count: usize,
        /// Their addresses (the first few, when there are many).
        list: String,
    },
    /// One address heads more than one device in the input.
    #[error(
        "the input lists {bdf} {count} times (devices {positions} of the input: {descriptions}); \
         keep one copy of its lspci text"
    )]
    DuplicateDevice {
        /// The address.
        bdf: Bdf,
        /// How often it appears.
        count: usize,
        /// Where, counting devices from 1.
        positions: String,
        /// Each copy's header line, so a person can tell which is which.
        descriptions: String,
    },
    /// The device has only its summary line: plain `lspci`, no `-v`.
    #[error(
        "device {bdf}: the input has only its one-line summary, no regions or capabilities \
         (plain `lspci` output); run `sudo lspci -vv -s {short}` so lspci prints them"
    )]
    NoDetail {
        /// The device.
        bdf: Bdf,
        /// The device in the form lspci's `-s` takes.
        short: String,
    },
    /// A BAR without `[size=...]`.
    #[error(
        "device {bdf}: BAR {bar} has no [size=...] in the lspci text; run `sudo lspci -vv` so \
         lspci can size it"
    )]
    BarWithoutSize {
        /// The device.
        bdf: Bdf,
        /// The BAR.
        bar: u8,
    },
    /// lspci could not read the capabilities.
    #[error(
        "device {bdf}: lspci printed `Capabilities: <access denied>`, so whether the device has \
         MSI-X (and where its table is) is unknown; run lspci as root (`sudo lspci -vv`)"
    )]
    CapabilitiesDenied {
        /// The device.
        bdf: Bdf,
    },
    /// MSI-X without table/PBA location.
    #[error(
        "device {bdf}: the MSI-X capability has no Vector table/PBA lines; run `sudo lspci -vv` \
         (not -v) so lspci prints them"
    )]
    MsixWithoutLocation {
        /// The device.
        bdf: Bdf,
    },
    /// An option names a BAR the device does not have.
    #[error("{option} {bar}: device {bdf} has no BAR {bar} (it has: {have})")]
    UnknownBar {
        /// The option.
        option: &'static str,
        /// The BAR given.
        bar: u8,
        /// The device.
        bdf: Bdf,
        /// The BARs it has.
        have: String,
    },
    /// The layout cannot be planned.
    #[error("device {bdf}: cannot plan")]
    Plan {
        /// The device.
        bdf: Bdf,
        /// Why.
        #[source]
        source: trap_map::PlanError,
    },
    /// The MSI-X PBA lies outside its BAR: only relocation can save the plan.
    #[error(
        "device {bdf}: cannot plan as it is; pass --msix-relocation barN with N a BAR the \
         device does not use (it uses: {used}) so the guest gets a table of the VMM's own"
    )]
    MsixOutsideBar {
        /// The device.
        bdf: Bdf,
        /// The BARs it has.
        used: String,
        /// What is wrong.
        #[source]
        source: trap_map::PlanError,
    },
    /// The guest placement is not usable.
    #[error("device {bdf}: cannot place the BARs in the guest")]
    Placement {
        /// The device.
        bdf: Bdf,
        /// Why.
        #[source]
        source: trap_map::PlacementError,
    },
}

/// Parses a BAR as `--msix-relocation` names it (`bar2`) or as a number (`2`).
fn parse_bar(s: &str) -> Result<u8, String> {
    let text = s.trim().to_ascii_lowercase();
    text.strip_prefix("bar")
        .unwrap_or(&text)
        .parse::<u8>()
        .ok()
        .filter(|b| *b < 6)
        .ok_or_else(|| format!("`{s}` is not a BAR number 0 to 5 (or bar0 to bar5)"))
}

/// Parses `--at BAR=ADDR` (`0=fe000000`, `bar2=0xfe000000`).
fn parse_at(s: &str) -> Result<(u8, u64), String> {
    let (bar, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not BAR=ADDR (e.g. 0=0xfe000000)"))?;
    let bar = parse_bar(bar)?;
    let hex = addr
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X");
    let addr = u64::from_str_radix(&hex.replace('_', ""), 16)
        .map_err(|_| format!("`{addr}` is not a hex address (e.g. 0xfe000000)"))?;
    Ok((bar, addr))
}

/// Converts what lspci says about a device into the planner's input. lspci cannot tell what the
/// host allows to mmap, so memory BARs are mmappable unless listed in `not_mmappable`, and the
/// MSI-X table pages are mmappable when `msix_mappable`.
pub fn layout_from_lspci(
    dev: &LspciDevice,
    not_mmappable: &[u8],
    msix_mappable: bool,
) -> Result<DeviceLayout, PlanCmdError> {
    let bdf = dev.bdf();
    if dev.capabilities_access_denied() {
        return Err(PlanCmdError::CapabilitiesDenied { bdf });
    }
    let mut bars = Vec::new();
    for b in dev.bars() {
        let size = b
            .size
            .ok_or(PlanCmdError::BarWithoutSize { bdf, bar: b.index })?;
        let mut bar = HostBar::new(b.index, size, b.kind)
            .prefetchable(b.prefetchable)
            .msix_mappable(msix_mappable);
        if not_mmappable.contains(&b.index) {
            bar = bar.not_mmappable();
        }
        bars.push(bar);
    }
    for &bar in not_mmappable {
        if dev.bar(bar).is_none() {
            return Err(unknown_bar(dev, "--not-mmappable", bar));
        }
    }
    let msix = match dev.msix() {
        None => None,
        Some(m) => {
            let (Some(table), Some(pba)) = (m.table, m.pba) else {
                return Err(PlanCmdError::MsixWithoutLocation { bdf });
            };
            Some(MsixInfo::from(&MsixCapability::new(
                m.table_size,
                table,
                pba,
            )))
        }
    };
    Ok(DeviceLayout { bars, msix })
}

fn unknown_bar(dev: &LspciDevice, option: &'static str, bar: u8) -> PlanCmdError {
    let have: Vec<String> = dev.bars().iter().map(|b| b.index.to_string()).collect();
    PlanCmdError::UnknownBar {
        option,
        bar,
        bdf: dev.bdf(),
        have: if have.is_empty() {
            "none".into()
        } else {
            have.join(", ")
        },
    }
}

pub(crate) fn read_input(input: Option<&PathBuf>) -> Result<String, PlanCmdError> {
    match input {
        Some(path) if path.as_os_str() != "-" => {
            std::fs::read_to_string(path).map_err(|source| PlanCmdError::Read {
                what: path.display().to_string(),
                source,
            })
        }
        _ => {
            if std::io::stdin().is_terminal() {
                eprintln!(
                    "refvmm plan: reading `lspci -vv` output from the terminal; end with Ctrl-D"
                );
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|source| PlanCmdError::Read {
                    what: "standard input".into(),
                    source,
                })?;
            Ok(text)
        }
    }
}

/// How many addresses an error lists before it says "and N more".
const LIST_AT_MOST: usize = 8;

/// `a, b, c` for a short list; the first [`LIST_AT_MOST`] and "and N more" for a long one.
fn short_list(items: &[String]) -> String {
    if items.len() <= LIST_AT_MOST {
        return items.join(", ");
    }
    format!(
        "{}, and {} more",
        items[..LIST_AT_MOST].join(", "),
        items.len() - LIST_AT_MOST
    )
}

/// The copies of the device at `bdf`, by position in the input; an error when there are several.
fn check_unique(devices: &[LspciDevice], bdf: Bdf) -> Result<(), PlanCmdError> {
    let copies: Vec<(usize, &LspciDevice)> = devices
        .iter()
        .enumerate()
        .filter(|(_, d)| d.bdf() == bdf)
        .map(|(i, d)| (i + 1, d))
        .collect();
    if copies.len() < 2 {
        return Ok(());
    }
    let positions: Vec<String> = copies.iter().map(|(i, _)| i.to_string()).collect();
    let descriptions: Vec<String> = copies
        .iter()
        .map(|(_, d)| format!("\"{}: {}\"", d.class_name(), d.description()))
        .collect();
    Err(PlanCmdError::DuplicateDevice {
        bdf,
        count: copies.len(),
        positions: short_list(&positions),
        descriptions: short_list(&descriptions),
    })
}

pub(crate) fn pick_device(text: &str, bdf: Option<Bdf>) -> Result<LspciDevice, PlanCmdError> {
    let mut devices = lspci::parse_devices(text).map_err(PlanCmdError::Lspci)?;
    if let Some(bdf) = bdf {
        check_unique(&devices, bdf)?;
        let Some(at) = devices.iter().position(|d| d.bdf() == bdf) else {
            let list: Vec<String> = devices.iter().map(|d| d.bdf().to_string()).collect();
            return Err(PlanCmdError::Lspci(LspciError::DeviceNotFound {
                bdf,
                available: short_list(&list),
            }));
        };
        return Ok(devices.swap_remove(at));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = devices.iter().find(|d| !seen.insert(d.bdf())) {
        check_unique(&devices, twice.bdf())?;
    }
    if devices.len() > 1 {
        let list: Vec<String> = devices.iter().map(|d| d.bdf().to_string()).collect();
        return Err(PlanCmdError::SeveralDevices {
            count: devices.len(),
            list: short_list(&list),
        });
    }
    Ok(devices.remove(0))
}

/// True when lspci printed only the device's summary line: no `-v`, so nothing to plan from.
fn has_no_detail(dev: &LspciDevice) -> bool {
    dev.bars().is_empty()
        && dev.rom().is_none()
        && dev.capabilities().is_empty()
        && !dev.capabilities_access_denied()
        && dev.command().is_none()
        && dev.status().is_none()
        && dev.irq().is_none()
        && dev.kernel_driver().is_none()
        && dev.config_bytes().is_none()
}

/// Runs `refvmm plan`.
pub fn run(args: PlanArgs) -> CmdResult {
    let text = read_input(args.input.as_ref())?;
    let dev = pick_device(&text, args.device)?;
    let bdf = dev.bdf();
    if has_no_detail(&dev) {
        return Err(PlanCmdError::NoDetail {
            bdf,
            short: bdf.short(),
        }
        .into());
    }
    let layout = layout_from_lspci(&dev, &args.not_mmappable, !args.no_msix_mappable)?;
    let policy = Policy {
        msix_relocation: args.msix_relocation,
        ..args.policy
    };
    let page_size = args.page_size.unwrap_or_else(vfio_pci::host_page_size);
    let plan = DevicePlan::new(&layout, page_size, policy).map_err(|source| match source {
        trap_map::PlanError::MsixOutsideBar {
            structure: trap_map::MsixStructure::Pba,
            ..
        } => {
            let used: Vec<String> = dev.bars().iter().map(|b| b.index.to_string()).collect();
            PlanCmdError::MsixOutsideBar {
                bdf,
                used: used.join(", "),
                source,
            }
        }
        source => PlanCmdError::Plan { bdf, source },
    })?;
    let mut fixed = GuestPlacement::new();
    for &(bar, address) in &args.at {
        if plan.bar(bar).is_none() {
            return Err(unknown_bar(&dev, "--at", bar).into());
        }
        fixed.set(bar, address);
    }
    let placement = GuestPlacement::auto(&plan, &fixed)
        .map_err(|source| PlanCmdError::Placement { bdf, source })?;
    let name = bdf.to_string();
    let mtree = view::render_mtree(&plan, &placement, &name)
        .map_err(|source| PlanCmdError::Placement { bdf, source })?;
    let traps = view::render_trap_table(&plan, &placement)
        .map_err(|source| PlanCmdError::Placement { bdf, source })?;

    print!("{}", header(&dev, &args, &plan));
    println!();
    if plan.bars().is_empty() {
        println!(
            "Nothing to map or trap: the device has no BARs. A VMM passing it through emulates \
             only its configuration space."
        );
        return Ok(());
    }
    print!("{mtree}");
    println!("Trapped ranges:");
    print!("{traps}");
    println!();
    println!("Summary:");
    print!("{}", view::render_summary(&plan));
    if args.print_cmdline {
        println!();
        println!("To pass it through:");
        print!("{}", crate::recipes::cmdline_lines(&bdf.to_string()));
    }
    Ok(())
}

/// What was planned and under which assumptions.
fn header(dev: &LspciDevice, args: &PlanArgs, plan: &DevicePlan) -> String {
    // As `lspci -nn` shows a device: the names lspci printed, or the PCI ID database's when
    // the input has numbers only (`lspci -n`).
    let what = match (dev.vendor_id(), dev.device_id()) {
        (Some(v), Some(d)) => crate::pci_names::vendor_device(v, d),
        _ => dev.description().to_string(),
    };
    let class = match (dev.class_name(), dev.class_code()) {
        ("", Some(code)) => crate::pci_names::class_name((code >> 8) as u8, code as u8)
            .map(str::to_string)
            .unwrap_or_else(|| format!("Class {code:04x}")),
        (name, _) => name.to_string(),
    };
    let mut out = format!("Device {}: {class}: {what}\n", dev.bdf());
    let policy = plan.policy();
    out += &format!(
        "Host page size {}; policy: {}{}; MSI-X relocation {}\n",
        plan.page_size(),
        if policy.trap_all {
            "trap everything"
        } else {
            "trap only what must be trapped"
        },
        if policy.trap_pba {
            ", trap the PBA"
        } else {
            ""
        },
        policy.msix_relocation,
    );
    let not_mmappable = if args.not_mmappable.is_empty() {
        "every memory BAR is mmappable".to_string()
    } else {
        let list: Vec<String> = args.not_mmappable.iter().map(u8::to_string).collect();
        format!("memory BARs except {} are mmappable", list.join(", "))
    };
    out += &format!(
        "Assumed (lspci cannot tell): {not_mmappable}; the host {} MSI-X table pages{}\n",
        if args.no_msix_mappable {
            "refuses to mmap"
        } else {
            "allows mmap of"
        },
        if args.no_msix_mappable {
            ""
        } else {
            " (VFIO_REGION_INFO_CAP_MSIX_MAPPABLE; --no-msix-mappable for older hosts)"
        },
    );
    if let Some(m) = plan.msix() {
        out += &format!(
            "MSI-X: {} vectors; guest sees the table in BAR{} at {:#x}, the PBA in BAR{} at \
             {:#x} ({})\n",
            m.entries,
            m.table_bar,
            m.table_offset,
            m.pba_bar,
            m.pba_offset,
            if m.pba_emulated {
                "PBA trapped and emulated"
            } else {
                "PBA on a page of its own: mapped, the guest reads the hardware PBA"
            }
        );
    } else {
        out += "MSI-X: none\n";
    }
    if let Some(rom) = dev.rom() {
        out += &format!(
            "Expansion ROM{}: not part of the plan; a VMM traps it and serves reads from a copy\n",
            rom.size
                .map(|s| format!(" ({})", view::human_size(s)))
                .unwrap_or_default()
        );
    }
    if let Some(r) = plan.relocation() {
        let how = match r.kind {
            RelocationKind::NewBar { kind } => format!("a new {kind} BAR{}", r.bar),
            RelocationKind::ExtendedBar { original_size } => format!(
                "BAR{} doubled from {} to {}",
                r.bar,
                view::human_size(original_size),
                view::human_size(r.bar_size)
            ),
        };
        out += &format!(
            "MSI-X relocated into {how}: {} at offset {:#x}, no device register shares it\n",
            view::human_size(r.size),
            r.offset
        );
    } else if policy.msix_relocation == MsixRelocation::Auto {
        out += "MSI-X relocation (auto): not done, it would not map more of the device\n";
    }
    out
}
