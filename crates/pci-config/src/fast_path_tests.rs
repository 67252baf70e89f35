//! The fast paths of the guest access paths against the general ones, on random functions.
//!
//! [`ConfigSpace::write_with`] and the [`VirtualizedConfig`] accesses take inlined shortcuts for
//! the accesses a guest makes most (a register with no side effects, a whole BAR dword, the
//! Command word, an aligned or all-emulated access in the view) and send everything else to the
//! general rules ([`ConfigSpace::write_general`], [`VirtualizedConfig::write_general`] and
//! [`VirtualizedConfig::read_general`]), which handle any access byte by byte through the masks
//! and each register's rule. These properties send the same random accesses (any width, any
//! offset, aligned or not) to a copy that takes the shortcuts and to one that takes only the
//! general paths, on random functions (header type, BAR layout, ROM, MSI and MSI-X, extra
//! read-write, write-1-to-clear and reserved bits, emulated and passthrough bits in the view),
//! and require the same registers, BAR and ROM state, events and device accesses: a shortcut
//! cannot drift from the rules. `tests/fast_paths.rs` checks the paths against the byte-by-byte
//! model itself.

use std::cell::RefCell;
use std::io;

use proptest::prelude::*;

use crate::capability::{BarOffset, MsiCapability, MsixCapability};
use crate::registers::load_le;
use crate::{
    BarDef, BitKind, ConfigBackend, ConfigEvent, ConfigSize, ConfigSpace, DeviceIds, HeaderType,
    RomDef, VirtualizedConfig,
};

/// One random BAR: kind (0 none, 1 I/O, 2 32-bit, 3 64-bit memory), log2 of its size, address,
/// prefetchable.
type RandomBar = (u8, u8, u64, bool);

/// Extra bits: offset (past the header), mask, kind (0 read-write, 1 write-1-to-clear,
/// 2 reserved, 3 read-only).
type RandomBits = (u16, u32, u8);

/// The parts of a random function.
#[derive(Debug, Clone)]
struct Function {
    bridge: bool,
    bars: Vec<RandomBar>,
    rom: Option<u8>,
    msi: Option<(u8, bool, bool)>,
    msix: Option<u16>,
    bits: Vec<RandomBits>,
    command: u16,
    status: u16,
}

