//! Opening a host device through iommufd (`/dev/iommu` and the device's VFIO cdev), and
//! choosing between that and the type1 container.
//!
//! The iommufd path (Linux 6.2+, `CONFIG_IOMMUFD` and `CONFIG_VFIO_DEVICE_CDEV`) skips VFIO
//! groups and containers: the device's own character device `/dev/vfio/devices/vfioN` (named
//! in sysfs under `BDF/vfio-dev/vfioN` while the device is bound to vfio-pci) is bound to an
//! iommufd and attached to an I/O address space (IOAS), into which guest RAM is mapped.
//!
//! Every path comes from [`HostPaths`]: the cdev is opened here (not by `vfio-ioctls`, which
//! would always look in `/dev/vfio/devices`) and handed over with `VfioDevice::new_from_fd`,
//! so a fake tree moves the opening too.
//!
//! [`IommuBackendChoice`] is what a user asks for (`--iommu auto|type1|iommufd`);
//! [`IommuAvailability`] is what the host offers; [`IommuBackendChoice::decide`] turns the two
//! into an [`IommuDecision`] (pure, no I/O) and [`OpenedVfio::open`] opens the device with the
//! decided backend (the iommufd opening itself is `open_cdev.rs`, cargo feature `iommufd`).

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

#[cfg(feature = "iommufd")]
use iommu_dma::IommufdMapper;
use iommu_dma::{DmaError, DmaMapper, VfioType1Mapper};
use thiserror::Error;
use vfio_ioctls::{VfioDevice, VfioDeviceFd, VfioError};

use super::handed_fd::HandedFdError;
use super::info::DeviceInfo;
use super::open::{OpenError, OpenedDevice};
#[cfg(feature = "iommufd")]
use super::open_cdev::OpenedIommufdDevice;
use super::sysfs::{HostDevice, SysfsError};
use super::{HostPaths, PciAddress};

/// Which IOMMU interface to open a device through, as the user asks for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum IommuBackendChoice {
    /// iommufd when the kernel offers it for this device (`/dev/iommu` and the device's
    /// cdev exist), else the type1 container.
    #[default]
    Auto,
    /// The VFIO type1 container and group (`/dev/vfio/vfio`, `/dev/vfio/N`).
    Type1,
    /// iommufd (`/dev/iommu`, `/dev/vfio/devices/vfioN`).
    Iommufd,
}

impl IommuBackendChoice {
    /// The accepted spellings, for help texts.
    pub const NAMES: [&'static str; 3] = ["auto", "type1", "iommufd"];

    /// Picks the backend for a device from what the host offers. Pure: no I/O.
    ///
    /// `Auto` picks iommufd when `/dev/iommu`, the device's `vfio-dev/vfioN` entry and its
    /// `/dev/vfio/devices/vfioN` node all exist, else type1 (whose own opening then reports
    /// anything missing). An explicit choice fails when its nodes are missing, naming the
    /// path, the kernel option and the other backend.
    pub fn decide(self, host: &IommuAvailability) -> Result<IommuDecision, IommuChoiceError> {
        match self {
            IommuBackendChoice::Auto => Ok(match host.iommufd_blocker() {
                None => IommuDecision {
                    backend: IommuBackend::Iommufd,
                    reason: format!(
                        "{} and {} exist",
                        host.iommufd_node.display(),
                        host.cdev_node_display()
                    ),
                },
                Some(blocker) => IommuDecision {
                    backend: IommuBackend::Type1,
                    reason: blocker.short_reason(host),
                },
            }),
            IommuBackendChoice::Type1 => {
                if host.container_present {
                    Ok(IommuDecision {
                        backend: IommuBackend::Type1,
                        reason: "asked for (type1)".to_string(),
                    })
                } else {
                    Err(IommuChoiceError::Type1Unavailable {
                        address: host.address,
                        node: host.container_node.clone(),
                        fallback: if host.iommufd_blocker().is_none() {
                            "open it through iommufd, which this host offers"
                        } else {
                            "neither is iommufd available (the host readiness check says why)"
                        },
                    })
                }
            }
            IommuBackendChoice::Iommufd => match host.iommufd_blocker() {
                None => Ok(IommuDecision {
                    backend: IommuBackend::Iommufd,
                    reason: "asked for (iommufd)".to_string(),
                }),
                Some(blocker) => Err(blocker.into_error(host)),
            },
        }
    }

    /// Reads what `paths` offers for `address`, then [`decide`](Self::decide)s.
    pub fn resolve(
        self,
        paths: &HostPaths,
        address: PciAddress,
    ) -> Result<IommuDecision, IommuChoiceError> {
        self.decide(&IommuAvailability::probe(paths, address)?)
    }
}

impl fmt::Display for IommuBackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IommuBackendChoice::Auto => "auto",
            IommuBackendChoice::Type1 => "type1",
            IommuBackendChoice::Iommufd => "iommufd",
        })
    }
}

