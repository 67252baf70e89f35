//! Side effects of guest writes: a per-byte index of the registers that matter (Command, BARs,
//! ROM, bridge windows, MSI, MSI-X) and the rules that turn a write into [`ConfigEvent`]s.
//! Everything else is plain mask-driven register behaviour.
//!
//! The index holds, for each of the first 256 bytes, a code that *is* the register's kind (and
//! its BAR number or capability slot): the write path reads the codes of the access's bytes with
//! one load and goes straight to the rule, with no table of registers in between.

use super::{ConfigSpace, InterruptCap};
use crate::bar::{BarKind, flags, probe_field};
use crate::capability::{self, CapId, CapabilityId, MsixCapability};
use crate::events::{BridgeWindow, ConfigEvent};
use crate::header::{Command, HeaderType, offset};
use crate::registers::{get_le, lanes};

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

    /// True when the write changed a bit in one of the access's byte lanes in `lanes`.
    #[inline]
    fn changed_on(&self, lanes: u32) -> bool {
        self.changed & lanes != 0
    }
}

/// Index code of a byte that belongs to no register with side effects.
pub(super) const UNWATCHED: u8 = 0;
/// Index code of the Command register.
const COMMAND: u8 = 1;
/// Index code of BAR 0; BAR `i` is `BAR0 + i` (both dwords of a 64-bit BAR carry its code).
const BAR0: u8 = 2;
/// Index code of the last BAR (BAR 5).
const BAR5: u8 = BAR0 + 5;
/// Index code of the expansion ROM BAR.
const ROM: u8 = 8;
/// Index code of the bridge I/O window registers (base/limit and their upper halves).
const WINDOW_IO: u8 = 9;
/// Index code of the bridge memory window register.
const WINDOW_MEMORY: u8 = 10;
/// Index code of the bridge prefetchable window registers.
const WINDOW_PREFETCHABLE: u8 = 11;
/// Index code of the first MSI or MSI-X capability; `INTERRUPT_CAP0 + k` is entry `k` of
/// `ConfigSpace::interrupt_caps`.
const INTERRUPT_CAP0: u8 = 12;

/// Bytes of the index: the 256 bytes of the conventional space, plus 3 of padding so that the
/// index of any access starting below 256 is one load from a fixed-size array (the padding, like
/// the extended space, is unwatched).
pub(super) const INDEX_BYTES: usize = 256 + 3;

/// The BAR whose dword the access covers exactly (`len` 4, dword-aligned, every lane that BAR's),
/// given the access's index codes.
///
/// Only the first lane's code is looked at: BAR registers are whole dwords, dword-aligned, and
/// the index gives every byte of them their BAR's code (only Command is listed before them, and
/// it does not overlap them; [`ConfigSpace::rebuild_watches`] checks this in debug builds), so
/// an aligned dword access whose first byte is a BAR's covers that BAR's dword exactly.
#[inline(always)]
pub(super) fn whole_bar_dword(watched: u32, start: usize, len: usize) -> Option<usize> {
    let code = watched as u8;
    (len == 4 && start % 4 == 0 && (BAR0..=BAR5).contains(&code)).then(|| (code - BAR0) as usize)
}

/// True when the access is the Command register exactly (2 bytes at its offset).
#[inline(always)]
pub(super) fn is_command_word(watched: u32, start: usize, len: usize) -> bool {
    len == 2 && start == offset::COMMAND as usize && watched == splat(COMMAND) & lanes(2)
}

/// `code` in each byte lane.
#[inline(always)]
fn splat(code: u8) -> u32 {
    code as u32 * 0x0101_0101
}

/// The byte lanes of `codes` that hold `code`, as a mask.
#[inline]
fn lanes_of(codes: u32, code: u8) -> u32 {
    (0..4)
        .filter(|lane| (codes >> (8 * lane)) as u8 == code)
        .fold(0, |m, lane| m | 0xff << (8 * lane))
}

impl ConfigSpace {
    /// The index codes of the `N` bytes at `start`, one per byte lane ([`UNWATCHED`] where no
    /// register with side effects lives).
    #[inline(always)]
    pub(super) fn watches_n<const N: usize>(&self, start: usize) -> u32 {
        if start < 256 {
            get_le::<N>(&self.watch_at, start).unwrap_or(0)
        } else {
            0
        }
    }

    /// Runs the side-effect rules of each register the write touched (`watched`, from
    /// [`watches_n`](Self::watches_n)), once each, in address order.
    #[inline(always)]
    pub(super) fn react_all(
        &mut self,
        watched: u32,
        write: &Written,
        on_event: &mut impl FnMut(ConfigEvent),
    ) {
        // Nearly every access is to one register, from its first byte: every lane has its code.
        let first = watched as u8;
        if first != UNWATCHED && watched == splat(first) & lanes(write.len) {
            self.react(first, lanes(write.len), write, on_event);
            return;
        }
        let mut rest = watched;
        while rest != 0 {
            let code = (rest >> (rest.trailing_zeros() / 8 * 8)) as u8;
            // The other lanes of the same register are handled by this one call.
            let mine = lanes_of(rest, code);
            rest &= !mine;
            self.react(code, mine, write, on_event);
        }
    }

