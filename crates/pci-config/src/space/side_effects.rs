//! Side effects of guest writes: a per-byte index of the registers that matter (Command, BARs,
//! ROM, bridge windows, MSI, MSI-X) and the rules that turn a write into [`ConfigEvent`]s.
//! Everything else is plain mask-driven register behaviour.

use super::{ConfigSpace, Watch, WatchKind};
use crate::bar::{BarKind, flags, probe_field};
use crate::capability::{self, CapId, CapabilityId, MsixCapability};
use crate::events::{BridgeWindow, ConfigEvent};
use crate::header::{Command, HeaderType, offset};
use crate::registers::{lanes, load_le};

/// One guest write of 1, 2 or 4 bytes, as the side-effect rules see it. Values are the access's
/// bytes as a little-endian number (byte `i` of the access in bits `8i..8i+8`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    /// Offset of the first byte.
    pub(super) start: usize,
    /// Width in bytes.
    pub(super) len: usize,
    /// What the guest wrote.
    pub(super) data: u32,
    /// The register bits the write changed (before XOR after, after the masks).
    pub(super) changed: u32,
}

impl Written {
    /// `v`, one of this access's values, moved to the byte positions of the 4 bytes starting at
    /// `reg`, with the mask of those bytes that the access covers (0 when it covers none).
    #[inline(always)]
    fn at(&self, v: u32, reg: usize) -> (u32, u32) {
        let mask = lanes(self.len);
        if self.start >= reg {
            let shift = self.start - reg;
            if shift >= 4 {
                return (0, 0);
            }
            (v << (8 * shift), mask << (8 * shift))
        } else {
            let shift = reg - self.start;
            if shift >= self.len {
                return (0, 0);
            }
            (v >> (8 * shift), mask >> (8 * shift))
        }
    }

    /// The bits of the `width`-byte register at `reg` (width at most 4) that the write changed.
    #[inline(always)]
    fn changed_in(&self, reg: usize, width: usize) -> u32 {
        self.at(self.changed, reg).0 & lanes(width)
    }

    /// The dword at `reg` as the guest wrote it (written bytes from the guest, the others from
    /// `current`), or `None` when the write did not touch it.
    #[inline(always)]
    fn written_dword(&self, reg: usize, current: u32) -> Option<u32> {
        let (v, mask) = self.at(self.data, reg);
        (mask != 0).then_some((current & !mask) | (v & mask))
    }

    /// True when the write changed a bit of the `len` bytes at `start`.
    #[inline]
    fn changed_within(&self, start: usize, len: usize) -> bool {
        let first = start.saturating_sub(self.start).min(self.len);
        let end = (start + len).saturating_sub(self.start).min(self.len);
        self.changed & lanes(end) & !lanes(first) != 0
    }
}

impl ConfigSpace {
    /// The watch ids of the `len` bytes at `start`, one per byte lane (0 where no register with
    /// side effects lives).
    #[inline(always)]
    pub(super) fn watches_at(&self, start: usize, len: usize) -> u32 {
        if start + len <= self.watch_at.len() {
            return load_le(&self.watch_at[..], start, len);
        }
        (start..self.watch_at.len())
            .enumerate()
            .fold(0, |ids, (i, at)| {
                ids | (self.watch_at[at] as u32) << (8 * i)
            })
    }

    /// Runs the side-effect rules of each register the write touched (`watched`, from
    /// [`watches_at`](Self::watches_at)), once each, in address order.
    #[inline(always)]
    pub(super) fn react_all(
        &mut self,
        watched: u32,
        write: &Written,
        on_event: &mut impl FnMut(ConfigEvent),
    ) {
        // Nearly every access touches one register: all its watched lanes carry the same id.
        let first = watched >> (8 * (watched.trailing_zeros() / 8)) & 0xff;
        let single = (0..4).all(|lane| {
            let id = watched >> (8 * lane) & 0xff;
            id == 0 || id == first
        });
        if single {
            let watch = self.watches[first as usize - 1];
            self.react(watch, write, on_event);
            return;
        }
        let mut rest = watched;
        while rest != 0 {
            let id = rest as u8;
            rest >>= 8;
            if id == 0 {
                continue;
            }
            // The other lanes of the same register are handled by this one call.
            for lane in 0..3 {
                if (rest >> (8 * lane)) as u8 == id {
                    rest &= !(0xff << (8 * lane));
                }
            }
            let watch = self.watches[id as usize - 1];
            self.react(watch, write, on_event);
        }
    }

