//! A fake host tree for tests: sysfs, procfs and `/dev` laid out in a temporary directory.
//!
//! This is a test aid, not a feature. [`FakeHost`] builds the files and links that the host
//! module reads, as the kernel lays them out (`/sys/bus/pci/devices/BDF` links into
//! `/sys/devices`, `driver` and `iommu_group` links, group `devices/` links). Files in a plain
//! directory do nothing when written, so `FakeKernel` (feature `host-admin`, like the binder it
//! serves) is a `SysfsWriter` that writes the file and then does what the kernel would: move the
//! `driver` link on `unbind`, `bind`, `drivers_probe` and `new_id`.
//!
//! ```
//! use vfio_pci::host::fake::{FakeDevice, FakeHost};
//! use vfio_pci::host::HostDevice;
//!
//! let host = FakeHost::new("doc").unwrap();
//! host.add_device(&FakeDevice::new("0000:01:00.0", 0x1b36, 0x0010, 0x010802).driver("nvme").group(7))
//!     .unwrap();
//! let dev = HostDevice::read(&host.paths(), "01:00.0".parse().unwrap()).unwrap();
//! assert_eq!(dev.driver.as_deref(), Some("nvme"));
//! assert_eq!(dev.iommu_group, Some(7));
//! ```

#[cfg(feature = "host-admin")]
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
#[cfg(feature = "host-admin")]
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "host-admin")]
use super::bind::{KernelSysfs, SysfsWriter};
use super::sysfs::{HostDevice, XEN_PCIBACK_DRIVER};
use super::{HostPaths, PciAddress};

/// A device to put into a [`FakeHost`].
#[derive(Debug, Clone)]
pub struct FakeDevice {
    /// Its address.
    pub address: PciAddress,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code.
    pub class: u32,
    /// The driver bound now.
    pub driver: Option<String>,
    /// Its IOMMU group.
    pub iommu_group: Option<u32>,
    /// Whether the kernel has `driver_override` (false: a pre-3.16 kernel).
    pub driver_override: bool,
}

impl FakeDevice {
    /// A device with no driver, no IOMMU group and a `driver_override` attribute.
    ///
    /// # Panics
    /// If `address` is not a PCI address: this is test set-up.
    pub fn new(address: &str, vendor: u16, device: u16, class: u32) -> Self {
        Self {
            address: address.parse().expect("FakeDevice::new: bad PCI address"),
            vendor,
            device,
            class,
            driver: None,
            iommu_group: None,
            driver_override: true,
        }
    }

    /// Bound to `driver`.
    pub fn driver(mut self, driver: &str) -> Self {
        self.driver = Some(driver.to_string());
        self
    }

    /// In IOMMU group `group`.
    pub fn group(mut self, group: u32) -> Self {
        self.iommu_group = Some(group);
        self
    }

    /// Without a `driver_override` attribute.
    pub fn without_driver_override(mut self) -> Self {
        self.driver_override = false;
        self
    }
}

