//! Error types shared by the register model and the configuration space.

use thiserror::Error;

use crate::bar::BarError;
use crate::capability::CapabilityError;

/// A configuration access that the register model refuses.
///
/// Reads that fail this way still fill the caller's buffer with `0xff` bytes (what a guest sees
/// from a register that does not exist), so a VMM may log the error and return the buffer as is.
/// Writes that fail this way change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AccessError {
    /// The access is not 1, 2 or 4 bytes wide.
    #[error(
        "config access of {len} bytes at offset {offset:#x} is not 1, 2 or 4 bytes wide; \
         split it into byte, word or dword accesses"
    )]
    BadWidth {
        /// Offset of the first byte.
        offset: u16,
        /// Width the caller asked for.
        len: usize,
    },
    /// The access runs past the end of the configuration space.
    #[error(
        "config access of {len} bytes at offset {offset:#x} runs past the end of the \
         {size}-byte configuration space"
    )]
    OutOfRange {
        /// Offset of the first byte.
        offset: u16,
        /// Width of the access.
        len: usize,
        /// Size of the configuration space (256 or 4096).
        size: usize,
    },
}

/// Errors building or loading a configuration space.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A register access failed.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A BAR or ROM definition is invalid.
    #[error(transparent)]
    Bar(#[from] BarError),
    /// A capability could not be parsed, added or hidden.
    #[error(transparent)]
    Capability(#[from] CapabilityError),
    /// A snapshot of configuration bytes has a length other than 256 or 4096.
    #[error(
        "configuration snapshot is {len} bytes; expected 256 (conventional) or 4096 (PCI Express) \
         bytes, pad a shorter dump with zeros"
    )]
    BadSnapshotLength {
        /// Length of the snapshot.
        len: usize,
    },
    /// The header type register (offset 0x0e) holds a layout this crate does not model.
    #[error(
        "header type {header_type:#04x} at offset 0xe is not supported; only type 0 (endpoint) \
         and type 1 (PCI-to-PCI bridge) headers are modelled"
    )]
    UnsupportedHeaderType {
        /// Value of the header type register with the multi-function bit cleared.
        header_type: u8,
    },
}
