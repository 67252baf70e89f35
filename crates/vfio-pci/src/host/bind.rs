//! Moving a device between its host driver and vfio-pci through sysfs.
//!
//! Binding follows what `driverctl` and QEMU's documentation do:
//!
//! 1. record the current driver in `RUN/BDF.driver` (`HostPaths::run`), for `unbind`;
//! 2. set `driver_override` to `vfio-pci` *before* releasing the device, so that nothing (a
//!    udev rule, a rescan) can hand it back to the old driver in between;
//! 3. write the BDF to `driver/unbind`;
//! 4. write the BDF to `/sys/bus/pci/drivers_probe`, which now can only pick vfio-pci.
//!
//! Kernels without `driver_override` (before 3.16) get `new_id` instead: writing
//! `"VVVV DDDD"` to `/sys/bus/pci/drivers/vfio-pci/new_id` makes vfio-pci claim every unbound
//! device with those IDs.
//!
//! Xen's recipe ([`BindTarget::XenPciback`], what `xl pci-assignable-add` does) is the same
//! record-and-release, then the BDF to `drivers/pciback/new_slot` (pciback seizes only the
//! devices it is told about) and to `drivers/pciback/bind`; `unbind` writes `remove_slot`
//! after releasing it.
//!
//! Sysfs writes are synchronous: when the `unbind` write returns, the driver's `remove()` has
//! run. So each step is checked once, right after it, by reading the `driver` link again, and
//! never waited on: a step that did not take is an error that names it, after whatever was
//! already changed has been put back.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

use super::sysfs::{
    DriverOverride, HostDevice, SysfsError, VFIO_PCI_DRIVER, XEN_PCIBACK_DRIVER, is_vfio_driver,
};
use super::{HostPaths, PciAddress};

/// Which passthrough driver a device is handed to: KVM's (vfio-pci, for QEMU,
/// cloud-hypervisor, refvmm) or Xen's (pciback, for `xl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindTarget {
    /// vfio-pci.
    #[default]
    VfioPci,
    /// Xen's pciback, in dom0.
    XenPciback,
}

impl BindTarget {
    /// The driver's name under `/sys/bus/pci/drivers`.
    pub fn driver(self) -> &'static str {
        match self {
            BindTarget::VfioPci => VFIO_PCI_DRIVER,
            BindTarget::XenPciback => XEN_PCIBACK_DRIVER,
        }
    }

    /// The kernel module that provides it.
    pub fn module(self) -> &'static str {
        match self {
            BindTarget::VfioPci => "vfio-pci",
            BindTarget::XenPciback => "xen-pciback",
        }
    }
}

impl std::fmt::Display for BindTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.module())
    }
}

impl FromStr for BindTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "vfio-pci" | "vfio" => Ok(BindTarget::VfioPci),
            "xen-pciback" | "pciback" => Ok(BindTarget::XenPciback),
            other => Err(format!(
                "`{other}` is not a passthrough driver: use vfio-pci (KVM) or xen-pciback (Xen)"
            )),
        }
    }
}

/// True for the drivers `unbind` gives devices back from: VFIO drivers and pciback.
fn is_passthrough_driver(name: &str) -> bool {
    is_vfio_driver(name) || name == XEN_PCIBACK_DRIVER
}

/// Writes sysfs attributes. The kernel acts on each write; [`KernelSysfs`] is the real thing,
/// and a test can supply a writer that also plays the kernel's part on a fake tree
/// (`fake::FakeKernel`, with the `sim` feature).
pub trait SysfsWriter {
    /// Writes `value` to the attribute file at `path`, as `echo -n VALUE > PATH` does.
    /// The file must exist: sysfs attributes are never created by writing.
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()>;
}

/// A borrowed writer writes the same way, so a test can keep its fake kernel to look at.
impl<T: SysfsWriter + ?Sized> SysfsWriter for &T {
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        (**self).write_attr(path, value)
    }
}

