#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod backend;
mod device;
pub mod host;
pub mod ports;
#[cfg(feature = "sim")]
pub mod sim;
mod vfio_backend;

pub use backend::{BackendError, DeviceBackend, MmapSource};
pub use device::{
    AttachContext, AttachError, BarAccessError, BarAccessFault, DEFAULT_HIDDEN_EXTENDED, DmaSetup,
    IntxError, MmapError, MsixVectorState, PassthroughDevice, PassthroughOptions, ReservedRange,
    TrapCounts, host_page_size,
};
#[cfg(feature = "kvm")]
pub use vfio_backend::create_kvm_vfio_device;
pub use vfio_backend::{VfioBackend, VfioBackendError};
/// The VM's KVM VFIO device handle that [`VfioBackend::open_with`] takes.
pub use vfio_ioctls::VfioDeviceFd;
