//! The trap-vs-map plan: [`DevicePlan`] and its segments.

use std::fmt;

use pci_config::BarKind;

use crate::layout::{BAR_SLOTS, DeviceLayout, HostBar, MSIX_MAX_ENTRIES, MsixRelocation};
use crate::layout::{MsixInfo, Policy};
use crate::page::PageSize;
use crate::ranges::{self, Range};
use crate::relocation::{self, Relocation, RelocationKind, Slots};

/// Why a range is trapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrapReason {
    /// The guest-visible MSI-X table: emulated by [`crate::MsixTable`].
    MsixTable,
    /// The guest-visible PBA: emulated by [`crate::MsixTable`].
    MsixPba,
    /// Shares a host page with the MSI-X table or a trapped PBA; forwarded to the device.
    MsixPage,
    /// The host does not allow mmapping this range (region not mmappable, a hole between
    /// sparse-mmap areas, or the MSI-X table pages without `MSIX_MAPPABLE`); forwarded.
    NotMmappable,
    /// Mappable, but not a whole host page (BAR smaller than a page, or a sparse area edge
    /// that is not page aligned); forwarded.
    SubPage,
    /// An I/O port BAR; forwarded.
    IoBar,
    /// [`Policy::trap_all`]; forwarded.
    Policy,
    /// Space the VMM added for relocated MSI-X with no device behind it: reads return zero,
    /// writes are dropped.
    Unbacked,
}

impl TrapReason {
    /// Who answers an access to a range trapped for this reason.
    pub const fn handling(self) -> TrapHandling {
        match self {
            TrapReason::MsixTable => TrapHandling::MsixTable,
            TrapReason::MsixPba => TrapHandling::MsixPba,
            TrapReason::Unbacked => TrapHandling::Unbacked,
            _ => TrapHandling::Device,
        }
    }

    /// A short phrase for tables and logs.
    pub const fn description(self) -> &'static str {
        match self {
            TrapReason::MsixTable => "MSI-X table (emulated)",
            TrapReason::MsixPba => "MSI-X PBA (emulated)",
            TrapReason::MsixPage => "shares a host page with MSI-X structures",
            TrapReason::NotMmappable => "host does not allow mmap",
            TrapReason::SubPage => "not a whole host page",
            TrapReason::IoBar => "I/O port BAR",
            TrapReason::Policy => "trap-all policy",
            TrapReason::Unbacked => "added for MSI-X relocation, no device behind it",
        }
    }
}

impl fmt::Display for TrapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// What the VMM does with a trapped access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrapHandling {
    /// Hand it to the MSI-X table emulation at `offset - table_offset`.
    MsixTable,
    /// Hand it to the PBA emulation at `offset - pba_offset`.
    MsixPba,
    /// Forward it to the device region at the same offset (VFIO region read/write).
    Device,
    /// Reads return zero, writes are dropped.
    Unbacked,
}

/// What happens to the bytes of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// Mapped into the guest: a KVM memory slot over the mmap of the host region at this offset
    /// (page aligned, like the segment's offset and length).
    Map {
        /// Offset into the host VFIO region (the BAR) where the mapping starts.
        host_region_offset: u64,
    },
    /// Trapped: guest accesses exit to the VMM.
    Trap {
        /// Why, which also says who handles it ([`TrapReason::handling`]).
        reason: TrapReason,
    },
}

/// A contiguous range of a guest-visible BAR with one treatment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Offset from the start of the guest-visible BAR.
    pub offset: u64,
    /// Length in bytes (never zero).
    pub len: u64,
    /// Mapped or trapped.
    pub kind: SegmentKind,
}

impl Segment {
    /// One past the last offset of the segment.
    pub const fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// Whether the segment holds BAR offset `offset`.
    pub const fn contains(&self, offset: u64) -> bool {
        self.offset <= offset && offset < self.end()
    }

    /// Whether the segment is mapped.
    pub const fn is_mapped(&self) -> bool {
        matches!(self.kind, SegmentKind::Map { .. })
    }

    /// The trap reason, if trapped.
    pub const fn trap_reason(&self) -> Option<TrapReason> {
        match self.kind {
            SegmentKind::Trap { reason } => Some(reason),
            SegmentKind::Map { .. } => None,
        }
    }
}

