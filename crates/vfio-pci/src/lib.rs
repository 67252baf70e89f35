#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod backend;
mod device;
pub mod host;
pub mod ports;
#[cfg(feature = "sim")]
pub mod sim;
mod vfio_backend;

pub use backend::{BackendError, DeviceBackend, MmapSource};
pub use device::{
    AttachContext, AttachError, BarAccessError, DEFAULT_HIDDEN_EXTENDED, DmaSetup, MmapError,
    MsixVectorState, PassthroughDevice, PassthroughOptions, ReservedRange, TrapCounts,
    host_page_size,
};
#[cfg(feature = "kvm")]
pub use vfio_backend::create_kvm_vfio_device;
pub use vfio_backend::{VfioBackend, VfioBackendError};
/// The VM's KVM VFIO device handle that [`VfioBackend::open_with`] takes.
pub use vfio_ioctls::VfioDeviceFd;
