//! `refvmm bind`, `unbind` and `check`: preparing a host device for passthrough.
//!
//! All three work on the host's `/sys`, `/dev`, `/proc` and `/run/refvmm`, or on the same
//! layout under `--host-root DIR` (or `REFVMM_HOST_ROOT=DIR`): a host's filesystem mounted
//! in a container, or a fake tree in tests.

use std::path::PathBuf;

use clap::Args;
use thiserror::Error;
use vfio_pci::host::{
    BindStep, BindTarget, Binder, CheckKind, CheckOptions, Fix, HostPaths, IommuBackendChoice,
    OpenedVfio, PciAddress, ProcessLimits, Readiness,
};

use crate::CmdResult;

/// The environment variable that sets the host root when `--host-root` is not given.
pub const HOST_ROOT_ENV: &str = "REFVMM_HOST_ROOT";

/// Where `refvmm bind` records the driver a device had, for `refvmm unbind`.
const RUN_DIR: &str = "/run/refvmm";

/// Where the host's files are.
#[derive(Args, Debug, Clone)]
pub struct HostRootArg {
    /// Look for sys/, dev/, proc/ and run/refvmm/ under DIR instead of / (also
    /// REFVMM_HOST_ROOT). For a host mounted elsewhere, or a fake tree in tests.
    #[arg(long, value_name = "DIR")]
    host_root: Option<PathBuf>,
}

impl HostRootArg {
    pub(crate) fn paths(&self) -> HostPaths {
        let root = self
            .host_root
            .clone()
            .or_else(|| std::env::var_os(HOST_ROOT_ENV).map(PathBuf::from));
        // refvmm keeps its bind records in a directory of its own name.
        match root {
            Some(root) => {
                let run = root.join(RUN_DIR.trim_start_matches('/'));
                HostPaths::under(root).with_run_dir(run)
            }
            None => HostPaths::default().with_run_dir(RUN_DIR),
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
    /// The passthrough driver: vfio-pci (KVM: QEMU, cloud-hypervisor, refvmm) or xen-pciback
    /// (Xen, in dom0).
    #[arg(long, value_name = "DRIVER", default_value = "vfio-pci")]
    driver: BindTarget,
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
    /// The guest's RAM, as `refvmm run --memory` takes it (e.g. 512M, 2G): the memlock limit
    /// must cover it. Without it, a limit below 1 GiB is a warning.
    #[arg(long, value_name = "SIZE", value_parser = crate::run::parse_size)]
    memory: Option<u64>,
    /// When every check passes, also open the device through VFIO (with the `--iommu`
    /// backend) and list its regions and interrupts.
    #[arg(long)]
    open: bool,
    /// IOMMU interface for `--open`: `auto` (iommufd when available, else type1), `type1` or
    /// `iommufd`.
    #[arg(long, value_name = "BACKEND", default_value = "auto")]
    iommu: IommuBackendChoice,
    /// Also print the lines to paste into QEMU, cloud-hypervisor and Xen for this device.
    #[arg(long)]
    print_cmdline: bool,
    #[command(flatten)]
    root: HostRootArg,
}

/// What `check` reports as its error, after the checklist, so the exit status is non-zero.
#[derive(Debug, Error)]
enum CheckError {
    #[error(
        "{address} is not ready for passthrough: fix the {count} problem{} listed above",
        if *count == 1 { "" } else { "s" }
    )]
    NotReady { address: PciAddress, count: usize },
}

/// Parses a `DEVICE` argument: a PCI address or a sysfs path.
pub fn parse_device(arg: &str) -> Result<PciAddress, String> {
    PciAddress::from_arg(arg).map_err(|e| e.to_string())
}

/// Puts the device's vendor and device names (PCI ID database) in front of its IDs and class,
/// as lspci shows a device.
fn name_the_device(readiness: &mut Readiness) {
    let d = &readiness.device;
    let names = crate::pci_names::vendor_device(d.vendor, d.device);
    if let Some(item) = readiness
        .items
        .iter_mut()
        .find(|i| i.kind == CheckKind::Device)
    {
        let rest = item
            .finding
            .strip_prefix(&d.ids())
            .unwrap_or(&item.finding)
            .trim_start()
            .to_string();
        item.finding = format!("{names} {rest}");
    }
}