/// A host tree in a fresh temporary directory, removed on drop.
#[derive(Debug)]
pub struct FakeHost {
    root: PathBuf,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl FakeHost {
    /// A host ready for passthrough but for the device: an Intel CPU with the IOMMU on
    /// (`intel_iommu=on iommu=pt`, unit `dmar0`) and the vfio-pci driver loaded.
    pub fn intel_with_iommu(label: &str) -> io::Result<Self> {
        let host = Self::new(label)?;
        host.set_cpu_vendor("GenuineIntel")?;
        host.set_cmdline("BOOT_IMAGE=/vmlinuz intel_iommu=on iommu=pt")?;
        host.add_iommu_unit("dmar0")?;
        host.add_driver("vfio-pci")?;
        Ok(host)
    }

    /// Creates an empty tree (`sys/bus/pci/{devices,drivers}`, `drivers_probe`, `proc/cmdline`)
    /// in a new directory under the system temporary directory.
    pub fn new(label: &str) -> io::Result<Self> {
        let root = std::env::temp_dir().join(format!(
            "vfio-pci-fake-{label}-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ));
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        let host = Self { root };
        let paths = host.paths();
        fs::create_dir_all(paths.sys.join("bus/pci/devices"))?;
        fs::create_dir_all(paths.sys.join("bus/pci/drivers"))?;
        fs::create_dir_all(paths.sys.join("devices/pci0000:00"))?;
        fs::create_dir_all(&paths.dev)?;
        fs::create_dir_all(&paths.proc)?;
        fs::write(paths.drivers_probe(), "")?;
        fs::write(
            paths.cmdline(),
            "BOOT_IMAGE=/vmlinuz root=/dev/sda1 quiet\n",
        )?;
        Ok(host)
    }

    /// The directory holding `sys/`, `dev/`, `proc/` and `run/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The paths of this tree.
    pub fn paths(&self) -> HostPaths {
        HostPaths::under(&self.root)
    }

    fn device_dir(&self, address: PciAddress) -> PathBuf {
        self.paths()
            .sys
            .join("devices/pci0000:00")
            .join(address.to_string())
    }

    /// Adds a PCI driver directory with its `bind`, `unbind`, `new_id` and `remove_id` files
    /// (and, for Xen's `pciback`, `new_slot`, `remove_slot` and `slots`).
    pub fn add_driver(&self, name: &str) -> io::Result<()> {
        let dir = self.paths().pci_driver(name);
        fs::create_dir_all(&dir)?;
        let pciback: &[&str] = if name == XEN_PCIBACK_DRIVER {
            &["new_slot", "remove_slot", "slots"]
        } else {
            &[]
        };
        for attr in ["bind", "unbind", "new_id", "remove_id"]
            .iter()
            .chain(pciback)
        {
            if !dir.join(attr).exists() {
                fs::write(dir.join(attr), "")?;
            }
        }
        Ok(())
    }

    /// Adds a device (and its driver and IOMMU group directories when it names them).
    pub fn add_device(&self, device: &FakeDevice) -> io::Result<()> {
        let paths = self.paths();
        let name = device.address.to_string();
        let dir = self.device_dir(device.address);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("vendor"), format!("{:#06x}\n", device.vendor))?;
        fs::write(dir.join("device"), format!("{:#06x}\n", device.device))?;
        fs::write(
            dir.join("subsystem_vendor"),
            format!("{:#06x}\n", device.vendor),
        )?;
        fs::write(dir.join("subsystem_device"), "0x1100\n")?;
        fs::write(dir.join("class"), format!("{:#08x}\n", device.class))?;
        if device.driver_override {
            fs::write(dir.join("driver_override"), "(null)\n")?;
        }
        symlink(
            format!("../../../devices/pci0000:00/{name}"),
            paths.sys.join("bus/pci/devices").join(&name),
        )?;
        if let Some(driver) = &device.driver {
            self.add_driver(driver)?;
            self.set_driver(device.address, Some(driver))?;
        }
        if let Some(group) = device.iommu_group {
            let members = paths.iommu_group_devices(group);
            fs::create_dir_all(&members)?;
            symlink(
                format!("../../../../devices/pci0000:00/{name}"),
                members.join(&name),
            )?;
            symlink(
                format!("../../../kernel/iommu_groups/{group}"),
                dir.join("iommu_group"),
            )?;
        }
        Ok(())
    }

    /// Points the device's `driver` link at `driver`, or removes it.
    pub fn set_driver(&self, address: PciAddress, driver: Option<&str>) -> io::Result<()> {
        let link = self.device_dir(address).join("driver");
        match fs::remove_file(&link) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        match driver {
            Some(d) => symlink(format!("../../../bus/pci/drivers/{d}"), link),
            None => Ok(()),
        }
    }

    /// Adds an IOMMU unit to `/sys/class/iommu` (`dmar0`, `ivhd0`).
    pub fn add_iommu_unit(&self, name: &str) -> io::Result<()> {
        fs::create_dir_all(self.paths().iommu_class().join(name))
    }

    /// Writes `/proc/cmdline`.
    pub fn set_cmdline(&self, cmdline: &str) -> io::Result<()> {
        fs::write(self.paths().cmdline(), format!("{cmdline}\n"))
    }

    /// Writes the DMI system vendor and product name (`/sys/class/dmi/id/{sys_vendor,
    /// product_name}`), e.g. `QEMU` and `Standard PC (Q35 + ICH9, 2009)` for a QEMU guest.
    pub fn set_dmi(&self, vendor: &str, product: &str) -> io::Result<()> {
        let paths = self.paths();
        fs::create_dir_all(paths.dmi_id(""))?;
        fs::write(paths.dmi_id("sys_vendor"), format!("{vendor}\n"))?;
        fs::write(paths.dmi_id("product_name"), format!("{product}\n"))
    }

    /// Writes a `/proc/cpuinfo` with this `vendor_id` (`GenuineIntel`, `AuthenticAMD`).
    pub fn set_cpu_vendor(&self, vendor: &str) -> io::Result<()> {
        fs::write(
            self.paths().cpuinfo(),
            format!("processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 25\n"),
        )
    }

    /// Creates `/dev/vfio/vfio` and `/dev/vfio/N` (as plain files: only their presence and
    /// access mode are looked at).
    pub fn add_vfio_nodes(&self, group: u32) -> io::Result<()> {
        let paths = self.paths();
        fs::create_dir_all(paths.dev.join("vfio"))?;
        fs::write(paths.vfio_container_node(), "")?;
        fs::write(paths.vfio_group_node(group), "")
    }

    /// The device's driver, read back from the tree.
    pub fn driver_of(&self, address: PciAddress) -> Option<String> {
        HostDevice::read(&self.paths(), address).ok()?.driver
    }

    /// The text of a file under the root (`sys/bus/pci/drivers_probe`), empty when missing.
    pub fn read(&self, relative: &str) -> String {
        fs::read_to_string(self.root.join(relative)).unwrap_or_default()
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

#[cfg(feature = "host-admin")]
/// A [`SysfsWriter`] that writes the file and then does what Linux would do on a real sysfs.
///
/// Modelled: `drivers/D/unbind`, `drivers/D/bind`, `drivers_probe` (honouring
/// `driver_override`, vfio-pci's dynamic IDs and each device's native driver),
/// `drivers/D/new_id` (`EEXIST` when the ID is there already), `remove_id`, and clearing
/// `driver_override` with a newline, and Xen pciback's `new_slot`/`remove_slot` (its `bind` and
/// probe take only devices in its slot list). Drivers can be made to refuse devices or to keep
/// them.
#[derive(Debug)]
pub struct FakeKernel {
    paths: HostPaths,
    native: HashMap<PciAddress, String>,
    refusing: HashSet<String>,
    sticky: HashSet<String>,
    dynamic_ids: Mutex<HashMap<String, HashSet<(u16, u16)>>>,
    pciback_slots: Mutex<HashSet<PciAddress>>,
    log: Mutex<Vec<(PathBuf, String)>>,
}

#[cfg(feature = "host-admin")]
impl FakeKernel {
    /// A kernel over the tree at `paths`.
    pub fn new(paths: HostPaths) -> Self {
        Self {
            paths,
            native: HashMap::new(),
            refusing: HashSet::new(),
            sticky: HashSet::new(),
            dynamic_ids: Mutex::new(HashMap::new()),
            pciback_slots: Mutex::new(HashSet::new()),
            log: Mutex::new(Vec::new()),
        }
    }

    /// `driver` is the one the kernel picks for `address` when nothing overrides it.
    pub fn native_driver(mut self, address: PciAddress, driver: &str) -> Self {
        self.native.insert(address, driver.to_string());
        self
    }

    /// `driver`'s probe fails for every device, as vfio-pci's does without an IOMMU group.
    pub fn refusing(mut self, driver: &str) -> Self {
        self.refusing.insert(driver.to_string());
        self
    }

    /// `driver` ignores `unbind`.
    pub fn sticky(mut self, driver: &str) -> Self {
        self.sticky.insert(driver.to_string());
        self
    }

    /// Every write so far: (path relative to the sys root, value).
    pub fn writes(&self) -> Vec<(PathBuf, String)> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn device(&self, bdf: &str) -> Option<HostDevice> {
        HostDevice::read(&self.paths, bdf.trim().parse().ok()?).ok()
    }

    fn link(&self, address: PciAddress, driver: Option<&str>) -> io::Result<()> {
        let link = self.paths.pci_device(address).join("driver");
        match fs::remove_file(&link) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        match driver {
            Some(d) => symlink(format!("../../../bus/pci/drivers/{d}"), link),
            None => Ok(()),
        }
    }

    fn in_pciback_slot(&self, address: PciAddress) -> io::Result<bool> {
        let slots = self
            .pciback_slots
            .lock()
            .map_err(|_| io::ErrorKind::Other)?;
        Ok(slots.contains(&address))
    }

    /// What `drivers_probe` would bind: the override, else pciback for a device in its slot
    /// list, else a matching dynamic ID, else the native driver; only a loaded driver that does
    /// not refuse.
    fn probe(&self, device: &HostDevice) -> io::Result<()> {
        use super::sysfs::DriverOverride;
        if device.driver.is_some() {
            return Ok(());
        }
        let ids = (device.vendor, device.device);
        let candidate = match &device.driver_override {
            DriverOverride::Set(name) => Some(name.clone()),
            _ if self.in_pciback_slot(device.address)? => Some(XEN_PCIBACK_DRIVER.to_string()),
            _ => {
                let dynamic = self.dynamic_ids.lock().map_err(|_| io::ErrorKind::Other)?;
                dynamic
                    .iter()
                    .find(|(_, set)| set.contains(&ids))
                    .map(|(d, _)| d.clone())
                    .or_else(|| self.native.get(&device.address).cloned())
            }
        };
        match candidate {
            Some(d) if self.paths.pci_driver(&d).is_dir() && !self.refusing.contains(&d) => {
                self.link(device.address, Some(&d))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(feature = "host-admin")]
impl SysfsWriter for FakeKernel {
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        let relative = path
            .strip_prefix(&self.paths.sys)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not under the fake sys"))?
            .to_path_buf();
        let parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let enodev = || io::Error::from_raw_os_error(libc::ENODEV);

        // Check what the kernel would refuse before anything lands in the file.
        if let ["bus", "pci", "drivers", driver, "new_id"] = parts.as_slice() {
            let ids = parse_ids(value).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            let mut dynamic = self.dynamic_ids.lock().map_err(|_| io::ErrorKind::Other)?;
            if !dynamic.entry(driver.to_string()).or_default().insert(ids) {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
        }
        let written = if parts.last() == Some(&"driver_override") && value.trim().is_empty() {
            "(null)\n"
        } else {
            value
        };
        KernelSysfs.write_attr(path, written)?;
        if let Ok(mut log) = self.log.lock() {
            log.push((relative.clone(), value.to_string()));
        }

        match parts.as_slice() {
            ["bus", "pci", "drivers", driver, "unbind"] => {
                let device = self.device(value).ok_or_else(enodev)?;
                if device.driver.as_deref() != Some(*driver) {
                    return Err(enodev());
                }
                if !self.sticky.contains(*driver) {
                    self.link(device.address, None)?;
                }
            }
            ["bus", "pci", "drivers", driver, "bind"] => {
                let device = self.device(value).ok_or_else(enodev)?;
                if device.driver.is_some() {
                    return Err(io::Error::from_raw_os_error(libc::EBUSY));
                }
                if self.refusing.contains(*driver) {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                // pciback's probe seizes only the devices in its slot list.
                if *driver == XEN_PCIBACK_DRIVER && !self.in_pciback_slot(device.address)? {
                    return Err(enodev());
                }
                self.link(device.address, Some(driver))?;
            }
            [
                "bus",
                "pci",
                "drivers",
                XEN_PCIBACK_DRIVER,
                slot @ ("new_slot" | "remove_slot"),
            ] => {
                let address: PciAddress = value
                    .trim()
                    .parse()
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                let mut slots = self
                    .pciback_slots
                    .lock()
                    .map_err(|_| io::ErrorKind::Other)?;
                if *slot == "new_slot" {
                    slots.insert(address);
                } else if !slots.remove(&address) {
                    return Err(io::Error::from_raw_os_error(libc::ENOENT));
                }
            }
            ["bus", "pci", "drivers_probe"] => {
                let device = self.device(value).ok_or_else(enodev)?;
                self.probe(&device)?;
            }
            ["bus", "pci", "drivers", driver, "remove_id"] => {
                let ids = parse_ids(value).ok_or_else(enodev)?;
                let mut dynamic = self.dynamic_ids.lock().map_err(|_| io::ErrorKind::Other)?;
                if !dynamic.entry(driver.to_string()).or_default().remove(&ids) {
                    return Err(enodev());
                }
            }
            ["bus", "pci", "drivers", _, "new_id"] => {
                // new_id probes every device without a driver.
                for entry in fs::read_dir(self.paths.sys.join("bus/pci/devices"))? {
                    let name = entry?.file_name();
                    if let Some(device) = self.device(&name.to_string_lossy()) {
                        self.probe(&device)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(feature = "host-admin")]
fn parse_ids(value: &str) -> Option<(u16, u16)> {
    let mut words = value.split_whitespace();
    let vendor = u16::from_str_radix(words.next()?, 16).ok()?;
    let device = u16::from_str_radix(words.next()?, 16).ok()?;
    Some((vendor, device))
}
