//! Views of a plan placed at guest addresses: QEMU `info mtree -f` lines, a table of trapped
//! ranges with their reasons, and a per-BAR summary.
//!
//! The mtree view has the line format of QEMU's `mtree_print_flatview`, so an engineer reads it
//! as `info mtree -f` from a QEMU guest:
//!
//! ```text
//! FlatView #0
//!  AS "memory", root: system
//!  Root memory region: system
//!   00000000c0000000-00000000c0001fff (prio 0, ramd): 0000:01:00.0 BAR0 mmap +0x0
//!   00000000c0002000-00000000c00020ff (prio 0, i/o): 0000:01:00.0 BAR0 msix-table
//!   00000000c0002100-00000000c0002fff (prio 0, i/o): 0000:01:00.0 BAR0 +0x2100 (shares a host page with MSI-X structures)
//! ```
//!
//! Mapped ranges are `ramd` (RAM-device memory: a mmap of the device), trapped ones `i/o`. Range
//! names come from [`segment_name`], the one vocabulary of a plan and of a running VMM's views and
//! counters: `<dev> BARn mmap +OFFSET` for mappings, `<dev> BARn msix-table` and `msix-pba` for
//! the emulated structures, `<dev> BARn +OFFSET (why)` for every other trapped range. They name
//! the offset rather than QEMU's `mmaps[k]` index, so a range is found in the BAR without counting.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pci_config::BarKind;

use crate::plan::{BarPlan, DevicePlan, SegmentKind, TrapReason};

/// The 32-bit MMIO window BARs are placed in by default (below the IOAPIC at `0xfec00000`).
pub const MMIO32_WINDOW: (u64, u64) = (0xc000_0000, 0xfec0_0000);
/// Where 64-bit BARs go when they do not fit the 32-bit window (512 GiB).
pub const MMIO64_WINDOW: (u64, u64) = (0x80_0000_0000, 1 << 52);
/// The I/O port window I/O BARs are placed in by default.
pub const IO_WINDOW: (u64, u64) = (0xc000, 0x1_0000);

/// Why BARs cannot be placed at the given guest addresses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// A placement for a BAR the plan does not have.
    #[error(
        "BAR {bar} is not implemented by this device (after MSI-X relocation): cannot place it"
    )]
    UnknownBar {
        /// The BAR.
        bar: u8,
    },
    /// A BAR without a placement.
    #[error("BAR {bar} has no guest address: place every BAR")]
    Missing {
        /// The BAR.
        bar: u8,
    },
    /// An address not aligned to the BAR size.
    #[error(
        "BAR {bar} at {address:#x} is not aligned to its size {size:#x}: PCI BARs are naturally \
         aligned"
    )]
    Misaligned {
        /// The BAR.
        bar: u8,
        /// The address given.
        address: u64,
        /// The guest BAR size.
        size: u64,
    },
    /// An address range the BAR cannot decode.
    #[error("BAR {bar} at {address:#x} (size {size:#x}) does not fit {limit}")]
    OutOfRange {
        /// The BAR.
        bar: u8,
        /// The address given.
        address: u64,
        /// The guest BAR size.
        size: u64,
        /// The limit broken.
        limit: &'static str,
    },
    /// Two BARs overlap.
    #[error(
        "BAR {bar} at {address:#x} overlaps BAR {other} at {other_address:#x}: give one of them \
         an address past the other's end"
    )]
    Overlap {
        /// The BAR.
        bar: u8,
        /// Its address.
        address: u64,
        /// The other BAR.
        other: u8,
        /// Its address.
        other_address: u64,
    },
    /// No room left in the default windows.
    #[error(
        "no room for BAR {bar} ({size:#x} bytes) in the default windows: place it with an explicit address"
    )]
    NoRoom {
        /// The BAR.
        bar: u8,
        /// The guest BAR size.
        size: u64,
    },
}

/// Guest addresses of a device's BARs (memory addresses, or ports for I/O BARs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestPlacement {
    addresses: BTreeMap<u8, u64>,
}

impl GuestPlacement {
    /// No BAR placed.
    pub fn new() -> GuestPlacement {
        GuestPlacement::default()
    }

    /// Places BAR `bar` at `address`, replacing an earlier placement.
    pub fn set(&mut self, bar: u8, address: u64) {
        self.addresses.insert(bar, address);
    }

    /// The address of BAR `bar`.
    pub fn address(&self, bar: u8) -> Option<u64> {
        self.addresses.get(&bar).copied()
    }

