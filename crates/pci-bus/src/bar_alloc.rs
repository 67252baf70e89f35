//! BAR placement at attach, done the way firmware does it: through configuration space only.
//!
//! For each BAR the allocator writes all-ones, reads back the size mask, restores the register
//! (PCI Local Bus 3.0 §6.2.5.1), allocates a naturally aligned range from the right window with
//! vm-allocator's `AddressAllocator`, programs the address, and finally turns on memory and/or
//! I/O decode. Decode is off while sizing, so a device never decodes the transient all-ones
//! address. Because everything goes through [`PciFunction`], the device sees exactly what a BIOS
//! would make it see, and the guest may move the BARs again later.
//!
//! Placement policy: 64-bit prefetchable BARs (GPU and accelerator memory, ivshmem: the large
//! ones) go in the 64-bit window above RAM and 4 GiB, as OVMF and QEMU's `pci-hole64` place
//! them, keeping the scarce 32-bit window for registers; each is naturally aligned, so a BAR of
//! 2 MiB or 1 GiB and more can be mapped with huge pages. Other memory BARs, 64-bit
//! non-prefetchable ones included, go in the 32-bit window while it has room (SeaBIOS-like, so
//! that guests with 32-bit page tables, like the test guests, reach their registers); a 64-bit
//! one that does not fit there goes in the 64-bit window. Memory
//! ranges are at least 4 KiB, so no two BARs share a page and every BAR can be mapped into the
//! guest on its own (QEMU does the same for passthrough). I/O BARs come from the I/O window.
//! The expansion ROM is left unassigned.

use std::fmt;

use pci_config::PciFunction;
use thiserror::Error;
use vm_allocator::{AddressAllocator, AllocPolicy};

use crate::layout;

const COMMAND: u16 = 0x04;
const COMMAND_IO: u16 = 1 << 0;
const COMMAND_MEMORY: u16 = 1 << 1;
const BAR0: u16 = 0x10;
const PAGE: u64 = 4096;

/// Which window a BAR was placed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarSpace {
    /// The 32-bit memory window.
    Mem32,
    /// The 64-bit memory window.
    Mem64,
    /// The I/O port window.
    Io,
}

impl fmt::Display for BarSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BarSpace::Mem32 => "mem32",
            BarSpace::Mem64 => "mem64",
            BarSpace::Io => "io",
        })
    }
}

/// A BAR as placed at attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssignedBar {
    /// BAR index (0-5; a 64-bit BAR also uses `index + 1`).
    pub index: u8,
    /// Where it went.
    pub space: BarSpace,
    /// A 64-bit memory BAR.
    pub is_64bit: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Size the device reported.
    pub size: u64,
    /// Address programmed.
    pub address: u64,
}

impl fmt::Display for AssignedBar {
    /// `BAR0 mem64 [0xc0000000-0xc0003fff] size 0x4000 (32-bit window)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match (self.space, self.is_64bit) {
            (BarSpace::Io, _) => "io",
            (_, true) => "mem64",
            (_, false) => "mem32",
        };
        write!(
            f,
            "BAR{} {kind}{} [{:#x}-{:#x}] size {:#x} ({} window)",
            self.index,
            if self.prefetchable {
                " prefetchable"
            } else {
                ""
            },
            self.address,
            self.address + self.size - 1,
            self.size,
            match self.space {
                BarSpace::Mem32 => "32-bit",
                BarSpace::Mem64 => "64-bit",
                BarSpace::Io => "I/O",
            }
        )
    }
}

/// Why BARs could not be placed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BarAssignError {
    /// The size mask read back is not a power of two.
    #[error(
        "BAR{bar}: the sizing probe read back {readback:#x}, which is not a power-of-two size; \
         the device's BAR is broken or the function is not responding"
    )]
    BadSize {
        /// BAR index.
        bar: u8,
        /// What the probe read (the whole 64-bit mask for a 64-bit BAR).
        readback: u64,
    },
    /// A 64-bit BAR in BAR5 has no upper half.
    #[error("BAR5 says it is 64-bit, but there is no BAR6 for its upper half")]
    Truncated64,
    /// No window has room.
    #[error(
        "BAR{bar} ({size:#x} bytes) does not fit in the {window} window [{base:#x}-{end:#x}]: \
         too many or too large BARs; attach fewer devices"
    )]
    NoSpace {
        /// BAR index.
        bar: u8,
        /// Size asked for.
        size: u64,
        /// The last window tried.
        window: BarSpace,
        /// Its base.
        base: u64,
        /// Its last address.
        end: u64,
    },
    /// A window given to [`BarAllocator::with_windows`] is empty or wraps.
    #[error("the {window} window [{base:#x}, {end:#x}) is empty or invalid")]
    BadWindow {
        /// Which window.
        window: BarSpace,
        /// Its base.
        base: u64,
        /// Its end (exclusive).
        end: u64,
    },
}

