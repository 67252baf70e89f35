//! Base address registers: sizing, and placing memory BARs in an MMIO window.
//!
//! Sizing follows PCI Local Bus 3.0 section 6.2.5.1: with decode off, write all ones, read back,
//! restore. A 64-bit BAR takes two slots (low, high). I/O BARs are sized and reported but never
//! programmed or enabled: the test guests only use memory space.

use core::fmt;

use super::{Bdf, ConfigSpace, reg, update_command};

/// The kind of a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Memory32,
    /// 64-bit memory space (uses the next BAR slot for the high half).
    Memory64,
}

/// One implemented BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// Slot index (0-5); a 64-bit BAR also uses `index + 1`.
    pub index: u8,
    /// The kind.
    pub kind: BarKind,
    /// Prefetchable (memory BARs).
    pub prefetchable: bool,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// The address programmed in it.
    pub address: u64,
}

impl Bar {
    /// Whether it decodes memory.
    pub fn is_memory(&self) -> bool {
        self.kind != BarKind::Io
    }

    /// Configuration offset of the (low) BAR register.
    pub fn offset(&self) -> u16 {
        reg::BAR0 + 4 * u16::from(self.index)
    }
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            BarKind::Io => "io",
            BarKind::Memory32 => "mem32",
            BarKind::Memory64 => "mem64",
        };
        write!(
            f,
            "BAR{} {kind}{} size {:#x} at {:#x}",
            self.index,
            if self.prefetchable {
                " prefetchable"
            } else {
                ""
            },
            self.size,
            self.address
        )
    }
}

/// The BARs of one function, by slot (the high slot of a 64-bit BAR is `None`).
pub type Bars = [Option<Bar>; 6];

/// Decodes one sizing read-back. `original` is the BAR's value before sizing (for the kind bits),
/// `readback_low` what it read after writing all ones, `readback_high` the same for the high
/// half of a 64-bit BAR (ignored otherwise). Returns `None` for an unimplemented BAR.
pub fn size_from_readback(
    original: u32,
    readback_low: u32,
    readback_high: u32,
) -> Option<(BarKind, bool, u64)> {
    if original & 1 == 1 {
        let mask = readback_low & !0x3 & 0xffff;
        return (mask != 0).then(|| (BarKind::Io, false, u64::from(!mask & 0xffff) + 1));
    }
    let prefetchable = original & 0b1000 != 0;
    let (kind, mask) = match (original >> 1) & 0b11 {
        0b10 => (
            BarKind::Memory64,
            u64::from(readback_high) << 32 | u64::from(readback_low & !0xf),
        ),
        _ => (
            BarKind::Memory32,
            u64::from(readback_low & !0xf) | 0xffff_ffff_0000_0000,
        ),
    };
    if mask == 0 || mask == 0xffff_ffff_0000_0000 {
        return None;
    }
    Some((kind, prefetchable, (!mask).wrapping_add(1)))
}

/// Sizes every BAR of a type-0 function. Turns memory and I/O decode off while sizing and
/// restores the command register afterwards.
pub fn probe_bars(cfg: &mut impl ConfigSpace, bdf: Bdf) -> Bars {
    let command = cfg.read16(bdf, reg::COMMAND);
    cfg.write16(
        bdf,
        reg::COMMAND,
        command & !(reg::COMMAND_MEMORY | reg::COMMAND_IO),
    );
    let mut bars: Bars = [None; 6];
    let mut i = 0u8;
    while i < 6 {
        let off = reg::BAR0 + 4 * u16::from(i);
        let original = cfg.read32(bdf, off);
        cfg.write32(bdf, off, 0xffff_ffff);
        let low = cfg.read32(bdf, off);
        cfg.write32(bdf, off, original);
        let is64 = original & 1 == 0 && (original >> 1) & 0b11 == 0b10;
        let (high_original, high) = if is64 && i < 5 {
            let o = cfg.read32(bdf, off + 4);
            cfg.write32(bdf, off + 4, 0xffff_ffff);
            let h = cfg.read32(bdf, off + 4);
            cfg.write32(bdf, off + 4, o);
            (o, h)
        } else {
            (0, 0)
        };
        if let Some((kind, prefetchable, size)) = size_from_readback(original, low, high) {
            let address = match kind {
                BarKind::Io => u64::from(original & !0x3),
                BarKind::Memory32 => u64::from(original & !0xf),
                BarKind::Memory64 => u64::from(high_original) << 32 | u64::from(original & !0xf),
            };
            bars[usize::from(i)] = Some(Bar {
                index: i,
                kind,
                prefetchable,
                size,
                address,
            });
        }
        i += if is64 { 2 } else { 1 };
    }
    cfg.write16(bdf, reg::COMMAND, command);
    bars
}

/// A bump allocator over a guest-physical MMIO window `[next, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioWindow {
    next: u64,
    end: u64,
}