/// Writes attributes to the files as they are: on `/sys`, the kernel acts on them.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelSysfs;

impl SysfsWriter for KernelSysfs {
    fn write_attr(&self, path: &Path, value: &str) -> io::Result<()> {
        // One write(2) call: sysfs takes each write as one command.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)?;
        file.write_all(value.as_bytes())
    }
}

/// How the device was moved to vfio-pci, so `unbind` can undo exactly that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindMethod {
    /// Through `driver_override` and `drivers_probe`.
    DriverOverride,
    /// Through vfio-pci's `new_id` with this vendor and device ID.
    NewId {
        /// Vendor ID written to `new_id`.
        vendor: u16,
        /// Device ID written to `new_id`.
        device: u16,
    },
    /// Through Xen pciback's `new_slot` and `bind`.
    PcibackSlot,
}

/// What `bind` remembers about a device, in `RUN/BDF.driver` (`HostPaths::run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindRecord {
    /// The driver the device had before `bind`, if any.
    pub driver: Option<String>,
    /// How it was bound to vfio-pci.
    pub method: BindMethod,
}

impl BindRecord {
    /// The file's text: `key=value` lines under a comment.
    pub fn to_text(&self, address: PciAddress) -> String {
        let method = match self.method {
            BindMethod::DriverOverride => "driver_override".to_string(),
            BindMethod::NewId { vendor, device } => format!("new_id {vendor:04x}:{device:04x}"),
            BindMethod::PcibackSlot => "pciback_slot".to_string(),
        };
        format!(
            "# written by vfio-pci Binder::bind {address}; read by Binder::unbind\n\
             driver={}\nmethod={method}\n",
            self.driver.as_deref().unwrap_or("")
        )
    }

    /// Parses [`to_text`](Self::to_text)'s output; `None` when it is not such a record.
    pub fn parse(text: &str) -> Option<Self> {
        let mut driver = None;
        let mut method = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=')? {
                ("driver", "") => driver = Some(None),
                ("driver", name) => driver = Some(Some(name.to_string())),
                ("method", "driver_override") => method = Some(BindMethod::DriverOverride),
                ("method", "pciback_slot") => method = Some(BindMethod::PcibackSlot),
                ("method", m) => {
                    let (v, d) = m.strip_prefix("new_id ")?.split_once(':')?;
                    method = Some(BindMethod::NewId {
                        vendor: u16::from_str_radix(v, 16).ok()?,
                        device: u16::from_str_radix(d, 16).ok()?,
                    });
                }
                _ => return None,
            }
        }
        Some(Self {
            driver: driver?,
            method: method?,
        })
    }
}

/// One thing `bind` or `unbind` did or found, for the user to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindStep {
    /// The device already is on a VFIO driver; nothing to do.
    AlreadyBound {
        /// The device.
        address: PciAddress,
        /// Its VFIO driver.
        driver: String,
    },
    /// `unbind` found the device on a host driver: nothing to give back.
    NotOnVfio {
        /// The device.
        address: PciAddress,
        /// Its driver, if any.
        driver: Option<String>,
    },
    /// The previous driver was recorded.
    Recorded {
        /// The driver the device had.
        driver: Option<String>,
        /// The record file.
        record: PathBuf,
    },
    /// The record could not be written or read; `unbind` lets the kernel choose the driver.
    RecordProblem {
        /// The record file.
        record: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// No record of the previous driver exists.
    NoRecord {
        /// The record file that is missing.
        record: PathBuf,
    },
    /// A sysfs attribute was written.
    Wrote {
        /// What the write does, in words.
        what: String,
        /// The value written.
        value: String,
        /// The attribute.
        path: PathBuf,
    },
    /// The device is now bound to this driver (checked by reading its `driver` link).
    BoundTo {
        /// The device.
        address: PciAddress,
        /// The driver now bound.
        driver: String,
    },
    /// The device is now without a driver (checked).
    Released {
        /// The device.
        address: PciAddress,
        /// The driver it left.
        driver: String,
    },
    /// Something worth knowing that needs no action, or a best-effort step that failed.
    Note(String),
}

