//! Identity mappings past the boot page tables, for memory BARs above 4 GiB.
//!
//! The boot stubs identity-map 0-4 GiB in 2 MiB pages (boot.rs), and the guests place BARs
//! there themselves. With `bars=keep` they use the addresses firmware or the VMM chose instead,
//! and a 64-bit BAR may lie above 4 GiB: refvmm's 64-bit window starts at 512 GiB, and SeaBIOS
//! moves 64-bit BARs above 4 GiB when the 32-bit window is too small. Touching such a BAR
//! through the boot tables is a page fault. [`map_uncached`] adds the missing identity mapping,
//! uncached like 3-4 GiB, taking the tables it needs from a small pool.
//!
//! The walk is written against [`TableMemory`], so host tests run it over tables in a map; the
//! guest's own tables are behind `map_mmio` (image only).

use core::fmt;

/// Where the boot page tables' identity map ends.
pub const BOOT_MAPPED_END: u64 = 1 << 32;

/// Where identity mapping ends: with 4-level paging a virtual address must be canonical, so an
/// address that is its own virtual address stays below 2^47.
pub const IDENTITY_LIMIT: u64 = 1 << 47;

/// The page size of these mappings, as of the boot map.
const LARGE_PAGE: u64 = 2 << 20;

// Entry bits (Intel SDM vol. 3, 4.5, tables 4-15 to 4-18).
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// Page-table memory: 4 KiB tables of 512 entries, each named by its physical address.
pub trait TableMemory {
    /// Entry `index` (0-511) of the table at `table`.
    fn entry(&self, table: u64, index: usize) -> u64;
    /// Sets entry `index` of the table at `table`.
    fn set_entry(&mut self, table: u64, index: usize, entry: u64);
    /// A zeroed page for a new table, or `None` when none is left.
    fn new_table(&mut self) -> Option<u64>;
}

/// Why a range could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// The range reaches past [`IDENTITY_LIMIT`].
    BeyondIdentityLimit {
        /// Start of the range.
        start: u64,
        /// Its size.
        size: u64,
    },
    /// The pool of table pages ran out; the range is mapped up to `mapped_to`.
    OutOfTablePages {
        /// Start of the range.
        start: u64,
        /// Its size.
        size: u64,
        /// Where the mapping stopped.
        mapped_to: u64,
    },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MapError::BeyondIdentityLimit { start, size } => write!(
                f,
                "{start:#x}+{size:#x} reaches past {IDENTITY_LIMIT:#x}, beyond what 4-level paging can identity-map"
            ),
            MapError::OutOfTablePages {
                start,
                size,
                mapped_to,
            } => write!(
                f,
                "mapping {start:#x}+{size:#x} ran out of page-table pages at {mapped_to:#x}"
            ),
        }
    }
}

/// What an entry leads to.
enum Next {
    /// A table of the next level.
    Table(u64),
    /// A large page that maps the whole range of the entry already.
    Mapped,
}

/// The table entry `index` of `table` points to, made from a new page if the entry is empty.
fn descend(mem: &mut impl TableMemory, table: u64, index: usize) -> Option<Next> {
    let e = mem.entry(table, index);
    if e & PRESENT == 0 {
        let next = mem.new_table()?;
        mem.set_entry(table, index, next | PRESENT | WRITABLE);
        Some(Next::Table(next))
    } else if e & PAGE_SIZE_BIT != 0 {
        Some(Next::Mapped)
    } else {
        Some(Next::Table(e & ADDRESS))
    }
}

fn index(addr: u64, shift: u32) -> usize {
    (addr >> shift & 511) as usize
}

/// Identity-maps `[start, start + size)` uncached (PCD|PWT, like the boot map's 3-4 GiB) in
/// 2 MiB pages, in the 4-level tables whose PML4 is at `pml4`. What is mapped already stays as
/// it is. Returns how many 2 MiB pages it added.
pub fn map_uncached(
    mem: &mut impl TableMemory,
    pml4: u64,
    start: u64,
    size: u64,
) -> Result<u64, MapError> {
    let end = start
        .checked_add(size)
        .filter(|&end| end <= IDENTITY_LIMIT)
        .ok_or(MapError::BeyondIdentityLimit { start, size })?;
    let mut added = 0;
    let mut page = start & !(LARGE_PAGE - 1);
    while page < end {
        let out_of_pages = MapError::OutOfTablePages {
            start,
            size,
            mapped_to: page.max(start),
        };
        let pdpt = match descend(mem, pml4, index(page, 39)).ok_or(out_of_pages)? {
            Next::Table(t) => t,
            // Not in a PML4 (its PS bit is reserved), but skipping is what it would mean.
            Next::Mapped => {
                page = (page | ((1 << 39) - 1)) + 1;
                continue;
            }
        };
        let pd = match descend(mem, pdpt, index(page, 30)).ok_or(out_of_pages)? {
            Next::Table(t) => t,
            Next::Mapped => {
                page = (page | ((1 << 30) - 1)) + 1;
                continue;
            }
        };
        let i = index(page, 21);
        if mem.entry(pd, i) & PRESENT == 0 {
            let entry = page | PRESENT | WRITABLE | WRITE_THROUGH | CACHE_DISABLE | PAGE_SIZE_BIT;
            mem.set_entry(pd, i, entry);
            added += 1;
        }
        page += LARGE_PAGE;
    }
    Ok(added)
}

