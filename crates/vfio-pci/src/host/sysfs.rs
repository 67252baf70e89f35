//! What sysfs and procfs say about a PCI device, its IOMMU group and the host's IOMMU.
//!
//! Only reads: changing bindings is [`bind`](super::bind)'s job.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::advice::{IommuAdvice, Platform};
use super::{HostPaths, PciAddress};

/// The driver name of the VFIO PCI driver.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// The sysfs name of Xen's PCI backend driver (module `xen-pciback`, drivers/xen/xen-pciback).
pub const XEN_PCIBACK_DRIVER: &str = "pciback";

/// A sysfs or procfs file could not be read, or said something unexpected.
#[derive(Debug, Error)]
pub enum SysfsError {
    /// `/sys/bus/pci/devices/BDF` does not exist.
    #[error(
        "no PCI device {address} on this host ({path} does not exist): list the devices with \
         `lspci -D` or `ls /sys/bus/pci/devices`"
    )]
    DeviceNotFound {
        /// The address asked for.
        address: PciAddress,
        /// The directory that is missing.
        path: PathBuf,
    },
    /// A file or link could not be read.
    #[error("cannot read {path}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A file held something that is not what the kernel writes there.
    #[error("{path}: unexpected content {content:?}")]
    Malformed {
        /// What was read.
        path: PathBuf,
        /// What it held.
        content: String,
    },
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> SysfsError + '_ {
    move |source| SysfsError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn read_trimmed(path: &Path) -> Result<String, SysfsError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(read_error(path))
}

/// Reads a `0x...` attribute such as `vendor` or `class`.
fn read_hex(path: &Path) -> Result<u32, SysfsError> {
    let text = read_trimmed(path)?;
    let digits = text.strip_prefix("0x").unwrap_or(&text);
    u32::from_str_radix(digits, 16).map_err(|_| SysfsError::Malformed {
        path: path.to_path_buf(),
        content: text.clone(),
    })
}

fn read_hex_u16(path: &Path) -> Result<u16, SysfsError> {
    let value = read_hex(path)?;
    u16::try_from(value).map_err(|_| SysfsError::Malformed {
        path: path.to_path_buf(),
        content: format!("{value:#x}"),
    })
}

/// The file name a symlink points at (`driver` -> `.../drivers/nvme` gives `nvme`),
/// or `None` when the link does not exist.
fn link_target_name(link: &Path) -> Result<Option<String>, SysfsError> {
    match fs::read_link(link) {
        Ok(target) => target
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| Some(n.to_string()))
            .ok_or_else(|| SysfsError::Malformed {
                path: link.to_path_buf(),
                content: target.display().to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_error(link)(e)),
    }
}