impl std::fmt::Display for BindStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindStep::AlreadyBound { address, driver } => {
                write!(f, "{address} is already bound to {driver}: nothing to do")
            }
            BindStep::NotOnVfio { address, driver } => match driver {
                Some(d) => write!(f, "{address} is bound to {d}, not vfio-pci: nothing to do"),
                None => write!(f, "{address} has no driver"),
            },
            BindStep::Recorded { driver, record } => write!(
                f,
                "recorded the previous driver ({}) in {}",
                driver.as_deref().unwrap_or("none"),
                record.display()
            ),
            BindStep::RecordProblem { record, problem } => write!(
                f,
                "warning: {}: {problem}; `unbind` will let the kernel choose the driver",
                record.display()
            ),
            BindStep::NoRecord { record } => write!(
                f,
                "no record of the previous driver ({} is missing): letting the kernel choose",
                record.display()
            ),
            BindStep::Wrote { what, value, path } => {
                write!(f, "{what}: wrote {value:?} to {}", path.display())
            }
            BindStep::BoundTo { address, driver } => {
                write!(f, "{address} is now bound to {driver}")
            }
            BindStep::Released { address, driver } => {
                write!(f, "{address} is released from {driver}")
            }
            BindStep::Note(text) => f.write_str(text),
        }
    }
}

/// Why `bind` or `unbind` stopped. Whatever was changed before has been put back, as the
/// steps printed before the error say.
#[derive(Debug, Error)]
pub enum BindError {
    /// Reading sysfs failed (or the device does not exist).
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    /// `/sys/bus/pci/drivers/vfio-pci` is missing.
    #[error(
        "{address}: the vfio-pci driver is not loaded ({path} is missing): run `modprobe vfio-pci` \
         and retry; nothing was changed"
    )]
    VfioPciNotLoaded {
        /// The device.
        address: PciAddress,
        /// The missing driver directory.
        path: PathBuf,
    },
    /// `/sys/bus/pci/drivers/pciback` is missing.
    #[error(
        "{address}: Xen's PCI backend is not loaded ({path} is missing): in dom0 run \
         `modprobe xen-pciback` (or boot dom0 with `xen-pciback.hide=({address})`); nothing was \
         changed"
    )]
    PcibackNotLoaded {
        /// The device.
        address: PciAddress,
        /// The missing driver directory.
        path: PathBuf,
    },
    /// The device has no IOMMU group, which vfio-pci requires.
    #[error(
        "{address} has no IOMMU group, so vfio-pci would refuse it: enable the IOMMU \
         (the host readiness check says how); nothing was changed"
    )]
    NoIommuGroup {
        /// The device.
        address: PciAddress,
    },
    /// A sysfs write failed.
    #[error("writing {value:?} to {path} failed{hint}")]
    Write {
        /// The attribute.
        path: PathBuf,
        /// The value.
        value: String,
        /// Advice for the common causes.
        hint: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The driver still holds the device after `unbind` was written.
    #[error(
        "{address}: wrote to {path} but the device is still bound to {driver}: the kernel did not \
         release it (see `dmesg | tail`)"
    )]
    UnbindDidNotTake {
        /// The device.
        address: PciAddress,
        /// The driver that kept it.
        driver: String,
        /// The `unbind` attribute written.
        path: PathBuf,
    },
    /// After the probe, the device is not on the driver asked for.
    #[error(
        "{address}: asked the kernel to bind {wanted}, but the device now has {now}: see \
         `dmesg | tail` ({hint})"
    )]
    BindDidNotTake {
        /// The device.
        address: PciAddress,
        /// The driver that should have bound.
        wanted: String,
        /// What it has instead (`no driver` or a driver name).
        now: String,
        /// The likely causes.
        hint: &'static str,
    },
}