/// The plan of one guest-visible BAR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarPlan {
    index: u8,
    kind: BarKind,
    prefetchable: bool,
    host_size: u64,
    guest_size: u64,
    segments: Vec<Segment>,
}

impl BarPlan {
    /// BAR slot, 0 to 5.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// I/O, 32-bit or 64-bit memory, as the guest sees it.
    pub fn kind(&self) -> BarKind {
        self.kind
    }

    /// The prefetchable bit as the guest sees it.
    pub fn prefetchable(&self) -> bool {
        self.prefetchable
    }

    /// Size of the host region behind the BAR; 0 for a BAR the VMM added.
    pub fn host_size(&self) -> u64 {
        self.host_size
    }

    /// Size the guest sees when it sizes the BAR (larger than the host size when MSI-X was
    /// relocated into it).
    pub fn guest_size(&self) -> u64 {
        self.guest_size
    }

    /// Whether the VMM added this BAR (MSI-X relocated into a free slot).
    pub fn is_added(&self) -> bool {
        self.host_size == 0
    }

    /// The segments, ordered by offset, tiling `0..guest_size` exactly.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The segment holding BAR offset `offset` (a binary search), `None` past the end.
    pub fn segment_at(&self, offset: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.end() <= offset);
        self.segments.get(i).filter(|s| s.contains(offset))
    }

    /// The mapped segments, in order.
    pub fn mapped(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.is_mapped())
    }

    /// The trapped segments, in order.
    pub fn trapped(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| !s.is_mapped())
    }

    /// Bytes mapped into the guest.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped().map(|s| s.len).sum()
    }

    /// Bytes trapped.
    pub fn trapped_bytes(&self) -> u64 {
        self.guest_size - self.mapped_bytes()
    }
}

/// Where the guest sees the MSI-X structures (what the VMM puts in the capability's Table and
/// PBA Offset/BIR registers; the device's own values unless relocated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsixPlacement {
    /// Number of vectors.
    pub entries: u16,
    /// Guest-visible BAR of the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR.
    pub table_offset: u64,
    /// Guest-visible BAR of the PBA.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR.
    pub pba_offset: u64,
    /// Whether the PBA is trapped and emulated (otherwise the guest reads the hardware PBA).
    pub pba_emulated: bool,
}

impl MsixPlacement {
    /// Bytes of the table.
    pub fn table_len(&self) -> u64 {
        u64::from(self.entries) * crate::layout::MSIX_ENTRY_SIZE
    }

    /// Bytes of the PBA.
    pub fn pba_len(&self) -> u64 {
        crate::layout::pba_len(self.entries)
    }

    /// The value of the Table Offset/BIR register the guest should read.
    pub fn table_register(&self) -> u32 {
        (self.table_offset as u32 & !7) | u32::from(self.table_bar)
    }

    /// The value of the PBA Offset/BIR register the guest should read.
    pub fn pba_register(&self) -> u32 {
        (self.pba_offset as u32 & !7) | u32::from(self.pba_bar)
    }
}

/// The MSI-X structure an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsixStructure {
    /// The vector table.
    Table,
    /// The Pending Bit Array.
    Pba,
}

impl fmt::Display for MsixStructure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MsixStructure::Table => "table",
            MsixStructure::Pba => "PBA",
        })
    }
}

