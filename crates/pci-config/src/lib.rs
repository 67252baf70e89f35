#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![warn(missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod bar;
mod bdf;
pub mod capability;
mod error;
pub mod events;
#[cfg(test)]
mod fast_path_tests;
mod function;
pub mod header;
#[cfg(feature = "lspci")]
pub mod lspci;
pub mod registers;
mod space;
pub mod virtualized;

pub use bar::{BarDef, BarError, BarKind, RomDef};
pub use bdf::{Bdf, BdfParseError};
pub use capability::{CapId, Capability, CapabilityError, CapabilityId, ExtCapabilityId};
pub use error::{AccessError, ConfigError};
pub use events::{BridgeWindow, ConfigEvent, ConfigEvents};
pub use function::PciFunction;
pub use header::{Command, DeviceIds, HeaderType, Status};
pub use registers::{BitKind, ConfigSize, RegisterFile};
pub use space::{BarInfo, ConfigSpace, RomInfo};
pub use virtualized::{ConfigBackend, VirtualizedConfig};