const WRITE_HINT_PERMISSION: &str = ": run as root (sysfs driver attributes are root-only)";
const WRITE_HINT_OTHER: &str = "";

fn write_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::PermissionDenied => WRITE_HINT_PERMISSION,
        _ => WRITE_HINT_OTHER,
    }
}

/// What a bind changed so far, so a failure can put it back.
#[derive(Default)]
struct Undo {
    previous_override: Option<DriverOverride>,
    new_id: Option<(u16, u16)>,
    pciback_slot: bool,
    released_from: Option<String>,
    record: Option<PathBuf>,
}

/// Binds devices to vfio-pci and gives them back, through a [`SysfsWriter`].
///
/// ```no_run
/// use vfio_pci::host::{Binder, HostPaths};
///
/// let binder = Binder::new(HostPaths::default());
/// let address = "0000:01:00.0".parse().unwrap();
/// binder.bind(address, &mut |step| println!("{step}"))?;
/// // ... run the VM ...
/// binder.unbind(address, &mut |step| println!("{step}"))?;
/// # Ok::<(), vfio_pci::host::BindError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Binder<W = KernelSysfs> {
    paths: HostPaths,
    writer: W,
}

impl Binder<KernelSysfs> {
    /// A binder that writes to the files under `paths` (the real kernel for the defaults).
    pub fn new(paths: HostPaths) -> Self {
        Self::with_writer(paths, KernelSysfs)
    }
}

impl<W: SysfsWriter> Binder<W> {
    /// A binder that writes through `writer`.
    pub fn with_writer(paths: HostPaths, writer: W) -> Self {
        Self { paths, writer }
    }

    /// The paths this binder works on.
    pub fn paths(&self) -> &HostPaths {
        &self.paths
    }

    fn write(
        &self,
        path: PathBuf,
        value: &str,
        what: String,
        on_step: &mut dyn FnMut(&BindStep),
    ) -> Result<(), BindError> {
        self.writer
            .write_attr(&path, value)
            .map_err(|source| BindError::Write {
                hint: write_hint(&source),
                value: value.to_string(),
                path: path.clone(),
                source,
            })?;
        on_step(&BindStep::Wrote {
            what,
            value: value.to_string(),
            path,
        });
        Ok(())
    }

    fn current_driver(&self, address: PciAddress) -> Result<Option<String>, BindError> {
        Ok(HostDevice::read(&self.paths, address)?.driver)
    }

    /// Moves the device at `address` to vfio-pci, reporting each step to `on_step`.
    ///
    /// Succeeds at once when the device already is on vfio-pci. Checks before changing
    /// anything that vfio-pci is loaded and that the device has an IOMMU group; on any later
    /// failure puts back what it changed and says so through `on_step`.
    pub fn bind(
        &self,
        address: PciAddress,
        on_step: &mut dyn FnMut(&BindStep),
    ) -> Result<(), BindError> {
        let device = HostDevice::read(&self.paths, address)?;
        if let Some(driver) = device.driver.as_ref().filter(|d| is_vfio_driver(d)) {
            on_step(&BindStep::AlreadyBound {
                address,
                driver: driver.clone(),
            });
            return Ok(());
        }
        let vfio_dir = self.paths.pci_driver(VFIO_PCI_DRIVER);
        if !vfio_dir.is_dir() {
            return Err(BindError::VfioPciNotLoaded {
                address,
                path: vfio_dir,
            });
        }
        if device.iommu_group.is_none() {
            return Err(BindError::NoIommuGroup { address });
        }

        let mut undo = Undo::default();
        let result = self.bind_steps(&device, &mut undo, on_step);
        if result.is_err() {
            self.roll_back(address, &undo, on_step);
        }
        result
    }

