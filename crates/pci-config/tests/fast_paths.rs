//! The access paths work a whole 1-, 2- or 4-byte access at a time (one load or store of that
//! width, events from the word of changed bits). These properties check them against the
//! byte-by-byte model the crate documents, for every width and every offset, aligned or not:
//! each byte goes through its own masks, reads return the register bytes (merged per bit with
//! the device's in the virtualized view), and the events of a write are exactly the changes of
//! the state the VMM can observe.

mod common;

use common::{MockDevice, passthrough_view};
use proptest::prelude::*;

use pci_config::{ConfigEvent, ConfigSpace};

/// The shared rich device with some write-1-to-clear Status bits set, so clearing is exercised.
fn rich_device() -> ConfigSpace {
    let mut c = common::rich_device();
    c.set_u16(0x06, c.status().0 | 0xf900).unwrap();
    c
}

/// Any guest access: offset (aligned or not, biased to the header and standard capabilities),
/// width 1, 2 or 4, value.
fn access() -> impl Strategy<Value = (u16, usize, u32)> {
    (
        prop_oneof![3 => 0u16..0x100, 1 => 0u16..4096],
        prop_oneof![Just(1usize), Just(2), Just(4)],
        prop_oneof![Just(u32::MAX), Just(0), any::<u32>()],
    )
}

/// What one byte becomes when the guest writes `v` to it, by the masks alone.
fn byte_write(space: &ConfigSpace, at: usize, v: u8) -> u8 {
    let regs = space.registers();
    let (old, w, c) = (space.bytes()[at], regs.wmask()[at], regs.w1cmask()[at]);
    ((old & !w) | (v & w)) & !(v & c)
}

/// The state the events describe: committed BAR addresses, the ROM, Command, the MSI registers
/// and the MSI-X Message Control bits.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    bars: Vec<(u8, u64)>,
    rom: (u32, bool),
    command: u16,
    msi: Vec<u8>,
    msix: u16,
}

fn observe(c: &ConfigSpace) -> Observed {
    let msi = c.msi().unwrap();
    let msix = c.msix().unwrap().offset as usize;
    let rom = c.rom().unwrap();
    let msi_regs = msi.offset as usize + 2..msi.offset as usize + msi.len() as usize;
    Observed {
        bars: c.bars().iter().map(|b| (b.index, b.address)).collect(),
        rom: (rom.address, rom.enabled),
        command: c.command().0,
        msi: c.bytes()[msi_regs].to_vec(),
        msix: u16::from_le_bytes([c.bytes()[msix + 2], c.bytes()[msix + 3]]),
    }
}

/// The events that describe the change from `a` to `b`.
fn expected_events(a: &Observed, b: &Observed, after: &ConfigSpace) -> Vec<ConfigEvent> {
    let mut ev = Vec::new();
    let cmd = a.command ^ b.command;
    let now = after.command();
    if cmd & 0b11 != 0 {
        ev.push(ConfigEvent::DecodeChanged {
            memory: now.memory(),
            io: now.io(),
        });
    }
    if cmd & 0b100 != 0 {
        ev.push(ConfigEvent::BusMasterChanged {
            enabled: now.bus_master(),
        });
    }
    if cmd & 0x400 != 0 {
        ev.push(ConfigEvent::IntxDisableChanged {
            disabled: now.intx_disabled(),
        });
    }
    for (&(bar, old), &(_, new)) in a.bars.iter().zip(&b.bars) {
        if old != new {
            ev.push(ConfigEvent::BarMoved { bar, old, new });
        }
    }
    if a.rom.0 != b.rom.0 {
        ev.push(ConfigEvent::RomMoved {
            old: a.rom.0,
            new: b.rom.0,
        });
    }
    if a.rom.1 != b.rom.1 {
        ev.push(ConfigEvent::RomEnableChanged { enabled: b.rom.1 });
    }
    if a.msi != b.msi {
        ev.push(ConfigEvent::MsiChanged {
            enabled: b.msi[0] & 1 != 0,
        });
    }
    if (a.msix ^ b.msix) & 0xc000 != 0 {
        ev.push(ConfigEvent::MsixChanged {
            enabled: b.msix & 0x8000 != 0,
            function_masked: b.msix & 0x4000 != 0,
        });
    }
    ev
}

