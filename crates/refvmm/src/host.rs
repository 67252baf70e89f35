//! `refvmm bind`, `unbind` and `check`: preparing a host device for passthrough.
//!
//! All three work on the host's `/sys`, `/dev`, `/proc` and `/run/refvmm`, or on the same
//! layout under `--host-root DIR` (or `REFVMM_HOST_ROOT=DIR`): a host's filesystem mounted
//! in a container, or a fake tree in tests.

use std::path::PathBuf;

use clap::Args;
use thiserror::Error;
use vfio_pci::host::{
    BindStep, Binder, CheckOptions, HostPaths, IommuBackendChoice, OpenedVfio, PciAddress,
    ProcessLimits, Readiness,
};

use crate::CmdResult;

/// The environment variable that sets the host root when `--host-root` is not given.
pub const HOST_ROOT_ENV: &str = "REFVMM_HOST_ROOT";

/// Where the host's files are.
#[derive(Args, Debug, Clone)]
pub struct HostRootArg {
    /// Look for sys/, dev/, proc/ and run/refvmm/ under DIR instead of / (also
    /// REFVMM_HOST_ROOT). For a host mounted elsewhere, or a fake tree in tests.
    #[arg(long, value_name = "DIR")]
    host_root: Option<PathBuf>,
}

impl HostRootArg {
    fn paths(&self) -> HostPaths {
        let root = self
            .host_root
            .clone()
            .or_else(|| std::env::var_os(HOST_ROOT_ENV).map(PathBuf::from));
        match root {
            Some(root) => HostPaths::under(root),
            None => HostPaths::default(),
        }
    }
}

/// Options of `refvmm bind`.
#[derive(Args, Debug)]
pub struct BindArgs {
    /// Devices to bind: 0000:01:00.0, 01:00.0 or /sys/bus/pci/devices/0000:01:00.0.
    /// Pass every member of an IOMMU group to bind the group.
    #[arg(required = true, value_name = "DEVICE", value_parser = parse_device)]
    devices: Vec<PciAddress>,
    #[command(flatten)]
    root: HostRootArg,
}

/// Options of `refvmm unbind`.
#[derive(Args, Debug)]
pub struct UnbindArgs {
    /// Devices to give back to the driver they had before `refvmm bind`.
    #[arg(required = true, value_name = "DEVICE", value_parser = parse_device)]
    devices: Vec<PciAddress>,
    #[command(flatten)]
    root: HostRootArg,
}

/// Options of `refvmm check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The device: 0000:01:00.0, 01:00.0 or /sys/bus/pci/devices/0000:01:00.0.
    #[arg(value_name = "DEVICE", value_parser = parse_device)]
    device: PciAddress,
    /// The guest's RAM (e.g. 512M, 2G): the memlock limit must cover it. Without it, a limit
    /// below 1 GiB is a warning.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<u64>,
    /// When every check passes, also open the device through VFIO (with the `--iommu`
    /// backend) and list its regions and interrupts.
    #[arg(long)]
    open: bool,
    /// IOMMU interface for `--open`: `auto` (iommufd when available, else type1), `type1` or
    /// `iommufd`.
    #[arg(long, value_name = "BACKEND", default_value = "auto")]
    iommu: IommuBackendChoice,
    #[command(flatten)]
    root: HostRootArg,
}

/// What `check` reports as its error, after the checklist, so the exit status is non-zero.
#[derive(Debug, Error)]
enum CheckError {
    #[error("{address} is not ready for passthrough: fix the {count} problem(s) listed above")]
    NotReady { address: PciAddress, count: usize },
}

/// Parses a `DEVICE` argument: a PCI address or a sysfs path.
pub fn parse_device(arg: &str) -> Result<PciAddress, String> {
    PciAddress::from_arg(arg).map_err(|e| e.to_string())
}

/// Parses `4096`, `64K`, `512M`, `512MiB`, `2G`, `1T` (binary units, any case).
pub fn parse_size(arg: &str) -> Result<u64, String> {
    let text = arg.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| {
        format!(
            "{arg:?}: expected a size in bytes or with a K, M, G or T suffix, such as 512M or 2G"
        )
    })?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        "t" | "tib" | "tb" => 40,
        _ => return Err(format!("{arg:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{arg:?}: too large"))
}

fn print_step(step: &BindStep) {
    println!("  {step}");
}

/// Runs `refvmm bind`: each device to vfio-pci, printing every step.
pub fn bind(args: BindArgs) -> CmdResult {
    let binder = Binder::new(args.root.paths());
    for address in args.devices {
        println!("bind {address}:");
        binder.bind(address, &mut print_step)?;
    }
    Ok(())
}

/// Runs `refvmm unbind`: each device back to its previous driver, printing every step.
pub fn unbind(args: UnbindArgs) -> CmdResult {
    let binder = Binder::new(args.root.paths());
    for address in args.devices {
        println!("unbind {address}:");
        binder.unbind(address, &mut print_step)?;
    }
    Ok(())
}

/// Runs `refvmm check`: prints the checklist, and with `--open` the VFIO view of the device.
/// Fails (non-zero exit) when any check failed or the device could not be opened.
pub fn check(args: CheckArgs) -> CmdResult {
    let paths = args.root.paths();
    let options = CheckOptions {
        guest_memory: args.memory,
        limits: ProcessLimits::current()?,
    };
    let readiness = Readiness::assess(&paths, args.device, &options)?;
    print!("{readiness}");
    if !readiness.is_ready() {
        if args.open {
            println!("--open skipped: fix the problems above first");
        }
        return Err(CheckError::NotReady {
            address: args.device,
            count: readiness.problems().count(),
        }
        .into());
    }
    if args.open {
        let opened = OpenedVfio::open(&paths, args.device, None, args.iommu)?;
        println!(
            "\nVFIO view of {} ({}):",
            opened.address(),
            opened.describe()
        );
        print!("{}", opened.info());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("2X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("G").is_err());
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
    }
}