    fn bind_steps(
        &self,
        device: &HostDevice,
        undo: &mut Undo,
        on_step: &mut dyn FnMut(&BindStep),
    ) -> Result<(), BindError> {
        let address = device.address;
        let bdf = address.to_string();
        let method = match device.driver_override {
            DriverOverride::Unsupported => BindMethod::NewId {
                vendor: device.vendor,
                device: device.device,
            },
            _ => BindMethod::DriverOverride,
        };

        self.record_previous(device, method.clone(), undo, on_step);

        if method == BindMethod::DriverOverride {
            self.write(
                device.sysfs_path.join("driver_override"),
                VFIO_PCI_DRIVER,
                "only vfio-pci may bind it now".into(),
                on_step,
            )?;
            undo.previous_override = Some(device.driver_override.clone());
        }

        self.release(device, undo, on_step)?;

        // `method` is DriverOverride or NewId here: chosen above from driver_override.
        if let BindMethod::NewId { vendor, device: id } = method {
            let ids = format!("{vendor:04x} {id:04x}");
            let new_id = self.paths.pci_driver(VFIO_PCI_DRIVER).join("new_id");
            match self.writer.write_attr(&new_id, &ids) {
                Ok(()) => {
                    undo.new_id = Some((vendor, id));
                    on_step(&BindStep::Wrote {
                        what: "let vfio-pci claim this vendor:device ID (no driver_override \
                                   on this kernel; other unbound devices with it are claimed too)"
                            .into(),
                        value: ids,
                        path: new_id,
                    });
                }
                // The ID is already known to vfio-pci: bind this one device by name.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => self.write(
                    self.paths.pci_driver(VFIO_PCI_DRIVER).join("bind"),
                    &bdf,
                    "bind to vfio-pci (its new_id already lists this ID)".into(),
                    on_step,
                )?,
                Err(source) => {
                    return Err(BindError::Write {
                        hint: write_hint(&source),
                        path: new_id,
                        value: ids,
                        source,
                    });
                }
            }
        } else {
            self.write(
                self.paths.drivers_probe(),
                &bdf,
                "probe drivers".into(),
                on_step,
            )?;
        }