#[cfg(all(feature = "image", not(test)))]
mod image {
    use core::cell::UnsafeCell;
    use core::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::pci::{Bar, Bars};

    /// Table pages for mappings above 4 GiB: a PDPT and a PD for each of two BARs far apart (in
    /// two 512 GiB regions, such as refvmm's 64-bit window and above), or PDs for up to 3 GiB of
    /// BARs in one region. More than that is an error, not a fault.
    const POOL_PAGES: usize = 4;

    #[repr(C, align(4096))]
    struct Pool(UnsafeCell<[[u64; 512]; POOL_PAGES]>);
    // SAFETY: one vCPU, and only `map_mmio` (never an interrupt stub) touches the pool.
    unsafe impl Sync for Pool {}
    static POOL: Pool = Pool(UnsafeCell::new([[0; 512]; POOL_PAGES]));
    static POOL_USED: AtomicUsize = AtomicUsize::new(0);

    /// The tables the CPU uses: identity-mapped (they are in the image or in `.bss`, below 4 MiB),
    /// so a table's address is also its pointer.
    struct LiveTables;

    impl TableMemory for LiveTables {
        fn entry(&self, table: u64, index: usize) -> u64 {
            // SAFETY: `table` is a page-table page (from CR3 or an entry), identity-mapped;
            // `index` < 512.
            unsafe { (table as *const u64).add(index).read_volatile() }
        }

        fn set_entry(&mut self, table: u64, index: usize, entry: u64) {
            // SAFETY: as above; the entries written were empty, so no mapping in use changes.
            unsafe { (table as *mut u64).add(index).write_volatile(entry) }
        }

        fn new_table(&mut self) -> Option<u64> {
            let used = POOL_USED.load(Ordering::SeqCst);
            if used == POOL_PAGES {
                return None;
            }
            POOL_USED.store(used + 1, Ordering::SeqCst);
            // SAFETY: page `used` of the pool is handed out once, now; nothing else refers to it.
            let page = unsafe { &mut (*POOL.0.get())[used] };
            page.fill(0);
            Some(page.as_ptr() as u64)
        }
    }

    /// Identity-maps the MMIO range `[start, start + size)` uncached where the guest's page tables
    /// do not map it yet (see [`map_uncached`]); returns the 2 MiB pages added.
    pub fn map_mmio(start: u64, size: u64) -> Result<u64, MapError> {
        let cr3: u64;
        // SAFETY: reading CR3 has no side effects (ring 0).
        unsafe {
            core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags))
        }
        let added = map_uncached(&mut LiveTables, cr3 & ADDRESS, start, size)?;
        // Reloading CR3 drops any paging-structure cache entry from before (SDM vol. 3, 4.10.4).
        // SAFETY: the same tables, which still map everything they mapped.
        unsafe { core::arch::asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags)) }
        Ok(added)
    }

    /// Maps every memory BAR in `bars` that reaches above [`BOOT_MAPPED_END`] (see
    /// [`map_mmio`]), telling `mapped` each one and the 2 MiB pages added; on failure returns
    /// the BAR and why.
    pub fn map_bars_above_4g(
        bars: &Bars,
        mut mapped: impl FnMut(&Bar, u64),
    ) -> Result<(), (Bar, MapError)> {
        let high = bars
            .iter()
            .flatten()
            .filter(|b| b.is_memory() && b.address + b.size > BOOT_MAPPED_END);
        for b in high {
            let pages = map_mmio(b.address, b.size).map_err(|e| (*b, e))?;
            mapped(b, pages);
        }
        Ok(())
    }
}