/// Sorted names of a directory's entries; a missing directory has none.
fn dir_names(dir: &Path) -> Result<Vec<String>, SysfsError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_error(dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_error(dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// A PCI class code: base class, subclass and programming interface (`0x010802` is an NVMe
/// controller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciClass(pub u32);

impl PciClass {
    /// The base class (bits 23:16).
    pub fn base(self) -> u8 {
        (self.0 >> 16) as u8
    }

    /// The subclass (bits 15:8).
    pub fn subclass(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// A PCI-to-PCI bridge (class 06/04). Such bridges carry no DMA of their own; the kernel
    /// (via the `pcieport` driver's managed DMA) and QEMU let them share a group with a
    /// passed-through device.
    pub fn is_pci_bridge(self) -> bool {
        self.base() == 0x06 && self.subclass() == 0x04
    }

    /// A short English name of the base class, for messages.
    pub fn name(self) -> &'static str {
        match (self.base(), self.subclass()) {
            (0x01, 0x08) => "NVMe/NVM controller",
            (0x01, _) => "mass storage controller",
            (0x02, _) => "network controller",
            (0x03, _) => "display controller",
            (0x04, _) => "multimedia controller",
            (0x05, _) => "memory controller",
            (0x06, 0x00) => "host bridge",
            (0x06, 0x04) => "PCI bridge",
            (0x06, _) => "bridge",
            (0x07, _) => "communication controller",
            (0x08, _) => "system peripheral",
            (0x0c, 0x03) => "USB controller",
            (0x0c, _) => "serial bus controller",
            (0x12, _) => "processing accelerator",
            (0xff, _) => "unassigned class",
            _ => "PCI device",
        }
    }
}

impl fmt::Display for PciClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (class {:#08x})", self.name(), self.0)
    }
}

/// The device's `driver_override` attribute (Linux 3.16+): when set, only that driver may bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverOverride {
    /// The kernel has no `driver_override` attribute; binding uses `new_id` instead.
    Unsupported,
    /// The attribute exists and is empty (it reads `(null)`).
    Unset,
    /// The attribute names a driver.
    Set(String),
}

/// Whether a driver name is vfio-pci or one of its vendor variants (`mlx5_vfio_pci`, ...),
/// all of which hand the device to user space through VFIO.
pub fn is_vfio_driver(name: &str) -> bool {
    name == VFIO_PCI_DRIVER || name.ends_with("_vfio_pci") || name.ends_with("-vfio-pci")
}

/// One PCI device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// Its address.
    pub address: PciAddress,
    /// `/sys/bus/pci/devices/BDF`.
    pub sysfs_path: PathBuf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Subsystem vendor ID, when sysfs has it.
    pub subsystem_vendor: Option<u16>,
    /// Subsystem device ID, when sysfs has it.
    pub subsystem_device: Option<u16>,
    /// Class code.
    pub class: PciClass,
    /// The bound driver (the `driver` link), if any.
    pub driver: Option<String>,
    /// The IOMMU group (the `iommu_group` link), if the device is behind an IOMMU.
    pub iommu_group: Option<u32>,
    /// The `driver_override` attribute.
    pub driver_override: DriverOverride,
    /// The VFIO device cdev name (`vfio0` in `BDF/vfio-dev/`), on kernels with
    /// `CONFIG_VFIO_DEVICE_CDEV` while bound to vfio-pci.
    pub vfio_cdev: Option<String>,
}

impl HostDevice {
    /// Reads the device at `address` from sysfs.
    pub fn read(paths: &HostPaths, address: PciAddress) -> Result<Self, SysfsError> {
        let dir = paths.pci_device(address);
        if !dir.exists() {
            return Err(SysfsError::DeviceNotFound { address, path: dir });
        }
        let optional_u16 = |name: &str| {
            let path = dir.join(name);
            if path.exists() {
                read_hex_u16(&path).map(Some)
            } else {
                Ok(None)
            }
        };
        let iommu_group = match link_target_name(&dir.join("iommu_group"))? {
            None => None,
            Some(name) => Some(name.parse().map_err(|_| SysfsError::Malformed {
                path: dir.join("iommu_group"),
                content: name,
            })?),
        };
        let override_path = dir.join("driver_override");
        let driver_override = if override_path.exists() {
            match read_trimmed(&override_path)?.as_str() {
                "" | "(null)" => DriverOverride::Unset,
                name => DriverOverride::Set(name.to_string()),
            }
        } else {
            DriverOverride::Unsupported
        };
        Ok(Self {
            address,
            vendor: read_hex_u16(&dir.join("vendor"))?,
            device: read_hex_u16(&dir.join("device"))?,
            subsystem_vendor: optional_u16("subsystem_vendor")?,
            subsystem_device: optional_u16("subsystem_device")?,
            class: PciClass(read_hex(&dir.join("class"))?),
            driver: link_target_name(&dir.join("driver"))?,
            iommu_group,
            driver_override,
            vfio_cdev: dir_names(&dir.join("vfio-dev"))?.into_iter().next(),
            sysfs_path: dir,
        })
    }

    /// Whether the device is bound to vfio-pci (or a vendor variant of it).
    pub fn is_bound_to_vfio(&self) -> bool {
        self.driver.as_deref().is_some_and(is_vfio_driver)
    }