    pub(super) fn rebuild_watches(&mut self) {
        self.watches.clear();
        self.watch_at.fill(0);
        let mut list = vec![Watch {
            start: offset::COMMAND,
            len: 2,
            kind: WatchKind::Command,
        }];
        for (i, slot) in self.bars.iter().enumerate() {
            if let Some(s) = slot {
                let len = if s.def.kind == BarKind::Memory64 {
                    8
                } else {
                    4
                };
                let start = offset::BAR0 + 4 * i as u16;
                list.push(Watch {
                    start,
                    len,
                    kind: WatchKind::Bar(i as u8),
                });
            }
        }
        if self.rom.is_some() {
            list.push(Watch {
                start: self.header.rom_offset(),
                len: 4,
                kind: WatchKind::Rom,
            });
        }
        if self.header == HeaderType::Bridge {
            use BridgeWindow::*;
            for (start, len, w) in [
                (0x1c, 2, Io),
                (0x30, 4, Io),
                (0x20, 4, Memory),
                (0x24, 12, Prefetchable),
            ] {
                list.push(Watch {
                    start,
                    len,
                    kind: WatchKind::Window(w),
                });
            }
        }
        let (caps, _) = capability::capabilities_lenient(self.bytes());
        for c in caps.iter().filter(|c| !c.id.is_extended()) {
            if c.id == CapId::Standard(CapabilityId::MSI) {
                list.push(Watch {
                    start: c.offset + 2,
                    len: c.len - 2,
                    kind: WatchKind::Msi,
                });
            } else if c.id == CapId::Standard(CapabilityId::MSIX) {
                list.push(Watch {
                    start: c.offset + 2,
                    len: 2,
                    kind: WatchKind::Msix,
                });
            }
        }
        for w in list {
            if self.watches.len() >= 254 {
                break;
            }
            self.watches.push(w);
            let id = self.watches.len() as u8;
            for at in w.start as usize..(w.start + w.len) as usize {
                if at < 256 && self.watch_at[at] == 0 {
                    self.watch_at[at] = id;
                }
            }
        }
    }

    /// Re-reads committed BAR/ROM addresses from the registers (after device-side stores).
    pub(super) fn resync(&mut self) {
        for i in 0..self.header.bar_count() {
            if let Some(mut s) = self.bars[i] {
                s.def.address = self.bar_register_address(i, s.def.kind);
                s.probing = [false; 2];
                self.bars[i] = Some(s);
            }
        }
        if let Some(mut r) = self.rom {
            r.committed =
                self.regs.get(self.header.rom_offset() as usize, 4) & flags::ROM_ADDRESS_MASK;
            r.probing = false;
            self.rom = Some(r);
        }
        self.rebuild_watches();
    }

    #[inline]
    fn bar_register_address(&self, index: usize, kind: BarKind) -> u64 {
        let reg = (offset::BAR0 as usize) + 4 * index;
        let lo = self.regs.get(reg, 4);
        match kind {
            BarKind::Io => (lo & flags::IO_ADDRESS_MASK) as u64,
            BarKind::Memory32 => (lo & flags::MEM_ADDRESS_MASK) as u64,
            BarKind::Memory64 => {
                (self.regs.get(reg + 4, 4) as u64) << 32 | (lo & flags::MEM_ADDRESS_MASK) as u64
            }
        }
    }