/// Why a device layout cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A BAR index past 5.
    #[error("BAR {index} does not exist: a type 0 header has BARs 0 to 5")]
    BarIndex {
        /// The index given.
        index: u8,
    },
    /// The same BAR twice.
    #[error("BAR {index} is listed twice: describe each BAR once")]
    DuplicateBar {
        /// The index given twice.
        index: u8,
    },
    /// A BAR in the slot of a 64-bit BAR's upper half.
    #[error(
        "BAR {index} is the upper half of 64-bit BAR {lower}: do not list it as a BAR of its own"
    )]
    UpperHalfListed {
        /// The slot listed.
        index: u8,
        /// The 64-bit BAR owning it.
        lower: u8,
    },
    /// A 64-bit BAR in slot 5.
    #[error("64-bit BAR {index} has no slot for its upper half: a 64-bit BAR must be BAR 0 to 4")]
    Bar64InLastSlot {
        /// The slot.
        index: u8,
    },
    /// A BAR size that is zero or not a power of two, or too big for its kind.
    #[error("BAR {index} ({kind}) has size {size:#x}: {why}")]
    BarSize {
        /// The BAR.
        index: u8,
        /// Its kind.
        kind: BarKind,
        /// The size given.
        size: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// A sparse-mmap area outside its BAR, or empty.
    #[error(
        "sparse-mmap area {offset:#x}+{size:#x} of BAR {index} is empty or outside the BAR \
         (size {bar_size:#x}): check the VFIO_REGION_INFO_CAP_SPARSE_MMAP data"
    )]
    SparseArea {
        /// The BAR.
        index: u8,
        /// Area offset.
        offset: u64,
        /// Area size.
        size: u64,
        /// BAR size.
        bar_size: u64,
    },
    /// MSI-X Table Size out of range.
    #[error("MSI-X Table Size {entries} is out of range: it must be 1 to 2048")]
    MsixEntries {
        /// The value given.
        entries: u16,
    },
    /// An MSI-X structure in a BAR that does not exist.
    #[error(
        "MSI-X {structure} is in BAR {bar}, which the device does not implement: check the \
         {structure} BIR"
    )]
    MsixBarMissing {
        /// Table or PBA.
        structure: MsixStructure,
        /// Its BIR.
        bar: u8,
    },
    /// An MSI-X structure in an I/O BAR.
    #[error("MSI-X {structure} is in I/O BAR {bar}: MSI-X structures must be in memory BARs")]
    MsixInIoBar {
        /// Table or PBA.
        structure: MsixStructure,
        /// Its BIR.
        bar: u8,
    },
    /// An MSI-X structure offset that is not QWORD aligned.
    #[error("MSI-X {structure} offset {offset:#x} in BAR {bar} is not QWORD aligned")]
    MsixMisaligned {
        /// Table or PBA.
        structure: MsixStructure,
        /// Its BIR.
        bar: u8,
        /// The offset given.
        offset: u64,
    },
    /// An MSI-X structure that does not fit in its BAR.
    #[error(
        "MSI-X {structure} at {offset:#x}+{len:#x} does not fit in BAR {bar} of size \
         {bar_size:#x}: the device reports a broken capability{}",
        if *structure == MsixStructure::Pba {
            "; relocating MSI-X into another BAR (QEMU's x-msix-relocation) avoids using it"
        } else {
            ""
        }
    )]
    MsixOutsideBar {
        /// Table or PBA.
        structure: MsixStructure,
        /// Its BIR.
        bar: u8,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The BAR size.
        bar_size: u64,
    },
    /// Table and PBA overlap.
    #[error(
        "MSI-X table {table_offset:#x}+{table_len:#x} and PBA {pba_offset:#x}+{pba_len:#x} \
         overlap in BAR {bar}: the device reports a broken capability"
    )]
    MsixOverlap {
        /// The BAR.
        bar: u8,
        /// Table offset.
        table_offset: u64,
        /// Table length.
        table_len: u64,
        /// PBA offset.
        pba_offset: u64,
        /// PBA length.
        pba_len: u64,
    },
    /// Relocation asked for without MSI-X.
    #[error("MSI-X relocation into BAR {bar} asked for, but the device has no MSI-X capability")]
    RelocationWithoutMsix {
        /// The target asked for.
        bar: u8,
    },
    /// The relocation target cannot take the structures.
    #[error("cannot relocate MSI-X into BAR {bar}: {why}")]
    RelocationTarget {
        /// The target asked for.
        bar: u8,
        /// Why not.
        why: String,
    },
}