impl FromStr for IommuBackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "type1" => Ok(Self::Type1),
            "iommufd" => Ok(Self::Iommufd),
            other => Err(format!(
                "unknown IOMMU backend `{other}`: use auto, type1 or iommufd"
            )),
        }
    }
}

/// The IOMMU interface a device is (to be) opened through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IommuBackend {
    /// VFIO type1 container and group.
    Type1,
    /// iommufd IOAS and device cdev.
    Iommufd,
}

impl fmt::Display for IommuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IommuBackend::Type1 => "type1",
            IommuBackend::Iommufd => "iommufd",
        })
    }
}

/// What [`IommuBackendChoice::decide`] picked, and why (for a log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IommuDecision {
    /// The backend.
    pub backend: IommuBackend,
    /// Why: `asked for`, or which node made `auto` pick it.
    pub reason: String,
}

impl fmt::Display for IommuDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.backend, self.reason)
    }
}

/// What the host offers a device for each IOMMU backend: which nodes exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IommuAvailability {
    /// The device.
    pub address: PciAddress,
    /// Its driver, `None` when unbound (the cdev only exists while on vfio-pci).
    pub driver: Option<String>,
    /// Its IOMMU group, if sysfs names one.
    pub iommu_group: Option<u32>,
    /// `/dev/iommu`.
    pub iommufd_node: PathBuf,
    /// Whether `/dev/iommu` exists.
    pub iommufd_present: bool,
    /// `/sys/bus/pci/devices/BDF/vfio-dev`, where the kernel names the device's cdev.
    pub vfio_dev_dir: PathBuf,
    /// The cdev's name (`vfio0`) from that directory.
    pub cdev: Option<String>,
    /// `/dev/vfio/devices/vfioN`, when the cdev has a name.
    pub cdev_node: Option<PathBuf>,
    /// Whether that node exists.
    pub cdev_node_present: bool,
    /// `/dev/vfio/vfio`, the type1 container node.
    pub container_node: PathBuf,
    /// Whether it exists.
    pub container_present: bool,
}

impl IommuAvailability {
    /// Looks at sysfs and `/dev` under `paths` for `address`.
    pub fn probe(paths: &HostPaths, address: PciAddress) -> Result<Self, SysfsError> {
        let device = HostDevice::read(paths, address)?;
        let cdev = device.vfio_cdev.filter(|name| name.starts_with("vfio"));
        let cdev_node = cdev.as_deref().map(|name| paths.vfio_device_cdev(name));
        let iommufd_node = paths.iommufd_node();
        let container_node = paths.vfio_container_node();
        Ok(Self {
            address,
            driver: device.driver,
            iommu_group: device.iommu_group,
            iommufd_present: iommufd_node.exists(),
            iommufd_node,
            vfio_dev_dir: device.sysfs_path.join("vfio-dev"),
            cdev_node_present: cdev_node.as_ref().is_some_and(|n| n.exists()),
            cdev,
            cdev_node,
            container_present: container_node.exists(),
            container_node,
        })
    }

    fn bound_to_vfio(&self) -> bool {
        self.driver.as_deref().is_some_and(super::is_vfio_driver)
    }

    fn cdev_node_display(&self) -> String {
        self.cdev_node.as_ref().map_or_else(
            || "/dev/vfio/devices/vfioN".to_string(),
            |n| n.display().to_string(),
        )
    }

