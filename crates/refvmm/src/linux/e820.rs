//! The e820 memory map in the zero page: which guest physical ranges are RAM Linux may use, and
//! which it must leave alone. Everything not listed (the 32-bit BAR window, the IOAPIC and local
//! APIC range, the 64-bit BAR window) is a hole Linux treats as I/O space.

use crate::pci::{ECAM_BASE, ECAM_SIZE};

use super::{EBDA_START, HIGHMEM_START};

/// The e820 range types refvmm uses (ACPI 6.5, table 15.312 "Address Range Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    /// `AddressRangeMemory`: RAM.
    Ram = 1,
    /// `AddressRangeReserved`: not RAM and not free for the OS to place resources in.
    Reserved = 2,
}

/// One range of the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Guest physical start.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What it is.
    pub kind: E820Kind,
}

/// The map for guest RAM `ram` (as `run::ram_layout` returns it: low RAM from 0, then RAM at
/// 4 GiB): RAM below the PC's reserved area at 640 KiB, the reserved area up to 1 MiB (EBDA,
/// VGA, BIOS: where the ACPI tables live), RAM from 1 MiB to the end of low RAM, the ECAM window
/// as reserved (Linux uses MCFG's ECAM only where the firmware reserved it, arch/x86/pci/mmconfig-shared.c
/// `pci_mmcfg_reserved`), and RAM above 4 GiB.
pub fn memory_map(ram: &[(u64, u64)]) -> Vec<E820Entry> {
    let entry = |addr, end: u64, kind| E820Entry {
        addr,
        size: end - addr,
        kind,
    };
    let (low_base, low_size) = ram[0];
    debug_assert_eq!(low_base, 0);
    let low_end = low_base + low_size;
    let mut map = vec![
        entry(0, EBDA_START, E820Kind::Ram),
        entry(EBDA_START, HIGHMEM_START, E820Kind::Reserved),
    ];
    if low_end > HIGHMEM_START {
        map.push(entry(HIGHMEM_START, low_end, E820Kind::Ram));
    }
    map.push(entry(ECAM_BASE, ECAM_BASE + ECAM_SIZE, E820Kind::Reserved));
    for &(base, size) in &ram[1..] {
        map.push(entry(base, base + size, E820Kind::Ram));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{MEM32_WINDOW, MEM64_WINDOW};
    use crate::run::ram_layout;

    #[test]
    fn small_vm_map() {
        let map = memory_map(&ram_layout(512 << 20));
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9_fc00,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: 0x9_fc00,
                    size: 0x10_0000 - 0x9_fc00,
                    kind: E820Kind::Reserved
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (512 << 20) - 0x10_0000,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: 0xb000_0000,
                    size: 0x1000_0000,
                    kind: E820Kind::Reserved
                },
            ]
        );
    }

    #[test]
    fn ram_never_covers_the_holes_and_entries_are_sorted() {
        for mib in [64u64, 512, 2816, 4096, 8192] {
            let ram = ram_layout(mib << 20);
            let map = memory_map(&ram);
            let total: u64 = map
                .iter()
                .filter(|e| e.kind == E820Kind::Ram)
                .map(|e| e.size)
                .sum();
            // All of RAM is listed except the 384 KiB PC hole below 1 MiB.
            assert_eq!(total, (mib << 20) - (HIGHMEM_START - EBDA_START));
            for w in map.windows(2) {
                assert!(w[0].addr + w[0].size <= w[1].addr, "{map:x?}");
            }
            for e in map.iter().filter(|e| e.kind == E820Kind::Ram) {
                let end = e.addr + e.size;
                for (hole, hole_end) in [
                    (ECAM_BASE, ECAM_BASE + ECAM_SIZE),
                    MEM32_WINDOW,
                    (0xfec0_0000, 0xff00_0000),
                    MEM64_WINDOW,
                ] {
                    assert!(
                        end <= hole || e.addr >= hole_end,
                        "{e:x?} overlaps {hole:#x}"
                    );
                }
            }
        }
    }
}