/// The trap-vs-map plan: for every byte of every guest-visible BAR, whether the guest reaches the
/// device directly through a mapping (no VM exit) or the VMM traps the access and emulates or
/// forwards it.
///
/// # Rules (default policy, as QEMU `hw/vfio/pci.c` does)
///
/// - I/O BARs are always trapped (KVM maps memory, not ports). Config space is always trapped
///   too; it is not a BAR and not part of this plan.
/// - The MSI-X table is trapped and emulated ([`crate::MsixTable`]), and so is the rest of every
///   host page it touches: a mapping is whole pages, and the guest must never write the real
///   table. The other bytes of those pages are forwarded to the device.
/// - The PBA is trapped and emulated when it shares a page with the table, when some of it could
///   not be mapped anyway, when relocated, or when [`Policy::trap_pba`] is set. Otherwise it is
///   mapped, as in QEMU, whose PBA region stays disabled until a masked vector fires: drivers
///   rarely read the PBA (Linux never does), and trapping its page would trap the registers
///   next to it. The guest then reads the hardware PBA, not the emulated pending bits.
/// - Everything else the host lets us mmap is mapped, cut to whole host pages; what is left at
///   the edges is trapped as sub-page and forwarded.
/// - A BAR smaller than a host page maps nothing: a KVM memory slot needs a page-aligned guest
///   address and size, and the guest may place a small BAR anywhere its natural alignment allows.
///   For every BAR of at least a page, natural alignment makes the guest address of every
///   mapped segment page aligned wherever the guest moves the BAR. (QEMU maps a sub-page BAR
///   when the guest happens to place it page aligned, `vfio_sub_page_bar_update_mapping`; a
///   static plan cannot rely on where the guest puts it.)
/// - After MSI-X relocation the device's own table location is no longer the guest's table:
///   it is mapped when the host allows mmapping it (`MSIX_MAPPABLE`), else trapped as not
///   mmappable and forwarded (the host kernel filters accesses to the real table).
///
/// Segments are BAR offsets, so a plan does not change when the guest reprograms a BAR address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePlan {
    page_size: PageSize,
    policy: Policy,
    bars: Vec<BarPlan>,
    msix: Option<MsixPlacement>,
    relocation: Option<Relocation>,
}

impl DevicePlan {
    /// Plans `layout` for a host with `page_size` pages under `policy`.
    ///
    /// Pure: no OS calls. Fails only on a layout no real device can have, naming the BAR or
    /// capability field at fault.
    pub fn new(
        layout: &DeviceLayout,
        page_size: PageSize,
        policy: Policy,
    ) -> Result<DevicePlan, PlanError> {
        let slots = validate(layout, policy)?;
        let relocation = match (policy.msix_relocation, &layout.msix) {
            (MsixRelocation::Off, _) => None,
            (MsixRelocation::Bar(bar), None) => {
                return Err(PlanError::RelocationWithoutMsix { bar });
            }
            (MsixRelocation::Bar(bar), Some(m)) => {
                Some(relocation::into_bar(&slots, m, page_size, bar)?)
            }
            (MsixRelocation::Auto, None) => None,
            (MsixRelocation::Auto, Some(m)) => {
                let stay = build(&slots, layout, page_size, policy, None);
                return Ok(match relocation::auto_candidate(&slots, m, page_size) {
                    Some(r) if !policy.trap_all => {
                        let moved = build(&slots, layout, page_size, policy, Some(r));
                        if moved.mapped_bytes() > stay.mapped_bytes() {
                            moved
                        } else {
                            stay
                        }
                    }
                    _ => stay,
                });
            }
        };
        Ok(build(&slots, layout, page_size, policy, relocation))
    }

    /// The host page size the plan is for.
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }

    /// The policy the plan was made under.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The guest-visible BARs, by index.
    pub fn bars(&self) -> &[BarPlan] {
        &self.bars
    }

    /// The plan of guest-visible BAR `index`.
    pub fn bar(&self, index: u8) -> Option<&BarPlan> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// The segment holding `offset` of BAR `bar`.
    pub fn segment_at(&self, bar: u8, offset: u64) -> Option<&Segment> {
        self.bar(bar)?.segment_at(offset)
    }

    /// Where the guest sees the MSI-X structures, if the device has MSI-X.
    pub fn msix(&self) -> Option<&MsixPlacement> {
        self.msix.as_ref()
    }

    /// The relocation made, if any.
    pub fn relocation(&self) -> Option<&Relocation> {
        self.relocation.as_ref()
    }

    /// Bytes mapped over all BARs.
    pub fn mapped_bytes(&self) -> u64 {
        self.bars.iter().map(BarPlan::mapped_bytes).sum()
    }
}

