#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod devnode;
mod error;
mod fault;
mod guest_sync;
pub mod iommufd;
mod kernel;
mod mapper;
mod memlock;
mod range;
mod report;
mod software;
mod split;
mod table;
mod type1_info;
pub mod vfio_type1;

pub use devnode::{IOMMUFD_PATH, VFIO_CONTAINER_PATH};
pub use error::DmaError;
pub use fault::{DmaFault, FaultReason};
pub use guest_sync::{
    DmaAttachment, DmaOptions, GuestDmaReport, GuestMemoryDma, PeerBarStatus, RegionKind,
    RegionReport,
};
pub use iommufd::IommufdMapper;
pub use mapper::{DmaAccess, DmaMapper, DmaMapping, DmaPerm, HostIommuLimits};
pub use memlock::{MemlockBudget, MemlockShortfall, pinned_by_this_crate};
pub use range::{ByteSize, IovaRange};
pub use report::MappingReport;
pub use software::{HostSegment, SoftwareIommu};
pub use vfio_type1::VfioType1Mapper;