    #[inline(always)]
    fn react(&mut self, w: Watch, write: &Written, ev: &mut impl FnMut(ConfigEvent)) {
        match w.kind {
            WatchKind::Command => {
                let new = self.command();
                let diff = write.changed_in(offset::COMMAND as usize, 2) as u16;
                if diff & (Command::MEMORY | Command::IO) != 0 {
                    ev(ConfigEvent::DecodeChanged {
                        memory: new.memory(),
                        io: new.io(),
                    });
                }
                if diff & Command::BUS_MASTER != 0 {
                    ev(ConfigEvent::BusMasterChanged {
                        enabled: new.bus_master(),
                    });
                }
                if diff & Command::INTX_DISABLE != 0 {
                    ev(ConfigEvent::IntxDisableChanged {
                        disabled: new.intx_disabled(),
                    });
                }
            }
            WatchKind::Bar(i) => self.react_bar(i as usize, write, ev),
            WatchKind::Rom => self.react_rom(write, ev),
            WatchKind::Window(window) => {
                if write.changed_within(w.start as usize, w.len as usize) {
                    ev(ConfigEvent::BridgeWindowChanged { window });
                }
            }
            WatchKind::Msi => {
                if write.changed_within(w.start as usize, w.len as usize) {
                    let control = self.regs.get(w.start as usize, 2);
                    ev(ConfigEvent::MsiChanged {
                        enabled: control & 1 != 0,
                    });
                }
            }
            WatchKind::Msix => {
                let new = self.regs.get(w.start as usize, 2) as u16;
                let bits = MsixCapability::ENABLE | MsixCapability::FUNCTION_MASK;
                if write.changed_in(w.start as usize, 2) as u16 & bits != 0 {
                    ev(ConfigEvent::MsixChanged {
                        enabled: new & MsixCapability::ENABLE != 0,
                        function_masked: new & MsixCapability::FUNCTION_MASK != 0,
                    });
                }
            }
        }
    }

    #[inline(always)]
    fn react_bar(&mut self, index: usize, write: &Written, ev: &mut impl FnMut(ConfigEvent)) {
        // The slot is updated in place, field by field: no copy of it on every write.
        let Some(Some(slot)) = self.bars.get_mut(index) else {
            return;
        };
        let reg = offset::BAR0 as usize + 4 * index;
        let kind = slot.def.kind;
        let field = probe_field(Some(kind), false);
        let lo = self.regs.load(reg, 4);
        if let Some(written) = write.written_dword(reg, lo) {
            slot.probing[0] = written & field == field;
        }
        let mut hi = 0;
        if kind == BarKind::Memory64 {
            hi = self.regs.load(reg + 4, 4);
            if let Some(written) = write.written_dword(reg + 4, hi) {
                slot.probing[1] = written == u32::MAX;
            }
        }
        if slot.probing[0] || slot.probing[1] {
            return;
        }
        let new = (hi as u64) << 32 | (lo & field) as u64;
        let old = slot.def.address;
        if new != old {
            slot.def.address = new;
            ev(ConfigEvent::BarMoved {
                bar: index as u8,
                old,
                new,
            });
        }
    }

    fn react_rom(&mut self, write: &Written, ev: &mut impl FnMut(ConfigEvent)) {
        let Some(mut slot) = self.rom else { return };
        let reg = self.header.rom_offset() as usize;
        let now = self.regs.get(reg, 4);
        if let Some(written) = write.written_dword(reg, now) {
            let field = probe_field(None, false);
            slot.probing = written & field == field;
        }
        if !slot.probing {
            let new = now & flags::ROM_ADDRESS_MASK;
            if new != slot.committed {
                ev(ConfigEvent::RomMoved {
                    old: slot.committed,
                    new,
                });
                slot.committed = new;
            }
        }
        if write.changed_in(reg, 4) & flags::ROM_ENABLE != 0 {
            ev(ConfigEvent::RomEnableChanged {
                enabled: now & flags::ROM_ENABLE != 0,
            });
        }
        self.rom = Some(slot);
    }
}
