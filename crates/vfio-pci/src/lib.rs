#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

// The passthrough device itself (config-space view, BAR mapping, interrupts, DMA, the
// VFIO backend trait) lands beside `host` as its own modules.

pub mod host;
