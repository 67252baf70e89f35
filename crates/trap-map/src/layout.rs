//! What the planner is told about a device: its BARs as the host exposes them, its MSI-X
//! capability, and the policy knobs.
//!
//! These are plain values so that any source can fill them: a VFIO device
//! (`VFIO_DEVICE_GET_REGION_INFO` with its `VFIO_REGION_INFO_CAP_SPARSE_MMAP` and
//! `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE` capabilities), an `lspci -vv` dump, or a test.

use std::fmt;
use std::str::FromStr;

use pci_config::BarKind;
use pci_config::capability::MsixCapability;

/// Size of one MSI-X table entry, as a BAR length ([`MsixCapability::ENTRY_SIZE`]).
pub const MSIX_ENTRY_SIZE: u64 = MsixCapability::ENTRY_SIZE as u64;
/// The largest MSI-X table a function can have ([`MsixCapability::MAX_ENTRIES`]).
pub const MSIX_MAX_ENTRIES: u16 = MsixCapability::MAX_ENTRIES;
/// Number of BAR slots in a type 0 header.
pub const BAR_SLOTS: u8 = 6;

/// One area of a BAR the host allows to mmap (`struct vfio_region_sparse_mmap_area`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmapArea {
    /// Offset of the area from the start of the BAR.
    pub offset: u64,
    /// Length of the area in bytes.
    pub size: u64,
}

/// One BAR of the host device, with what the host says about mmapping it: the planner's input.
/// (A BAR as the guest programs it is [`pci_config::BarInfo`].)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBar {
    /// BAR slot, 0 to 5.
    pub index: u8,
    /// Size in bytes: a power of two, as PCI BAR sizing gives it.
    pub size: u64,
    /// I/O, 32-bit or 64-bit memory.
    pub kind: BarKind,
    /// The prefetchable bit of a memory BAR.
    pub prefetchable: bool,
    /// Whether the host region can be mmapped at all (`VFIO_REGION_INFO_FLAG_MMAP`).
    pub mmappable: bool,
    /// The areas the host allows to mmap (`VFIO_REGION_INFO_CAP_SPARSE_MMAP`). `None` means the
    /// whole region when [`mmappable`](Self::mmappable) is set; an empty list means nothing.
    pub sparse_mmap: Option<Vec<MmapArea>>,
    /// Whether the host lets the MSI-X table pages be mmapped too
    /// (`VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`, Linux 4.16+ with interrupt remapping). Without it
    /// the host refuses to mmap the pages holding the table, as QEMU's
    /// `vfio_pci_fixup_msix_region` assumes.
    pub msix_mappable: bool,
}

impl HostBar {
    /// A BAR of `kind`; memory BARs are mmappable, I/O BARs are not.
    pub fn new(index: u8, size: u64, kind: BarKind) -> HostBar {
        HostBar {
            index,
            size,
            kind,
            prefetchable: false,
            mmappable: kind.is_memory(),
            sparse_mmap: None,
            msix_mappable: false,
        }
    }

    /// A mmappable 32-bit memory BAR.
    pub fn memory32(index: u8, size: u64) -> HostBar {
        HostBar::new(index, size, BarKind::Memory32)
    }

    /// A mmappable 64-bit memory BAR.
    pub fn memory64(index: u8, size: u64) -> HostBar {
        HostBar::new(index, size, BarKind::Memory64)
    }

    /// An I/O port BAR.
    pub fn io(index: u8, size: u64) -> HostBar {
        HostBar::new(index, size, BarKind::Io)
    }

    /// Sets the prefetchable bit.
    pub fn prefetchable(mut self, prefetchable: bool) -> HostBar {
        self.prefetchable = prefetchable;
        self
    }

    /// Marks the host region as not mmappable.
    pub fn not_mmappable(mut self) -> HostBar {
        self.mmappable = false;
        self
    }

    /// Sets the sparse-mmap areas the host reports.
    pub fn sparse_mmap(mut self, areas: Vec<MmapArea>) -> HostBar {
        self.sparse_mmap = Some(areas);
        self
    }

    /// Sets whether the host allows mmapping the MSI-X table pages.
    pub fn msix_mappable(mut self, mappable: bool) -> HostBar {
        self.msix_mappable = mappable;
        self
    }
}

/// Where the host device's MSI-X table and PBA are (PCI Local Bus 3.0 §6.8.2): the layout part
/// of a [`MsixCapability`], which decodes the registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsixInfo {
    /// Table Size: number of vectors, 1 to 2048.
    pub entries: u16,
    /// Table BIR: the BAR holding the table.
    pub table_bar: u8,
    /// Table Offset from the start of that BAR (QWORD aligned).
    pub table_offset: u32,
    /// PBA BIR: the BAR holding the Pending Bit Array.
    pub pba_bar: u8,
    /// PBA Offset from the start of that BAR (QWORD aligned).
    pub pba_offset: u32,
}

