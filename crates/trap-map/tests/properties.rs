//! Property tests: random BAR/MSI-X layouts, page sizes and policies, and random MSI-X access
//! sequences.

#[path = "support/fuzz_input.rs"]
mod fuzz_input;
#[path = "support/invariants.rs"]
mod invariants;
#[path = "support/msix_model.rs"]
mod msix_model;

use pci_config::BarKind;
use proptest::prelude::*;
use trap_map::{
    DeviceLayout, DevicePlan, HostBar, MmapArea, MsixInfo, MsixRelocation, MsixTable, PageSize,
    PlanError, Policy,
};

use msix_model::{Model, Op};

#[derive(Clone, Debug)]
enum SlotGen {
    Empty,
    Io(u32),
    Mem32(u32, bool),
    Mem64(u32, bool),
}

#[derive(Clone, Debug)]
struct HostGen {
    mmappable: bool,
    msix_mappable: bool,
    sparse: Option<Vec<(u64, u64, bool)>>,
}

#[derive(Clone, Debug)]
struct MsixGen {
    entries: u16,
    table_pick: usize,
    table_pos: u64,
    table_page_aligned: bool,
    pba_pick: usize,
    pba_pos: u64,
    pba_near_table: bool,
}

fn slot() -> impl Strategy<Value = SlotGen> {
    prop_oneof![
        2 => Just(SlotGen::Empty),
        1 => (2u32..=8).prop_map(SlotGen::Io),
        3 => (4u32..=24, any::<bool>()).prop_map(|(s, p)| SlotGen::Mem32(s, p)),
        3 => (4u32..=24, any::<bool>()).prop_map(|(s, p)| SlotGen::Mem64(s, p)),
    ]
}

fn host() -> impl Strategy<Value = HostGen> {
    (
        prop::bool::weighted(0.85),
        any::<bool>(),
        prop::option::weighted(
            0.3,
            prop::collection::vec((any::<u64>(), any::<u64>(), any::<bool>()), 0..5),
        ),
    )
        .prop_map(|(mmappable, msix_mappable, sparse)| HostGen {
            mmappable,
            msix_mappable,
            sparse,
        })
}

fn msix() -> impl Strategy<Value = MsixGen> {
    (
        prop_oneof![4 => 1u16..=64, 1 => 1u16..=2048],
        any::<usize>(),
        any::<u64>(),
        any::<bool>(),
        any::<usize>(),
        any::<u64>(),
        prop::bool::weighted(0.6),
    )
        .prop_map(
            |(
                entries,
                table_pick,
                table_pos,
                table_page_aligned,
                pba_pick,
                pba_pos,
                pba_near_table,
            )| {
                MsixGen {
                    entries,
                    table_pick,
                    table_pos,
                    table_page_aligned,
                    pba_pick,
                    pba_pos,
                    pba_near_table,
                }
            },
        )
}

fn page() -> impl Strategy<Value = PageSize> {
    prop::sample::select(PageSize::ALL.to_vec())
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.2),
        prop_oneof![
            2 => Just(MsixRelocation::Off),
            2 => Just(MsixRelocation::Auto),
            1 => (0u8..6).prop_map(MsixRelocation::Bar),
        ],
    )
        .prop_map(|(trap_all, trap_pba, msix_relocation)| Policy {
            trap_all,
            trap_pba,
            msix_relocation,
        })
}

/// A random offset in `0..=room`, QWORD aligned, page aligned when asked.
fn place(pos: u64, room: u64, page_aligned: bool) -> u64 {
    let mut o = pos % (room + 1);
    if page_aligned {
        o &= !0xfff;
    }
    o & !7
}

/// Builds a valid layout from the generated parts.
fn layout(slots: &[SlotGen], hosts: &[HostGen], msix: Option<MsixGen>) -> DeviceLayout {
    let mut bars = Vec::new();
    let mut skip = false;
    for (i, (s, h)) in slots.iter().zip(hosts).enumerate() {
        if std::mem::take(&mut skip) {
            continue;
        }
        let index = i as u8;
        let mut bar = match *s {
            SlotGen::Empty => continue,
            SlotGen::Io(log) => HostBar::io(index, 1 << log),
            SlotGen::Mem32(log, pref) => HostBar::memory32(index, 1 << log).prefetchable(pref),
            SlotGen::Mem64(log, pref) if i < 5 => {
                skip = true;
                HostBar::memory64(index, 1 << log).prefetchable(pref)
            }
            SlotGen::Mem64(log, pref) => HostBar::memory32(index, 1 << log).prefetchable(pref),
        };
        if bar.kind != BarKind::Io {
            bar.mmappable = h.mmappable;
            bar.msix_mappable = h.msix_mappable;
            bar.sparse_mmap = h.sparse.as_ref().map(|areas| {
                areas
                    .iter()
                    .map(|&(a, b, aligned)| {
                        let mut offset = a % bar.size;
                        let mut size = 1 + b % (bar.size - offset);
                        if aligned && bar.size >= 0x1000 {
                            offset &= !0xfff;
                            size = (size & !0xfff).max(0x1000).min(bar.size - offset);
                        }
                        MmapArea { offset, size }
                    })
                    .collect()
            });
        }
        bars.push(bar);
    }
    let msix = msix.and_then(|m| {
        let memory: Vec<&HostBar> = bars.iter().filter(|b| b.kind != BarKind::Io).collect();
        let table_len = u64::from(m.entries) * 16;
        let pba_len = u64::from(m.entries).div_ceil(64) * 8;
        let fits: Vec<&&HostBar> = memory
            .iter()
            .filter(|b| b.size >= table_len + pba_len)
            .collect();
        let tb = fits.get(m.table_pick % fits.len().max(1))?;
        let table_offset = place(m.table_pos, tb.size - table_len, m.table_page_aligned);
        let table = (table_offset, table_offset + table_len);
        let (pba_bar, pba_offset) = if m.pba_near_table {
            // Right after the table if it fits, else right before it.
            if table.1 + pba_len <= tb.size {
                (tb.index, table.1)
            } else {
                (tb.index, table.0.checked_sub(pba_len)?)
            }
        } else {
            let pb = memory[m.pba_pick % memory.len()];
            let offset = place(m.pba_pos, pb.size.checked_sub(pba_len)?, false);
            if pb.index == tb.index && offset < table.1 && table.0 < offset + pba_len {
                return None;
            }
            (pb.index, offset)
        };
        Some(MsixInfo {
            entries: m.entries,
            table_bar: tb.index,
            table_offset: u32::try_from(table_offset).ok()?,
            pba_bar,
            pba_offset: u32::try_from(pba_offset).ok()?,
        })
    });
    DeviceLayout { bars, msix }
}