        match self.current_driver(address)? {
            Some(driver) if is_vfio_driver(&driver) => {
                on_step(&BindStep::BoundTo { address, driver });
                Ok(())
            }
            now => Err(BindError::BindDidNotTake {
                address,
                wanted: VFIO_PCI_DRIVER.into(),
                now: now.unwrap_or_else(|| "no driver".into()),
                hint: "vfio-pci refuses devices without an IOMMU group or in use",
            }),
        }
    }

    /// Records the driver the device has, for `unbind`; a record that cannot be written is a
    /// warning, not a failure.
    fn record_previous(
        &self,
        device: &HostDevice,
        method: BindMethod,
        undo: &mut Undo,
        on_step: &mut dyn FnMut(&BindStep),
    ) {
        let address = device.address;
        let record = BindRecord {
            driver: device.driver.clone(),
            method,
        };
        let record_path = self.paths.bind_record(address);
        match save_record(&record_path, &record.to_text(address)) {
            Ok(()) => {
                undo.record = Some(record_path.clone());
                on_step(&BindStep::Recorded {
                    driver: device.driver.clone(),
                    record: record_path,
                });
            }
            Err(e) => on_step(&BindStep::RecordProblem {
                record: record_path,
                problem: format!("could not record the previous driver: {e}"),
            }),
        }
    }

    /// Unbinds the device from the driver it has, if any, and checks that it let go.
    fn release(
        &self,
        device: &HostDevice,
        undo: &mut Undo,
        on_step: &mut dyn FnMut(&BindStep),
    ) -> Result<(), BindError> {
        let address = device.address;
        let Some(old) = &device.driver else {
            return Ok(());
        };
        let unbind = self.paths.pci_driver(old).join("unbind");
        self.write(
            unbind.clone(),
            &address.to_string(),
            format!("unbind from {old}"),
            on_step,
        )?;
        undo.released_from = Some(old.clone());
        if let Some(still) = self.current_driver(address)? {
            return Err(BindError::UnbindDidNotTake {
                address,
                driver: still,
                path: unbind,
            });
        }
        on_step(&BindStep::Released {
            address,
            driver: old.clone(),
        });
        Ok(())
    }

    /// Moves the device at `address` to `target`'s driver: [`bind`](Self::bind) for vfio-pci,
    /// Xen's recipe for pciback (record, unbind, `new_slot`, `bind`). Xen needs no IOMMU group
    /// in dom0 (Xen itself owns the IOMMU), so none is asked for.
    pub fn bind_to(
        &self,
        address: PciAddress,
        target: BindTarget,
        on_step: &mut dyn FnMut(&BindStep),
    ) -> Result<(), BindError> {
        if target == BindTarget::VfioPci {
            return self.bind(address, on_step);
        }
        let device = HostDevice::read(&self.paths, address)?;
        if let Some(driver) = device
            .driver
            .as_ref()
            .filter(|d| d.as_str() == XEN_PCIBACK_DRIVER)
        {
            on_step(&BindStep::AlreadyBound {
                address,
                driver: driver.clone(),
            });
            return Ok(());
        }
        let pciback = self.paths.pci_driver(XEN_PCIBACK_DRIVER);
        if !pciback.is_dir() {
            return Err(BindError::PcibackNotLoaded {
                address,
                path: pciback,
            });
        }
        let mut undo = Undo::default();
        let result = self.pciback_steps(&device, &mut undo, on_step);
        if result.is_err() {
            self.roll_back(address, &undo, on_step);
        }
        result
    }

    fn pciback_steps(
        &self,
        device: &HostDevice,
        undo: &mut Undo,
        on_step: &mut dyn FnMut(&BindStep),
    ) -> Result<(), BindError> {
        let address = device.address;
        let bdf = address.to_string();
        let pciback = self.paths.pci_driver(XEN_PCIBACK_DRIVER);
        self.record_previous(device, BindMethod::PcibackSlot, undo, on_step);
        self.release(device, undo, on_step)?;
        self.write(
            pciback.join("new_slot"),
            &bdf,
            "let pciback seize it (its slot list)".into(),
            on_step,
        )?;
        undo.pciback_slot = true;
        self.write(
            pciback.join("bind"),
            &bdf,
            "bind to pciback".into(),
            on_step,
        )?;
        match self.current_driver(address)? {
            Some(driver) if driver == XEN_PCIBACK_DRIVER => {
                on_step(&BindStep::BoundTo { address, driver });
                Ok(())
            }
            now => Err(BindError::BindDidNotTake {
                address,
                wanted: XEN_PCIBACK_DRIVER.into(),
                now: now.unwrap_or_else(|| "no driver".into()),
                hint: "pciback binds only devices in its slot list; is this dom0 of a Xen host?",
            }),
        }
    }

    /// Puts back what a failed bind changed. Best effort: each failure becomes a note.
    fn roll_back(&self, address: PciAddress, undo: &Undo, on_step: &mut dyn FnMut(&BindStep)) {
        let bdf = address.to_string();
        let mut attempt = |path: PathBuf, value: &str, what: &str| {
            if let Err(e) = self.write(path.clone(), value, format!("roll back: {what}"), on_step) {
                on_step(&BindStep::Note(format!("roll back failed: {e}")));
            }
        };
        if let Some(previous) = &undo.previous_override {
            let value = match previous {
                DriverOverride::Set(name) => name.as_str(),
                // A lone newline is how the kernel is told to clear the override.
                _ => "\n",
            };
            attempt(
                self.paths.pci_device(address).join("driver_override"),
                value,
                "restore driver_override",
            );
        }
        if let Some((vendor, device)) = undo.new_id {
            attempt(
                self.paths.pci_driver(VFIO_PCI_DRIVER).join("remove_id"),
                &format!("{vendor:04x} {device:04x}"),
                "remove the ID from vfio-pci",
            );
        }
        if undo.pciback_slot {
            if let Ok(Some(driver)) = self.current_driver(address) {
                if driver == XEN_PCIBACK_DRIVER {
                    attempt(
                        self.paths.pci_driver(XEN_PCIBACK_DRIVER).join("unbind"),
                        &bdf,
                        "unbind from pciback",
                    );
                }
            }
            attempt(
                self.paths
                    .pci_driver(XEN_PCIBACK_DRIVER)
                    .join("remove_slot"),
                &bdf,
                "take it off pciback's slot list",
            );
        }
        if let Some(old) = &undo.released_from {
            match self.current_driver(address) {
                Ok(None) => {
                    let bind = self.paths.pci_driver(old).join("bind");
                    if bind.exists() {
                        attempt(bind, &bdf, &format!("give the device back to {old}"));
                    } else {
                        attempt(self.paths.drivers_probe(), &bdf, "probe drivers");
                    }
                }
                Ok(Some(_)) => {}
                Err(e) => on_step(&BindStep::Note(format!("roll back: {e}"))),
            }
        }
        if let Some(record) = &undo.record {
            let _ = fs::remove_file(record);
        }
    }

    /// Gives the device at `address` back to the driver it had before [`bind`](Self::bind),
    /// as recorded, or lets the kernel choose when there is no record.
    ///
    /// A device on a host driver is left alone. A device with no driver (a bind that failed
    /// half-way) is given back too.
    pub fn unbind(
        &self,
        address: PciAddress,
        on_step: &mut dyn FnMut(&BindStep),
    ) -> Result<(), BindError> {
        let device = HostDevice::read(&self.paths, address)?;
        let record_path = self.paths.bind_record(address);
        if let Some(driver) = device.driver.as_ref().filter(|d| !is_passthrough_driver(d)) {
            on_step(&BindStep::NotOnVfio {
                address,
                driver: Some(driver.clone()),
            });
            if record_path.exists() {
                let _ = fs::remove_file(&record_path);
                on_step(&BindStep::Note(format!(
                    "removed the stale record {}",
                    record_path.display()
                )));
            }
            return Ok(());
        }
        let record = match fs::read_to_string(&record_path) {
            Ok(text) => match BindRecord::parse(&text) {
                Some(record) => Some(record),
                None => {
                    on_step(&BindStep::RecordProblem {
                        record: record_path.clone(),
                        problem: "not a bind record".into(),
                    });
                    None
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                on_step(&BindStep::NoRecord {
                    record: record_path.clone(),
                });
                None
            }
            Err(e) => {
                on_step(&BindStep::RecordProblem {
                    record: record_path.clone(),
                    problem: e.to_string(),
                });
                None
            }
        };
        let bdf = address.to_string();

        // Clear the override first, or the reprobe below could only pick vfio-pci again.
        if let DriverOverride::Set(_) = device.driver_override {
            self.write(
                device.sysfs_path.join("driver_override"),
                "\n",
                "clear driver_override".into(),
                on_step,
            )?;
        }
        if let Some(BindMethod::NewId { vendor, device: id }) = record.as_ref().map(|r| &r.method) {
            let remove_id = self.paths.pci_driver(VFIO_PCI_DRIVER).join("remove_id");
            let ids = format!("{vendor:04x} {id:04x}");
            if let Err(e) = self.write(
                remove_id,
                &ids,
                "remove the ID from vfio-pci".into(),
                on_step,
            ) {
                on_step(&BindStep::Note(format!("could not remove the ID: {e}")));
            }
        }
        if let Some(vfio) = &device.driver {
            let unbind = self.paths.pci_driver(vfio).join("unbind");
            self.write(unbind.clone(), &bdf, format!("unbind from {vfio}"), on_step)?;
            if let Some(still) = self.current_driver(address)? {
                return Err(BindError::UnbindDidNotTake {
                    address,
                    driver: still,
                    path: unbind,
                });
            }
            on_step(&BindStep::Released {
                address,
                driver: vfio.clone(),
            });
            if vfio == XEN_PCIBACK_DRIVER {
                // Off the slot list, or pciback would seize it again at the probe below.
                self.write(
                    self.paths
                        .pci_driver(XEN_PCIBACK_DRIVER)
                        .join("remove_slot"),
                    &bdf,
                    "take it off pciback's slot list".into(),
                    on_step,
                )?;
            }
        }

        let wanted = record.as_ref().and_then(|r| r.driver.clone());
        match (&record, &wanted) {
            (Some(_), Some(driver)) if self.paths.pci_driver(driver).is_dir() => {
                let bind = self.paths.pci_driver(driver).join("bind");
                if let Err(e) = self.write(bind, &bdf, format!("give it back to {driver}"), on_step)
                {
                    on_step(&BindStep::Note(format!("{e}; probing drivers instead")));
                    self.write(
                        self.paths.drivers_probe(),
                        &bdf,
                        "probe drivers".into(),
                        on_step,
                    )?;
                }
            }
            (Some(_), Some(driver)) => {
                on_step(&BindStep::Note(format!(
                    "the recorded driver {driver} is not loaded (`modprobe {driver}` loads it): \
                     letting the kernel choose"
                )));
                self.write(
                    self.paths.drivers_probe(),
                    &bdf,
                    "probe drivers".into(),
                    on_step,
                )?;
            }
            (Some(_), None) => on_step(&BindStep::Note(format!(
                "{address} had no driver before `bind`: leaving it without one"
            ))),
            (None, _) => self.write(
                self.paths.drivers_probe(),
                &bdf,
                "probe drivers".into(),
                on_step,
            )?,
        }

        let now = self.current_driver(address)?;
        let _ = fs::remove_file(&record_path);
        match (now, wanted) {
            (Some(now), wanted) => {
                if let Some(w) = wanted.filter(|w| *w != now) {
                    on_step(&BindStep::Note(format!(
                        "note: the kernel chose {now}, not the recorded {w}"
                    )));
                }
                on_step(&BindStep::BoundTo {
                    address,
                    driver: now,
                });
                Ok(())
            }
            (None, Some(wanted)) => Err(BindError::BindDidNotTake {
                address,
                wanted,
                now: "no driver".into(),
                hint: "the driver may refuse the device after its reset; `modprobe -r` and \
                       `modprobe` the driver, or write the BDF to drivers_probe",
            }),
            (None, None) => {
                on_step(&BindStep::Note(format!(
                    "{address} has no driver now (no host driver claimed it)"
                )));
                Ok(())
            }
        }
    }
}