impl From<&MsixCapability> for MsixInfo {
    /// The layout part of a capability pci-config decoded (where the table and PBA are and how
    /// many vectors there are; enable and mask bits are run-time state the planner ignores).
    fn from(cap: &MsixCapability) -> MsixInfo {
        MsixInfo {
            entries: cap.table_size,
            table_bar: cap.table.bir,
            table_offset: cap.table.offset,
            pba_bar: cap.pba.bir,
            pba_offset: cap.pba.offset,
        }
    }
}

impl MsixInfo {
    /// Bytes taken by the table: 16 per entry.
    pub fn table_len(&self) -> u64 {
        u64::from(self.entries) * MSIX_ENTRY_SIZE
    }

    /// Bytes taken by the PBA: one bit per entry, in whole QWORDs.
    pub fn pba_len(&self) -> u64 {
        pba_len(self.entries)
    }
}

/// Bytes of a PBA for `entries` vectors: one bit each, rounded up to whole QWORDs.
pub(crate) fn pba_len(entries: u16) -> u64 {
    u64::from(entries).div_ceil(64) * 8
}

/// The host device as the planner sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceLayout {
    /// The implemented BARs, in any order (absent BARs and upper halves are simply not listed).
    pub bars: Vec<HostBar>,
    /// The MSI-X capability, if the device has one.
    pub msix: Option<MsixInfo>,
}

/// Where to move the MSI-X table and PBA (QEMU's `x-msix-relocation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MsixRelocation {
    /// Keep the structures where the device has them (QEMU's default).
    #[default]
    Off,
    /// Relocate only when that maps more of the device: into the first free BAR slot
    /// (a new BAR), or else by doubling the table's BAR.
    Auto,
    /// Relocate into this BAR: a free slot becomes a new BAR, an existing memory BAR is doubled
    /// and the structures go in its upper half.
    Bar(u8),
}

impl fmt::Display for MsixRelocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsixRelocation::Off => f.write_str("off"),
            MsixRelocation::Auto => f.write_str("auto"),
            MsixRelocation::Bar(n) => write!(f, "bar{n}"),
        }
    }
}

/// The text given for an MSI-X relocation is not `off`, `auto` or `barN`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown MSI-X relocation {0:?}: use off, auto, or bar0 to bar5")]
pub struct ParseRelocationError(pub String);

impl FromStr for MsixRelocation {
    type Err = ParseRelocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "off" => Ok(MsixRelocation::Off),
            "auto" => Ok(MsixRelocation::Auto),
            _ => lower
                .strip_prefix("bar")
                .and_then(|n| n.parse::<u8>().ok())
                .filter(|n| *n < BAR_SLOTS)
                .map(MsixRelocation::Bar)
                .ok_or_else(|| ParseRelocationError(s.to_string())),
        }
    }
}

/// Policy knobs of the planner.
///
/// The default traps only what must be trapped, like QEMU: the MSI-X table and the rest of its
/// host pages, ranges the host will not mmap, sub-page pieces and I/O BARs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Policy {
    /// Trap every BAR byte (for tracing all device accesses); nothing is mapped.
    pub trap_all: bool,
    /// Trap and emulate the PBA even when it sits on pages of its own. By default such a PBA is
    /// mapped, as QEMU does (its PBA region is disabled until needed): drivers rarely read the
    /// PBA, and trapping it would also trap the registers sharing its page.
    pub trap_pba: bool,
    /// MSI-X relocation.
    pub msix_relocation: MsixRelocation,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_msix_registers() {
        let m = MsixInfo::from(&MsixCapability::from_registers(
            0x40,
            0x8000 | 63,
            0x2000,
            0x3002,
        ));
        assert_eq!(m.entries, 64);
        assert_eq!((m.table_bar, m.table_offset), (0, 0x2000));
        assert_eq!((m.pba_bar, m.pba_offset), (2, 0x3000));
        assert_eq!(m.table_len(), 1024);
        assert_eq!(m.pba_len(), 8);
        assert_eq!(pba_len(65), 16);
        assert_eq!(pba_len(2048), 256);
    }

    #[test]
    fn parses_relocation() {
        assert_eq!("off".parse(), Ok(MsixRelocation::Off));
        assert_eq!("AUTO".parse(), Ok(MsixRelocation::Auto));
        assert_eq!("bar2".parse(), Ok(MsixRelocation::Bar(2)));
        assert!("bar6".parse::<MsixRelocation>().is_err());
        assert!("barx".parse::<MsixRelocation>().is_err());
        assert_eq!(MsixRelocation::Bar(4).to_string(), "bar4");
    }
}
