#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]
#![forbid(unsafe_code)]

mod layout;
mod msix;
mod page;
mod plan;
mod ranges;
mod relocation;
pub mod view;

pub use layout::{
    BAR_SLOTS, DeviceLayout, HostBar, MSIX_ENTRY_SIZE, MSIX_MAX_ENTRIES, MmapArea, MsixInfo,
    MsixRelocation, ParseRelocationError, Policy,
};
pub use msix::{FireOutcome, MsixEntry, MsixError, MsixEvent, MsixTable};
pub use page::{PageSize, ParsePageSizeError};
pub use plan::{
    BarPlan, DevicePlan, MsixPlacement, MsixStructure, PlanError, Segment, SegmentKind,
    TrapHandling, TrapReason,
};
pub use relocation::{Relocation, RelocationKind};
pub use view::{GuestPlacement, MtreeKind, PlacementError, mtree_line, segment_name};