    /// `vvvv:dddd`, as `lspci -nn` shows it.
    pub fn ids(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor, self.device)
    }

    /// The driver name for messages: the name, or `no driver`.
    pub fn driver_name(&self) -> &str {
        self.driver.as_deref().unwrap_or("no driver")
    }
}

/// How a device that shares an IOMMU group affects passing another member through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberState {
    /// Bound to vfio-pci (or a variant): fine, and must stay there while the group is in use.
    Vfio(String),
    /// Bound to `pci-stub` or `pcieport`, which leave DMA to the group's owner: fine.
    DmaManaged(String),
    /// No driver: fine.
    NoDriver,
    /// A PCI-to-PCI bridge: fine whatever its driver.
    Bridge(Option<String>),
    /// A host driver drives it, so the group is not viable.
    HostDriver(String),
}

impl MemberState {
    /// Whether this member keeps the group from being viable for VFIO.
    pub fn blocks_group(&self) -> bool {
        matches!(self, MemberState::HostDriver(_))
    }
}

/// One device in an IOMMU group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The entry name in the group's `devices/` (a BDF for PCI devices).
    pub name: String,
    /// The PCI address, when the member is a PCI device.
    pub address: Option<PciAddress>,
    /// Its driver, if any.
    pub driver: Option<String>,
    /// Its class, when it has one.
    pub class: Option<PciClass>,
}

impl GroupMember {
    /// Whether the member lets the group be used by VFIO, and why.
    ///
    /// The kernel (5.19+ DMA ownership, and the older viability check before it) accepts
    /// members that have no driver, are bound to a VFIO driver, or to a driver that declares
    /// `driver_managed_dma` (`pci-stub`, `pcieport`). Bridges are accepted as QEMU's docs and
    /// the kernel's bridge handling allow.
    pub fn state(&self) -> MemberState {
        let driver = self.driver.clone();
        if self.class.is_some_and(PciClass::is_pci_bridge) {
            return MemberState::Bridge(driver);
        }
        match driver {
            None => MemberState::NoDriver,
            Some(d) if is_vfio_driver(&d) => MemberState::Vfio(d),
            Some(d) if d == "pci-stub" || d == "pcieport" => MemberState::DmaManaged(d),
            Some(d) => MemberState::HostDriver(d),
        }
    }
}

impl fmt::Display for GroupMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(class) = self.class {
            write!(f, " [{}]", class.name())?;
        }
        match &self.driver {
            Some(d) => write!(f, " (driver {d})"),
            None => write!(f, " (no driver)"),
        }
    }
}

/// An IOMMU group: the smallest set of devices the IOMMU can isolate from each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IommuGroup {
    /// The group number (`/dev/vfio/N`).
    pub id: u32,
    /// Every device in the group, sorted by name.
    pub members: Vec<GroupMember>,
}

impl IommuGroup {
    /// Reads `/sys/kernel/iommu_groups/N/devices/`.
    pub fn read(paths: &HostPaths, id: u32) -> Result<Self, SysfsError> {
        let dir = paths.iommu_group_devices(id);
        if !dir.is_dir() {
            return Err(SysfsError::Read {
                path: dir,
                source: io::Error::new(io::ErrorKind::NotFound, "IOMMU group directory missing"),
            });
        }
        let mut members = Vec::new();
        for name in dir_names(&dir)? {
            // Entries are links to the device directories, so their attributes read through.
            let entry = dir.join(&name);
            let class_path = entry.join("class");
            let class = if class_path.exists() {
                Some(PciClass(read_hex(&class_path)?))
            } else {
                None
            };
            members.push(GroupMember {
                address: name.parse().ok(),
                driver: link_target_name(&entry.join("driver"))?,
                class,
                name,
            });
        }
        Ok(Self { id, members })
    }

    /// The members other than `address`.
    pub fn others(&self, address: PciAddress) -> impl Iterator<Item = &GroupMember> {
        self.members
            .iter()
            .filter(move |m| m.address != Some(address))
    }

