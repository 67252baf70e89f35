//! `refvmm launch`: the privileged half of running a VMM without privileges on iommufd.
//!
//! Run as root, it opens each `--device`'s VFIO cdev (`/dev/vfio/devices/vfioN`, found in
//! sysfs) and one `/dev/iommu` per device, raises `RLIMIT_MEMLOCK` (VFIO pins guest RAM and
//! charges it to the user), drops to `--user UID:GID` (no supplementary groups but `--groups`),
//! and execs the command after `--` with `--device BDF,fd=N,iommufd-fd=M` appended for each
//! device. The command then has the device, but could not have opened it: the nodes stay
//! root's. This is what a device plugin or libvirt does for QEMU's `-device vfio-pci,fd=N`.
//!
//! Without `--device` it only drops privileges and execs: the test bed uses that to show that
//! the same user cannot open the device on its own.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;
use thiserror::Error;
use vfio_pci::host::{HostDevice, HostPaths, PciAddress};

use crate::CmdResult;
use crate::host::parse_device;
use crate::size::parse_bytes;

/// Options of `refvmm launch`.
#[derive(Args, Debug)]
pub struct LaunchArgs {
    /// A device bound to vfio-pci whose cdev (and an iommufd) to hand in; repeatable.
    #[arg(long = "device", value_name = "BDF", value_parser = parse_device)]
    devices: Vec<PciAddress>,
    /// The user and group to run the command as (numbers, e.g. 65534:65534).
    #[arg(long, value_name = "UID:GID", value_parser = parse_user)]
    user: (u32, u32),
    /// Supplementary groups to keep, comma-separated numbers (e.g. the group of /dev/kvm).
    #[arg(long, value_name = "GID,...", value_delimiter = ',')]
    groups: Vec<u32>,
    /// RLIMIT_MEMLOCK to set (soft and hard) before dropping privileges, in bytes or with a K,
    /// M, G or T suffix: at least the guest's RAM.
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    memlock: Option<u64>,
    /// The command to run (e.g. `refvmm run --guest G.elf`); the handed-in `--device` options
    /// are appended to it.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// Parses `UID:GID`.
fn parse_user(arg: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = arg
        .split_once(':')
        .ok_or_else(|| format!("{arg:?}: give UID:GID as numbers, e.g. 65534:65534"))?;
    let number = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("{arg:?}: {s:?} is not a number (give UID:GID)"))
    };
    let user = (number(uid)?, number(gid)?);
    if user.0 == 0 {
        return Err(format!(
            "{arg:?}: the point is to run the command without root: pick a UID other than 0"
        ));
    }
    Ok(user)
}

