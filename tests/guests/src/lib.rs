#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

// The bare-metal runtime: only in the guest images (feature `image`), never in host unit tests or
// doctests, which link the standard library and its own panic handler.
#[cfg(all(feature = "image", not(test)))]
mod boot;
#[cfg(all(feature = "image", not(test)))]
mod mem;

pub mod cmdline;
pub mod dma;
pub mod exit;
pub mod idt;
pub mod io;
pub mod lapic;
pub mod nvme;
pub mod paging;
pub mod pattern;
pub mod pci;
pub mod report;
pub mod rt;
pub mod serial;
pub mod time;

pub use cmdline::Cmdline;
pub use report::Report;
pub use rt::BootInfo;