    /// The first thing that keeps iommufd from being used, if any.
    fn iommufd_blocker(&self) -> Option<Blocker> {
        if !self.bound_to_vfio() {
            Some(Blocker::NotBound)
        } else if !self.iommufd_present {
            Some(Blocker::NoIommufd)
        } else if self.cdev.is_none() {
            Some(Blocker::NoCdev)
        } else if !self.cdev_node_present {
            Some(Blocker::NoCdevNode)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Blocker {
    NotBound,
    NoIommufd,
    NoCdev,
    NoCdevNode,
}

impl Blocker {
    fn short_reason(self, host: &IommuAvailability) -> String {
        match self {
            Blocker::NotBound => format!(
                "{} is not on vfio-pci, so it has no VFIO cdev",
                host.address
            ),
            Blocker::NoIommufd => format!("no {} (CONFIG_IOMMUFD)", host.iommufd_node.display()),
            Blocker::NoCdev => format!(
                "no VFIO cdev in {} (CONFIG_VFIO_DEVICE_CDEV)",
                host.vfio_dev_dir.display()
            ),
            Blocker::NoCdevNode => format!("no {}", host.cdev_node_display()),
        }
    }

    fn into_error(self, host: &IommuAvailability) -> IommuChoiceError {
        let address = host.address;
        match self {
            Blocker::NotBound => IommuChoiceError::NotBoundToVfio {
                address,
                driver: host.driver.clone().unwrap_or_else(|| "no driver".into()),
            },
            Blocker::NoIommufd => IommuChoiceError::IommufdMissing {
                address,
                node: host.iommufd_node.clone(),
            },
            Blocker::NoCdev => IommuChoiceError::CdevMissing {
                address,
                dir: host.vfio_dev_dir.clone(),
            },
            Blocker::NoCdevNode => IommuChoiceError::CdevNodeMissing {
                address,
                cdev: host.cdev.clone().unwrap_or_default(),
                node: host
                    .cdev_node
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/dev/vfio/devices")),
            },
        }
    }
}

/// Why the asked-for IOMMU backend cannot be used for a device.
#[derive(Debug, Error)]
pub enum IommuChoiceError {
    /// Reading sysfs failed (or the device does not exist).
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    /// The device is on another driver, so it has no VFIO cdev.
    #[error("{address} is bound to {driver}, not vfio-pci: bind it to vfio-pci first")]
    NotBoundToVfio {
        /// The device.
        address: PciAddress,
        /// Its driver, or `no driver`.
        driver: String,
    },
    /// `/dev/iommu` does not exist.
    #[error(
        "{address}: iommufd asked for, but {} does not exist: this kernel lacks CONFIG_IOMMUFD \
         (or `modprobe iommufd`); use the type1 container",
        node.display()
    )]
    IommufdMissing {
        /// The device.
        address: PciAddress,
        /// The missing node.
        node: PathBuf,
    },
    /// sysfs names no cdev for the device.
    #[error(
        "{address}: iommufd asked for, but {} names no VFIO device cdev: this kernel lacks \
         CONFIG_VFIO_DEVICE_CDEV; use the type1 container",
        dir.display()
    )]
    CdevMissing {
        /// The device.
        address: PciAddress,
        /// `/sys/bus/pci/devices/BDF/vfio-dev`.
        dir: PathBuf,
    },
    /// sysfs names the cdev but its node is missing.
    #[error(
        "{address}: iommufd asked for, but its VFIO cdev {cdev} has no node {}: check \
         `ls -l /dev/vfio/devices` (devtmpfs/udev in this mount namespace); or use \
         the type1 container",
        node.display()
    )]
    CdevNodeMissing {
        /// The device.
        address: PciAddress,
        /// The cdev's name (`vfio0`).
        cdev: String,
        /// The missing node.
        node: PathBuf,
    },
    /// The type1 container node does not exist.
    #[error(
        "{address}: type1 asked for, but {} does not exist: load VFIO (`modprobe vfio-pci`); a \
         kernel without CONFIG_VFIO_CONTAINER needs CONFIG_IOMMUFD_VFIO_CONTAINER for it; {fallback}",
        node.display()
    )]
    Type1Unavailable {
        /// The device.
        address: PciAddress,
        /// `/dev/vfio/vfio`.
        node: PathBuf,
        /// What to use instead.
        fallback: &'static str,
    },
}