    /// Places every BAR of `plan` not placed in `fixed` as firmware would: naturally aligned,
    /// largest first, from the bottom of [`MMIO32_WINDOW`] (64-bit BARs that do not fit there go
    /// to [`MMIO64_WINDOW`]) and of [`IO_WINDOW`] for I/O BARs, around the fixed ones.
    pub fn auto(
        plan: &DevicePlan,
        fixed: &GuestPlacement,
    ) -> Result<GuestPlacement, PlacementError> {
        for &bar in fixed.addresses.keys() {
            if plan.bar(bar).is_none() {
                return Err(PlacementError::UnknownBar { bar });
            }
        }
        let mut placed = fixed.clone();
        let mut todo: Vec<&BarPlan> = plan
            .bars()
            .iter()
            .filter(|b| fixed.address(b.index()).is_none())
            .collect();
        todo.sort_by_key(|b| (std::cmp::Reverse(b.guest_size()), b.index()));
        for b in todo {
            let windows: &[(u64, u64)] = match b.kind() {
                BarKind::Io => &[IO_WINDOW],
                BarKind::Memory32 => &[MMIO32_WINDOW],
                BarKind::Memory64 => &[MMIO32_WINDOW, MMIO64_WINDOW],
            };
            let taken: Vec<(u64, u64)> = placed
                .addresses
                .iter()
                .filter_map(|(&i, &a)| {
                    let other = plan.bar(i)?;
                    (other.kind().is_memory() == b.kind().is_memory())
                        .then(|| (a, a.saturating_add(other.guest_size())))
                })
                .collect();
            let address = windows
                .iter()
                .find_map(|&w| lowest_free(w, b.guest_size(), &taken))
                .ok_or(PlacementError::NoRoom {
                    bar: b.index(),
                    size: b.guest_size(),
                })?;
            placed.set(b.index(), address);
        }
        placed.validate(plan)?;
        Ok(placed)
    }