/// Why `refvmm launch` failed.
#[derive(Debug, Error)]
pub enum LaunchError {
    /// Not running as root.
    #[error("refvmm launch opens device nodes and changes user: run it as root (euid is {euid})")]
    NotRoot {
        /// The effective user.
        euid: u32,
    },
    /// The device has no cdev.
    #[error(
        "{address}: no VFIO cdev in {}: bind it to vfio-pci (`refvmm bind {address}`) on a kernel \
         with CONFIG_VFIO_DEVICE_CDEV",
        dir.display()
    )]
    NoCdev {
        /// The device.
        address: PciAddress,
        /// `/sys/bus/pci/devices/BDF/vfio-dev`.
        dir: PathBuf,
    },
    /// Reading sysfs failed.
    #[error(transparent)]
    Sysfs(#[from] vfio_pci::host::SysfsError),
    /// A node could not be opened or kept open across exec.
    #[error("cannot open {} for {address}: {source}", node.display())]
    Open {
        /// The device.
        address: PciAddress,
        /// The node.
        node: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A privilege step failed.
    #[error("{step} failed: {source}")]
    Drop {
        /// What was being done.
        step: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The command could not be executed.
    #[error("cannot execute {}: {source}", program.display())]
    Exec {
        /// The program.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Opens `node` read-write and keeps it open across exec (Rust opens with O_CLOEXEC).
fn open_inheritable(address: PciAddress, node: &Path) -> Result<File, LaunchError> {
    let error = |source| LaunchError::Open {
        address,
        node: node.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .map_err(error)?;
    // SAFETY: F_SETFD on an fd this function owns; clearing FD_CLOEXEC changes nothing else.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, 0) } < 0 {
        return Err(error(io::Error::last_os_error()));
    }
    Ok(file)
}

fn os_step(step: impl Into<String>, rc: libc::c_int) -> Result<(), LaunchError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(LaunchError::Drop {
            step: step.into(),
            source: io::Error::last_os_error(),
        })
    }
}

/// Sets the memlock limit, then the groups, the group and the user, and checks that root
/// cannot be regained.
fn drop_privileges(args: &LaunchArgs) -> Result<(), LaunchError> {
    if let Some(bytes) = args.memlock {
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: setrlimit reads one valid rlimit.
        os_step(format!("setrlimit(RLIMIT_MEMLOCK, {bytes})"), unsafe {
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit)
        })?;
    }
    let (uid, gid) = args.user;
    // SAFETY: setgroups reads `len` gids from the slice, which outlives the call.
    os_step(format!("setgroups({:?})", args.groups), unsafe {
        libc::setgroups(args.groups.len(), args.groups.as_ptr())
    })?;
    // SAFETY: setresgid/setresuid take plain numbers; this process has one thread here.
    os_step(format!("setresgid({gid})"), unsafe {
        libc::setresgid(gid, gid, gid)
    })?;
    // SAFETY: as above.
    os_step(format!("setresuid({uid})"), unsafe {
        libc::setresuid(uid, uid, uid)
    })?;
    // SAFETY: setuid(0) only fails or succeeds; success would mean the drop did not hold.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(LaunchError::Drop {
            step: format!("dropping to {uid}:{gid} (root could be regained)"),
            source: io::Error::from_raw_os_error(libc::EPERM),
        });
    }
    Ok(())
}

/// `refvmm launch`: opens, drops, execs. Returns only on failure.
pub fn run(args: LaunchArgs) -> CmdResult {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(LaunchError::NotRoot { euid }.into());
    }
    let paths = HostPaths::default();
    let mut kept: Vec<File> = Vec::new();
    let mut handed: Vec<String> = Vec::new();
    for &address in &args.devices {
        let device = HostDevice::read(&paths, address)?;
        let dir = device.sysfs_path.join("vfio-dev");
        let cdev = device
            .vfio_cdev
            .filter(|name| name.starts_with("vfio"))
            .ok_or(LaunchError::NoCdev { address, dir })?;
        let cdev = open_inheritable(address, &paths.vfio_device_cdev(&cdev))?;
        let iommufd = open_inheritable(address, &paths.iommufd_node())?;
        handed.push(format!(
            "{address},fd={},iommufd-fd={}",
            cdev.as_raw_fd(),
            iommufd.as_raw_fd()
        ));
        kept.extend([cdev, iommufd]);
    }
    drop_privileges(&args)?;
    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let mut command = Command::new(program);
    command.args(rest);
    for spec in &handed {
        command.arg("--device").arg(spec);
    }
    eprintln!(
        "refvmm launch: as {}:{}, memlock {}, handing in {}",
        args.user.0,
        args.user.1,
        args.memlock
            .map_or_else(|| "unchanged".to_string(), vfio_pci::host::format_bytes),
        if handed.is_empty() {
            "nothing".to_string()
        } else {
            handed.join(" ")
        }
    );
    // exec only returns on failure; the fds in `kept` stay open into the new program.
    let source = command.exec();
    drop(kept);
    Err(LaunchError::Exec {
        program: PathBuf::from(program),
        source,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_is_two_numbers_and_not_root() {
        assert_eq!(parse_user("65534:65534"), Ok((65534, 65534)));
        assert!(parse_user("nobody").unwrap_err().contains("UID:GID"));
        assert!(
            parse_user("x:1")
                .unwrap_err()
                .contains("\"x\" is not a number")
        );
        assert!(parse_user("0:0").unwrap_err().contains("other than 0"));
    }
}
