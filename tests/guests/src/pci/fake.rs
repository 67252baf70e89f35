//! A fake configuration space for host unit tests: functions with BARs that size like hardware,
//! a writable command register, and a capability list.

use std::collections::BTreeMap;

use super::{Bdf, ConfigSpace, reg};

#[derive(Clone)]
pub struct FakeFunction {
    pub config: [u8; 256],
    /// Per BAR: (size, is 64-bit, is I/O).
    pub bars: [Option<(u64, bool, bool)>; 6],
    pub writes: usize,
    pub ignore_bar_writes: bool,
}

impl FakeFunction {
    pub fn new(vendor: u16, device: u16, class: u32) -> Self {
        let mut f = FakeFunction {
            config: [0; 256],
            bars: [None; 6],
            writes: 0,
            ignore_bar_writes: false,
        };
        f.put16(0, vendor);
        f.put16(2, device);
        f.put32(8, class << 8); // revision 0
        f
    }

    pub fn set_multifunction(&mut self) {
        self.config[0x0e] |= 0x80;
    }

    pub fn put16(&mut self, off: usize, v: u16) {
        self.config[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    pub fn put32(&mut self, off: usize, v: u32) {
        self.config[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub fn get32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.config[off..off + 4].try_into().unwrap())
    }

    /// A memory BAR of `size` bytes at index `i` (and `i + 1` for the high half of a 64-bit one).
    pub fn memory_bar(&mut self, i: usize, size: u64, is64: bool, prefetchable: bool) {
        self.bars[i] = Some((size, is64, false));
        let flags = if is64 { 0b100 } else { 0 } | if prefetchable { 0b1000 } else { 0 };
        self.put32(0x10 + 4 * i, flags);
    }

    pub fn io_bar(&mut self, i: usize, size: u64) {
        self.bars[i] = Some((size, false, true));
        self.put32(0x10 + 4 * i, 1);
    }

    /// Appends a capability with `body` (after the ID and next bytes) at `offset`.
    pub fn add_capability(&mut self, offset: u8, id: u8, body: &[u8]) {
        self.config[0x06] |= reg::STATUS_CAPABILITIES as u8;
        // Link from the end of the current list.
        let mut at = 0x34usize;
        while self.config[at] != 0 {
            at = usize::from(self.config[at]) + 1;
        }
        self.config[at] = offset;
        let o = usize::from(offset);
        self.config[o] = id;
        self.config[o + 1] = 0;
        self.config[o + 2..o + 2 + body.len()].copy_from_slice(body);
    }

    fn write_dword(&mut self, off: usize, value: u32) {
        self.writes += 1;
        let index = (off.wrapping_sub(0x10)) / 4;
        if (0x10..0x28).contains(&off) {
            if self.ignore_bar_writes {
                return;
            }
            // A BAR, or the high half of a 64-bit BAR.
            if let Some((size, is64, io)) = self.bars[index] {
                let low_flags = self.get32(off) & if io { 0x3 } else { 0xf };
                let mask = !(size.max(16) - 1) as u32 & if io { !0x3 } else { !0xf };
                let _ = is64;
                self.put32(off, (value & mask) | low_flags);
                return;
            }
            if index > 0 {
                if let Some((size, true, _)) = self.bars[index - 1] {
                    let mask = (!(size - 1) >> 32) as u32;
                    self.put32(off, value & mask);
                    return;
                }
            }
            return; // unimplemented BAR: reads 0
        }
        if off < 0x10 && off != 0x04 {
            return; // IDs, class, header: read-only (status is RW1C: ignored here)
        }
        if off == 0x04 {
            // Command is writable, status is not.
            let status = self.get32(4) & 0xffff_0000;
            self.put32(4, status | (value & 0xffff));
            return;
        }
        self.put32(off, value);
    }
}

#[derive(Default)]
pub struct FakeBus {
    pub functions: BTreeMap<(u8, u8, u8), FakeFunction>,
}

impl FakeBus {
    pub fn add(&mut self, bdf: Bdf, f: FakeFunction) {
        self.functions
            .insert((bdf.bus, bdf.device, bdf.function), f);
    }

    pub fn get(&mut self, bdf: Bdf) -> &mut FakeFunction {
        self.functions
            .get_mut(&(bdf.bus, bdf.device, bdf.function))
            .expect("no such fake function")
    }

    fn read(&mut self, bdf: Bdf, offset: u16) -> u32 {
        match self.functions.get(&(bdf.bus, bdf.device, bdf.function)) {
            Some(f) => f.get32(usize::from(offset & !3)),
            None => 0xffff_ffff,
        }
    }

    fn write(&mut self, bdf: Bdf, offset: u16, value: u32, mask: u32) {
        if let Some(f) = self.functions.get_mut(&(bdf.bus, bdf.device, bdf.function)) {
            let off = usize::from(offset & !3);
            let shift = u32::from(offset & 3) * 8;
            let old = f.get32(off);
            f.write_dword(off, (old & !(mask << shift)) | ((value & mask) << shift));
        }
    }
}

impl ConfigSpace for FakeBus {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        self.read(bdf, offset)
    }
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        self.write(bdf, offset, value, 0xffff_ffff);
    }
    fn read16(&mut self, bdf: Bdf, offset: u16) -> u16 {
        (self.read(bdf, offset) >> ((offset & 2) * 8)) as u16
    }
    fn write16(&mut self, bdf: Bdf, offset: u16, value: u16) {
        self.write(bdf, offset, u32::from(value), 0xffff);
    }
    fn read8(&mut self, bdf: Bdf, offset: u16) -> u8 {
        (self.read(bdf, offset) >> ((offset & 3) * 8)) as u8
    }
}