/// Checks the layout and indexes the BARs by slot.
fn validate(layout: &DeviceLayout, policy: Policy) -> Result<Slots<'_>, PlanError> {
    let mut slots: Slots<'_> = [None; BAR_SLOTS as usize];
    for bar in &layout.bars {
        let index = bar.index;
        if index >= BAR_SLOTS {
            return Err(PlanError::BarIndex { index });
        }
        if slots[usize::from(index)].is_some() {
            return Err(PlanError::DuplicateBar { index });
        }
        let size_error = |why| PlanError::BarSize {
            index,
            kind: bar.kind,
            size: bar.size,
            why,
        };
        if !bar.size.is_power_of_two() {
            return Err(size_error("BAR sizes are non-zero powers of two"));
        }
        match bar.kind {
            BarKind::Memory32 if bar.size > 1 << 31 => {
                return Err(size_error("a 32-bit BAR is at most 2 GiB"));
            }
            BarKind::Io if bar.size > 1 << 16 => {
                return Err(size_error("an I/O BAR is at most 64 KiB (the port space)"));
            }
            BarKind::Memory64 if bar.size > 1 << 62 => {
                return Err(size_error("larger than any address space"));
            }
            BarKind::Memory64 if index + 1 >= BAR_SLOTS => {
                return Err(PlanError::Bar64InLastSlot { index });
            }
            _ => {}
        }
        for area in bar.sparse_mmap.iter().flatten() {
            let end = area.offset.checked_add(area.size);
            if area.size == 0 || end.is_none_or(|e| e > bar.size) {
                return Err(PlanError::SparseArea {
                    index,
                    offset: area.offset,
                    size: area.size,
                    bar_size: bar.size,
                });
            }
        }
        slots[usize::from(index)] = Some(bar);
    }
    for i in 1..usize::from(BAR_SLOTS) {
        if let (Some(lower), Some(upper)) = (slots[i - 1], slots[i])
            && lower.kind == BarKind::Memory64
        {
            return Err(PlanError::UpperHalfListed {
                index: upper.index,
                lower: lower.index,
            });
        }
    }
    if let Some(m) = &layout.msix {
        validate_msix(&slots, m, policy)?;
    }
    Ok(slots)
}

fn validate_msix(slots: &Slots<'_>, m: &MsixInfo, policy: Policy) -> Result<(), PlanError> {
    if m.entries == 0 || m.entries > MSIX_MAX_ENTRIES {
        return Err(PlanError::MsixEntries { entries: m.entries });
    }
    // A device whose PBA offset lies outside its BAR (Chelsio T5 VFs) still works when the
    // structures are relocated: the guest never uses the device's own PBA then (QEMU does
    // the same). Auto relocation may decide not to move, so it does not count.
    let relocating = matches!(policy.msix_relocation, MsixRelocation::Bar(_));
    let structures = [
        (
            MsixStructure::Table,
            m.table_bar,
            m.table_offset,
            m.table_len(),
        ),
        (MsixStructure::Pba, m.pba_bar, m.pba_offset, m.pba_len()),
    ];
    for (structure, bar, offset, len) in structures {
        let offset = u64::from(offset);
        let b = slots
            .get(usize::from(bar))
            .copied()
            .flatten()
            .ok_or(PlanError::MsixBarMissing { structure, bar })?;
        if b.kind == BarKind::Io {
            return Err(PlanError::MsixInIoBar { structure, bar });
        }
        if offset % 8 != 0 {
            return Err(PlanError::MsixMisaligned {
                structure,
                bar,
                offset,
            });
        }
        if offset + len > b.size && !(relocating && structure == MsixStructure::Pba) {
            return Err(PlanError::MsixOutsideBar {
                structure,
                bar,
                offset,
                len,
                bar_size: b.size,
            });
        }
    }
    let table = (
        u64::from(m.table_offset),
        u64::from(m.table_offset) + m.table_len(),
    );
    let pba = (
        u64::from(m.pba_offset),
        u64::from(m.pba_offset) + m.pba_len(),
    );
    if m.table_bar == m.pba_bar && ranges::overlaps(table, pba) {
        return Err(PlanError::MsixOverlap {
            bar: m.table_bar,
            table_offset: table.0,
            table_len: m.table_len(),
            pba_offset: pba.0,
            pba_len: m.pba_len(),
        });
    }
    Ok(())
}