impl MmioWindow {
    /// The window `[start, end)`.
    pub const fn new(start: u64, end: u64) -> Self {
        MmioWindow { next: start, end }
    }

    /// Takes `size` bytes aligned to their size. BARs below 4 KiB still take a whole page, so
    /// that a VMM can map every BAR on its own pages (as QEMU's VFIO does).
    pub fn alloc(&mut self, size: u64) -> Option<u64> {
        let size = size.max(4096).checked_next_power_of_two()?;
        let at = self.next.checked_add(size - 1)? & !(size - 1);
        let end = at.checked_add(size)?;
        (end <= self.end).then(|| {
            self.next = end;
            at
        })
    }

    /// The next free address.
    pub fn next(&self) -> u64 {
        self.next
    }
}

/// Whether every memory BAR already has a non-zero address (placed by firmware or the VMM).
pub fn memory_bars_placed(bars: &Bars) -> bool {
    let mut memory = bars.iter().flatten().filter(|b| b.is_memory()).peekable();
    memory.peek().is_some() && memory.all(|b| b.address != 0)
}

/// Places every memory BAR in `window` (largest first, so alignment wastes nothing), writes the
/// addresses with decode off, and reads them back. The command register is restored (decode is
/// not turned on here). Errors name the BAR that did not fit or did not take its address.
pub fn assign_memory_bars(
    cfg: &mut impl ConfigSpace,
    bdf: Bdf,
    bars: &mut Bars,
    window: &mut MmioWindow,
) -> Result<(), AssignError> {
    let command = update_command(cfg, bdf, 0, reg::COMMAND_MEMORY | reg::COMMAND_IO);
    let mut order: [Option<u8>; 6] = [None; 6];
    let mut n = 0;
    for bar in bars.iter().flatten().filter(|b| b.is_memory()) {
        order[n] = Some(bar.index);
        n += 1;
    }
    order[..n].sort_unstable_by_key(|i| {
        core::cmp::Reverse(i.map(|i| bars[usize::from(i)].map_or(0, |b| b.size)))
    });
    let mut result = Ok(());
    for i in order[..n].iter().flatten() {
        let Some(bar) = bars[usize::from(*i)].as_mut() else {
            continue;
        };
        let Some(addr) = window.alloc(bar.size) else {
            result = Err(AssignError::NoSpace {
                bar: bar.index,
                size: bar.size,
                window_next: window.next(),
            });
            break;
        };
        if bar.kind == BarKind::Memory32 && addr + bar.size > 1 << 32 {
            result = Err(AssignError::NoSpace {
                bar: bar.index,
                size: bar.size,
                window_next: window.next(),
            });
            break;
        }
        let off = bar.offset();
        cfg.write32(bdf, off, addr as u32);
        if bar.kind == BarKind::Memory64 {
            cfg.write32(bdf, off + 4, (addr >> 32) as u32);
        }
        let low = u64::from(cfg.read32(bdf, off) & !0xf);
        let high = if bar.kind == BarKind::Memory64 {
            u64::from(cfg.read32(bdf, off + 4)) << 32
        } else {
            0
        };
        bar.address = high | low;
        if bar.address != addr {
            result = Err(AssignError::Readback {
                bar: bar.index,
                wrote: addr,
                read: bar.address,
            });
            break;
        }
    }
    cfg.write16(bdf, reg::COMMAND, command);
    result
}

/// Why [`assign_memory_bars`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignError {
    /// The window has no room.
    NoSpace {
        /// BAR index.
        bar: u8,
        /// Its size.
        size: u64,
        /// Where the window's free space starts.
        window_next: u64,
    },
    /// The BAR did not keep the address written to it.
    Readback {
        /// BAR index.
        bar: u8,
        /// Address written.
        wrote: u64,
        /// Address read back.
        read: u64,
    },
}