fn save_record(path: &Path, text: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let a: PciAddress = "01:00.0".parse().unwrap();
        for record in [
            BindRecord {
                driver: Some("nvme".into()),
                method: BindMethod::DriverOverride,
            },
            BindRecord {
                driver: Some("e1000e".into()),
                method: BindMethod::PcibackSlot,
            },
            BindRecord {
                driver: None,
                method: BindMethod::NewId {
                    vendor: 0x1b36,
                    device: 0x10,
                },
            },
        ] {
            let text = record.to_text(a);
            assert!(text.starts_with("# written by vfio-pci Binder::bind 0000:01:00.0"));
            assert_eq!(BindRecord::parse(&text), Some(record));
        }
        assert_eq!(BindRecord::parse("garbage"), None);
        assert_eq!("xen-pciback".parse(), Ok(BindTarget::XenPciback));
        assert_eq!("vfio-pci".parse(), Ok(BindTarget::VfioPci));
        assert!(
            "pci-stub"
                .parse::<BindTarget>()
                .unwrap_err()
                .contains("vfio-pci (KVM)")
        );
        assert_eq!(BindRecord::parse("driver=nvme\n"), None);
        assert_eq!(BindRecord::parse("driver=x\nmethod=new_id zz:1\n"), None);
    }
}
