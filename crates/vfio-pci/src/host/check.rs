//! Whether a host device can be passed through, as a checklist a person can act on.
//!
//! Every check runs, so one pass lists all the problems, each with what to do about it.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::advice::Fix;
use super::launcher_grants::with_launcher_grants;
use super::limits::{MemlockLimit, ProcessLimits, format_bytes};
use super::open_iommufd::{IommuAvailability, IommuBackend, IommuBackendChoice};
use super::sysfs::{HostDevice, IommuGroup, IommuStatus, MemberState, SysfsError, VFIO_PCI_DRIVER};
use super::{HostPaths, PciAddress};

/// Below this `RLIMIT_MEMLOCK`, a check without `--memory` warns: guests of 1 GiB and more
/// (most real ones) could not have their RAM mapped for DMA. It is a warning, not a failure,
/// because the guest's size is unknown; [`CheckOptions::guest_memory`] makes it exact.
pub const MEMLOCK_WARN_BELOW: u64 = 1 << 30;

/// What to check against, beyond the host tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// The guest's RAM size in bytes, when known: the memlock limit must cover it.
    pub guest_memory: Option<u64>,
    /// The limits of the process that will run the VMM.
    pub limits: ProcessLimits,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// Fine.
    Ok,
    /// May cause trouble; does not stop passthrough by itself.
    Warn,
    /// Stops passthrough until fixed.
    Fail,
    /// Not checked, or not applicable, because of another finding.
    Skip,
}

/// What a check looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// The device itself (a bridge cannot be passed through).
    Device,
    /// The host's IOMMU.
    Iommu,
    /// The device's driver.
    Driver,
    /// The device's IOMMU group and its other members.
    Group,
    /// `/dev/vfio/N` and `/dev/vfio/vfio`.
    VfioNodes,
    /// The iommufd path (`/dev/iommu`, `/dev/vfio/devices/vfioN`): optional.
    Iommufd,
    /// `RLIMIT_MEMLOCK` against guest memory.
    Memlock,
}

impl CheckKind {
    fn label(self) -> &'static str {
        match self {
            CheckKind::Device => "device",
            CheckKind::Iommu => "IOMMU",
            CheckKind::Driver => "driver",
            CheckKind::Group => "IOMMU group",
            CheckKind::VfioNodes => "/dev/vfio",
            CheckKind::Iommufd => "iommufd",
            CheckKind::Memlock => "memlock",
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    /// What was checked.
    pub kind: CheckKind,
    /// The outcome.
    pub status: CheckStatus,
    /// What was found.
    pub finding: String,
    /// What to do, for warnings and failures: data the caller renders as its own commands.
    pub fix: Option<Fix>,
}

impl CheckItem {
    fn new(kind: CheckKind, status: CheckStatus, finding: impl Into<String>) -> Self {
        Self {
            kind,
            status,
            finding: finding.into(),
            fix: None,
        }
    }

    pub(super) fn fix(mut self, fix: Fix) -> Self {
        self.fix = Some(fix);
        self
    }

    fn host_fix(self, fix: impl Into<String>) -> Self {
        self.fix(Fix::Host(fix.into()))
    }
}

/// Everything `check` found about one device.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// The device as sysfs describes it.
    pub device: HostDevice,
    /// The host's IOMMU.
    pub iommu: IommuStatus,
    /// The device's IOMMU group, when it has one.
    pub group: Option<IommuGroup>,
    /// The checklist, in the order a person would fix things.
    pub items: Vec<CheckItem>,
}

/// Whether the calling process may open `path` for reading and writing (access(2), which
/// answers for the real user, as opening the node will).
pub(super) fn can_read_write(path: &Path) -> io::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call; access(2)
    // only reads it.
    let rc = unsafe { libc::access(c_path.as_ptr(), libc::R_OK | libc::W_OK) };
    if rc == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM) => Ok(false),
        _ => Err(error),
    }
}

impl Readiness {
    /// Runs every check on the device at `address`. Fails only when the device does not exist
    /// or sysfs cannot be read; everything else is a finding.
    pub fn assess(
        paths: &HostPaths,
        address: PciAddress,
        options: &CheckOptions,
    ) -> Result<Self, SysfsError> {
        let device = HostDevice::read(paths, address)?;
        let iommu = IommuStatus::read(paths)?;
        let group = match device.iommu_group {
            Some(id) => Some(IommuGroup::read(paths, id)?),
            None => None,
        };
        let mut items = vec![
            check_device(&device),
            check_iommu(&iommu),
            check_driver(paths, &device),
            check_group(&device, &iommu, group.as_ref()),
        ];
        items.push(check_vfio_nodes(paths, &device));
        let iommufd = check_iommufd(paths, &device);
        items.push(match IommuAvailability::probe(paths, address) {
            Ok(host) => with_launcher_grants(iommufd, &host, options),
            Err(_) => iommufd,
        });
        items.push(check_memlock(options));
        Ok(Self {
            device,
            iommu,
            group,
            items,
        })
    }

