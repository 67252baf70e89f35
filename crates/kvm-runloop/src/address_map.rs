//! One view of a VM's guest-physical address space and I/O port space, shared by its
//! [`MemorySlots`](crate::MemorySlots) and its [`DeviceBus`](crate::DeviceBus).
//!
//! # Why one map
//! KVM serves a guest access from a memory slot before the access could ever exit to a device
//! on the bus, and ports the in-kernel irqchip serves (the PIC, the ELCR) never exit at all. So
//! the slot table and the bus each refusing overlaps *among themselves* is not enough: a slot
//! placed over a trapped range silently steals its accesses (a BAR over another device's MSI-X
//! table), and a device put on a port the kernel serves is never reached. Every placement (a
//! slot, a trapped MMIO or PIO range, a range the VMM or KVM owns) claims its range here, and a
//! claim that overlaps any other one is refused with both names.
//!
//! Claims are made under this map's lock only (never held while calling out), before the
//! ioctl or bus change they stand for, and released if that change fails: two vCPUs placing two
//! devices at once can never both win the same range.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Which of the VM's two address spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// Guest-physical memory: slots and trapped MMIO ranges.
    Memory,
    /// x86 I/O ports: trapped PIO ranges and the ports KVM serves in the kernel.
    Io,
}

impl Space {
    fn name(self) -> &'static str {
        match self {
            Space::Memory => "memory",
            Space::Io => "I/O",
        }
    }
}

/// What holds a claimed range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A KVM memory slot.
    Slot(u32),
    /// A trapped range on the device bus.
    Bus,
    /// Reserved by the VMM (its own windows) or by KVM (ports the in-kernel irqchip serves).
    Reserved,
}

/// One claimed range, as [`AddressMap::claims`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Its space.
    pub space: Space,
    /// First address or port.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// The name it was claimed with.
    pub name: String,
    /// What holds it.
    pub holder: Holder,
}

#[derive(Debug, Clone)]
struct Entry {
    end: u64,
    name: String,
    holder: Holder,
}

#[derive(Default)]
struct Spaces {
    memory: BTreeMap<u64, Entry>,
    io: BTreeMap<u64, Entry>,
}

impl Spaces {
    fn map(&mut self, space: Space) -> &mut BTreeMap<u64, Entry> {
        match space {
            Space::Memory => &mut self.memory,
            Space::Io => &mut self.io,
        }
    }
}

/// The claimed ranges of one VM: see the module docs. Get the VM's from
/// [`Vm::address_map`](crate::Vm::address_map).
#[derive(Default)]
pub struct AddressMap {
    spaces: Mutex<Spaces>,
}

impl std::fmt::Debug for AddressMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressMap").finish_non_exhaustive()
    }
}