    /// Checks that every BAR of `plan` is placed, naturally aligned, within what it can decode,
    /// and overlaps no other BAR of the same space.
    pub fn validate(&self, plan: &DevicePlan) -> Result<(), PlacementError> {
        for &bar in self.addresses.keys() {
            if plan.bar(bar).is_none() {
                return Err(PlacementError::UnknownBar { bar });
            }
        }
        let mut spans: Vec<(u8, bool, u64, u64)> = Vec::new();
        for b in plan.bars() {
            let bar = b.index();
            let address = self.address(bar).ok_or(PlacementError::Missing { bar })?;
            let size = b.guest_size();
            if address % size != 0 {
                return Err(PlacementError::Misaligned { bar, address, size });
            }
            let end = address.checked_add(size);
            let limit = match b.kind() {
                BarKind::Io => (1 << 16, "the 64 KiB I/O port space"),
                BarKind::Memory32 => (1 << 32, "below 4 GiB (32-bit BAR)"),
                BarKind::Memory64 => (u64::MAX, "the 64-bit address space"),
            };
            if end.is_none_or(|e| e > limit.0) {
                return Err(PlacementError::OutOfRange {
                    bar,
                    address,
                    size,
                    limit: limit.1,
                });
            }
            spans.push((bar, b.kind().is_memory(), address, address + size));
        }
        for (i, a) in spans.iter().enumerate() {
            for b in &spans[..i] {
                if a.1 == b.1 && a.2 < b.3 && b.2 < a.3 {
                    return Err(PlacementError::Overlap {
                        bar: a.0,
                        address: a.2,
                        other: b.0,
                        other_address: b.2,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The lowest `size`-aligned address in `window` where `size` bytes overlap nothing in `taken`.
fn lowest_free(window: (u64, u64), size: u64, taken: &[(u64, u64)]) -> Option<u64> {
    let align_up = |x: u64| x.checked_next_multiple_of(size);
    let mut address = align_up(window.0)?;
    loop {
        let end = address.checked_add(size)?;
        if end > window.1 {
            return None;
        }
        match taken.iter().find(|t| t.0 < end && address < t.1) {
            Some(t) => address = align_up(t.1)?,
            None => return Some(address),
        }
    }
}

/// A size in the largest binary unit that divides it (`4 KiB`, `1 MiB`, `48 B`), as long as that
/// takes at most five digits; larger odd sizes are scaled to the largest unit they reach, with two
/// decimals cut (not rounded) so they never overstate: 64 GiB less a page is `63.99 GiB`, not
/// `67108860 KiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
        (1, "B"),
    ];
    let (exact_unit, exact_name) = UNITS
        .into_iter()
        .find(|&(unit, _)| bytes % unit == 0 && (bytes >= unit || unit == 1))
        .unwrap_or((1, "B"));
    if bytes / exact_unit < 100_000 {
        return format!("{} {exact_name}", bytes / exact_unit);
    }
    let (unit, name) = UNITS
        .into_iter()
        .find(|&(unit, _)| bytes >= unit)
        .unwrap_or((1, "B"));
    let hundredths = (u128::from(bytes) * 100 / u128::from(unit)) as u64;
    format!("{}.{:02} {name}", hundredths / 100, hundredths % 100)
}

/// One guest range of a placed plan.
struct Line<'a> {
    start: u64,
    end: u64,
    bar: &'a BarPlan,
    offset: u64,
    kind: SegmentKind,
}

/// The ranges of all BARs of one space (memory or I/O), by guest address.
fn lines<'a>(plan: &'a DevicePlan, placement: &GuestPlacement, memory: bool) -> Vec<Line<'a>> {
    let mut out = Vec::new();
    for b in plan
        .bars()
        .iter()
        .filter(|b| b.kind().is_memory() == memory)
    {
        let Some(base) = placement.address(b.index()) else {
            continue;
        };
        for s in b.segments() {
            out.push(Line {
                start: base + s.offset,
                end: base + s.end() - 1,
                bar: b,
                offset: s.offset,
                kind: s.kind,
            });
        }
    }
    out.sort_by_key(|l| l.start);
    out
}

/// The name of one range of a BAR, the same in a plan (`refvmm plan`), in a running VMM's flat
/// view and in its exit counters, so a range is recognised wherever it shows up:
/// `DEV BAR0 mmap +0x1000` (mapped), `DEV BAR0 msix-table`, `DEV BAR0 msix-pba` (emulated), and
/// `DEV BAR0 +0x2410 (reason)` for any other trapped range.
pub fn segment_name(device: &str, bar: u8, offset: u64, kind: SegmentKind) -> String {
    match kind {
        SegmentKind::Map { .. } => format!("{device} BAR{bar} mmap +{offset:#x}"),
        SegmentKind::Trap {
            reason: TrapReason::MsixTable,
        } => format!("{device} BAR{bar} msix-table"),
        SegmentKind::Trap {
            reason: TrapReason::MsixPba,
        } => format!("{device} BAR{bar} msix-pba"),
        SegmentKind::Trap { reason } => {
            format!("{device} BAR{bar} +{offset:#x} ({})", reason.description())
        }
    }
}

/// What backs a range in QEMU's `info mtree -f` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtreeKind {
    /// Guest RAM (`ram`).
    Ram,
    /// Device memory mapped into the guest, as a VFIO BAR mmap is (`ramd`): no exit.
    RamDevice,
    /// Read-only memory whose writes trap (`romd`).
    RomDevice,
    /// A trapped range (`i/o`): every access exits to the VMM.
    Io,
}

impl MtreeKind {
    /// The word QEMU prints for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            MtreeKind::Ram => "ram",
            MtreeKind::RamDevice => "ramd",
            MtreeKind::RomDevice => "romd",
            MtreeKind::Io => "i/o",
        }
    }
}

/// One line of QEMU's `info mtree -f`: `  START-END (prio 0, KIND): NAME`, 16 hex digits and
/// an inclusive end, so engineers who know QEMU's view read ours without a legend.
pub fn mtree_line(start: u64, end_inclusive: u64, kind: MtreeKind, name: &str) -> String {
    format!(
        "  {start:016x}-{end_inclusive:016x} (prio 0, {}): {name}",
        kind.as_str()
    )
}