/// The three windows BARs are placed from.
#[derive(Debug)]
pub struct BarAllocator {
    mem32: AddressAllocator,
    mem64: AddressAllocator,
    io: AddressAllocator,
    /// End (exclusive) of the highest BAR placed in the 64-bit window.
    mem64_end: Option<u64>,
}

fn window(space: BarSpace, (base, end): (u64, u64)) -> Result<AddressAllocator, BarAssignError> {
    let bad = BarAssignError::BadWindow {
        window: space,
        base,
        end,
    };
    if end <= base {
        return Err(bad);
    }
    AddressAllocator::new(base, end - base).map_err(|_| bad)
}

impl BarAllocator {
    /// The windows of the default layout ([`layout`](crate::layout)).
    pub fn new() -> Self {
        Self::with_windows(
            layout::MEM32_WINDOW,
            layout::MEM64_WINDOW,
            layout::IO_WINDOW,
        )
        .expect("the standard windows are valid")
    }

    /// Custom windows, each `[base, end)`.
    pub fn with_windows(
        mem32: (u64, u64),
        mem64: (u64, u64),
        io: (u64, u64),
    ) -> Result<Self, BarAssignError> {
        Ok(BarAllocator {
            mem32: window(BarSpace::Mem32, mem32)?,
            mem64: window(BarSpace::Mem64, mem64)?,
            io: window(BarSpace::Io, io)?,
            mem64_end: None,
        })
    }

    /// The default 32-bit and I/O windows, and the 64-bit window of
    /// [`layout::mem64_window`] for a guest whose RAM ends at `ram_end` on a host with
    /// `phys_bits` physical address bits.
    pub fn for_guest(ram_end: u64, phys_bits: u8) -> Result<Self, BarAssignError> {
        let mem64 = layout::mem64_window(ram_end, phys_bits).ok_or(BarAssignError::BadWindow {
            window: BarSpace::Mem64,
            base: ram_end.max(1 << 32),
            end: 1u64.checked_shl(u32::from(phys_bits)).unwrap_or(u64::MAX),
        })?;
        Self::with_windows(layout::MEM32_WINDOW, mem64, layout::IO_WINDOW)
    }

    /// The 64-bit window `[base, end)`: what the guest's firmware tables (ACPI `_CRS`) must
    /// describe as the host bridge's 64-bit range.
    pub fn mem64_window(&self) -> (u64, u64) {
        (self.mem64.base(), self.mem64.end().saturating_add(1))
    }

    /// The part of the 64-bit window the BARs placed so far use, `[base, end)`: what a
    /// firmware would describe to the guest as its 64-bit PCI hole. `None` before any BAR went
    /// there.
    pub fn mem64_in_use(&self) -> Option<(u64, u64)> {
        self.mem64_end.map(|end| (self.mem64.base(), end))
    }

    fn allocate(&mut self, space: BarSpace, bar: u8, size: u64) -> Result<u64, BarAssignError> {
        let a = match space {
            BarSpace::Mem32 => &mut self.mem32,
            BarSpace::Mem64 => &mut self.mem64,
            BarSpace::Io => &mut self.io,
        };
        let placed = a
            .allocate(size, size, AllocPolicy::FirstMatch)
            .map(|r| r.start())
            .map_err(|_| BarAssignError::NoSpace {
                bar,
                size,
                window: space,
                base: a.base(),
                end: a.end(),
            })?;
        if space == BarSpace::Mem64 {
            self.mem64_end = self.mem64_end.max(Some(placed + size));
        }
        Ok(placed)
    }