fn layouts() -> impl Strategy<Value = DeviceLayout> {
    (
        prop::collection::vec(slot(), 6),
        prop::collection::vec(host(), 6),
        prop::option::weighted(0.8, msix()),
    )
        .prop_map(|(s, h, m)| layout(&s, &h, m))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Segments tile every BAR; mappings are whole pages the host allows and never touch the
    /// table's pages; relocation never lands on another BAR; the plan renders.
    #[test]
    fn every_plan_keeps_the_invariants(l in layouts(), page in page(), policy in policy()) {
        match DevicePlan::new(&l, page, policy) {
            Ok(plan) => {
                if let Err(e) = invariants::check_plan(&l, page, policy, &plan) {
                    return Err(TestCaseError::fail(format!("{e}\nlayout: {l:#?}\npolicy: {policy:?}\nplan: {plan:#?}")));
                }
            }
            // An explicit target may be unusable (I/O BAR, upper half, big 32-bit BAR).
            Err(PlanError::RelocationTarget { .. } | PlanError::RelocationWithoutMsix { .. })
                if matches!(policy.msix_relocation, MsixRelocation::Bar(_)) => {}
            Err(e) => return Err(TestCaseError::fail(format!("valid layout refused: {e}\n{l:#?}"))),
        }
    }

    /// Auto relocation never maps less than no relocation.
    #[test]
    fn auto_relocation_never_maps_less(l in layouts(), page in page()) {
        let off = DevicePlan::new(&l, page, Policy::default()).unwrap();
        let auto = DevicePlan::new(&l, page, Policy { msix_relocation: MsixRelocation::Auto, ..Policy::default() }).unwrap();
        prop_assert!(auto.mapped_bytes() >= off.mapped_bytes());
        prop_assert_eq!(auto.relocation().is_some(), auto.mapped_bytes() > off.mapped_bytes());
    }

    /// Bigger pages never map more.
    #[test]
    fn bigger_pages_map_no_more(l in layouts()) {
        let mapped: Vec<u64> = PageSize::ALL
            .iter()
            .map(|&p| DevicePlan::new(&l, p, Policy::default()).unwrap().mapped_bytes())
            .collect();
        prop_assert!(mapped.windows(2).all(|w| w[0] >= w[1]), "{:?}", mapped);
    }

    /// The fuzzer's decoder, run here too: every input is planned or refused with a message,
    /// and every plan keeps the invariants.
    #[test]
    fn raw_inputs_plan_or_explain(data in prop::collection::vec(any::<u8>(), 0..160)) {
        let (l, page, policy) = fuzz_input::plan_input(&data);
        match DevicePlan::new(&l, page, policy) {
            Ok(plan) => {
                if let Err(e) = invariants::check_plan(&l, page, policy, &plan) {
                    return Err(TestCaseError::fail(format!("{e}\nlayout: {l:#?}\npolicy: {policy:?}")));
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// A VMM that follows the events always agrees with the table, whatever the guest does.
    #[test]
    fn msix_events_keep_the_vmm_in_sync(
        entries in prop_oneof![1u16..=8, 1u16..=2048],
        ops in prop::collection::vec(op(), 0..200),
    ) {
        let mut table = MsixTable::new(entries).unwrap();
        let mut model = Model::new(entries);
        for o in &ops {
            if let Err(e) = model.apply(&mut table, o) {
                return Err(TestCaseError::fail(format!("after {o:?}: {e}")));
            }
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let len = prop::sample::select(vec![4usize, 8, 4, 8, 1, 2, 3, 0, 16]);
    prop_oneof![
        6 => (0u64..0x200, len.clone(), any::<u64>()).prop_map(|(offset, len, value)| {
            // Mostly vector control writes with a random mask bit, to exercise masking.
            Op::WriteTable { offset, len, value }
        }),
        3 => (0u64..8, any::<bool>()).prop_map(|(v, mask)| Op::WriteTable {
            offset: v * 16 + 12,
            len: 4,
            value: u64::from(mask),
        }),
        2 => (0u64..0x200, len.clone()).prop_map(|(offset, len)| Op::ReadTable { offset, len }),
        2 => (0u64..0x120, len.clone()).prop_map(|(offset, len)| Op::ReadPba { offset, len }),
        1 => (0u64..0x120, 0usize..9, any::<u64>()).prop_map(|(offset, len, value)| Op::WritePba { offset, len, value }),
        2 => prop::sample::select(vec![0u16, 0x8000, 0xc000, 0x4000, 0xffff]).prop_map(Op::WriteControl),
        4 => (0u16..10).prop_map(Op::Fire),
        1 => Just(Op::Reset),
    ]
}