/// A size as `refvmm launch --memlock` takes it: `512M`, `2G`, or bytes.
fn size_arg(bytes: u64) -> String {
    match bytes {
        b if b != 0 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b != 0 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b => b.to_string(),
    }
}

/// A fix as refvmm's own commands: binding is `refvmm bind`, handing fds in is
/// `refvmm launch`; the rest is the library's wording.
fn render_fix(fix: &Fix) -> String {
    match fix {
        Fix::BindToVfio {
            devices,
            load_module,
            whole_group,
        } => {
            let binds: Vec<String> = devices
                .iter()
                .map(|d| format!("`refvmm bind {d}`"))
                .collect();
            let binds = binds.join(", ");
            let load = if *load_module {
                "`modprobe vfio-pci` (the driver is not loaded), then "
            } else {
                ""
            };
            if *whole_group {
                format!(
                    "{load}the IOMMU cannot isolate devices of one group, so all of them go to \
                     vfio-pci (and to this VM) or stay unused: {binds}; or move the device to a \
                     slot with its own group"
                )
            } else {
                format!("{load}{binds}")
            }
        }
        Fix::HandFdsIn {
            device,
            cdev,
            iommufd,
            memlock,
        } => format!(
            "start refvmm from a launcher that opens {} and {} as root, raises RLIMIT_MEMLOCK and \
             hands the fds in: `sudo refvmm launch --user $(id -u):$(id -g) --memlock {} \
             --device {device} -- refvmm run ...` (it appends `--device {device},fd=N,iommufd-fd=M`); \
             or `chown` the nodes to this user",
            cdev.display(),
            iommufd.display(),
            memlock.map_or_else(|| "SIZE".to_string(), size_arg),
        ),
        other => other.to_string(),
    }
}

fn print_step(step: &BindStep) {
    println!("  {step}");
}

/// Runs `refvmm bind`: each device to vfio-pci (or `--driver xen-pciback`), printing every
/// step.
pub fn bind(args: BindArgs) -> CmdResult {
    let binder = Binder::new(args.root.paths());
    for address in args.devices {
        println!("bind {address}:");
        binder.bind_to(address, args.driver, &mut print_step)?;
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
    let mut readiness = Readiness::assess(&paths, args.device, &options)?;
    name_the_device(&mut readiness);
    let mut text = String::new();
    readiness.render(&mut text, &render_fix)?;
    print!("{text}");
    println!();
    print!(
        "{}",
        crate::recipes::hypervisor_needs(&paths, args.device, readiness.is_ready())
    );
    if args.print_cmdline {
        println!();
        print!(
            "{}",
            crate::recipes::cmdline_lines(&args.device.to_string())
        );
    }
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
    fn handing_fds_in_is_rendered_as_refvmm_launch() {
        let fix = Fix::HandFdsIn {
            device: "0000:01:00.0".into(),
            cdev: "/dev/vfio/devices/vfio0".into(),
            iommufd: "/dev/iommu".into(),
            memlock: Some(256 << 20),
        };
        let text = render_fix(&fix);
        assert!(
            text.contains("`sudo refvmm launch --user $(id -u):$(id -g) --memlock 256M --device 0000:01:00.0 -- refvmm run ...`"),
            "{text}"
        );
        assert!(
            text.contains("`--device 0000:01:00.0,fd=N,iommufd-fd=M`"),
            "{text}"
        );
        assert!(
            text.contains("/dev/vfio/devices/vfio0 and /dev/iommu"),
            "{text}"
        );
        // The library's own wording names no VMM.
        assert!(!fix.to_string().contains("refvmm"), "{fix}");
        assert_eq!(size_arg(2 << 30), "2G");
        assert_eq!(size_arg(4097), "4097");
    }
}
