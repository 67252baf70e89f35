#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod backend;
mod device;
pub mod host;
mod routing;
#[cfg(feature = "sim")]
pub mod sim;
mod vfio_backend;

pub use backend::{BackendError, DeviceBackend, MmapSource};
pub use device::{
    AttachContext, AttachError, DEFAULT_HIDDEN_EXTENDED, DmaSetup, MmapError, MsixVectorState,
    PassthroughDevice, PassthroughOptions, ReservedRange, host_page_size,
};
pub use routing::InterruptRouting;
pub use vfio_backend::{VfioBackend, VfioBackendError, create_kvm_vfio_device};
/// The VM's KVM VFIO device handle that [`VfioBackend::open_with`] takes.
pub use vfio_ioctls::VfioDeviceFd;