    /// The members other than `address` that keep the group from being viable.
    pub fn blockers(&self, address: PciAddress) -> Vec<&GroupMember> {
        self.others(address)
            .filter(|m| m.state().blocks_group())
            .collect()
    }
}

/// The CPU vendor, which decides the IOMMU kernel parameter to suggest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuVendor {
    /// `GenuineIntel`: Intel VT-d, `intel_iommu=on`.
    Intel,
    /// `AuthenticAMD` or `HygonGenuine`: AMD-Vi, on by default when the firmware enables it.
    Amd,
    /// Anything else, or `/proc/cpuinfo` unreadable.
    Unknown,
}

impl CpuVendor {
    /// Reads the first `vendor_id` line of a `/proc/cpuinfo` text.
    pub fn from_cpuinfo(cpuinfo: &str) -> Self {
        let vendor = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("vendor_id"))
            .and_then(|rest| rest.split(':').nth(1))
            .map(str::trim);
        match vendor {
            Some("GenuineIntel") => CpuVendor::Intel,
            Some("AuthenticAMD") | Some("HygonGenuine") => CpuVendor::Amd,
            _ => CpuVendor::Unknown,
        }
    }
}

/// The IOMMU-related parameters on the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelIommuParams {
    /// `intel_iommu=...`
    pub intel_iommu: Option<String>,
    /// `amd_iommu=...`
    pub amd_iommu: Option<String>,
    /// `iommu=...` (`pt`, `off`, ...)
    pub iommu: Option<String>,
}

impl KernelIommuParams {
    /// Parses a `/proc/cmdline` text. Words after `--` belong to init and are ignored; the last
    /// occurrence of a parameter wins, as in the kernel.
    pub fn parse(cmdline: &str) -> Self {
        let mut params = Self::default();
        for word in cmdline.split_whitespace().take_while(|w| *w != "--") {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let slot = match key {
                "intel_iommu" => &mut params.intel_iommu,
                "amd_iommu" => &mut params.amd_iommu,
                "iommu" => &mut params.iommu,
                _ => continue,
            };
            *slot = Some(value.to_string());
        }
        params
    }

    /// The parameters that switch the IOMMU off, as written on the command line.
    pub fn disabling(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut check = |key: &str, value: &Option<String>| {
            if let Some(v) = value
                .as_deref()
                .filter(|v| v.split(',').any(|p| p == "off"))
            {
                found.push(format!("{key}={v}"));
            }
        };
        check("intel_iommu", &self.intel_iommu);
        check("amd_iommu", &self.amd_iommu);
        check("iommu", &self.iommu);
        found
    }
}

/// Whether the host has a working IOMMU, and what to change if not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IommuStatus {
    /// Entries of `/sys/class/iommu` (IOMMU units such as `dmar0` or `ivhd0`).
    pub units: Vec<String>,
    /// How many groups `/sys/kernel/iommu_groups` holds.
    pub group_count: usize,
    /// The IOMMU parameters on the kernel command line.
    pub params: KernelIommuParams,
    /// A physical machine (and its CPU vendor) or a virtual one: where an IOMMU comes from.
    pub platform: Platform,
}