/// The host byte ranges of `bar` the host lets us mmap.
fn host_mappable(bar: &HostBar, msix: Option<&MsixInfo>, page: PageSize) -> Vec<Range> {
    if !bar.mmappable || !bar.kind.is_memory() {
        return Vec::new();
    }
    match &bar.sparse_mmap {
        Some(areas) => ranges::normalize(
            areas
                .iter()
                .map(|a| (a.offset, a.offset + a.size))
                .collect(),
        ),
        None => {
            let whole = vec![(0, bar.size)];
            match msix {
                // Without MSIX_MAPPABLE the host refuses to mmap the table's pages; a host that
                // reports no sparse areas leaves it to us to cut them out, as QEMU's
                // vfio_pci_fixup_msix_region does.
                Some(m) if m.table_bar == bar.index && !bar.msix_mappable => {
                    let t = page_span((u64::from(m.table_offset), table_end(m)), page, bar.size);
                    ranges::subtract(&whole, &[t])
                }
                _ => whole,
            }
        }
    }
}

fn table_end(m: &MsixInfo) -> u64 {
    u64::from(m.table_offset) + m.table_len()
}

/// The host pages touched by `r`, clipped to the BAR.
fn page_span(r: Range, page: PageSize, bar_size: u64) -> Range {
    (page.align_down(r.0), page.align_up(r.1).min(bar_size))
}

/// Cuts each range to whole pages.
fn whole_pages(v: &[Range], page: PageSize) -> Vec<Range> {
    v.iter()
        .map(|&(s, e)| (page.align_up(s), page.align_down(e)))
        .filter(|r| r.0 < r.1)
        .collect()
}

/// What the planner knows about one guest-visible BAR before cutting it into segments.
struct BarInput {
    index: u8,
    kind: BarKind,
    prefetchable: bool,
    host_size: u64,
    guest_size: u64,
    host_mappable: Vec<Range>,
}

fn build(
    slots: &Slots<'_>,
    layout: &DeviceLayout,
    page: PageSize,
    policy: Policy,
    relocation: Option<Relocation>,
) -> DevicePlan {
    let mut inputs: Vec<BarInput> = slots
        .iter()
        .flatten()
        .map(|b| BarInput {
            index: b.index,
            kind: b.kind,
            prefetchable: b.prefetchable,
            host_size: b.size,
            guest_size: b.size,
            host_mappable: host_mappable(b, layout.msix.as_ref(), page),
        })
        .collect();
    if let Some(r) = relocation {
        match r.kind {
            RelocationKind::NewBar { kind } => {
                let at = inputs.partition_point(|b| b.index < r.bar);
                inputs.insert(
                    at,
                    BarInput {
                        index: r.bar,
                        kind,
                        prefetchable: true,
                        host_size: 0,
                        guest_size: r.bar_size,
                        host_mappable: Vec::new(),
                    },
                );
            }
            RelocationKind::ExtendedBar { .. } => {
                if let Some(b) = inputs.iter_mut().find(|b| b.index == r.bar) {
                    b.guest_size = r.bar_size;
                }
            }
        }
    }

    let msix = layout.msix.as_ref().map(|m| {
        let (table_bar, table_offset, pba_bar, pba_offset) = match relocation {
            Some(r) => (r.bar, r.offset, r.bar, r.offset + m.table_len()),
            None => (
                m.table_bar,
                u64::from(m.table_offset),
                m.pba_bar,
                u64::from(m.pba_offset),
            ),
        };
        let mut placement = MsixPlacement {
            entries: m.entries,
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
            pba_emulated: true,
        };
        placement.pba_emulated = relocation.is_some()
            || policy.trap_all
            || policy.trap_pba
            || pba_must_trap(&inputs, &placement, page);
        placement
    });

    let bars = inputs
        .iter()
        .map(|b| BarPlan {
            index: b.index,
            kind: b.kind,
            prefetchable: b.prefetchable,
            host_size: b.host_size,
            guest_size: b.guest_size,
            segments: segments(b, msix.as_ref(), page, policy),
        })
        .collect();
    DevicePlan {
        page_size: page,
        policy,
        bars,
        msix,
        relocation,
    }
}