fn sorted(mut v: Vec<ConfigEvent>) -> Vec<String> {
    let mut s: Vec<String> = v.drain(..).map(|e| format!("{e:?}")).collect();
    s.sort();
    s
}

/// The sizing-probe rule, dword by dword (PCI 3.0 §6.2.5.1, as `ConfigSpace` documents it): a
/// write that leaves every bit of a BAR dword's address field set, counting the bytes it did not
/// cover at their current value, starts a probe of that dword; any other write to it ends the
/// probe. A BAR commits its register address when none of its dwords is probing.
#[derive(Debug, Clone, Default)]
struct Probes {
    /// Per BAR register 0..6 and the ROM (index 6).
    probing: [bool; 7],
}

impl Probes {
    /// (register offset, address field, index of the BAR it belongs to) of `c`'s BAR dwords
    /// and ROM.
    fn dwords(c: &ConfigSpace) -> Vec<(usize, u32, usize)> {
        let mut v = Vec::new();
        for b in c.bars() {
            let i = b.index as usize;
            match b.kind {
                pci_config::BarKind::Io => v.push((0x10 + 4 * i, !0x3, i)),
                pci_config::BarKind::Memory32 => v.push((0x10 + 4 * i, !0xf, i)),
                pci_config::BarKind::Memory64 => {
                    v.push((0x10 + 4 * i, !0xf, i));
                    v.push((0x14 + 4 * i, !0, i));
                }
            }
        }
        v.push((0x30, !0x7ff, 6));
        v
    }

    /// Applies the rule to a write of `data` at `at` (already applied to `c`); returns the
    /// committed addresses the rule gives: the register's where no dword of the BAR probes,
    /// `before`'s elsewhere.
    fn write(&mut self, c: &ConfigSpace, at: usize, data: &[u8], before: &Observed) -> Observed {
        let dwords = Self::dwords(c);
        let mut regs = [0u32; 7];
        for &(reg, field, i) in &dwords {
            let mut written = [0u8; 4];
            written.copy_from_slice(&c.bytes()[reg..reg + 4]);
            let mut touched = false;
            for (k, &d) in data.iter().enumerate() {
                if (reg..reg + 4).contains(&(at + k)) {
                    written[at + k - reg] = d;
                    touched = true;
                }
            }
            if touched {
                let dword = (reg - 0x10) / 4;
                let slot = if i == 6 { 6 } else { dword };
                self.probing[slot] = u32::from_le_bytes(written) & field == field;
            }
            regs[if i == 6 { 6 } else { (reg - 0x10) / 4 }] =
                u32::from_le_bytes(c.bytes()[reg..reg + 4].try_into().unwrap());
        }
        let mut want = observe(c);
        for (k, bar) in want.bars.iter_mut().enumerate() {
            let i = bar.0 as usize;
            let is64 = c.bar(i).unwrap().kind == pci_config::BarKind::Memory64;
            let probing = self.probing[i] || is64 && self.probing[i + 1];
            bar.1 = if probing {
                before.bars[k].1
            } else {
                let field = dwords.iter().find(|d| d.0 == 0x10 + 4 * i).unwrap().1;
                let hi = if is64 { (regs[i + 1] as u64) << 32 } else { 0 };
                hi | (regs[i] & field) as u64
            };
        }
        want.rom.0 = if self.probing[6] {
            before.rom.0
        } else {
            regs[6] & !0x7ff
        };
        want
    }
}