    /// True when no check failed: the device can be opened through VFIO.
    pub fn is_ready(&self) -> bool {
        self.problems().next().is_none()
    }

    /// The failed checks.
    pub fn problems(&self) -> impl Iterator<Item = &CheckItem> {
        self.items.iter().filter(|i| i.status == CheckStatus::Fail)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &CheckItem> {
        self.items.iter().filter(|i| i.status == CheckStatus::Warn)
    }

    /// The item for `kind`.
    pub fn item(&self, kind: CheckKind) -> Option<&CheckItem> {
        self.items.iter().find(|i| i.kind == kind)
    }
}

impl Readiness {
    /// Writes the checklist with each fix rendered by `fix`: a VMM turns [`Fix::BindToVfio`]
    /// into its own command. `Display` uses [`Fix`]'s neutral wording.
    pub fn render(&self, f: &mut dyn fmt::Write, fix: &dyn Fn(&Fix) -> String) -> fmt::Result {
        let d = &self.device;
        writeln!(f, "Passthrough check for {}", d.address)?;
        for item in &self.items {
            let mark = match item.status {
                CheckStatus::Ok => "[ ok ]",
                CheckStatus::Warn => "[WARN]",
                CheckStatus::Fail => "[FAIL]",
                CheckStatus::Skip => "[skip]",
            };
            let mut lines = item.finding.lines();
            writeln!(
                f,
                "  {mark} {:<11} {}",
                item.kind.label(),
                lines.next().unwrap_or("")
            )?;
            for line in lines {
                writeln!(f, "{:21}{line}", "")?;
            }
            if let Some(how) = &item.fix {
                writeln!(f, "{:21}fix: {}", "", fix(how))?;
            }
        }
        let problems = self.problems().count();
        let warnings = self.warnings().count();
        if problems == 0 {
            write!(f, "{} is ready for passthrough", d.address)?;
        } else {
            write!(
                f,
                "{} is NOT ready for passthrough: {problems} problem{}",
                d.address,
                if problems == 1 { "" } else { "s" }
            )?;
        }
        if warnings > 0 {
            write!(
                f,
                " ({warnings} warning{})",
                if warnings == 1 { "" } else { "s" }
            )?;
        }
        writeln!(f)
    }
}

impl fmt::Display for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render(f, &|fix| fix.to_string())
    }
}

/// Host and PCI-to-PCI bridges carry other devices' traffic: never passed through.
fn is_bridge(device: &HostDevice) -> bool {
    device.class.base() == 0x06 && matches!(device.class.subclass(), 0x00 | 0x04)
}

fn check_device(device: &HostDevice) -> CheckItem {
    let finding = format!("{} {}", device.ids(), device.class);
    if is_bridge(device) {
        return CheckItem::new(
            CheckKind::Device,
            CheckStatus::Fail,
            format!(
                "{finding}: a bridge carries other devices' traffic and cannot be passed through"
            ),
        )
        .host_fix("pass through the devices behind the bridge instead");
    }
    CheckItem::new(CheckKind::Device, CheckStatus::Ok, finding)
}

fn check_iommu(iommu: &IommuStatus) -> CheckItem {
    if iommu.enabled() {
        let units = if iommu.units.is_empty() {
            String::new()
        } else {
            format!(" (units: {})", iommu.units.join(", "))
        };
        return CheckItem::new(
            CheckKind::Iommu,
            CheckStatus::Ok,
            format!(
                "enabled: {} IOMMU group{}{units}",
                iommu.group_count,
                if iommu.group_count == 1 { "" } else { "s" }
            ),
        );
    }
    let mut finding = String::from(
        "not enabled: /sys/kernel/iommu_groups is empty and /sys/class/iommu lists no unit",
    );
    if !iommu.units.is_empty() {
        finding = format!(
            "not enabled: /sys/kernel/iommu_groups is empty (IOMMU units present: {})",
            iommu.units.join(", ")
        );
    }
    let off = iommu.params.disabling();
    if !off.is_empty() {
        finding.push_str(&format!("; the kernel command line has {}", off.join(" ")));
    }
    CheckItem::new(CheckKind::Iommu, CheckStatus::Fail, finding)
        .fix(Fix::EnableIommu(iommu.how_to_enable()))
}