impl IommuStatus {
    /// Reads `/sys/class/iommu`, `/sys/kernel/iommu_groups`, `/proc/cmdline`, `/proc/cpuinfo`
    /// and the DMI system vendor and product.
    /// Missing files count as empty: that is what a host without an IOMMU looks like.
    pub fn read(paths: &HostPaths) -> Result<Self, SysfsError> {
        let optional = |path: PathBuf| match fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(read_error(&path)(e)),
        };
        Ok(Self {
            units: dir_names(&paths.iommu_class())?,
            group_count: dir_names(&paths.iommu_groups())?.len(),
            params: KernelIommuParams::parse(&optional(paths.cmdline())?),
            platform: Platform::detect(
                &optional(paths.cpuinfo())?,
                &optional(paths.dmi_id("sys_vendor"))?,
                &optional(paths.dmi_id("product_name"))?,
            ),
        })
    }

    /// VFIO needs IOMMU groups; the kernel creates them only with an IOMMU enabled.
    pub fn enabled(&self) -> bool {
        self.group_count > 0
    }

    /// What to change so the IOMMU is on, for the caller to render.
    pub fn how_to_enable(&self) -> IommuAdvice {
        IommuAdvice {
            platform: self.platform.clone(),
            remove_params: self.params.disabling(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_parameters() {
        let p = KernelIommuParams::parse(
            "BOOT_IMAGE=/vmlinuz intel_iommu=off quiet intel_iommu=on iommu=pt -- iommu=off",
        );
        assert_eq!(p.intel_iommu.as_deref(), Some("on"));
        assert_eq!(p.iommu.as_deref(), Some("pt"));
        assert_eq!(p.amd_iommu, None);
        assert!(p.disabling().is_empty());
        let off = KernelIommuParams::parse("amd_iommu=off iommu=off");
        assert_eq!(off.disabling(), vec!["amd_iommu=off", "iommu=off"]);
    }

    #[test]
    fn cpu_vendor() {
        let intel = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n";
        assert_eq!(CpuVendor::from_cpuinfo(intel), CpuVendor::Intel);
        assert_eq!(
            CpuVendor::from_cpuinfo("vendor_id : AuthenticAMD"),
            CpuVendor::Amd
        );
        assert_eq!(
            CpuVendor::from_cpuinfo("CPU implementer : 0x41"),
            CpuVendor::Unknown
        );
    }

    #[test]
    fn advice_names_the_parameter() {
        let mut status = IommuStatus {
            units: vec![],
            group_count: 0,
            params: KernelIommuParams::parse("intel_iommu=off"),
            platform: Platform::BareMetal {
                cpu: CpuVendor::Intel,
            },
        };
        let advice = status.how_to_enable();
        assert_eq!(advice.remove_params, vec!["intel_iommu=off"]);
        let text = advice.to_string();
        assert!(text.contains("`intel_iommu=on`"), "{text}");
        assert!(text.starts_with("remove intel_iommu=off"), "{text}");
        status.platform = Platform::BareMetal {
            cpu: CpuVendor::Amd,
        };
        assert!(status.how_to_enable().to_string().contains("AMD-Vi"));
    }

    #[test]
    fn class_codes() {
        let nvme = PciClass(0x010802);
        assert_eq!((nvme.base(), nvme.subclass()), (0x01, 0x08));
        assert!(!nvme.is_pci_bridge());
        assert!(PciClass(0x060400).is_pci_bridge());
        assert!(PciClass(0x060401).is_pci_bridge());
        assert!(!PciClass(0x060000).is_pci_bridge());
        assert_eq!(nvme.to_string(), "NVMe/NVM controller (class 0x010802)");
    }

    #[test]
    fn member_states() {
        let member = |driver: Option<&str>, class| GroupMember {
            name: "0000:01:00.1".into(),
            address: "0000:01:00.1".parse().ok(),
            driver: driver.map(str::to_string),
            class: Some(PciClass(class)),
        };
        assert!(
            member(Some("snd_hda_intel"), 0x040300)
                .state()
                .blocks_group()
        );
        assert!(!member(None, 0x040300).state().blocks_group());
        assert!(!member(Some("vfio-pci"), 0x040300).state().blocks_group());
        assert!(
            !member(Some("mlx5_vfio_pci"), 0x020000)
                .state()
                .blocks_group()
        );
        assert!(!member(Some("pci-stub"), 0x040300).state().blocks_group());
        assert!(!member(Some("pcieport"), 0x060400).state().blocks_group());
        assert!(!member(Some("shpchp"), 0x060400).state().blocks_group());
        assert_eq!(
            member(Some("snd_hda_intel"), 0x040300).to_string(),
            "0000:01:00.1 [multimedia controller] (driver snd_hda_intel)"
        );
    }
}