/// Renders `plan` placed at `placement` as QEMU `info mtree -f` prints it: a `FlatView` for
/// the memory address space and, if the device has I/O BARs, one for the I/O space.
/// `device` names the regions (QEMU uses the host BDF, e.g. `0000:01:00.0`).
pub fn render_mtree(
    plan: &DevicePlan,
    placement: &GuestPlacement,
    device: &str,
) -> Result<String, PlacementError> {
    placement.validate(plan)?;
    let mut out = String::new();
    let spaces = [(true, "memory", "system"), (false, "I/O", "io")];
    let mut counter = 0;
    for (memory, as_name, root) in spaces {
        let lines = lines(plan, placement, memory);
        if lines.is_empty() && !memory {
            continue;
        }
        let _ = writeln!(out, "FlatView #{counter}");
        counter += 1;
        let _ = writeln!(out, " AS \"{as_name}\", root: {root}");
        let _ = writeln!(out, " Root memory region: {root}");
        if lines.is_empty() {
            let _ = writeln!(out, "  No rendered FlatView");
        }
        for l in &lines {
            let kind = if matches!(l.kind, SegmentKind::Map { .. }) {
                MtreeKind::RamDevice
            } else {
                MtreeKind::Io
            };
            let name = segment_name(device, l.bar.index(), l.offset, l.kind);
            let _ = writeln!(out, "{}", mtree_line(l.start, l.end, kind, &name));
        }
        out.push('\n');
    }
    Ok(out)
}

/// Renders one row per trapped range: BAR, offsets in the BAR, guest addresses, size, reason
/// and who handles it.
pub fn render_trap_table(
    plan: &DevicePlan,
    placement: &GuestPlacement,
) -> Result<String, PlacementError> {
    placement.validate(plan)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<4} {:<21} {:<37} {:>9}  {:<10} REASON",
        "BAR", "BAR OFFSETS", "GUEST ADDRESSES", "SIZE", "HANDLED BY"
    );
    if plan.bars().iter().all(|b| b.trapped().next().is_none()) {
        out.push_str("(nothing is trapped)\n");
    }
    for b in plan.bars() {
        let base = placement.address(b.index()).unwrap_or(0);
        for s in b.trapped() {
            let Some(reason) = s.trap_reason() else {
                continue;
            };
            let handler = match reason.handling() {
                crate::TrapHandling::MsixTable | crate::TrapHandling::MsixPba => "emulation",
                crate::TrapHandling::Device => "device",
                crate::TrapHandling::Unbacked => "none",
            };
            let _ = writeln!(
                out,
                "{:<4} {:<21} {:<37} {:>9}  {:<10} {}",
                b.index(),
                format!("{:#x}-{:#x}", s.offset, s.end() - 1),
                format!("{:016x}-{:016x}", base + s.offset, base + s.end() - 1),
                human_size(s.len),
                handler,
                reason
            );
        }
    }
    Ok(out)
}

/// Renders one line per BAR: kind, sizes, mapped bytes and pages, trapped bytes.
pub fn render_summary(plan: &DevicePlan) -> String {
    let page = plan.page_size();
    let mut out = String::new();
    for b in plan.bars() {
        let size = if b.is_added() {
            format!("{} added by the VMM", human_size(b.guest_size()))
        } else if b.guest_size() != b.host_size() {
            format!(
                "{} on the host, {} in the guest",
                human_size(b.host_size()),
                human_size(b.guest_size())
            )
        } else {
            human_size(b.guest_size())
        };
        let prefetchable = if b.prefetchable() {
            " prefetchable"
        } else {
            ""
        };
        let _ = write!(
            out,
            "BAR{} ({}{prefetchable}, {size}): ",
            b.index(),
            b.kind()
        );
        if b.kind().is_memory() {
            let mapped = b.mapped_bytes();
            let _ = write!(
                out,
                "mapped {} in {} ({} of {page}), ",
                human_size(mapped),
                plural(b.mapped().count(), "range"),
                plural((mapped / page.bytes()) as usize, "page"),
            );
        }
        let _ = writeln!(
            out,
            "trapped {} in {}",
            human_size(b.trapped_bytes()),
            plural(b.trapped().count(), "range")
        );
    }
    out
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(48), "48 B");
        assert_eq!(human_size(0x1000), "4 KiB");
        assert_eq!(human_size(0x1800), "6 KiB");
        assert_eq!(human_size(0x1801), "6145 B");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size((64 << 30) - 4096), "63.99 GiB");
        assert_eq!(human_size(1_000_001), "976.56 KiB");
        assert_eq!(human_size(u64::MAX), "16777215.99 TiB");
    }

    #[test]
    fn lowest_free_skips_taken() {
        let w = (0x1000, 0x10000);
        assert_eq!(lowest_free(w, 0x1000, &[]), Some(0x1000));
        assert_eq!(lowest_free(w, 0x4000, &[(0x4000, 0x5000)]), Some(0x8000));
        assert_eq!(lowest_free(w, 0x10000, &[]), None);
    }
}