fn table_range(m: &MsixPlacement) -> Range {
    (m.table_offset, m.table_offset + m.table_len())
}

fn pba_range(m: &MsixPlacement) -> Range {
    (m.pba_offset, m.pba_offset + m.pba_len())
}

/// Whether the PBA cannot stay mapped: it shares a page with the table, or trapping only the
/// table would still leave some PBA byte unmapped.
fn pba_must_trap(inputs: &[BarInput], m: &MsixPlacement, page: PageSize) -> bool {
    let Some(b) = inputs.iter().find(|b| b.index == m.pba_bar) else {
        return true;
    };
    let pba = pba_range(m);
    let pba_pages = page_span(pba, page, b.guest_size);
    let mut table_pages = Vec::new();
    if m.table_bar == m.pba_bar {
        let t = page_span(table_range(m), page, b.guest_size);
        if ranges::overlaps(t, pba_pages) {
            return true;
        }
        table_pages.push(t);
    }
    let mapped = whole_pages(&ranges::subtract(&b.host_mappable, &table_pages), page);
    !ranges::covers(&ranges::normalize(mapped), pba)
}

/// Cuts one BAR into segments.
fn segments(
    b: &BarInput,
    msix: Option<&MsixPlacement>,
    page: PageSize,
    policy: Policy,
) -> Vec<Segment> {
    let mut table = None;
    let mut pba = None;
    let mut msix_pages = Vec::new();
    if let Some(m) = msix {
        if m.table_bar == b.index {
            let t = table_range(m);
            table = Some(t);
            msix_pages.push(page_span(t, page, b.guest_size));
        }
        if m.pba_bar == b.index && m.pba_emulated {
            let p = pba_range(m);
            pba = Some(p);
            msix_pages.push(page_span(p, page, b.guest_size));
        }
    }
    let msix_pages = ranges::normalize(msix_pages);
    let mapped = if policy.trap_all || !b.kind.is_memory() {
        Vec::new()
    } else {
        ranges::normalize(whole_pages(
            &ranges::subtract(&b.host_mappable, &msix_pages),
            page,
        ))
    };

    let mut cuts: Vec<u64> = vec![0, b.host_size.min(b.guest_size), b.guest_size];
    for r in table.iter().chain(pba.iter()) {
        cuts.extend([r.0, r.1]);
    }
    for r in msix_pages.iter().chain(&b.host_mappable).chain(&mapped) {
        cuts.extend([r.0, r.1]);
    }
    cuts.retain(|&c| c <= b.guest_size);
    cuts.sort_unstable();
    cuts.dedup();

    let in_range = |r: Option<Range>, x: u64| r.is_some_and(|r| r.0 <= x && x < r.1);
    let classify = |x: u64| -> SegmentKind {
        let reason = if in_range(table, x) {
            TrapReason::MsixTable
        } else if in_range(pba, x) {
            TrapReason::MsixPba
        } else if x >= b.host_size {
            TrapReason::Unbacked
        } else if !b.kind.is_memory() {
            TrapReason::IoBar
        } else if policy.trap_all {
            TrapReason::Policy
        } else if ranges::contains(&mapped, x) {
            return SegmentKind::Map {
                host_region_offset: x,
            };
        } else if ranges::contains(&msix_pages, x) {
            TrapReason::MsixPage
        } else if !ranges::contains(&b.host_mappable, x) {
            TrapReason::NotMmappable
        } else {
            TrapReason::SubPage
        };
        SegmentKind::Trap { reason }
    };

    let mut out: Vec<Segment> = Vec::new();
    for w in cuts.windows(2) {
        let (start, end) = (w[0], w[1]);
        let kind = classify(start);
        if let Some(last) = out.last_mut() {
            let joins = match (last.kind, kind) {
                (
                    SegmentKind::Map {
                        host_region_offset: a,
                    },
                    SegmentKind::Map {
                        host_region_offset: b,
                    },
                ) => a + last.len == b,
                (a, b) => a == b,
            };
            if joins {
                last.len += end - start;
                continue;
            }
        }
        out.push(Segment {
            offset: start,
            len: end - start,
            kind,
        });
    }
    out
}
