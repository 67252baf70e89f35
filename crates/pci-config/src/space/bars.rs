//! BAR and expansion ROM definitions of a [`ConfigSpace`].

use super::{BarInfo, BarSlot, ConfigSpace, RomInfo, RomSlot};
use crate::bar::{BarDef, BarError, BarKind, RomDef, flags};
use crate::header::offset;
use crate::registers::BitKind;

impl ConfigSpace {
    /// Defines BAR `index`: writes its flags and initial address and installs the write mask
    /// that gives natural alignment and the sizing protocol. A 64-bit BAR also takes BAR
    /// `index + 1`. Replaces any earlier definition of the slot(s).
    pub fn set_bar(&mut self, index: usize, def: BarDef) -> Result<(), BarError> {
        let count = self.header.bar_count();
        if index >= count {
            return Err(BarError::NoSuchBar {
                index,
                header: self.header.register_value(),
                count,
            });
        }
        if index > 0 && self.bars[index - 1].is_some_and(|s| s.def.kind == BarKind::Memory64) {
            return Err(BarError::UpperHalf {
                index,
                lower: index - 1,
            });
        }
        def.validate(index)?;
        if def.kind == BarKind::Memory64 && index + 1 >= count {
            return Err(BarError::NoRoomForUpperHalf { index });
        }
        self.clear_bar_slot(index);
        if def.kind == BarKind::Memory64 {
            self.clear_bar_slot(index + 1);
        }
        let reg = offset::BAR0 + 4 * index as u16;
        let mask = def.write_mask();
        let (lo, hi) = def.encode(def.address);
        let _ = self.regs.set_bits_u32(reg, mask as u32, BitKind::ReadWrite);
        let _ = self.regs.set(reg, &lo.to_le_bytes());
        if def.kind == BarKind::Memory64 {
            let _ = self
                .regs
                .set_bits_u32(reg + 4, (mask >> 32) as u32, BitKind::ReadWrite);
            let _ = self.regs.set(reg + 4, &hi.to_le_bytes());
        }
        self.bars[index] = Some(BarSlot::new(def));
        self.rebuild_watches();
        Ok(())
    }

    /// Removes the definition of BAR `index` (and its upper half): the register(s) read as zero,
    /// i.e. an unimplemented BAR.
    pub fn clear_bar(&mut self, index: usize) {
        if index < self.header.bar_count() {
            self.clear_bar_slot(index);
            self.rebuild_watches();
        }
    }

    fn clear_bar_slot(&mut self, index: usize) {
        if index >= self.header.bar_count() {
            return;
        }
        // If this slot was the lower half of a 64-bit BAR, its upper half goes too.
        let was64 = self.bars[index].is_some_and(|s| s.def.kind == BarKind::Memory64);
        let slots = if was64 { 2 } else { 1 };
        for i in index..(index + slots).min(self.header.bar_count()) {
            let reg = offset::BAR0 + 4 * i as u16;
            let _ = self.regs.set_bits_u32(reg, u32::MAX, BitKind::ReadOnly);
            let _ = self.regs.set(reg, &[0; 4]);
            self.bars[i] = None;
        }
    }

    /// BAR `index`, if defined.
    pub fn bar(&self, index: usize) -> Option<BarInfo> {
        let slot = self.bars.get(index).copied().flatten()?;
        Some(BarInfo {
            index: index as u8,
            kind: slot.def.kind,
            prefetchable: slot.def.prefetchable,
            size: slot.def.size,
            address: slot.def.address,
            sizing: slot.probing.iter().any(|&p| p),
        })
    }

    /// All defined BARs, by index.
    pub fn bars(&self) -> Vec<BarInfo> {
        (0..self.header.bar_count())
            .filter_map(|i| self.bar(i))
            .collect()
    }

    /// Defines the expansion ROM BAR.
    pub fn set_rom(&mut self, def: RomDef) -> Result<(), BarError> {
        def.validate()?;
        let reg = self.header.rom_offset();
        let _ = self.regs.set_bits_u32(reg, u32::MAX, BitKind::ReadOnly);
        let _ = self
            .regs
            .set_bits_u32(reg, def.write_mask(), BitKind::ReadWrite);
        let v = def.address | if def.enabled { flags::ROM_ENABLE } else { 0 };
        let _ = self.regs.set(reg, &v.to_le_bytes());
        self.rom = Some(RomSlot {
            size: def.size,
            committed: def.address,
            probing: false,
        });
        self.rebuild_watches();
        Ok(())
    }

    /// The expansion ROM, if defined.
    pub fn rom(&self) -> Option<RomInfo> {
        let slot = self.rom?;
        let reg = self.regs.get(self.header.rom_offset() as usize, 4);
        Some(RomInfo {
            size: slot.size,
            address: slot.committed,
            enabled: reg & flags::ROM_ENABLE != 0,
            sizing: slot.probing,
        })
    }
}
