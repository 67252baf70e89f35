//! Where the host's sysfs, procfs, device nodes and bind records live.
//!
//! Every file the host module touches is named here, from four roots that default to
//! `/sys`, `/dev`, `/proc` and `/run/vfio-pci` (a VMM names its own with
//! [`HostPaths::with_run_dir`]). Pointing them into a directory tree lets
//! tests (and tools that look at a host from a container, with the host's `/sys` mounted
//! elsewhere) run the same logic against another tree.

use std::path::{Path, PathBuf};

use super::PciAddress;

/// The roots under which the host module finds sysfs, device nodes, procfs and its own records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// sysfs, normally `/sys`.
    pub sys: PathBuf,
    /// Device nodes, normally `/dev`.
    pub dev: PathBuf,
    /// procfs, normally `/proc`.
    pub proc: PathBuf,
    /// Where `bind` records the driver a device had, for `unbind`: by default `/run/vfio-pci`.
    pub run: PathBuf,
}

/// Where bind records go unless the VMM names its own directory.
pub const DEFAULT_RUN_DIR: &str = "/run/vfio-pci";

impl Default for HostPaths {
    fn default() -> Self {
        Self {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            proc: PathBuf::from("/proc"),
            run: PathBuf::from(DEFAULT_RUN_DIR),
        }
    }
}

impl HostPaths {
    /// All four roots under one directory: `ROOT/sys`, `ROOT/dev`, `ROOT/proc`, `ROOT/run/vfio-pci`.
    pub fn under(root: impl AsRef<Path>) -> Self {
        let root = root.as_ref();
        Self {
            sys: root.join("sys"),
            dev: root.join("dev"),
            proc: root.join("proc"),
            run: root.join(DEFAULT_RUN_DIR.trim_start_matches('/')),
        }
    }

    /// The same roots, with bind records kept in `run` (a VMM's own directory under `/run`, or
    /// under the root given to [`under`](Self::under)).
    pub fn with_run_dir(mut self, run: impl Into<PathBuf>) -> Self {
        self.run = run.into();
        self
    }

    /// `/sys/bus/pci/devices/BDF`: the device's sysfs directory (a symlink into `/sys/devices`).
    pub fn pci_device(&self, address: PciAddress) -> PathBuf {
        self.sys.join("bus/pci/devices").join(address.to_string())
    }

    /// `/sys/bus/pci/drivers/NAME`: a PCI driver's directory, present while the driver is loaded.
    pub fn pci_driver(&self, name: &str) -> PathBuf {
        self.sys.join("bus/pci/drivers").join(name)
    }

    /// `/sys/bus/pci/drivers_probe`: writing a BDF asks the kernel to find a driver for it.
    pub fn drivers_probe(&self) -> PathBuf {
        self.sys.join("bus/pci/drivers_probe")
    }

    /// `/sys/kernel/iommu_groups`: one directory per IOMMU group; empty without an IOMMU.
    pub fn iommu_groups(&self) -> PathBuf {
        self.sys.join("kernel/iommu_groups")
    }

    /// `/sys/kernel/iommu_groups/N/devices`: the members of group `N`.
    pub fn iommu_group_devices(&self, group: u32) -> PathBuf {
        self.iommu_groups().join(group.to_string()).join("devices")
    }

    /// `/sys/class/iommu`: one entry per IOMMU unit (`dmar0`, `ivhd0`, ...).
    pub fn iommu_class(&self) -> PathBuf {
        self.sys.join("class/iommu")
    }

    /// `/dev/vfio/N`: the VFIO group node for group `N`.
    pub fn vfio_group_node(&self, group: u32) -> PathBuf {
        self.dev.join("vfio").join(group.to_string())
    }

    /// `/dev/vfio/vfio`: the VFIO container node (type1 IOMMU path).
    pub fn vfio_container_node(&self) -> PathBuf {
        self.dev.join("vfio/vfio")
    }

    /// `/dev/iommu`: the iommufd node, on kernels built with `CONFIG_IOMMUFD`.
    pub fn iommufd_node(&self) -> PathBuf {
        self.dev.join("iommu")
    }

    /// `/dev/vfio/devices/NAME`: a VFIO device cdev (iommufd path).
    pub fn vfio_device_cdev(&self, name: &str) -> PathBuf {
        self.dev.join("vfio/devices").join(name)
    }

    /// `/proc/cmdline`: the kernel command line.
    pub fn cmdline(&self) -> PathBuf {
        self.proc.join("cmdline")
    }

    /// `/proc/cpuinfo`: read for the CPU vendor, which decides the IOMMU kernel parameter, and
    /// the `hypervisor` flag.
    pub fn cpuinfo(&self) -> PathBuf {
        self.proc.join("cpuinfo")
    }

    /// `/sys/class/dmi/id/NAME` (`sys_vendor`, `product_name`): what the firmware says the
    /// machine is, a virtual one included.
    pub fn dmi_id(&self, name: &str) -> PathBuf {
        self.sys.join("class/dmi/id").join(name)
    }

    /// `RUN/BDF.driver` (`/run/vfio-pci/BDF.driver` by default): what `bind` recorded about the driver the device had.
    pub fn bind_record(&self, address: PciAddress) -> PathBuf {
        self.run.join(format!("{address}.driver"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_rooted_paths() {
        let a: PciAddress = "01:00.0".parse().unwrap();
        let host = HostPaths::default();
        assert_eq!(
            host.pci_device(a),
            Path::new("/sys/bus/pci/devices/0000:01:00.0")
        );
        assert_eq!(host.vfio_group_node(7), Path::new("/dev/vfio/7"));
        assert_eq!(
            host.bind_record(a),
            Path::new("/run/vfio-pci/0000:01:00.0.driver")
        );
        let fake = HostPaths::under("/tmp/x");
        assert_eq!(
            fake.iommu_group_devices(3),
            Path::new("/tmp/x/sys/kernel/iommu_groups/3/devices")
        );
        assert_eq!(fake.cmdline(), Path::new("/tmp/x/proc/cmdline"));
    }
}
