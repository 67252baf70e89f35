//! Decodes raw fuzzer bytes into a planner input: mostly plausible layouts, with enough odd
//! values (bad indices, sizes that are not powers of two, sparse areas past the BAR, MSI-X
//! fields out of range) to reach every validation path. Shared by the `trap_plan` fuzz target
//! and a property test, so CI without nightly runs the same code.

#![allow(dead_code)]

use pci_config::BarKind;
use trap_map::{DeviceLayout, HostBar, MmapArea, MsixInfo, MsixRelocation, PageSize, Policy};

/// Reads bytes, yielding zeros once the input is used up.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
}

/// The planner input encoded in `data`.
pub fn plan_input(data: &[u8]) -> (DeviceLayout, PageSize, Policy) {
    let mut b = Bytes(data);
    let page = PageSize::ALL[usize::from(b.u8() % 3)];
    let flags = b.u8();
    let msix_relocation = match (flags >> 2) % 12 {
        0..=3 => MsixRelocation::Off,
        4 | 5 => MsixRelocation::Auto,
        n => MsixRelocation::Bar(n - 6 + u8::from(flags == 0xff)), // bar6 (invalid) now and then
    };
    let policy = Policy {
        trap_all: flags & 0x41 == 0x41,
        trap_pba: flags & 2 != 0,
        msix_relocation,
    };

    // One byte per slot picks empty / I/O / mem32 / mem64; the top bits set ("chaos") give an
    // implausible BAR (1 in 32: any index, any size, raw sparse areas) to reach the validation paths.
    let mut bars = Vec::new();
    let mut slot = 0u8;
    while slot < 6 {
        let head = b.u8();
        let chaos = head & 0xf8 == 0xf8;
        let kind = match head % 4 {
            0 => {
                slot += 1;
                continue;
            }
            1 => BarKind::Io,
            2 => BarKind::Memory32,
            _ if slot == 5 && !chaos => BarKind::Memory32,
            _ => BarKind::Memory64,
        };
        let shape = b.u8();
        let index = if chaos { shape % 7 } else { slot };
        let size: u64 = if chaos && shape & 0x80 != 0 {
            b.u64()
        } else if kind == BarKind::Io {
            1 << (2 + u32::from(shape) % 7)
        } else if chaos {
            1 << (4 + u32::from(shape) % 60)
        } else {
            1 << (4 + u32::from(shape) % 21)
        };
        let flags = b.u8();
        let mut bar = HostBar {
            index,
            size,
            kind,
            prefetchable: flags & 1 != 0,
            mmappable: flags & 0x0e != 0,
            sparse_mmap: None,
            msix_mappable: flags & 0x10 != 0,
        };
        if flags & 0x60 == 0x60 {
            let sparse = (0..1 + flags % 4)
                .map(|_| {
                    let (o, s, raw) = (b.u64(), b.u64(), b.u8());
                    if chaos || size == 0 {
                        return MmapArea { offset: o, size: s };
                    }
                    let mut offset = o % size;
                    let mut len = 1 + s % (size - offset);
                    if raw & 1 != 0 {
                        offset &= !0xfff;
                        len = (len & !0xfff).max(0x1000).min(size - offset);
                    }
                    MmapArea { offset, size: len }
                })
                .collect();
            bar.sparse_mmap = Some(sparse);
        }
        bars.push(bar);
        slot += if kind == BarKind::Memory64 && !chaos {
            2
        } else {
            1
        };
    }

    let msix = (b.u8() % 8 != 0).then(|| {
        let mode = b.u8();
        let chaos = mode & 0xf0 == 0xf0;
        let entries = if chaos {
            (b.u32() % 2100) as u16
        } else if mode & 1 != 0 {
            1 + (b.u32() % 2048) as u16
        } else {
            1 + (b.u32() % 64) as u16
        };
        let table_len = u64::from(entries) * 16;
        let pba_len = u64::from(entries).div_ceil(64) * 8;
        let memory: Vec<&HostBar> = bars.iter().filter(|x| x.kind.is_memory()).collect();
        let structure = |b: &mut Bytes<'_>, len: u64, page_aligned: bool| {
            let pick = b.u8();
            let raw = b.u32();
            match memory.get(usize::from(pick) % memory.len().max(1)) {
                Some(x) if !chaos && x.size >= len => {
                    let offset = u64::from(raw) % (x.size - len + 1);
                    let offset = if page_aligned {
                        offset & !0xfff
                    } else {
                        offset & !7
                    };
                    (x.index, offset as u32)
                }
                _ => (pick % 7, raw),
            }
        };
        let (table_bar, table_offset) = structure(&mut b, table_len, mode & 2 != 0);
        let (pba_bar, pba_offset) = if mode & 4 != 0 {
            // Right after the table, often on the same page.
            (table_bar, table_offset.wrapping_add(table_len as u32))
        } else {
            structure(&mut b, pba_len, mode & 8 != 0)
        };
        MsixInfo {
            entries,
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
        }
    });
    (DeviceLayout { bars, msix }, page, policy)
}