    /// Sizes every BAR of `function`, places and programs them, and turns decode on for the
    /// kinds it has. Returns the BARs placed, in index order.
    pub fn assign(
        &mut self,
        function: &mut dyn PciFunction,
    ) -> Result<Vec<AssignedBar>, BarAssignError> {
        let command = read16(function, COMMAND);
        write16(function, COMMAND, command & !(COMMAND_IO | COMMAND_MEMORY));
        let mut placed = Vec::new();
        let mut index = 0u8;
        while index < 6 {
            let off = BAR0 + 4 * u16::from(index);
            let low = probe(function, off);
            if low == 0 || low == 0xffff_ffff {
                // Unimplemented BAR (all zero), or a function that answers all-ones to everything.
                index += 1;
                continue;
            }
            let bar = if low & 1 == 1 {
                // I/O BAR: bits 31:2 are address; a 16-bit decoder reads 0 in bits 31:16.
                let mask = u64::from(low & !0x3) | 0xffff_ffff_ffff_0000;
                let size = (!mask).wrapping_add(1);
                if !size.is_power_of_two() {
                    return Err(BarAssignError::BadSize {
                        bar: index,
                        readback: u64::from(low),
                    });
                }
                let address = self.allocate(BarSpace::Io, index, size.max(4))?;
                write32(function, off, address as u32);
                AssignedBar {
                    index,
                    space: BarSpace::Io,
                    is_64bit: false,
                    prefetchable: false,
                    size,
                    address,
                }
            } else {
                let is_64bit = (low >> 1) & 3 == 2;
                let prefetchable = low & 0x8 != 0;
                let high = if is_64bit {
                    if index == 5 {
                        return Err(BarAssignError::Truncated64);
                    }
                    probe(function, off + 4)
                } else {
                    0xffff_ffff
                };
                let mask = u64::from(high) << 32 | u64::from(low & !0xf);
                let size = (!mask).wrapping_add(1);
                if !size.is_power_of_two() {
                    return Err(BarAssignError::BadSize {
                        bar: index,
                        readback: mask,
                    });
                }
                let want = size.max(PAGE);
                let (space, address) = if is_64bit && prefetchable {
                    (
                        BarSpace::Mem64,
                        self.allocate(BarSpace::Mem64, index, want)?,
                    )
                } else {
                    match self.allocate(BarSpace::Mem32, index, want) {
                        Ok(a) => (BarSpace::Mem32, a),
                        Err(e) if !is_64bit => return Err(e),
                        Err(_) => (
                            BarSpace::Mem64,
                            self.allocate(BarSpace::Mem64, index, want)?,
                        ),
                    }
                };
                write32(function, off, address as u32);
                if is_64bit {
                    write32(function, off + 4, (address >> 32) as u32);
                }
                AssignedBar {
                    index,
                    space,
                    is_64bit,
                    prefetchable,
                    size,
                    address,
                }
            };
            index += if bar.is_64bit { 2 } else { 1 };
            placed.push(bar);
        }
        let mut enable = 0;
        if placed.iter().any(|b| b.space != BarSpace::Io) {
            enable |= COMMAND_MEMORY;
        }
        if placed.iter().any(|b| b.space == BarSpace::Io) {
            enable |= COMMAND_IO;
        }
        write16(function, COMMAND, command | enable);
        Ok(placed)
    }
}

