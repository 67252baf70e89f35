//! MSI-X relocation: moving the table and PBA to space the VMM adds to the device.
//!
//! When the table shares a host page with registers the driver uses on its fast path (Mellanox
//! MT27500 VFs, some NVMe SSDs, every device on a 64 KiB page host), trapping that page costs a
//! VM exit per register access. Relocation points the guest-visible MSI-X capability at space no
//! device register shares, so the device's own pages can all be mapped. This follows QEMU's
//! `vfio_pci_relocate_msix`:
//!
//! - the area is `table + PBA`, rounded up to whole host pages, then to a power of two (BARs
//!   are powers of two);
//! - into an unused BAR slot: a new prefetchable BAR of exactly that size, 64-bit when the next
//!   slot is free too (QEMU's MSI-X emulation has no read side effects, so prefetchable is fine);
//! - into an existing memory BAR: the BAR doubles (at least to twice the area) and the
//!   structures start at its upper half, which therefore never shares a page with a register;
//! - never into an I/O BAR, the upper half of a 64-bit BAR, a 32-bit BAR above 1 GiB (it could
//!   not double), or a BAR of 8 GiB or more (the 32-bit Table Offset register could not point
//!   at its upper half).
//!
//! QEMU's `auto` mode is a lookup table of known devices that is empty; ours picks the first
//! free slot, or else doubles the table's BAR, and the planner keeps the result only if it maps
//! more bytes than not relocating.

use pci_config::BarKind;

use crate::layout::{BAR_SLOTS, HostBar, MsixInfo};
use crate::page::PageSize;
use crate::plan::PlanError;

/// How the relocated MSI-X area was added to the guest-visible device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelocationKind {
    /// A BAR slot the device does not implement became a new BAR of this kind.
    NewBar {
        /// `Memory32` or `Memory64`.
        kind: BarKind,
    },
    /// An existing memory BAR was enlarged; the device's registers keep its lower part.
    ExtendedBar {
        /// The BAR size before doubling (the host region size).
        original_size: u64,
    },
}

/// Where the planner moved the MSI-X table and PBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Relocation {
    /// The guest-visible BAR that now holds both structures.
    pub bar: u8,
    /// A new BAR, or an extended one.
    pub kind: RelocationKind,
    /// Guest-visible size of that BAR.
    pub bar_size: u64,
    /// Offset of the MSI-X area in that BAR; the table starts here and the PBA follows it.
    pub offset: u64,
    /// Size of the MSI-X area (page aligned, power of two).
    pub size: u64,
}

/// The BARs indexed by slot, as validated by the planner.
pub(crate) type Slots<'a> = [Option<&'a HostBar>; BAR_SLOTS as usize];

/// Size of the relocated area: table and PBA, whole host pages, power of two.
pub(crate) fn area_size(msix: &MsixInfo, page: PageSize) -> u64 {
    page.align_up(msix.table_len() + msix.pba_len())
        .next_power_of_two()
}

/// Whether slot `i` is the upper half of a 64-bit BAR.
fn is_upper_half(slots: &Slots<'_>, i: usize) -> bool {
    i > 0 && slots[i - 1].is_some_and(|b| b.kind == BarKind::Memory64)
}

/// Relocation into slot `bar`, or why that slot cannot take the structures.
pub(crate) fn into_bar(
    slots: &Slots<'_>,
    msix: &MsixInfo,
    page: PageSize,
    bar: u8,
) -> Result<Relocation, PlanError> {
    let refuse = |why: String| PlanError::RelocationTarget { bar, why };
    let i = usize::from(bar);
    if bar >= BAR_SLOTS {
        return Err(refuse("a type 0 header only has BARs 0 to 5".into()));
    }
    let size = area_size(msix, page);
    match slots[i] {
        Some(b) if b.kind == BarKind::Io => Err(refuse(
            "it is an I/O BAR; MSI-X structures must be in memory space".into(),
        )),
        Some(b) if b.kind == BarKind::Memory32 && b.size > 1 << 30 => Err(refuse(format!(
            "it is a 32-bit BAR of {:#x} bytes and cannot double past the 2 GiB limit; pick a \
             64-bit BAR or a free slot",
            b.size
        ))),
        Some(b) => {
            let bar_size = b
                .size
                .max(size)
                .checked_mul(2)
                .ok_or_else(|| refuse(format!("doubling {:#x} bytes overflows", b.size)))?;
            // The Table Offset register is 32 bits wide: the upper half must start below 4 GiB.
            if bar_size / 2 > 0xffff_fff8 {
                return Err(refuse(format!(
                    "the table would start at {:#x}, past what the 32-bit Table Offset register \
                     can hold; pick a free slot",
                    bar_size / 2
                )));
            }
            Ok(Relocation {
                bar,
                kind: RelocationKind::ExtendedBar {
                    original_size: b.size,
                },
                bar_size,
                offset: bar_size / 2,
                size,
            })
        }
        None if is_upper_half(slots, i) => Err(refuse(format!(
            "it is the upper half of 64-bit BAR {}",
            i - 1
        ))),
        None => {
            let next_free = i + 1 < usize::from(BAR_SLOTS) && slots[i + 1].is_none();
            let kind = if next_free {
                BarKind::Memory64
            } else {
                BarKind::Memory32
            };
            Ok(Relocation {
                bar,
                kind: RelocationKind::NewBar { kind },
                bar_size: size,
                offset: 0,
                size,
            })
        }
    }
}

/// The relocation `auto` tries: the first free slot, else doubling the table's BAR.
pub(crate) fn auto_candidate(
    slots: &Slots<'_>,
    msix: &MsixInfo,
    page: PageSize,
) -> Option<Relocation> {
    (0..BAR_SLOTS)
        .find(|&i| slots[usize::from(i)].is_none() && !is_upper_half(slots, usize::from(i)))
        .and_then(|i| into_bar(slots, msix, page, i).ok())
        .or_else(|| into_bar(slots, msix, page, msix.table_bar).ok())
}