impl AddressMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `[start, start + size)` of `space` for the VMM or KVM (a window of its own, ports
    /// the kernel serves): no slot or device may be placed over it from then on.
    pub fn reserve(&self, space: Space, start: u64, size: u64, name: &str) -> Result<()> {
        self.claim(space, start, size, name, Holder::Reserved)
    }

    /// Every claim of `space`, by address.
    pub fn claims(&self, space: Space) -> Vec<Claim> {
        self.lock()
            .map(space)
            .iter()
            .map(|(start, e)| Claim {
                space,
                start: *start,
                end: e.end,
                name: e.name.clone(),
                holder: e.holder,
            })
            .collect()
    }

    /// The claim covering `addr`, if any.
    pub fn find(&self, space: Space, addr: u64) -> Option<Claim> {
        self.lock()
            .map(space)
            .range(..=addr)
            .next_back()
            .filter(|(_, e)| addr < e.end)
            .map(|(start, e)| Claim {
                space,
                start: *start,
                end: e.end,
                name: e.name.clone(),
                holder: e.holder,
            })
    }

    pub(crate) fn claim(
        &self,
        space: Space,
        start: u64,
        size: u64,
        name: &str,
        holder: Holder,
    ) -> Result<()> {
        let mut spaces = self.lock();
        let map = spaces.map(space);
        let end = check_free(map, space, None, name, start, size)?;
        map.insert(
            start,
            Entry {
                end,
                name: name.to_string(),
                holder,
            },
        );
        Ok(())
    }

    /// Moves the claim at `from` to `to`, checked against every other claim (not its own old
    /// place: a range may move by less than its length).
    pub(crate) fn relocate(&self, space: Space, from: u64, to: u64) -> Result<()> {
        let mut spaces = self.lock();
        let map = spaces.map(space);
        let Some(entry) = map.get(&from).cloned() else {
            // Not claimed here (a bus or slot table made without this map's knowledge cannot
            // exist: both claim before they change). Nothing to move.
            return Ok(());
        };
        let end = check_free(map, space, Some(from), &entry.name, to, entry.end - from)?;
        map.remove(&from);
        map.insert(to, Entry { end, ..entry });
        Ok(())
    }

    /// Releases the claim at `start`, if there is one.
    pub(crate) fn release(&self, space: Space, start: u64) {
        self.lock().map(space).remove(&start);
    }

    fn lock(&self) -> MutexGuard<'_, Spaces> {
        // Every change is one insert or remove after all checks: a panic cannot tear it.
        self.spaces.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The end of `[start, start + size)` if it is inside `space` and overlaps no claim but the
/// one at `skip`.
fn check_free(
    map: &BTreeMap<u64, Entry>,
    space: Space,
    skip: Option<u64>,
    name: &str,
    start: u64,
    size: u64,
) -> Result<u64> {
    let limit = match space {
        Space::Memory => u64::MAX,
        Space::Io => 1 << 16,
    };
    let end = start
        .checked_add(size)
        .filter(|&e| size > 0 && e <= limit)
        .ok_or_else(|| Error::AddressOutOfRange {
            space: space.name(),
            name: name.into(),
            start,
            size,
        })?;
    // Claims are disjoint: only those starting before `end` can overlap, and the one starting
    // last among them ends last, except for a skipped one, so look at two.
    for (other_start, other) in map.range(..end).rev().take(2) {
        if Some(*other_start) == skip {
            continue;
        }
        if other.end > start {
            return Err(Error::AddressInUse {
                space: space.name(),
                name: name.into(),
                start,
                end,
                other_name: other.name.clone(),
                other_start: *other_start,
                other_end: other.end,
            });
        }
        break;
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_are_refused_across_holders_and_moves_skip_their_own_place() {
        let m = AddressMap::new();
        m.claim(Space::Memory, 0x1000, 0x3000, "bar", Holder::Bus)
            .unwrap();
        m.claim(Space::Memory, 0x8000, 0x1000, "slot", Holder::Slot(3))
            .unwrap();
        let e = m
            .claim(Space::Memory, 0x3000, 0x1000, "over", Holder::Slot(4))
            .unwrap_err();
        assert!(e.to_string().contains("\"bar\""), "{e}");
        // Moving by less than its length works; into another claim does not.
        m.relocate(Space::Memory, 0x1000, 0x2000).unwrap();
        assert!(m.relocate(Space::Memory, 0x2000, 0x6000).is_err());
        assert_eq!(m.find(Space::Memory, 0x4fff).unwrap().name, "bar");
        // Ports end at 64 KiB; the same number in memory space is another place.
        assert!(m.reserve(Space::Io, 0xffff, 2, "past").is_err());
        m.reserve(Space::Io, 0x2000, 2, "pic").unwrap();
        m.release(Space::Memory, 0x2000);
        assert!(m.find(Space::Memory, 0x2000).is_none());
    }

    #[test]
    fn a_claim_between_two_others_is_checked_against_both() {
        let m = AddressMap::new();
        m.reserve(Space::Memory, 0, 0x1000, "a").unwrap();
        m.reserve(Space::Memory, 0x3000, 0x1000, "b").unwrap();
        m.reserve(Space::Memory, 0x1000, 0x2000, "c").unwrap();
        m.release(Space::Memory, 0x1000);
        assert!(m.reserve(Space::Memory, 0x800, 0x1000, "d").is_err());
        assert!(m.reserve(Space::Memory, 0x2800, 0x1000, "e").is_err());
        // A move that skips its own old claim still sees the one before it.
        m.reserve(Space::Memory, 0x1000, 0x1000, "f").unwrap();
        assert!(m.relocate(Space::Memory, 0x1000, 0x800).is_err());
    }
}