/// Why a device could not be opened through iommufd.
#[derive(Debug, Error)]
pub enum IommufdOpenError {
    /// The host does not offer iommufd for the device.
    #[error(transparent)]
    Unavailable(#[from] IommuChoiceError),
    /// `/dev/iommu` could not be opened (the source names it and the fix).
    #[error("{address}: {source}")]
    OpenIommufd {
        /// The device.
        address: PciAddress,
        /// What iommu-dma reported (with the fix for the usual causes).
        #[source]
        source: DmaError,
    },
    /// `/dev/iommu` opened but allocating an IOAS on it failed.
    #[error(
        "{address}: {} is not a working iommufd: IOMMU_IOAS_ALLOC failed ({}); check that it is \
         the iommufd character device (`ls -l {}`, kernel with CONFIG_IOMMUFD), or use \
         the type1 container",
        node.display(),
        root_cause(source),
        node.display()
    )]
    Ioas {
        /// The device.
        address: PciAddress,
        /// `/dev/iommu`.
        node: PathBuf,
        /// What vfio-ioctls reported (boxed: it is large and this error is returned often).
        #[source]
        source: Box<VfioError>,
    },
    /// The cdev node could not be opened.
    #[error("{address}: cannot open its VFIO cdev {}: {source}; {hint}", node.display())]
    OpenCdev {
        /// The device.
        address: PciAddress,
        /// `/dev/vfio/devices/vfioN`.
        node: PathBuf,
        /// What to do, from the kind of failure.
        hint: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Binding the cdev to the iommufd, attaching it to the IOAS or reading its info failed.
    #[error("{address}: opening {} through iommufd {} failed ({}): {hint}",
        node.display(), iommufd.display(), root_cause(source))]
    Device {
        /// The device.
        address: PciAddress,
        /// `/dev/vfio/devices/vfioN`.
        node: PathBuf,
        /// `/dev/iommu`.
        iommufd: PathBuf,
        /// What to do, from the kind of failure.
        hint: String,
        /// What vfio-ioctls reported (boxed: it is large and this error is returned often).
        #[source]
        source: Box<VfioError>,
    },
    /// This build has no iommufd support (cargo feature `iommufd`).
    #[error(
        "{address}: this build of vfio-pci cannot open devices through iommufd (cargo feature \
         `iommufd`); use the type1 container"
    )]
    NotBuilt {
        /// The device.
        address: PciAddress,
    },
    /// A handed-in fd is not what it was handed in as.
    /// (The message has all of it: `fd_error` is not a `source`, so a cause chain does not
    /// print it twice.)
    #[error("{address}: {fd_error}")]
    HandedFd {
        /// The device.
        address: PciAddress,
        /// Which fd and what it is (boxed: it is large and this error is returned often).
        fd_error: Box<HandedFdError>,
    },
    /// Setting up the DMA mapper over the IOAS failed.
    #[error("{address}: cannot set up DMA mapping through its iommufd IOAS: {source}")]
    Dma {
        /// The device.
        address: PciAddress,
        /// What iommu-dma reported.
        #[source]
        source: DmaError,
    },
}

/// The innermost error's message: vfio-ioctls' own messages ("failed to new VfioIommufd")
/// hide the errno in their sources.
fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut inner = error;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// A host device opened through either IOMMU backend.
#[derive(Debug)]
pub enum OpenedVfio {
    /// Through the type1 container and group.
    Type1(OpenedDevice),
    /// Through iommufd (cargo feature `iommufd`).
    #[cfg(feature = "iommufd")]
    Iommufd(OpenedIommufdDevice),
}

