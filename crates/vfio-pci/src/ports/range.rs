//! [`BarRange`]: the identity of one mapped or trapped part of a BAR, carried by every port
//! call so that a VMM (or a tracer wrapping the handlers it is given) can name what it holds.

use std::fmt;
use std::sync::Arc;

/// The BAR index that stands for the expansion ROM (VFIO's region 6).
pub const ROM_INDEX: u8 = 6;

/// What a range of a BAR is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BarRangeKind {
    /// Device memory mapped into the guest: accesses reach the device with no exit.
    Mapped,
    /// Trapped and forwarded to the device's region (the host does not allow mmap there, the
    /// page shares a host page with the MSI-X table, or the policy traps it).
    Device,
    /// The emulated MSI-X table.
    MsixTable,
    /// The emulated MSI-X Pending Bit Array.
    MsixPba,
    /// Space the plan added (MSI-X relocation) with nothing behind it: reads zero.
    Padding,
    /// The expansion ROM: read-only, served from a copy of the host's ROM.
    Rom,
}

/// One mapped or trapped range of a device's BAR, as the ports see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BarRange {
    /// The device's name (its host BDF unless the VMM named it).
    pub device: Arc<str>,
    /// The BAR index, 0-5, or [`ROM_INDEX`].
    pub bar: u8,
    /// Offset of the range in the BAR.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// What it is.
    pub kind: BarRangeKind,
    /// A name for logs and views: `0000:01:00.0 BAR0 msix-table`,
    /// `0000:01:00.0 BAR2 +0x0 (host does not allow mmap)`, `0000:01:00.0 ROM`.
    pub name: Arc<str>,
}

impl fmt::Display for BarRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}
