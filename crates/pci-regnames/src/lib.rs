#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod device;
pub mod field;
pub mod msix;
pub mod nvme;
pub mod region;
pub mod registry;

pub use config::ConfigDecoder;
pub use device::DeviceFacts;
pub use field::{Decoded, Field, Part, ValueFormatter};
pub use msix::MsixDecoder;
pub use nvme::NvmeDecoder;
pub use region::{Location, LocationError, Region, parse_offset};
pub use registry::{FindError, RegisterDecoder, Registry};
