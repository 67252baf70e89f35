//! What a privileged launcher must grant a VMM that runs without privileges on the iommufd path,
//! as lines added to `check`'s iommufd item.
//!
//! On iommufd a VMM needs exactly three things from the host: the device's cdev
//! (`/dev/vfio/devices/vfioN`) and `/dev/iommu`, both opened read-write, and an
//! `RLIMIT_MEMLOCK` that covers guest RAM (VFIO pins all of it; `CAP_IPC_LOCK` lifts the
//! limit). A launcher that opens the two nodes and hands the fds in (the VMM takes them with
//! [`OpenedIommufdDevice::from_fds`](super::OpenedIommufdDevice::from_fds), cargo feature
//! `iommufd`) and raises the limit before dropping privileges grants all three. The check says
//! which of them the calling process lacks, and the fix ([`Fix::HandFdsIn`]) is data each VMM
//! renders as its own launcher command.

use std::path::Path;

use super::advice::Fix;
use super::check::{
    CheckItem, CheckKind, CheckOptions, CheckStatus, MEMLOCK_WARN_BELOW, can_read_write,
};
use super::limits::{MemlockLimit, format_bytes};
use super::open_iommufd::IommuAvailability;

/// Adds the launcher's grants to the iommufd item when iommufd is available for the device,
/// and turns it into a warning naming what this process lacks, if anything.
pub(super) fn with_launcher_grants(
    mut item: CheckItem,
    host: &IommuAvailability,
    options: &CheckOptions,
) -> CheckItem {
    let (CheckKind::Iommufd, CheckStatus::Ok, Some(cdev)) =
        (item.kind, item.status, &host.cdev_node)
    else {
        return item;
    };
    let memory = options
        .guest_memory
        .map_or_else(|| "guest RAM".to_string(), format_bytes);
    item.finding.push_str(&format!(
        "\nwithout privileges, a VMM needs from a launcher: {cdev} and {iommufd} opened \
         read-write and handed in as fds, and RLIMIT_MEMLOCK of at least {memory}",
        cdev = cdev.display(),
        iommufd = host.iommufd_node.display(),
    ));
    let missing = missing_grants(cdev, &host.iommufd_node, options);
    if missing.is_empty() {
        item.finding
            .push_str("\nthis process has all three: it can open both nodes itself");
        return item;
    }
    item.finding
        .push_str(&format!("\nthis process lacks: {}", missing.join("; ")));
    item.status = CheckStatus::Warn;
    item.fix(Fix::HandFdsIn {
        device: host.address.to_string(),
        cdev: cdev.clone(),
        iommufd: host.iommufd_node.clone(),
        memlock: options.guest_memory,
    })
}

/// What the calling process cannot do itself, one phrase each.
fn missing_grants(cdev: &Path, iommufd: &Path, options: &CheckOptions) -> Vec<String> {
    let mut missing = Vec::new();
    for node in [cdev, iommufd] {
        match can_read_write(node) {
            Ok(true) => {}
            Ok(false) => missing.push(format!("read-write access to {}", node.display())),
            Err(e) => missing.push(format!("{} ({e})", node.display())),
        }
    }
    let limits = options.limits;
    if !limits.cap_ipc_lock && limits.memlock != MemlockLimit::Unlimited {
        match options.guest_memory {
            Some(guest) if !limits.memlock.allows(guest) => missing.push(format!(
                "RLIMIT_MEMLOCK {} below the guest's {}",
                limits.memlock,
                format_bytes(guest)
            )),
            None if !limits.memlock.allows(MEMLOCK_WARN_BELOW) => missing.push(format!(
                "RLIMIT_MEMLOCK {} (below 1 GiB; give the guest's size to check against it)",
                limits.memlock
            )),
            _ => {}
        }
    }
    missing
}
