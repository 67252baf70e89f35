#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]
#![forbid(unsafe_code)]

mod bar_alloc;
mod bus;
mod conf1;
mod ecam;
mod host_bridge;
pub mod layout;

pub use bar_alloc::{AssignedBar, BarAllocator, BarAssignError, BarSpace};
pub use bus::{BusError, PciBus, SharedFunction};
pub use conf1::Conf1;
pub use ecam::Ecam;
pub use host_bridge::HostBridge;