    pub(super) fn rebuild_watches(&mut self) {
        self.interrupt_caps.clear();
        self.watch_at.fill(UNWATCHED);
        let mut list = vec![(offset::COMMAND, 2, COMMAND)];
        for (i, slot) in self.bars.iter().enumerate() {
            if let Some(s) = slot {
                let len = if s.def.kind == BarKind::Memory64 {
                    8
                } else {
                    4
                };
                list.push((offset::BAR0 + 4 * i as u16, len, BAR0 + i as u8));
            }
        }
        if self.rom.is_some() {
            list.push((self.header.rom_offset(), 4, ROM));
        }
        if self.header == HeaderType::Bridge {
            list.extend([
                (0x1c, 2, WINDOW_IO),
                (0x30, 4, WINDOW_IO),
                (0x20, 4, WINDOW_MEMORY),
                (0x24, 12, WINDOW_PREFETCHABLE),
            ]);
        }
        let (caps, _) = capability::capabilities_lenient(self.bytes());
        for c in caps.iter().filter(|c| !c.id.is_extended()) {
            let (len, msix) = match c.id {
                CapId::Standard(CapabilityId::MSI) => (c.len - 2, false),
                CapId::Standard(CapabilityId::MSIX) => (2, true),
                _ => continue,
            };
            let code = INTERRUPT_CAP0 as usize + self.interrupt_caps.len();
            let Ok(code) = u8::try_from(code) else { break };
            self.interrupt_caps.push(InterruptCap {
                control: c.offset + 2,
                msix,
            });
            list.push((c.offset + 2, len, code));
        }
        for (start, len, code) in list {
            for at in start as usize..(start + len) as usize {
                // The first register listed keeps a byte two of them claim.
                if at < 256 && self.watch_at[at] == UNWATCHED {
                    self.watch_at[at] = code;
                }
            }
        }
        // What `whole_bar_dword` relies on: a BAR code at a dword's first byte is in all four.
        debug_assert!(
            self.watch_at[..256]
                .chunks(4)
                .all(|d| { !(BAR0..=BAR5).contains(&d[0]) || d.iter().all(|&c| c == d[0]) })
        );
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

    /// The rule of the register whose index code is `code`; `mine` are the access's byte lanes
    /// that belong to it.
    #[inline(always)]
    fn react(&mut self, code: u8, mine: u32, write: &Written, ev: &mut impl FnMut(ConfigEvent)) {
        match code {
            COMMAND => {
                let new = Command(self.regs.load(offset::COMMAND as usize, 2) as u16);
                let diff = write.changed_in(offset::COMMAND as usize, 2) as u16;
                Self::command_changed(diff, new, ev);
            }
            BAR0..=BAR5 => self.react_bar((code - BAR0) as usize, write, ev),
            ROM => self.react_rom(write, ev),
            WINDOW_IO | WINDOW_MEMORY | WINDOW_PREFETCHABLE => {
                if write.changed_on(mine) {
                    let window = match code {
                        WINDOW_IO => BridgeWindow::Io,
                        WINDOW_MEMORY => BridgeWindow::Memory,
                        _ => BridgeWindow::Prefetchable,
                    };
                    ev(ConfigEvent::BridgeWindowChanged { window });
                }
            }
            _ => {
                let Some(&cap) = code
                    .checked_sub(INTERRUPT_CAP0)
                    .and_then(|k| self.interrupt_caps.get(k as usize))
                else {
                    return;
                };
                let control = self.regs.get(cap.control as usize, 2) as u16;
                if !cap.msix {
                    if write.changed_on(mine) {
                        ev(ConfigEvent::MsiChanged {
                            enabled: control & 1 != 0,
                        });
                    }
                    return;
                }
                let bits = MsixCapability::ENABLE | MsixCapability::FUNCTION_MASK;
                if write.changed_in(cap.control as usize, 2) as u16 & bits != 0 {
                    ev(ConfigEvent::MsixChanged {
                        enabled: control & MsixCapability::ENABLE != 0,
                        function_masked: control & MsixCapability::FUNCTION_MASK != 0,
                    });
                }
            }
        }
    }

    /// The events of a Command write that changed the bits `diff`, leaving `new`.
    #[inline(always)]
    pub(super) fn command_changed(diff: u16, new: Command, ev: &mut impl FnMut(ConfigEvent)) {
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

    /// [`react_bar`](Self::react_bar) for a write of the whole dword at `reg` (BAR `index`'s lower
    /// dword, or the upper one of a 64-bit BAR) with `written`, already applied to the register:
    /// the same rule, without working out which bytes of which dword the access covered, and
    /// without a branch on which dword it is.
    #[inline(always)]
    pub(super) fn bar_dword_written(
        &mut self,
        index: usize,
        reg: usize,
        written: u32,
        ev: &mut impl FnMut(ConfigEvent),
    ) {
        let Some(Some(slot)) = self.bars.get_mut(index) else {
            return;
        };
        let base = offset::BAR0 as usize + 4 * index;
        // 0 for the lower dword, 1 for the upper one (`reg` is one of the two).
        let half = (reg.wrapping_sub(base) >> 2) & 1;
        let field = slot.fields[half];
        let probing = written & field == field;
        // The other dword's flag is read before this one's is stored: reading the pair back
        // after a one-byte store would wait for the store (no store-to-load forwarding).
        let other = slot.probing[half ^ 1];
        slot.probing[half] = probing;
        if probing || other {
            return;
        }
        // Both dwords with one load (the written one was stored just before: the load waits
        // for that store, which costs less here than working out which dword is which).
        let new = self.regs.load_u64(base) & slot.address_mask;
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
