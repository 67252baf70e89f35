//! Capability parsing and editing errors.

use thiserror::Error;

use super::id::CapId;

/// A capability chain that cannot be trusted, or a capability that cannot be added or hidden.
///
/// Every variant names the offset (and, where one was read, the capability ID) so that a user
/// can find the bad byte in an `lspci -xxx` dump.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CapabilityError {
    /// A standard pointer points into the 64-byte predefined header.
    #[error(
        "capability pointer at offset {at:#x} holds {pointer:#04x}, which points into the \
         predefined header (below 0x40)"
    )]
    PointerIntoHeader {
        /// Where the pointer is stored (0x34 or a capability's next byte).
        at: u16,
        /// The pointer value (low two bits masked).
        pointer: u16,
    },
    /// An extended pointer points below 0x100.
    #[error(
        "extended capability at offset {at:#x} has next pointer {pointer:#x}, which points \
         below the extended area (0x100)"
    )]
    PointerBelowExtended {
        /// Offset of the capability holding the pointer.
        at: u16,
        /// The pointer value.
        pointer: u16,
    },
    /// The chain visits the same offset twice.
    #[error(
        "capability chain loops: {id} at offset {offset:#x} points back to offset {target:#x}, \
         which was already visited"
    )]
    Loop {
        /// Offset of the capability whose next pointer closes the loop.
        offset: u16,
        /// Its ID.
        id: CapId,
        /// The offset visited twice.
        target: u16,
    },
    /// Two capabilities share bytes.
    #[error(
        "{id} at offset {offset:#x} ({len} bytes) overlaps {other_id} at offset \
         {other_offset:#x}"
    )]
    Overlap {
        /// Offset of the capability found second.
        offset: u16,
        /// Its ID.
        id: CapId,
        /// Its length in bytes.
        len: u16,
        /// Offset of the capability it overlaps.
        other_offset: u16,
        /// That capability's ID.
        other_id: CapId,
    },
    /// A capability's structure does not fit in the configuration space.
    #[error(
        "{id} at offset {offset:#x} needs {needed} bytes but only {available} remain before \
         the end of the configuration space"
    )]
    Truncated {
        /// Offset of the capability.
        offset: u16,
        /// Its ID.
        id: CapId,
        /// Bytes its structure needs.
        needed: u16,
        /// Bytes left in the space.
        available: u16,
    },
    /// The chain reached a capability with ID 0xff (or an all-ones extended header): the device
    /// returned all-ones, which means it is gone or the read was denied.
    #[error(
        "capability chain broken at offset {offset:#x}: the header reads as all-ones (device \
         gone, or config space read without root privileges)"
    )]
    Broken {
        /// Offset of the all-ones header.
        offset: u16,
    },
    /// A field of a typed capability holds a value the specification does not allow.
    #[error("{id} at offset {offset:#x}: {what}")]
    Malformed {
        /// Offset of the capability.
        offset: u16,
        /// Its ID.
        id: CapId,
        /// What is wrong.
        what: String,
    },
    /// No capability starts at the given offset.
    #[error("no capability starts at offset {offset:#x}; list the chain to find valid offsets")]
    NotFound {
        /// Requested offset.
        offset: u16,
    },
    /// A capability of the wrong type starts at the offset.
    #[error("expected {expected} at offset {offset:#x}, found {found}")]
    WrongId {
        /// Offset looked at.
        offset: u16,
        /// ID that was expected.
        expected: CapId,
        /// ID that was found.
        found: CapId,
    },
    /// There is no free, dword-aligned room for a new capability.
    #[error("no free room of {len} bytes for a new {id}; remove or hide another capability first")]
    NoSpace {
        /// ID of the capability being added.
        id: CapId,
        /// Bytes it needs.
        len: u16,
    },
    /// Extended capabilities need a 4096-byte configuration space.
    #[error(
        "{id} is an extended capability and needs a 4096-byte (PCI Express) configuration \
         space; this one has {size} bytes"
    )]
    NoExtendedSpace {
        /// ID of the capability.
        id: CapId,
        /// Size of the space.
        size: usize,
    },
}
