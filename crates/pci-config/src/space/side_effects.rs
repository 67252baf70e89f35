//! Side effects of guest writes: a per-byte index of the registers that matter (Command, BARs,
//! ROM, bridge windows, MSI, MSI-X) and the rules that turn a write into [`ConfigEvent`]s.
//! Everything else is plain mask-driven register behaviour.

use super::{ConfigSpace, Watch, WatchKind};
use crate::bar::{BarKind, flags, probe_field};
use crate::capability::{self, CapId, CapabilityId, MsixCapability};
use crate::events::{BridgeWindow, ConfigEvent, ConfigEvents};
use crate::header::{Command, HeaderType, offset};

impl ConfigSpace {
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

    /// Value of the `width`-byte register at `reg` before the write (written bytes taken from
    /// `before`, the rest unchanged).
    fn old_value(&self, reg: usize, width: usize, start: usize, before: &[u8]) -> u32 {
        let mut v = 0u32;
        for i in 0..width {
            let at = reg + i;
            let b = if at >= start && at < start + before.len() {
                before[at - start]
            } else {
                self.regs.bytes()[at]
            };
            v |= (b as u32) << (8 * i);
        }
        v
    }

    /// The dword at `reg` as the guest wrote it: written bytes where the access covered the
    /// dword, current register bytes elsewhere.
    fn written_dword(&self, reg: usize, start: usize, data: &[u8]) -> Option<u32> {
        if start + data.len() <= reg || start >= reg + 4 {
            return None;
        }
        let mut v = 0u32;
        for i in 0..4 {
            let at = reg + i;
            let b = if at >= start && at < start + data.len() {
                data[at - start]
            } else {
                self.regs.bytes()[at]
            };
            v |= (b as u32) << (8 * i);
        }
        Some(v)
    }

    fn changed(&self, w: &Watch, start: usize, before: &[u8]) -> bool {
        (0..before.len()).any(|i| {
            let at = start + i;
            at >= w.start as usize
                && at < (w.start + w.len) as usize
                && before[i] != self.regs.bytes()[at]
        })
    }

    pub(super) fn react(
        &mut self,
        w: Watch,
        start: usize,
        data: &[u8],
        before: &[u8],
        ev: &mut ConfigEvents,
    ) {
        match w.kind {
            WatchKind::Command => {
                let old =
                    Command(self.old_value(offset::COMMAND as usize, 2, start, before) as u16);
                let new = self.command();
                let diff = old.0 ^ new.0;
                if diff & (Command::MEMORY | Command::IO) != 0 {
                    ev.push(ConfigEvent::DecodeChanged {
                        memory: new.memory(),
                        io: new.io(),
                    });
                }
                if diff & Command::BUS_MASTER != 0 {
                    ev.push(ConfigEvent::BusMasterChanged {
                        enabled: new.bus_master(),
                    });
                }
                if diff & Command::INTX_DISABLE != 0 {
                    ev.push(ConfigEvent::IntxDisableChanged {
                        disabled: new.intx_disabled(),
                    });
                }
            }
            WatchKind::Bar(i) => self.react_bar(i as usize, start, data, ev),
            WatchKind::Rom => self.react_rom(start, data, before, ev),
            WatchKind::Window(window) => {
                if self.changed(&w, start, before) {
                    ev.push(ConfigEvent::BridgeWindowChanged { window });
                }
            }
            WatchKind::Msi => {
                if self.changed(&w, start, before) {
                    let control = self.regs.get(w.start as usize, 2);
                    ev.push(ConfigEvent::MsiChanged {
                        enabled: control & 1 != 0,
                    });
                }
            }
            WatchKind::Msix => {
                let old = self.old_value(w.start as usize, 2, start, before) as u16;
                let new = self.regs.get(w.start as usize, 2) as u16;
                let bits = MsixCapability::ENABLE | MsixCapability::FUNCTION_MASK;
                if (old ^ new) & bits != 0 {
                    ev.push(ConfigEvent::MsixChanged {
                        enabled: new & MsixCapability::ENABLE != 0,
                        function_masked: new & MsixCapability::FUNCTION_MASK != 0,
                    });
                }
            }
        }
    }

    fn react_bar(&mut self, index: usize, start: usize, data: &[u8], ev: &mut ConfigEvents) {
        let Some(mut slot) = self.bars[index] else {
            return;
        };
        let halves = if slot.def.kind == BarKind::Memory64 {
            2
        } else {
            1
        };
        for half in 0..halves {
            let reg = offset::BAR0 as usize + 4 * (index + half);
            if let Some(written) = self.written_dword(reg, start, data) {
                let field = probe_field(Some(slot.def.kind), half == 1);
                slot.probing[half] = written & field == field;
            }
        }
        if !slot.probing.iter().any(|&p| p) {
            let new = self.bar_register_address(index, slot.def.kind);
            if new != slot.def.address {
                ev.push(ConfigEvent::BarMoved {
                    bar: index as u8,
                    old: slot.def.address,
                    new,
                });
                slot.def.address = new;
            }
        }
        self.bars[index] = Some(slot);
    }

    fn react_rom(&mut self, start: usize, data: &[u8], before: &[u8], ev: &mut ConfigEvents) {
        let Some(mut slot) = self.rom else { return };
        let reg = self.header.rom_offset() as usize;
        let now = self.regs.get(reg, 4);
        if let Some(written) = self.written_dword(reg, start, data) {
            let field = probe_field(None, false);
            slot.probing = written & field == field;
        }
        if !slot.probing {
            let new = now & flags::ROM_ADDRESS_MASK;
            if new != slot.committed {
                ev.push(ConfigEvent::RomMoved {
                    old: slot.committed,
                    new,
                });
                slot.committed = new;
            }
        }
        let old = self.old_value(reg, 4, start, before);
        if (old ^ now) & flags::ROM_ENABLE != 0 {
            ev.push(ConfigEvent::RomEnableChanged {
                enabled: now & flags::ROM_ENABLE != 0,
            });
        }
        self.rom = Some(slot);
    }
}