impl Default for BarAllocator {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes all-ones to the BAR register at `off`, reads the mask, restores the old value.
fn probe(f: &mut dyn PciFunction, off: u16) -> u32 {
    let old = read32(f, off);
    write32(f, off, 0xffff_ffff);
    let mask = read32(f, off);
    write32(f, off, old);
    mask
}

fn read16(f: &mut dyn PciFunction, off: u16) -> u16 {
    let mut d = [0u8; 2];
    f.config_read(off, &mut d);
    u16::from_le_bytes(d)
}

fn write16(f: &mut dyn PciFunction, off: u16, v: u16) {
    f.config_write(off, &v.to_le_bytes());
}

fn read32(f: &mut dyn PciFunction, off: u16) -> u32 {
    let mut d = [0u8; 4];
    f.config_read(off, &mut d);
    u32::from_le_bytes(d)
}

fn write32(f: &mut dyn PciFunction, off: u16, v: u32) {
    f.config_write(off, &v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci_config::{BarDef, ConfigSize, ConfigSpace, DeviceIds, HeaderType};

    /// A function whose BARs size like hardware, from pci-config's model.
    struct Model(ConfigSpace);
    impl PciFunction for Model {
        fn config_read(&mut self, offset: u16, data: &mut [u8]) {
            self.0.read(offset, data).unwrap()
        }
        fn config_write(&mut self, offset: u16, data: &[u8]) {
            self.0.write(offset, data).unwrap();
        }
    }

    fn model(bars: &[(usize, BarDef)]) -> Model {
        let mut s = ConfigSpace::new(
            HeaderType::Endpoint,
            ConfigSize::Extended,
            DeviceIds {
                vendor_id: 0x1b36,
                device_id: 0x0010,
                class_code: 0x010802,
                ..Default::default()
            },
        );
        for (i, d) in bars {
            s.set_bar(*i, *d).unwrap();
        }
        Model(s)
    }

    #[test]
    fn places_bars_naturally_aligned_and_enables_decode() {
        let mut f = model(&[
            (0, BarDef::memory64(16 * 1024)),
            (2, BarDef::memory32(256)),
            (3, BarDef::io(32)),
            (4, BarDef::memory64(1 << 20).prefetchable()),
        ]);
        let mut a = BarAllocator::new();
        let bars = a.assign(&mut f).unwrap();
        assert_eq!(bars.len(), 4);
        for b in &bars {
            assert_eq!(b.address % b.size, 0, "{b}");
            let bi = f.0.bar(b.index as usize).unwrap();
            assert_eq!(bi.address, b.address, "programmed {b}");
        }
        assert_eq!(bars[0].address, 0xc000_0000);
        assert_eq!(
            bars[1].address, 0xc000_4000,
            "256-byte BAR gets a page of its own"
        );
        assert_eq!((bars[2].space, bars[2].address), (BarSpace::Io, 0xc000));
        assert_eq!(
            (bars[3].space, bars[3].address),
            (BarSpace::Mem64, 0x80_0000_0000),
            "64-bit prefetchable goes high"
        );
        assert!(bars[3].prefetchable && bars[3].is_64bit);
        let cmd = f.0.command();
        assert!(cmd.memory() && cmd.io());
        // Two functions never overlap.
        let mut g = model(&[(0, BarDef::memory32(16 * 1024))]);
        let g0 = a.assign(&mut g).unwrap()[0];
        assert!(bars.iter().all(|b| b.space == BarSpace::Io
            || g0.address + g0.size <= b.address
            || b.address + b.size.max(PAGE) <= g0.address));
    }

    #[test]
    fn large_64bit_bars_go_high_and_32bit_ones_fail_clearly() {
        let mut a = BarAllocator::with_windows(
            (0xc000_0000, 0xc010_0000),
            crate::layout::MEM64_WINDOW,
            crate::layout::IO_WINDOW,
        )
        .unwrap();
        let mut f = model(&[(0, BarDef::memory64(1 << 30))]);
        let b = a.assign(&mut f).unwrap()[0];
        assert_eq!((b.space, b.address), (BarSpace::Mem64, 0x80_0000_0000));
        let mut g = model(&[(0, BarDef::memory32(1 << 24))]);
        let e = a.assign(&mut g).unwrap_err();
        assert!(
            e.to_string()
                .contains("BAR0 (0x1000000 bytes) does not fit in the mem32 window"),
            "{e}"
        );
    }

    #[test]
    fn the_64bit_window_follows_ram_and_the_host_address_width() {
        // 6 GiB of RAM from 4 GiB: the window starts at the next 1 GiB boundary after 10 GiB,
        // and ends where a 39-bit CPU stops.
        assert_eq!(
            layout::mem64_window(10 << 30, 39),
            Some((10 << 30, 1 << 39))
        );
        assert_eq!(
            layout::mem64_window((10 << 30) + 4096, 39),
            Some((11 << 30, 1 << 39))
        );
        // Small guests: never below 4 GiB.
        assert_eq!(layout::mem64_window(64 << 20, 36), Some((4 << 30, 1 << 36)));
        // No room below the CPU's limit.
        assert_eq!(layout::mem64_window(1 << 36, 36), None);
        let e = BarAllocator::for_guest(1 << 36, 36).unwrap_err();
        assert!(e.to_string().contains("mem64 window"), "{e}");
    }

    #[test]
    fn large_prefetchable_bars_are_placed_high_aligned_and_packed() {
        let mut a = BarAllocator::for_guest(64 << 20, 40).unwrap();
        assert_eq!(a.mem64_window(), (4 << 30, 1 << 40));
        assert_eq!(a.mem64_in_use(), None);
        // A GPU: 16 MiB of registers (64-bit, not prefetchable), 8 GiB of VRAM, 32 MiB more.
        let mut gpu = model(&[
            (0, BarDef::memory64(16 << 20)),
            (2, BarDef::memory64(8 << 30).prefetchable()),
            (4, BarDef::memory64(32 << 20).prefetchable()),
        ]);
        let bars = a.assign(&mut gpu).unwrap();
        assert_eq!(bars[0].space, BarSpace::Mem32, "registers stay low");
        assert_eq!((bars[1].space, bars[1].address), (BarSpace::Mem64, 8 << 30));
        assert_eq!(bars[1].address % (8 << 30), 0, "naturally aligned");
        assert_eq!(bars[2].address, 4 << 30, "packed below the large one");
        // The window in use is what the BARs need, not all the CPU could address.
        assert_eq!(a.mem64_in_use(), Some((4 << 30, 16 << 30)));
        // A BAR larger than the CPU can address fails, naming the window.
        let mut huge = model(&[(0, BarDef::memory64(1 << 40).prefetchable())]);
        let e = a.assign(&mut huge).unwrap_err().to_string();
        assert!(e.contains("does not fit in the mem64 window"), "{e}");
    }

    #[test]
    fn a_function_without_bars_gets_none() {
        let mut f = model(&[]);
        assert!(BarAllocator::new().assign(&mut f).unwrap().is_empty());
        assert!(!f.0.command().memory());
    }
}