impl fmt::Display for AssignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            AssignError::NoSpace {
                bar,
                size,
                window_next,
            } => write!(
                f,
                "BAR{bar} ({size:#x} bytes) does not fit the MMIO window (free from {window_next:#x}); pass a larger mmio=/mmio-end="
            ),
            AssignError::Readback { bar, wrote, read } => {
                write!(
                    f,
                    "BAR{bar}: wrote {wrote:#x}, read back {read:#x} (the device or VMM ignored the write)"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::fake::{FakeBus, FakeFunction};

    #[test]
    fn decode_sizes() {
        assert_eq!(size_from_readback(0, 0, 0), None);
        assert_eq!(
            size_from_readback(0x0, 0xffff_c000, 0),
            Some((BarKind::Memory32, false, 0x4000))
        );
        assert_eq!(
            size_from_readback(0x4, 0xffff_c004, 0xffff_ffff),
            Some((BarKind::Memory64, false, 0x4000))
        );
        assert_eq!(
            size_from_readback(0xc, 0x0000_000c, 0xffff_fff0),
            Some((BarKind::Memory64, true, 0x10_0000_0000))
        );
        assert_eq!(
            size_from_readback(0x1, 0xffff_ffe1, 0),
            Some((BarKind::Io, false, 0x20))
        );
        assert_eq!(size_from_readback(0x4, 0x4, 0), None);
    }

    #[test]
    fn window_alignment() {
        let mut w = MmioWindow::new(0xc000_0000, 0xc001_0000);
        assert_eq!(w.alloc(0x100), Some(0xc000_0000)); // rounded up to a page
        assert_eq!(w.alloc(0x4000), Some(0xc000_4000)); // aligned to its size
        assert_eq!(w.alloc(0x8000), Some(0xc000_8000));
        assert_eq!(w.alloc(0x1000), None);
        assert_eq!(MmioWindow::new(u64::MAX - 10, u64::MAX).alloc(0x1000), None);
    }

    fn nvme_like() -> (FakeBus, Bdf) {
        let mut bus = FakeBus::default();
        let bdf = Bdf::new(0, 1, 0);
        let mut f = FakeFunction::new(0x1b36, 0x0010, 0x010802);
        f.memory_bar(0, 0x4000, true, false);
        f.memory_bar(2, 0x1000, false, false);
        f.io_bar(3, 0x20);
        f.memory_bar(4, 0x10_0000, true, true);
        f.put16(4, reg::COMMAND_MEMORY | reg::COMMAND_IO);
        bus.add(bdf, f);
        (bus, bdf)
    }

    #[test]
    fn probe_and_assign() {
        let (mut bus, bdf) = nvme_like();
        let mut bars = probe_bars(&mut bus, bdf);
        assert_eq!(
            bars[0].map(|b| (b.kind, b.size)),
            Some((BarKind::Memory64, 0x4000))
        );
        assert_eq!(bars[1], None);
        assert_eq!(
            bars[2].map(|b| (b.kind, b.size)),
            Some((BarKind::Memory32, 0x1000))
        );
        assert_eq!(bars[3].map(|b| (b.kind, b.size)), Some((BarKind::Io, 0x20)));
        assert_eq!(
            bars[4].map(|b| (b.kind, b.prefetchable, b.size)),
            Some((BarKind::Memory64, true, 0x10_0000))
        );
        // Sizing restored the command register.
        assert_eq!(
            bus.read16(bdf, reg::COMMAND),
            reg::COMMAND_MEMORY | reg::COMMAND_IO
        );

        let mut w = MmioWindow::new(0xc000_0000, 0xfec0_0000);
        assign_memory_bars(&mut bus, bdf, &mut bars, &mut w).unwrap();
        // Largest first: BAR4 (1 MiB), then BAR0 (16 KiB), then BAR2 (4 KiB).
        assert_eq!(bars[4].unwrap().address, 0xc000_0000);
        assert_eq!(bars[0].unwrap().address, 0xc010_0000);
        assert_eq!(bars[2].unwrap().address, 0xc010_4000);
        assert_eq!(bus.read32(bdf, 0x10) & !0xf, 0xc010_0000);
        assert_eq!(bus.read32(bdf, 0x14), 0);
        // The I/O BAR is left alone.
        assert_eq!(bars[3].unwrap().address, 0);
    }

    #[test]
    fn placed_bars() {
        let (mut bus, bdf) = nvme_like();
        let mut bars = probe_bars(&mut bus, bdf);
        assert!(!memory_bars_placed(&bars));
        assign_memory_bars(
            &mut bus,
            bdf,
            &mut bars,
            &mut MmioWindow::new(0xc000_0000, 0xfec0_0000),
        )
        .unwrap();
        assert!(memory_bars_placed(&probe_bars(&mut bus, bdf)));
        assert!(!memory_bars_placed(&[None; 6]));
    }

    #[test]
    fn no_space_names_the_bar() {
        let (mut bus, bdf) = nvme_like();
        let mut bars = probe_bars(&mut bus, bdf);
        let mut w = MmioWindow::new(0xc000_0000, 0xc000_8000);
        let e = assign_memory_bars(&mut bus, bdf, &mut bars, &mut w).unwrap_err();
        assert!(matches!(e, AssignError::NoSpace { bar: 4, .. }), "{e:?}");
        assert!(e.to_string().contains("BAR4"));
    }

    #[test]
    fn readback_mismatch_is_reported() {
        let (mut bus, bdf) = nvme_like();
        let mut bars = probe_bars(&mut bus, bdf);
        bus.get(bdf).ignore_bar_writes = true;
        let mut w = MmioWindow::new(0xc000_0000, 0xd000_0000);
        let e = assign_memory_bars(&mut bus, bdf, &mut bars, &mut w).unwrap_err();
        assert_eq!(
            e,
            AssignError::Readback {
                bar: 4,
                wrote: 0xc000_0000,
                read: 0
            }
        );
        assert!(e.to_string().contains("ignored the write"));
    }
}