fn function() -> impl Strategy<Value = Function> {
    (
        any::<bool>(),
        prop::collection::vec((0u8..4, 2u8..40, any::<u64>(), any::<bool>()), 6),
        prop::option::of(11u8..24),
        prop::option::of((1u8..33, any::<bool>(), any::<bool>())),
        prop::option::of(1u16..2048),
        prop::collection::vec((0x40u16..0x1000, any::<u32>(), 0u8..4), 0..8),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(
            |(bridge, bars, rom, msi, msix, bits, command, status)| Function {
                bridge,
                bars,
                rom,
                msi,
                msix,
                bits,
                command,
                status,
            },
        )
}

/// Builds the function; definitions the crate refuses (a BAR too large for its kind, a 64-bit
/// BAR in the last slot, ...) are left out, as a VMM would have to.
fn build(f: &Function) -> ConfigSpace {
    let header = if f.bridge {
        HeaderType::Bridge
    } else {
        HeaderType::Endpoint
    };
    let mut c = ConfigSpace::new(header, ConfigSize::Extended, DeviceIds::default());
    for (i, &(kind, log2, address, prefetchable)) in f.bars.iter().enumerate() {
        let size = 1u64 << log2;
        let def = match kind {
            1 => BarDef::io(size.min(256) as u32),
            2 => BarDef::memory32(size.min(1 << 31) as u32),
            3 => BarDef::memory64(size),
            _ => continue,
        };
        let def = if prefetchable && kind >= 2 {
            def.prefetchable()
        } else {
            def
        };
        let _ = c.set_bar(i, def.at(address & !(size - 1)));
    }
    if let Some(log2) = f.rom {
        let _ = c.set_rom(RomDef::new(1 << log2));
    }
    if let Some((vectors, addr64, masking)) = f.msi {
        let _ = c.add_capability(MsiCapability::new(
            vectors.next_power_of_two(),
            addr64,
            masking,
        ));
    }
    if let Some(entries) = f.msix {
        let table = BarOffset { bir: 0, offset: 0 };
        let pba = BarOffset {
            bir: 0,
            offset: 0x8000,
        };
        let _ = c.add_capability(MsixCapability::new(entries, table, pba));
    }
    for &(at, mask, kind) in &f.bits {
        let kind = [
            BitKind::ReadWrite,
            BitKind::WriteOneToClear,
            BitKind::Reserved,
            BitKind::ReadOnly,
        ][kind as usize];
        let _ = c.set_bits(at.min(0xffc), &mask.to_le_bytes(), kind);
    }
    let _ = c.set_u16(0x04, f.command);
    let _ = c.set_u16(0x06, f.status);
    c
}

/// Any guest access: offset (aligned or not, mostly in the header and the standard
/// capabilities, sometimes past the end), width 1, 2 or 4, value: often all ones (a sizing
/// probe) or all ones but in the low bits (a probe of a memory or I/O BAR's address field only,
/// which is still a probe of a lower dword and not of an upper one).
fn access() -> impl Strategy<Value = (u16, usize, u32)> {
    (
        prop_oneof![4 => 0u16..0x100, 1 => 0u16..4100],
        prop_oneof![Just(1usize), Just(2), Just(4)],
        prop_oneof![
            Just(u32::MAX),
            Just(0),
            (0u32..16).prop_map(|low| !0xf | low),
            any::<u32>()
        ],
    )
}

/// The state a write can change that the VMM sees.
fn state(c: &ConfigSpace) -> (Vec<u8>, Vec<crate::BarInfo>, Option<crate::RomInfo>) {
    (c.bytes().to_vec(), c.bars(), c.rom())
}

/// A device that records every access it gets; its bytes start as the function's.
struct Recorder {
    bytes: RefCell<Vec<u8>>,
    log: RefCell<Vec<(char, u16, usize)>>,
}

impl Recorder {
    fn new(bytes: &[u8]) -> Self {
        Recorder {
            bytes: RefCell::new(bytes.to_vec()),
            log: RefCell::new(Vec::new()),
        }
    }
}

impl ConfigBackend for Recorder {
    fn read(&self, offset: u16, data: &mut [u8]) -> io::Result<()> {
        self.log.borrow_mut().push(('r', offset, data.len()));
        let at = offset as usize;
        data.copy_from_slice(&self.bytes.borrow()[at..at + data.len()]);
        Ok(())
    }

    fn write(&self, offset: u16, data: &[u8]) -> io::Result<()> {
        self.log.borrow_mut().push(('w', offset, data.len()));
        let at = offset as usize;
        self.bytes.borrow_mut()[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `ConfigSpace`: every write through `write_with` (its shortcuts) leaves the same
    /// registers, BARs and ROM and reports the same events as the general rules; every read
    /// returns the register bytes.
    #[test]
    fn config_space_shortcuts_agree_with_the_general_rules(
        f in function(),
        accesses in prop::collection::vec(access(), 1..64),
    ) {
        let mut fast = build(&f);
        let mut general = fast.clone();
        for (o, w, v) in accesses {
            let (at, data) = (o as usize, &v.to_le_bytes()[..w]);
            let fits = at + w <= general.len();
            let mut buf = [0u8; 4];
            let read = fast.read(o, &mut buf[..w]);
            prop_assert_eq!(read.is_ok(), fits);
            if fits {
                prop_assert_eq!(&buf[..w], &general.bytes()[at..at + w]);
            }
            // The by-value reads give the same bytes, and refuse the same accesses.
            let by_value = match w {
                4 => Some(fast.read_u32(o).map(u32::to_le_bytes)),
                2 => Some(fast.read_u16(o).map(|v| [v as u8, (v >> 8) as u8, 0, 0])),
                _ => None,
            };
            if let Some(v) = by_value {
                prop_assert_eq!(v.is_ok(), fits);
                if let Ok(v) = v {
                    prop_assert_eq!(&v[..w], &buf[..w]);
                }
            }
            let mut seen = Vec::new();
            let wrote = fast.write_with(o, data, |e| seen.push(e));
            prop_assert_eq!(wrote.is_ok(), fits);
            let mut want: Vec<ConfigEvent> = Vec::new();
            if fits {
                general.write_general(at, load_le(data, 0, w), w, &mut |e| want.push(e));
            }
            prop_assert_eq!(&seen, &want, "write of {:x?} at {:#x}", data, o);
            prop_assert_eq!(state(&fast), state(&general), "write of {:x?} at {:#x}", data, o);
        }
    }

    /// `VirtualizedConfig`: reads and writes through the shortcuts give the guest the same
    /// bytes, the model the same state, the VMM the same events, and the device the same
    /// accesses (one per naturally aligned piece) and bytes as the general paths.
    #[test]
    fn virtualized_shortcuts_agree_with_the_general_paths(
        f in function(),
        device in prop::collection::vec(any::<u8>(), 4096),
        masks in prop::collection::vec((0u16..0x1000, any::<u32>(), any::<bool>()), 0..8),
        accesses in prop::collection::vec(access(), 1..64),
    ) {
        let model = build(&f);
        let (dev_fast, dev_general) = (Recorder::new(&device), Recorder::new(&device));
        let mut fast = VirtualizedConfig::passthrough(model.clone(), &dev_fast);
        let mut general = VirtualizedConfig::passthrough(model, &dev_general);
        for &(at, mask, emulate) in &masks {
            let (at, mask) = (at.min(0xffc), mask.to_le_bytes());
            for v in [&mut fast, &mut general] {
                let _ = if emulate { v.emulate(at, &mask) } else { v.pass_through(at, &mask) };
            }
        }
        for (o, w, v) in accesses {
            let (at, data) = (o as usize, &v.to_le_bytes()[..w]);
            let fits = at + w <= 4096;
            let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
            let read = fast.read(o, &mut a[..w]);
            let read_general = general.read_general(o, &mut b[..w]);
            prop_assert_eq!(read.is_ok(), fits);
            prop_assert_eq!(read_general.is_ok(), fits);
            prop_assert_eq!(a, b, "read of {} bytes at {:#x}", w, o);
            // The by-value reads: the same bytes, refusals and device accesses (the general
            // copy reads again to keep the two logs in step).
            let by_value = match w {
                4 => Some(fast.read_u32(o).map(u32::to_le_bytes)),
                2 => Some(fast.read_u16(o).map(|v| [v as u8, (v >> 8) as u8, 0, 0])),
                _ => None,
            };
            if let Some(v) = by_value {
                let _ = general.read_general(o, &mut b[..w]);
                prop_assert_eq!(v.is_ok(), fits);
                if let Ok(v) = v {
                    prop_assert_eq!(&v[..w], &a[..w], "by-value read of {} bytes at {:#x}", w, o);
                }
                prop_assert_eq!(&*dev_fast.log.borrow(), &*dev_general.log.borrow());
            }
            let mut seen = Vec::new();
            let wrote = fast.write_with(o, data, |e| seen.push(e));
            prop_assert_eq!(wrote.is_ok(), fits);
            let mut want: Vec<ConfigEvent> = Vec::new();
            if fits {
                general.write_general(at, load_le(data, 0, w), w, &mut |e| want.push(e));
            }
            prop_assert_eq!(&seen, &want, "write of {:x?} at {:#x}", data, o);
            prop_assert_eq!(state(fast.model()), state(general.model()));
            prop_assert_eq!(&*dev_fast.log.borrow(), &*dev_general.log.borrow());
            prop_assert_eq!(&*dev_fast.bytes.borrow(), &*dev_general.bytes.borrow());
        }
    }
}
