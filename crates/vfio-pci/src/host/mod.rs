//! The host side of passthrough: finding a PCI device, binding it to vfio-pci, checking that
//! it can be passed through, and opening it through VFIO.
//!
//! Everything reads and writes under a [`HostPaths`] (default `/sys`, `/dev`, `/proc`,
//! `/run/vfio-pci`), so the same code runs against a fake tree in tests (`fake`, feature `sim`).
//!
//! | file | concept |
//! |---|---|
//! | `address.rs` | [`PciAddress`]: a [`pci_config::Bdf`] that also takes sysfs paths |
//! | `paths.rs` | [`HostPaths`]: every sysfs/procfs/dev path in one place |
//! | `sysfs.rs` | [`HostDevice`], [`IommuGroup`], [`IommuStatus`]: what the kernel says |
//! | `bind.rs` | `Binder`: to vfio-pci (or Xen's pciback, `BindTarget`) and back, through a `SysfsWriter` (feature `host-admin`) |
//! | `check.rs` | `Readiness`: the passthrough checklist (feature `host-admin`) |
//! | `advice.rs` | [`Fix`], [`IommuAdvice`], [`Platform`]: what to do about a finding, as data each VMM renders |
//! | `launcher_grants.rs` | what a launcher must grant an unprivileged VMM on iommufd (added to `check`'s iommufd item; feature `host-admin`) |
//! | `limits.rs` | [`ProcessLimits`]: `RLIMIT_MEMLOCK` and `CAP_IPC_LOCK` |
//! | `open.rs` | [`OpenedDevice`]: type1 container + group + device via `vfio-ioctls` |
//! | `open_iommufd.rs` | [`IommuBackendChoice`] and [`OpenedVfio`]: pick the IOMMU backend and open the device with it |
//! | `open_cdev.rs` | `OpenedIommufdDevice`: `/dev/iommu` + device cdev (feature `iommufd`), also from fds a launcher handed in |
//! | `handed_fd.rs` | [`claim_inherited_fd`], [`check_device_cdev_fd`], [`check_iommufd_fd`]: fds a launcher handed in, and what they are |
//! | `info.rs` | [`DeviceInfo`]: regions (sparse mmap, MSI-X mappable) and IRQs as plain data |
//! | `fake.rs` | `fake::FakeHost`, `fake::FakeKernel`: a fake tree for tests (feature `sim`) |

mod address;
mod advice;
#[cfg(feature = "host-admin")]
mod bind;
#[cfg(feature = "host-admin")]
mod check;
#[cfg(feature = "sim")]
pub mod fake;
mod handed_fd;
mod info;
#[cfg(feature = "host-admin")]
mod launcher_grants;
mod limits;
mod open;
#[cfg(feature = "iommufd")]
mod open_cdev;
mod open_iommufd;
mod paths;
mod sysfs;

pub use address::{AddressError, PciAddress};
pub use advice::{Fix, IommuAdvice, Platform};
#[cfg(feature = "host-admin")]
pub use bind::{
    BindError, BindMethod, BindRecord, BindStep, BindTarget, Binder, KernelSysfs, SysfsWriter,
};
#[cfg(feature = "host-admin")]
pub use check::{CheckItem, CheckKind, CheckOptions, CheckStatus, MEMLOCK_WARN_BELOW, Readiness};
pub use handed_fd::{
    FdIdentity, FdRole, HandedFdError, check_device_cdev_fd, check_iommufd_fd, claim_inherited_fd,
    identify_fd,
};
pub use info::{
    DeviceInfo, IrqFlags, IrqInfo, IrqKind, RegionFlags, VfioRegionInfo, VfioRegionKind,
};
pub use limits::{MemlockLimit, ProcessLimits, format_bytes};
pub use open::{OpenError, OpenedDevice};
#[cfg(feature = "iommufd")]
pub use open_cdev::OpenedIommufdDevice;
pub use open_iommufd::{
    IommuAvailability, IommuBackend, IommuBackendChoice, IommuChoiceError, IommuDecision,
    IommufdOpenError, OpenVfioError, OpenedVfio,
};
pub use paths::HostPaths;
pub use sysfs::{
    CpuVendor, DriverOverride, GroupMember, HostDevice, IommuGroup, IommuStatus, KernelIommuParams,
    MemberState, PciClass, SysfsError, VFIO_PCI_DRIVER, XEN_PCIBACK_DRIVER, is_vfio_driver,
};