fn check_driver(paths: &HostPaths, device: &HostDevice) -> CheckItem {
    let address = device.address;
    // Binding a bridge to vfio-pci is no fix: the device check already says why it cannot go.
    if is_bridge(device) && !device.is_bound_to_vfio() {
        return CheckItem::new(
            CheckKind::Driver,
            CheckStatus::Skip,
            format!(
                "{}: a bridge stays on its host driver (see device above)",
                device.driver_name()
            ),
        );
    }
    if device.is_bound_to_vfio() {
        return CheckItem::new(
            CheckKind::Driver,
            CheckStatus::Ok,
            format!("bound to {}", device.driver_name()),
        );
    }
    let finding = match &device.driver {
        Some(d) => format!("bound to {d}, not vfio-pci"),
        None => "no driver; it must be bound to vfio-pci".to_string(),
    };
    let load_module = !paths.pci_driver(VFIO_PCI_DRIVER).is_dir();
    CheckItem::new(CheckKind::Driver, CheckStatus::Fail, finding)
        .fix(Fix::bind(address, load_module))
}

fn check_group(device: &HostDevice, iommu: &IommuStatus, group: Option<&IommuGroup>) -> CheckItem {
    let address = device.address;
    let Some(group) = group else {
        if !iommu.enabled() {
            return CheckItem::new(
                CheckKind::Group,
                CheckStatus::Skip,
                "none: there are no IOMMU groups without an IOMMU (see IOMMU above)",
            );
        }
        return CheckItem::new(
            CheckKind::Group,
            CheckStatus::Fail,
            format!("{address} is in no IOMMU group although the IOMMU is on: it is not behind it"),
        )
        .host_fix("check `dmesg | grep -i -e DMAR -e AMD-Vi -e IOMMU`; try another slot");
    };
    let blockers = group.blockers(address);
    if !blockers.is_empty() {
        let mut finding = format!(
            "group {} is not viable: these members are on host drivers:",
            group.id
        );
        for member in &blockers {
            finding.push_str(&format!("\n- {member}"));
        }
        return CheckItem::new(CheckKind::Group, CheckStatus::Fail, finding).fix(Fix::BindToVfio {
            devices: blockers.iter().map(|m| m.name.clone()).collect(),
            load_module: false,
            whole_group: true,
        });
    }
    let others: Vec<String> = group
        .others(address)
        .map(|m| {
            let why = match m.state() {
                MemberState::Bridge(_) => "bridge",
                MemberState::Vfio(_) => "on vfio",
                MemberState::DmaManaged(_) => "DMA left to the group owner",
                MemberState::NoDriver => "unused",
                MemberState::HostDriver(_) => "host driver",
            };
            format!("\n- {m}: fine ({why})")
        })
        .collect();
    let finding = if others.is_empty() {
        format!("group {}: viable, the device is alone in it", group.id)
    } else {
        format!(
            "group {}: viable; other members:{}",
            group.id,
            others.concat()
        )
    };
    CheckItem::new(CheckKind::Group, CheckStatus::Ok, finding)
}

fn check_vfio_nodes(paths: &HostPaths, device: &HostDevice) -> CheckItem {
    let Some(group) = device.iommu_group else {
        return CheckItem::new(
            CheckKind::VfioNodes,
            CheckStatus::Skip,
            "no IOMMU group, so no /dev/vfio node",
        );
    };
    let node = paths.vfio_group_node(group);
    let container = paths.vfio_container_node();
    if !node.exists() {
        if !device.is_bound_to_vfio() {
            return CheckItem::new(
                CheckKind::VfioNodes,
                CheckStatus::Skip,
                format!(
                    "{} appears once the device is bound to vfio-pci",
                    node.display()
                ),
            );
        }
        return CheckItem::new(
            CheckKind::VfioNodes,
            CheckStatus::Fail,
            format!(
                "{} is missing although vfio-pci drives the device",
                node.display()
            ),
        )
        .host_fix(
            "check that devtmpfs/udev made it: `ls -l /dev/vfio`, `dmesg | grep -i vfio`; in a \
             container, pass /dev/vfio through",
        );
    }
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    match can_read_write(&node) {
        Ok(true) => {}
        Ok(false) => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let uid = unsafe { libc::getuid() };
            problems.push(format!(
                "no read/write permission on {} for uid {uid}",
                node.display()
            ));
            fixes.push(format!(
                "run as root, or give your user the node: `chown $USER {}` (a udev rule \
                 `SUBSYSTEM==\"vfio\", OWNER=\"$USER\"` keeps it after a reboot)",
                node.display()
            ));
        }
        Err(e) => problems.push(format!("cannot check {}: {e}", node.display())),
    }
    if !container.exists() {
        problems.push(format!(
            "{} (the VFIO container) is missing",
            container.display()
        ));
        fixes.push("`modprobe vfio vfio_iommu_type1`".to_string());
    } else if let Ok(false) = can_read_write(&container) {
        problems.push(format!(
            "no read/write permission on {}",
            container.display()
        ));
        fixes.push(format!(
            "`chmod 0666 {}` (it is safe: the group node guards the device)",
            container.display()
        ));
    }
    if problems.is_empty() {
        return CheckItem::new(
            CheckKind::VfioNodes,
            CheckStatus::Ok,
            format!(
                "{} and {} can be opened",
                node.display(),
                container.display()
            ),
        );
    }
    let item = CheckItem::new(CheckKind::VfioNodes, CheckStatus::Fail, problems.join("\n"));
    if fixes.is_empty() {
        item
    } else {
        item.host_fix(fixes.join("; "))
    }
}

