//! Properties of the register model, BARs and capability editing, checked with proptest.

mod common;

use common::{MockDevice, passthrough_view};
use proptest::prelude::*;

use pci_config::capability::{self, CapId};
use pci_config::{
    BarDef, BarKind, ConfigEvent, ConfigSize, ConfigSpace, DeviceIds, ExtCapabilityId, HeaderType,
};

/// One guest access: offset, width (1, 2 or 4) and value.
fn access(len: usize) -> impl Strategy<Value = (u16, usize, u32)> {
    (
        0..len as u16,
        prop_oneof![Just(1usize), Just(2), Just(4)],
        any::<u32>(),
    )
        .prop_map(|(o, w, v)| (o - o % w as u16, w, v))
}

/// Accesses biased towards the interesting registers (header, BARs, capabilities).
fn accesses(len: usize) -> impl Strategy<Value = Vec<(u16, usize, u32)>> {
    let hot = (
        0u16..0x100,
        prop_oneof![Just(1usize), Just(2), Just(4)],
        prop_oneof![Just(u32::MAX), Just(0), any::<u32>()],
    )
        .prop_map(|(o, w, v)| (o, w, v));
    prop::collection::vec(prop_oneof![3 => hot, 1 => access(len)], 1..64)
}

/// The shared rich device plus ARI (an extended capability after AER).
fn rich_device() -> ConfigSpace {
    let mut c = common::rich_device();
    c.add_extended_capability(ExtCapabilityId::ARI, 1, &[])
        .unwrap();
    c
}