#[cfg(all(feature = "image", not(test)))]
pub use image::{map_bars_above_4g, map_mmio};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Tables in a map, laid out as the boot stubs lay them out: a PML4 whose entry 0 leads to a
    /// PDPT whose entries 0-3 lead to PDs of 2 MiB pages, 3-4 GiB uncached.
    struct Tables {
        pages: BTreeMap<u64, [u64; 512]>,
        spare: u64,
    }

    const PML4: u64 = 0x1000;

    impl Tables {
        fn boot(spare: u64) -> Self {
            let mut t = Tables {
                pages: BTreeMap::new(),
                spare,
            };
            for table in [PML4, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000] {
                t.pages.insert(table, [0; 512]);
            }
            t.set_entry(PML4, 0, 0x2000 | PRESENT | WRITABLE);
            for gib in 0..4u64 {
                let pd = 0x3000 + gib * 0x1000;
                t.set_entry(0x2000, gib as usize, pd | PRESENT | WRITABLE);
                for i in 0..512 {
                    let mut e = ((gib << 30) + i * LARGE_PAGE) | PRESENT | WRITABLE | PAGE_SIZE_BIT;
                    if gib == 3 {
                        e |= WRITE_THROUGH | CACHE_DISABLE;
                    }
                    t.set_entry(pd, i as usize, e);
                }
            }
            t
        }

        /// The entry of the 2 MiB page that maps `addr`, if any.
        fn translate(&self, addr: u64) -> Option<u64> {
            let mut table = PML4;
            for shift in [39, 30] {
                let e = self.entry(table, index(addr, shift));
                if e & PRESENT == 0 {
                    return None;
                }
                table = e & ADDRESS;
            }
            Some(self.entry(table, index(addr, 21))).filter(|e| e & PRESENT != 0)
        }

        /// Whether `[start, start + size)` is identity-mapped, uncached, writable.
        fn maps_uncached(&self, start: u64, size: u64) -> bool {
            (start..start + size).step_by(0x1000).all(|a| {
                self.translate(a).is_some_and(|e| {
                    e & ADDRESS == a & !(LARGE_PAGE - 1)
                        && e & (WRITABLE | WRITE_THROUGH | CACHE_DISABLE | PAGE_SIZE_BIT)
                            == WRITABLE | WRITE_THROUGH | CACHE_DISABLE | PAGE_SIZE_BIT
                })
            })
        }
    }

    impl TableMemory for Tables {
        fn entry(&self, table: u64, index: usize) -> u64 {
            self.pages[&table][index]
        }

        fn set_entry(&mut self, table: u64, index: usize, entry: u64) {
            self.pages.get_mut(&table).unwrap()[index] = entry;
        }

        fn new_table(&mut self) -> Option<u64> {
            if self.spare == 0 {
                return None;
            }
            self.spare -= 1;
            let at = 0x10_0000 + self.pages.len() as u64 * 0x1000;
            self.pages.insert(at, [0; 512]);
            Some(at)
        }
    }

    /// refvmm's 64-bit window starts at 512 GiB: a new PDPT and PD there. Before this module,
    /// nothing mapped it and the guest's first access was a page fault.
    #[test]
    fn bar_in_refvmms_64_bit_window_gets_mapped() {
        let mut t = Tables::boot(4);
        let bar = (0x80_0000_0000, 0x4000);
        assert!(t.translate(bar.0).is_none());
        assert_eq!(map_uncached(&mut t, PML4, bar.0, bar.1), Ok(1));
        assert!(t.maps_uncached(bar.0, bar.1));
        assert_eq!(t.spare, 2);
        // Mapped already: nothing more.
        assert_eq!(map_uncached(&mut t, PML4, bar.0 + 0x1000, 0x1000), Ok(0));
        assert_eq!(t.spare, 2);
    }

    /// SeaBIOS's high placement, just above 4 GiB: the boot PDPT has room, only a PD is new.
    #[test]
    fn bar_just_above_4_gib_uses_the_boot_pdpt() {
        let mut t = Tables::boot(1);
        assert_eq!(map_uncached(&mut t, PML4, 0x1_0000_0000, 0x4000), Ok(1));
        assert!(t.maps_uncached(0x1_0000_0000, 0x4000));
        assert_eq!(t.entry(0x2000, 4) & PRESENT, PRESENT);
    }

    #[test]
    fn bar_below_4_gib_is_left_as_the_boot_tables_map_it() {
        let mut t = Tables::boot(0);
        let before = t.pages.clone();
        assert_eq!(map_uncached(&mut t, PML4, 0xc000_0000, 0x4000), Ok(0));
        assert_eq!(t.pages, before);
    }

    /// A BAR across a 1 GiB boundary needs two PDs; one across 4 GiB maps only its upper part.
    #[test]
    fn ranges_across_boundaries() {
        let mut t = Tables::boot(2);
        let (start, size) = (0x1_4000_0000 - 0x20_0000, 0x40_0000);
        assert_eq!(map_uncached(&mut t, PML4, start, size), Ok(2));
        assert!(t.maps_uncached(start, size));
        let mut t = Tables::boot(1);
        assert_eq!(map_uncached(&mut t, PML4, 0xffe0_0000, 0x40_0000), Ok(1));
        assert!(t.translate(0x1_0000_0000).is_some());
    }

    #[test]
    fn what_cannot_be_mapped_is_an_error() {
        let mut t = Tables::boot(4);
        assert_eq!(
            map_uncached(&mut t, PML4, IDENTITY_LIMIT - 0x1000, 0x2000),
            Err(MapError::BeyondIdentityLimit {
                start: IDENTITY_LIMIT - 0x1000,
                size: 0x2000
            })
        );
        assert!(map_uncached(&mut t, PML4, u64::MAX - 0xfff, 0x1000).is_err());
        let mut t = Tables::boot(1);
        let e = map_uncached(&mut t, PML4, 0x80_0000_0000, 0x4000).unwrap_err();
        assert_eq!(
            e,
            MapError::OutOfTablePages {
                start: 0x80_0000_0000,
                size: 0x4000,
                mapped_to: 0x80_0000_0000
            }
        );
        assert!(e.to_string().contains("ran out of page-table pages"), "{e}");
    }
}