/// Checks one write of `data` at `o` on `c` against the byte-by-byte model and the event rule.
fn check_write(
    c: &mut ConfigSpace,
    probes: &mut Probes,
    o: u16,
    data: &[u8],
) -> Result<(), TestCaseError> {
    let at = o as usize;
    let fits = at + data.len() <= c.len();
    let mut expected = c.bytes().to_vec();
    if fits {
        for (i, &v) in data.iter().enumerate() {
            expected[at + i] = byte_write(c, at + i, v);
        }
    }
    let seen = observe(c);
    let mut events = Vec::new();
    let result = c.write_with(o, data, |e| events.push(e));
    prop_assert_eq!(result.is_ok(), fits);
    prop_assert_eq!(c.bytes(), &expected[..], "write of {:x?} at {:#x}", data, o);
    if fits {
        let committed = probes.write(c, at, data, &seen);
        prop_assert_eq!(&observe(c), &committed, "write of {:x?} at {:#x}", data, o);
    }
    let want = expected_events(&seen, &observe(c), c);
    prop_assert_eq!(
        sorted(events),
        sorted(want),
        "write of {:x?} at {:#x}",
        data,
        o
    );
    Ok(())
}

/// Checks one read of `len` bytes at `o` against the register bytes.
fn check_read(c: &ConfigSpace, o: u16, len: usize) -> Result<(), TestCaseError> {
    let at = o as usize;
    let mut buf = [0x5au8; 4];
    let result = c.read(o, &mut buf[..len]);
    if at + len <= c.len() {
        prop_assert!(result.is_ok());
        prop_assert_eq!(&buf[..len], &c.bytes()[at..at + len]);
    } else {
        prop_assert!(result.is_err());
        prop_assert_eq!(&buf[..len], &[0xff; 4][..len]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of accesses of any width at any offset: every write lands byte by byte
    /// through the masks and reports exactly the state changes, every read returns the bytes.
    #[test]
    fn accesses_agree_with_the_byte_model(accesses in prop::collection::vec(access(), 1..48)) {
        let mut c = rich_device();
        let mut probes = Probes::default();
        for (o, w, v) in accesses {
            check_read(&c, o, w)?;
            check_write(&mut c, &mut probes, o, &v.to_le_bytes()[..w])?;
        }
    }

    /// Through the passthrough view, for any width and offset: a read merges model and device
    /// per bit, and a write forwards exactly the passthrough bits of the bytes that have any
    /// (emulated bits of a mixed byte carry the device's value, write-1-to-clear ones 0).
    #[test]
    fn virtualized_accesses_agree_with_the_byte_model(
        accesses in prop::collection::vec(access(), 1..48),
    ) {
        let dev = MockDevice::new(rich_device().bytes());
        let mut v = passthrough_view(&dev);
        for (o, w, val) in accesses {
            let at = o as usize;
            if at + w > 4096 {
                continue;
            }
            let emu = v.emulated_mask()[at..at + w].to_vec();
            let mut buf = [0u8; 4];
            v.read(o, &mut buf[..w]).unwrap();
            let device = dev.regs.borrow()[at..at + w].to_vec();
            for i in 0..w {
                let model = v.model().bytes()[at + i];
                prop_assert_eq!(buf[i], (model & emu[i]) | (device[i] & !emu[i]), "read at {:#x}", at + i);
            }
            let data = &val.to_le_bytes()[..w];
            let w1c = v.model().registers().w1cmask()[at..at + w].to_vec();
            let mut model_after = v.model().clone();
            let expected_events = model_after.write(o, data).unwrap();
            dev.take_log();
            let events = v.write(o, data).unwrap();
            prop_assert_eq!(&events[..], &expected_events[..]);
            prop_assert_eq!(v.model().bytes(), model_after.bytes());
            let now = dev.regs.borrow()[at..at + w].to_vec();
            for i in 0..w {
                let want = if emu[i] == 0xff {
                    device[i]
                } else {
                    (data[i] & !emu[i]) | (device[i] & emu[i] & !w1c[i])
                };
                prop_assert_eq!(now[i], want, "device byte {:#x} after write at {:#x}", at + i, at);
            }
        }
    }
}

/// Every offset and every width once, with values that set and clear every bit.
#[test]
fn every_offset_and_width() {
    let mut c = rich_device();
    let mut probes = Probes::default();
    for v in [u32::MAX, 0, 0xa5c3_3c5a] {
        for w in [1, 2, 4] {
            for o in 0..=4096u16 {
                check_read(&c, o, w).unwrap();
                check_write(&mut c, &mut probes, o, &v.to_le_bytes()[..w]).unwrap();
            }
        }
    }
}