fn check_invariants(
    initial: &ConfigSpace,
    before: &[u8],
    now: &ConfigSpace,
) -> Result<(), TestCaseError> {
    let regs = now.registers();
    for (i, &old) in before.iter().enumerate() {
        let ro = !(regs.wmask()[i] | regs.w1cmask()[i]);
        prop_assert_eq!(
            now.bytes()[i] & ro,
            initial.bytes()[i] & ro,
            "read-only bits of byte {:#x} changed",
            i
        );
        let w1c = regs.w1cmask()[i];
        prop_assert_eq!(
            now.bytes()[i] & w1c & !old,
            0,
            "a W1C bit of byte {:#x} was set by a write",
            i
        );
        prop_assert_eq!(
            now.bytes()[i] & regs.rsvdmask()[i],
            0,
            "reserved bits of byte {:#x} are not zero",
            i
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Read-only bits never change, W1C bits only clear, reserved bits stay zero, under any
    /// sequence of guest writes.
    #[test]
    fn read_only_bits_never_change(writes in accesses(4096)) {
        let initial = rich_device();
        let mut c = initial.clone();
        // set some W1C bits so clearing is exercised
        c.set_u16(0x06, initial.status().0 | 0xf900).unwrap();
        let initial = c.clone();
        for (o, w, v) in writes {
            let before = c.bytes().to_vec();
            match c.write(o, &v.to_le_bytes()[..w]) {
                Ok(_) => check_invariants(&initial, &before, &c)?,
                // accesses running past the end are refused and change nothing
                Err(_) => prop_assert_eq!(c.bytes(), &before[..]),
            }
        }
    }

    /// The same on snapshots of arbitrary devices (random bytes, random capability chains).
    #[test]
    fn read_only_bits_never_change_on_snapshots(
        mut bytes in prop::collection::vec(any::<u8>(), 256),
        bridge in any::<bool>(),
        writes in accesses(256),
    ) {
        bytes[0x0e] = bridge as u8;
        let initial = ConfigSpace::from_bytes(&bytes).unwrap();
        let mut c = initial.clone();
        for (o, w, v) in writes {
            let before = c.bytes().to_vec();
            match c.write(o, &v.to_le_bytes()[..w]) {
                Ok(_) => check_invariants(&initial, &before, &c)?,
                // accesses running past the end are refused and change nothing
                Err(_) => prop_assert_eq!(c.bytes(), &before[..]),
            }
        }
    }

    /// Whatever is written, a BAR reads back naturally aligned with its flags intact, and the
    /// committed address the VMM maps is aligned too.
    #[test]
    fn bars_stay_naturally_aligned(
        kind in prop_oneof![Just(BarKind::Io), Just(BarKind::Memory32), Just(BarKind::Memory64)],
        size_log2 in 2u32..40,
        pf in any::<bool>(),
        writes in prop::collection::vec((0u16..8, prop_oneof![Just(1usize), Just(2), Just(4)], any::<u32>()), 1..32),
    ) {
        let size = match kind {
            BarKind::Io => 1u64 << size_log2.clamp(2, 8),
            BarKind::Memory32 => 1u64 << size_log2.clamp(4, 31),
            BarKind::Memory64 => 1u64 << size_log2.max(4),
        };
        let def = BarDef { kind, size, prefetchable: pf && kind != BarKind::Io, address: 0 };
        let mut c = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Conventional, DeviceIds::default());
        c.set_bar(0, def).unwrap();
        for (o, w, v) in writes {
            let o = 0x10 + o - o % w as u16;
            c.write(o, &v.to_le_bytes()[..w]).unwrap();
            let lo = c.read_u32(0x10).unwrap();
            prop_assert_eq!(lo & !def.write_mask() as u32, def.flag_bits(), "flag bits changed");
            let reg = if kind == BarKind::Memory64 {
                (c.read_u32(0x14).unwrap() as u64) << 32 | lo as u64
            } else {
                lo as u64
            };
            let addr = reg & !(if kind == BarKind::Io { 0x3 } else { 0xf });
            prop_assert_eq!(addr % size, 0, "register address {:#x} not aligned to {:#x}", addr, size);
            prop_assert_eq!(c.bar(0).unwrap().address % size, 0);
        }
    }

    /// Write all-ones, read back, restore: the size decoded from the read-back is the true size,
    /// the address is unchanged, and nothing is reported.
    #[test]
    fn sizing_returns_the_true_size(
        kind in prop_oneof![Just(BarKind::Io), Just(BarKind::Memory32), Just(BarKind::Memory64)],
        size_log2 in 2u32..48,
        slot in 0usize..5,
        addr_seed in any::<u64>(),
        decode_on in any::<bool>(),
    ) {
        let size = match kind {
            BarKind::Io => 1u64 << size_log2.clamp(2, 8),
            BarKind::Memory32 => 1u64 << size_log2.clamp(4, 31),
            BarKind::Memory64 => 1u64 << size_log2.max(4),
        };
        let limit = if kind == BarKind::Memory64 { u64::MAX } else { u32::MAX as u64 };
        let address = (addr_seed & limit) & !(size - 1);
        let def = BarDef { kind, size, prefetchable: false, address };
        let mut c = ConfigSpace::new(HeaderType::Endpoint, ConfigSize::Conventional, DeviceIds::default());
        c.set_bar(slot, def).unwrap();
        if decode_on {
            c.write_u16(0x04, 0x3).unwrap();
        }
        let reg = 0x10 + 4 * slot as u16;
        let orig_lo = c.read_u32(reg).unwrap();
        prop_assert!(c.write_u32(reg, u32::MAX).unwrap().is_empty());
        let lo = c.read_u32(reg).unwrap();
        let mask = if kind == BarKind::Memory64 {
            let orig_hi = c.read_u32(reg + 4).unwrap();
            prop_assert!(c.write_u32(reg + 4, u32::MAX).unwrap().is_empty());
            let hi = c.read_u32(reg + 4).unwrap();
            prop_assert!(c.write_u32(reg + 4, orig_hi).unwrap().is_empty());
            (hi as u64) << 32 | (lo & !0xf) as u64
        } else if kind == BarKind::Io {
            0xffff_ffff_0000_0000 | (lo & !0x3) as u64
        } else {
            0xffff_ffff_0000_0000 | (lo & !0xf) as u64
        };
        prop_assert_eq!((!mask).wrapping_add(1), size);
        prop_assert!(c.write_u32(reg, orig_lo).unwrap().is_empty());
        prop_assert_eq!(c.bar(slot).unwrap().address, address);
        prop_assert!(!c.bar(slot).unwrap().sizing);
    }

    /// Hiding any capability of a random chain leaves an acyclic chain that reaches every other
    /// capability in the same order.
    #[test]
    fn hiding_keeps_chain_acyclic_and_reachable(
        std_slots in prop::sample::subsequence((0x10u16..0x40).collect::<Vec<_>>(), 1..12),
        std_order in any::<prop::sample::Index>(),
        ext_slots in prop::sample::subsequence((0x40u16..0x400).collect::<Vec<_>>(), 1..12),
        ids in prop::collection::vec(0x15u8..0xff, 12),
        pick in any::<prop::sample::Index>(),
        extended in any::<bool>(),
    ) {
        let mut b = vec![0u8; 4096];
        b[0x06] = 0x10;
        // standard chain: dword slots 0x40..0xfc in a shuffled order, unknown IDs (2 bytes each)
        let mut std_offs: Vec<u16> = std_slots.iter().map(|s| s * 4).collect();
        let rot = std_order.index(std_offs.len());
        std_offs.rotate_left(rot);
        b[0x34] = std_offs[0] as u8;
        for (i, &o) in std_offs.iter().enumerate() {
            b[o as usize] = ids[i];
            b[o as usize + 1] = std_offs.get(i + 1).copied().unwrap_or(0) as u8;
        }
        // extended chain starting at 0x100
        let mut ext_offs: Vec<u16> = ext_slots.iter().map(|s| s * 4).collect();
        ext_offs.retain(|&o| o != 0x100);
        ext_offs.insert(0, 0x100);
        for (i, &o) in ext_offs.iter().enumerate() {
            let next = ext_offs.get(i + 1).copied().unwrap_or(0) as u32;
            let h = (0x30 + i as u32) | 1 << 16 | next << 20;
            b[o as usize..o as usize + 4].copy_from_slice(&h.to_le_bytes());
        }
        let before = capability::capabilities(&b).unwrap();
        let chain: Vec<u16> = before.iter().filter(|c| c.id.is_extended() == extended).map(|c| c.offset).collect();
        let victim = chain[pick.index(chain.len())];
        capability::hide_capability(&mut b, victim).unwrap();
        let after = capability::capabilities(&b).expect("chain must stay valid (acyclic, in range)");
        // The first extended capability cannot be unlinked: it becomes a NULL capability that
        // links to the next one, or, when it was the only one, the all-zero header by which
        // PCIe says "no extended capabilities" (PCIe 6.0 §7.6.3).
        let null_kept = extended
            && victim == 0x100
            && before.iter().any(|c| c.offset == 0x100 && c.next != 0);
        let expected: Vec<u16> = before
            .iter()
            .map(|c| c.offset)
            .filter(|&o| o != victim || null_kept)
            .collect();
        let got: Vec<u16> = after.iter().map(|c| c.offset).collect();
        prop_assert_eq!(got, expected);
        if null_kept {
            prop_assert_eq!(after.iter().find(|c| c.offset == 0x100).unwrap().id, CapId::Extended(ExtCapabilityId::NULL));
        }
    }

    /// The chain walker terminates and never panics on arbitrary bytes.
    #[test]
    fn walker_is_total(bytes in prop::collection::vec(any::<u8>(), 4096)) {
        let _ = capability::capabilities(&bytes);
        let (caps, _) = capability::capabilities_lenient(&bytes);
        prop_assert!(caps.len() <= 48 + 960);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Through the passthrough view, no guest write ever reaches the device's BARs, ROM,
    /// interrupt line or MSI/MSI-X capabilities, and every BAR move is reported aligned.
    #[test]
    fn passthrough_never_forwards_emulated_registers(writes in accesses(4096)) {
        let dev = MockDevice::new(rich_device().bytes());
        let mut v = passthrough_view(&dev);
        let msi = v.model().msi().unwrap();
        let msix = v.model().msix().unwrap();
        let protected = |o: usize| {
            (0x10..0x28).contains(&o)
                || (0x30..0x34).contains(&o)
                || o == 0x3c
                || (msi.offset as usize..msi.offset as usize + msi.len() as usize).contains(&o)
                || (msix.offset as usize..msix.offset as usize + 12).contains(&o)
        };
        for (o, w, val) in writes {
            let events = v.write(o, &val.to_le_bytes()[..w]).unwrap();
            for e in events {
                if let ConfigEvent::BarMoved { bar: 0, new, .. } = e {
                    prop_assert_eq!(new % 0x4000, 0);
                }
            }
        }
        for (o, len) in dev.writes() {
            for at in o as usize..o as usize + len {
                prop_assert!(!protected(at), "write reached protected byte {:#x}", at);
            }
        }
    }
}

/// The case proptest found: hiding the only extended capability leaves the all-zero header
/// ("no extended capabilities"), not a NULL capability; hiding the first of two leaves a NULL
/// capability at 0x100 that links to the second.
#[test]
fn hiding_the_first_extended_capability() {
    let mut b = vec![0u8; 4096];
    b[0x06] = 0x10;
    b[0x34] = 0xe0;
    b[0xe0] = 0x15;
    let header = |id: u32, next: u32| (id | 1 << 16 | next << 20).to_le_bytes();
    b[0x100..0x104].copy_from_slice(&header(0x30, 0));
    let mut only = b.clone();
    capability::hide_capability(&mut only, 0x100).unwrap();
    let caps = capability::capabilities(&only).unwrap();
    assert!(caps.iter().all(|c| !c.id.is_extended()), "{caps:?}");
    assert_eq!(only[0x100..0x104], [0, 0, 0, 0]);

    b[0x100..0x104].copy_from_slice(&header(0x30, 0x140));
    b[0x140..0x144].copy_from_slice(&header(0x31, 0));
    capability::hide_capability(&mut b, 0x100).unwrap();
    let ext: Vec<(u16, CapId)> = capability::capabilities(&b)
        .unwrap()
        .into_iter()
        .filter(|c| c.id.is_extended())
        .map(|c| (c.offset, c.id))
        .collect();
    assert_eq!(
        ext,
        [
            (0x100, CapId::Extended(ExtCapabilityId::NULL)),
            (0x140, CapId::Extended(ExtCapabilityId(0x31)))
        ]
    );
}