/// Why [`OpenedVfio::open`] failed.
#[derive(Debug, Error)]
pub enum OpenVfioError {
    /// The asked-for backend is not available.
    #[error(transparent)]
    Choice(#[from] IommuChoiceError),
    /// Opening through the type1 container failed.
    #[error(transparent)]
    Type1(#[from] OpenError),
    /// Opening through iommufd failed.
    #[error(transparent)]
    Iommufd(#[from] IommufdOpenError),
}

impl OpenedVfio {
    /// Decides the backend ([`IommuBackendChoice::resolve`]), logs the decision, and opens the
    /// device with it ([`OpenedDevice::open`] or [`OpenedIommufdDevice::open`]).
    pub fn open(
        paths: &HostPaths,
        address: PciAddress,
        kvm_device: Option<Arc<VfioDeviceFd>>,
        choice: IommuBackendChoice,
    ) -> Result<Self, OpenVfioError> {
        // Without iommufd support built in, `auto` means the type1 container.
        #[cfg(not(feature = "iommufd"))]
        let choice = match choice {
            IommuBackendChoice::Auto => IommuBackendChoice::Type1,
            IommuBackendChoice::Iommufd => {
                return Err(IommufdOpenError::NotBuilt { address }.into());
            }
            other => other,
        };
        let decision = choice.resolve(paths, address)?;
        log::info!("{address}: IOMMU backend {decision}");
        Ok(match decision.backend {
            IommuBackend::Type1 => Self::Type1(OpenedDevice::open(paths, address, kvm_device)?),
            #[cfg(feature = "iommufd")]
            IommuBackend::Iommufd => {
                Self::Iommufd(OpenedIommufdDevice::open(paths, address, kvm_device)?)
            }
            #[cfg(not(feature = "iommufd"))]
            IommuBackend::Iommufd => unreachable!("type1 was asked for"),
        })
    }

    /// Which backend it was opened through.
    pub fn backend(&self) -> IommuBackend {
        match self {
            OpenedVfio::Type1(_) => IommuBackend::Type1,
            #[cfg(feature = "iommufd")]
            OpenedVfio::Iommufd(_) => IommuBackend::Iommufd,
        }
    }

    /// The device's address.
    pub fn address(&self) -> PciAddress {
        match self {
            OpenedVfio::Type1(d) => d.address(),
            #[cfg(feature = "iommufd")]
            OpenedVfio::Iommufd(d) => d.address(),
        }
    }

    /// Its IOMMU group (always known on type1).
    pub fn group(&self) -> Option<u32> {
        match self {
            OpenedVfio::Type1(d) => Some(d.group()),
            #[cfg(feature = "iommufd")]
            OpenedVfio::Iommufd(d) => d.group(),
        }
    }

    /// Its regions and IRQs.
    pub fn info(&self) -> &DeviceInfo {
        match self {
            OpenedVfio::Type1(d) => d.info(),
            #[cfg(feature = "iommufd")]
            OpenedVfio::Iommufd(d) => d.info(),
        }
    }

    /// The `vfio-ioctls` device.
    pub fn device(&self) -> &VfioDevice {
        match self {
            OpenedVfio::Type1(d) => d.device(),
            #[cfg(feature = "iommufd")]
            OpenedVfio::Iommufd(d) => d.device(),
        }
    }

    /// A new DMA mapper over the device's container or IOAS (one per container or IOAS:
    /// devices that share it share the mapper).
    pub fn new_dma_mapper(&self) -> Result<Arc<dyn DmaMapper>, DmaError> {
        Ok(match self {
            OpenedVfio::Type1(d) => Arc::new(VfioType1Mapper::new(d.container().clone())?),
            #[cfg(feature = "iommufd")]
            OpenedVfio::Iommufd(d) => Arc::new(IommufdMapper::from_vfio(d.iommufd())?),
        })
    }

    /// What it is opened through, for messages: `type1 container, group 7` or
    /// `iommufd, /dev/vfio/devices/vfio0`.
    pub fn describe(&self) -> String {
        match self {
            OpenedVfio::Type1(d) => format!("type1 container, group {}", d.group()),
            #[cfg(feature = "iommufd")]
            OpenedVfio::Iommufd(d) => format!(
                "iommufd {}, IOAS {}, {}",
                d.iommufd_node().display(),
                d.iommufd().ioas().id(),
                d.cdev_node().display()
            ),
        }
    }
}

impl From<OpenedDevice> for OpenedVfio {
    fn from(device: OpenedDevice) -> Self {
        OpenedVfio::Type1(device)
    }
}

#[cfg(feature = "iommufd")]
impl From<OpenedIommufdDevice> for OpenedVfio {
    fn from(device: OpenedIommufdDevice) -> Self {
        OpenedVfio::Iommufd(device)
    }
}