fn check_iommufd(paths: &HostPaths, device: &HostDevice) -> CheckItem {
    let host = match IommuAvailability::probe(paths, device.address) {
        Ok(host) => host,
        Err(e) => return CheckItem::new(CheckKind::Iommufd, CheckStatus::Skip, e.to_string()),
    };
    // `Auto` always decides: it says which backend `--iommu auto` takes, and why.
    match IommuBackendChoice::Auto.decide(&host) {
        Ok(d) if d.backend == IommuBackend::Iommufd => CheckItem::new(
            CheckKind::Iommufd,
            CheckStatus::Ok,
            format!("available: {}; the `auto` choice uses it", d.reason),
        ),
        Ok(d) => CheckItem::new(
            CheckKind::Iommufd,
            CheckStatus::Skip,
            format!(
                "not available: {}; the `auto` choice uses the type1 container (iommufd needs \
                 CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV)",
                d.reason
            ),
        ),
        Err(e) => CheckItem::new(CheckKind::Iommufd, CheckStatus::Skip, e.to_string()),
    }
}

fn check_memlock(options: &CheckOptions) -> CheckItem {
    let limits = options.limits;
    let raise = "raise it: `ulimit -l unlimited` in a root shell before starting the VMM, \
                 `LimitMEMLOCK=infinity` in a systemd unit, or a `memlock` line in \
                 /etc/security/limits.conf; or give the VMM CAP_IPC_LOCK";
    if limits.cap_ipc_lock {
        return CheckItem::new(
            CheckKind::Memlock,
            CheckStatus::Ok,
            format!(
                "limit {}, but CAP_IPC_LOCK is held, so VFIO does not apply it",
                limits.memlock
            ),
        );
    }
    match (limits.memlock, options.guest_memory) {
        (MemlockLimit::Unlimited, _) => {
            CheckItem::new(CheckKind::Memlock, CheckStatus::Ok, "limit unlimited")
        }
        (limit, Some(guest)) if limit.allows(guest) => CheckItem::new(
            CheckKind::Memlock,
            CheckStatus::Ok,
            format!("limit {limit} covers the guest's {}", format_bytes(guest)),
        ),
        (limit, Some(guest)) => CheckItem::new(
            CheckKind::Memlock,
            CheckStatus::Fail,
            format!(
                "limit {limit} is below the guest's {}: VFIO pins all guest RAM for DMA, so \
                 mapping it would fail with ENOMEM",
                format_bytes(guest)
            ),
        )
        .host_fix(raise),
        (limit, None) if !limit.allows(MEMLOCK_WARN_BELOW) => CheckItem::new(
            CheckKind::Memlock,
            CheckStatus::Warn,
            format!(
                "limit {limit}: guests with more RAM than that cannot be mapped for DMA \
                 (give the guest's RAM size to check against it)"
            ),
        )
        .host_fix(raise),
        (limit, None) => CheckItem::new(
            CheckKind::Memlock,
            CheckStatus::Ok,
            format!("limit {limit} (give the guest's RAM size to check against it)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn access_check_follows_the_mode() {
        let path = std::env::temp_dir().join(format!("vfio-pci-access-{}", std::process::id()));
        std::fs::write(&path, "").unwrap();
        assert!(can_read_write(&path).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        // Root passes any mode check (CAP_DAC_OVERRIDE), as it would on /dev/vfio/N.
        assert_eq!(can_read_write(&path).unwrap(), root);
        std::fs::remove_file(&path).unwrap();
        assert!(can_read_write(&path).is_err());
    }
}
