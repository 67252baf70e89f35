//! Invariants every plan must satisfy, shared by the property tests and the `trap_plan` fuzz
//! target (which includes this file by path).

#![allow(dead_code)]

use pci_config::BarKind;
use trap_map::view::{GuestPlacement, PlacementError, render_mtree};
use trap_map::{
    DeviceLayout, DevicePlan, MsixRelocation, PageSize, Policy, RelocationKind, SegmentKind,
    TrapReason,
};

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Checks `plan`, made from `layout` under `page` and `policy`; the error says what broke.
pub fn check_plan(
    layout: &DeviceLayout,
    page: PageSize,
    policy: Policy,
    plan: &DevicePlan,
) -> Result<(), String> {
    let p = page.bytes();
    let relocation = plan.relocation().copied();

    // Every host BAR is still there, with its kind; only the relocation target may grow or be new.
    for host in &layout.bars {
        let b = plan
            .bar(host.index)
            .ok_or(format!("BAR {} missing from the plan", host.index))?;
        if b.host_size() != host.size || b.kind() != host.kind {
            return Err(format!("BAR {} changed host size or kind", host.index));
        }
        let grown = relocation.is_some_and(|r| r.bar == host.index);
        if !grown && b.guest_size() != host.size {
            return Err(format!(
                "BAR {} guest size changed without relocation",
                host.index
            ));
        }
    }
    let expected_bars = layout.bars.len()
        + usize::from(relocation.is_some_and(|r| matches!(r.kind, RelocationKind::NewBar { .. })));
    if plan.bars().len() != expected_bars {
        return Err(format!(
            "{} BARs planned, {expected_bars} expected",
            plan.bars().len()
        ));
    }

    // Guest-visible BAR slots do not collide (a 64-bit BAR owns the next slot too).
    let mut owner = [None::<u8>; 6];
    for b in plan.bars() {
        if !b.guest_size().is_power_of_two() {
            return Err(format!(
                "BAR {} guest size {:#x} not a power of two",
                b.index(),
                b.guest_size()
            ));
        }
        let mut slots = vec![b.index()];
        if b.kind() == BarKind::Memory64 {
            slots.push(b.index() + 1);
        }
        for s in slots {
            let slot = owner
                .get_mut(usize::from(s))
                .ok_or(format!("BAR {} uses slot {s} past 5", b.index()))?;
            if let Some(o) = slot {
                return Err(format!("slot {s} used by BAR {o} and BAR {}", b.index()));
            }
            *slot = Some(b.index());
        }
    }

    let msix = plan.msix().copied();
    if let Some(m) = msix
        && (u64::from(m.table_register() & !7) != m.table_offset
            || u64::from(m.pba_register() & !7) != m.pba_offset
            || m.table_register() & 7 != u32::from(m.table_bar)
            || m.pba_register() & 7 != u32::from(m.pba_bar))
    {
        return Err(format!(
            "MSI-X placement {m:?} does not fit the capability registers"
        ));
    }
    let table = msix.map(|m| {
        (
            m.table_bar,
            (m.table_offset, m.table_offset + m.table_len()),
        )
    });
    let pba = msix.map(|m| {
        (
            m.pba_bar,
            (m.pba_offset, m.pba_offset + m.pba_len()),
            m.pba_emulated,
        )
    });

    for b in plan.bars() {
        let host = layout.bars.iter().find(|h| h.index == b.index());
        let segs = b.segments();
        // Tiling.
        let mut at = 0;
        for s in segs {
            if s.offset != at || s.len == 0 {
                return Err(format!(
                    "BAR {}: segments do not tile at {at:#x}: {s:?}",
                    b.index()
                ));
            }
            at = s.end();
        }
        if at != b.guest_size() {
            return Err(format!(
                "BAR {}: segments end at {at:#x}, BAR is {:#x}",
                b.index(),
                b.guest_size()
            ));
        }
        for w in segs.windows(2) {
            if let (SegmentKind::Trap { reason: a }, SegmentKind::Trap { reason: c }) =
                (w[0].kind, w[1].kind)
                && a == c
            {
                return Err(format!(
                    "BAR {}: adjacent segments not merged: {w:?}",
                    b.index()
                ));
            }
        }
        for s in segs {
            match s.kind {
                SegmentKind::Map { host_region_offset } => {
                    let host =
                        host.ok_or(format!("BAR {}: mapping in a VMM-added BAR", b.index()))?;
                    if policy.trap_all {
                        return Err(format!("BAR {}: mapping under trap-all", b.index()));
                    }
                    if !host.kind.is_memory() || !host.mmappable {
                        return Err(format!(
                            "BAR {}: mapping of a BAR the host cannot mmap",
                            b.index()
                        ));
                    }
                    if s.offset % p != 0 || s.len % p != 0 || host_region_offset % p != 0 {
                        return Err(format!(
                            "BAR {}: mapping not page aligned: {s:?}",
                            b.index()
                        ));
                    }
                    if host_region_offset != s.offset || s.end() > host.size {
                        return Err(format!(
                            "BAR {}: mapping outside the host region: {s:?}",
                            b.index()
                        ));
                    }
                    if let Some(areas) = &host.sparse_mmap
                        && !areas
                            .iter()
                            .any(|a| a.offset <= s.offset && s.end() <= a.offset + a.size)
                        && !covered_by_union(
                            areas.iter().map(|a| (a.offset, a.offset + a.size)),
                            (s.offset, s.end()),
                        )
                    {
                        return Err(format!(
                            "BAR {}: mapping outside the sparse-mmap areas: {s:?}",
                            b.index()
                        ));
                    }
                    if let Some((tb, t)) = table
                        && tb == b.index()
                        && overlaps(
                            (page.align_down(t.0), page.align_up(t.1)),
                            (s.offset, s.end()),
                        )
                    {
                        return Err(format!(
                            "BAR {}: mapping {s:?} shares a page with the MSI-X table {t:x?}",
                            b.index()
                        ));
                    }
                    if let Some((pb, r, true)) = pba
                        && pb == b.index()
                        && overlaps(r, (s.offset, s.end()))
                    {
                        return Err(format!(
                            "BAR {}: mapping {s:?} covers the emulated PBA {r:x?}",
                            b.index()
                        ));
                    }
                    // Without MSIX_MAPPABLE the host table pages are never mapped.
                    if let Some(m) = layout.msix
                        && m.table_bar == b.index()
                        && !host.msix_mappable
                        && host.sparse_mmap.is_none()
                    {
                        let t = (
                            u64::from(m.table_offset),
                            u64::from(m.table_offset) + m.table_len(),
                        );
                        if overlaps(
                            (page.align_down(t.0), page.align_up(t.1)),
                            (s.offset, s.end()),
                        ) {
                            return Err(format!(
                                "BAR {}: mapping {s:?} of host table pages",
                                b.index()
                            ));
                        }
                    }
                }
                SegmentKind::Trap { reason } => {
                    let expect_in = |r: Option<(u8, (u64, u64))>, what: &str| match r {
                        Some((bar, range)) if bar == b.index() && range == (s.offset, s.end()) => {
                            Ok(())
                        }
                        _ => Err(format!(
                            "BAR {}: {what} segment {s:?} is not exactly the structure",
                            b.index()
                        )),
                    };
                    match reason {
                        TrapReason::MsixTable => expect_in(table, "table")?,
                        TrapReason::MsixPba => {
                            expect_in(pba.filter(|x| x.2).map(|x| (x.0, x.1)), "PBA")?
                        }
                        TrapReason::IoBar if b.kind() != BarKind::Io => {
                            return Err(format!("BAR {}: IoBar reason on a memory BAR", b.index()));
                        }
                        TrapReason::Unbacked if s.offset < b.host_size() => {
                            return Err(format!(
                                "BAR {}: unbacked segment over the host region",
                                b.index()
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
        // Lookups agree with the segment list.
        for s in segs {
            for off in [s.offset, s.offset + s.len / 2, s.end() - 1] {
                if b.segment_at(off) != Some(s) {
                    return Err(format!("BAR {}: segment_at({off:#x}) is wrong", b.index()));
                }
            }
        }
        if b.segment_at(b.guest_size()).is_some() {
            return Err(format!(
                "BAR {}: segment_at past the end found something",
                b.index()
            ));
        }
    }

    // The emulated structures are each one whole segment.
    if let Some((tb, t)) = table {
        let s = plan
            .segment_at(tb, t.0)
            .ok_or("table offset not in any segment")?;
        if s.trap_reason() != Some(TrapReason::MsixTable) || (s.offset, s.end()) != t {
            return Err(format!("table {t:x?} is not one MsixTable segment: {s:?}"));
        }
    }

    // The PBA is either read from the hardware through a mapping, or emulated as one segment;
    // never forwarded to the device through a trap (that would mix the two views).
    if let Some((pb, r, emulated)) = pba {
        let s = plan
            .segment_at(pb, r.0)
            .ok_or("PBA offset not in any segment")?;
        let whole = (s.offset, s.end()) == r && s.trap_reason() == Some(TrapReason::MsixPba);
        let mapped = s.is_mapped() && r.1 <= s.end();
        if emulated != whole || (!whole && !mapped) {
            return Err(format!(
                "PBA {r:x?} (emulated: {emulated}) is neither mapped nor one MsixPba segment: {s:?}"
            ));
        }
    }

    // Relocation: only where allowed, never over another BAR's registers or slot.
    match (policy.msix_relocation, relocation) {
        (MsixRelocation::Off, Some(_)) => return Err("relocated with relocation off".into()),
        (MsixRelocation::Bar(n), Some(r)) if r.bar != n => {
            return Err(format!("relocated into BAR {} instead of {n}", r.bar));
        }
        (MsixRelocation::Bar(_), None) if layout.msix.is_some() => {
            return Err("explicit relocation not made".into());
        }
        _ => {}
    }
    if let Some(r) = relocation {
        let m = msix.ok_or("relocation without MSI-X")?;
        let b = plan.bar(r.bar).ok_or("relocation target missing")?;
        if !b.kind().is_memory() {
            return Err("relocated into an I/O BAR".into());
        }
        if r.offset % p != 0
            || r.size % p != 0
            || r.offset < b.host_size()
            || r.offset + r.size > b.guest_size()
        {
            return Err(format!(
                "relocated area {:#x}+{:#x} overlaps the device or leaves the BAR",
                r.offset, r.size
            ));
        }
        if (m.table_bar, m.pba_bar) != (r.bar, r.bar)
            || m.table_offset != r.offset
            || m.pba_offset != r.offset + m.table_len()
        {
            return Err("MSI-X placement does not follow the relocation".into());
        }
        match r.kind {
            RelocationKind::NewBar { .. } => {
                if layout.bars.iter().any(|h| {
                    h.index == r.bar || (h.kind == BarKind::Memory64 && h.index + 1 == r.bar)
                }) {
                    return Err(format!("new BAR {} takes a slot in use", r.bar));
                }
            }
            RelocationKind::ExtendedBar { original_size } => {
                if b.host_size() != original_size || b.guest_size() < 2 * original_size {
                    return Err("extended BAR sizes wrong".into());
                }
            }
        }
    } else if let (Some(m), Some(host)) = (layout.msix, msix) {
        if (host.table_bar, host.table_offset) != (m.table_bar, u64::from(m.table_offset)) {
            return Err("MSI-X moved without relocation".into());
        }
    }

    // The plan renders, placed the default way, with one mtree line per segment.
    let placement = match GuestPlacement::auto(plan, &GuestPlacement::new()) {
        Ok(placement) => placement,
        // Huge BARs may not fit the default windows; that is the caller's to place.
        Err(PlacementError::NoRoom { .. }) => return Ok(()),
        Err(e) => return Err(format!("auto placement failed: {e}")),
    };
    let text = render_mtree(plan, &placement, "0000:00:00.0").map_err(|e| e.to_string())?;
    let lines = text.lines().filter(|l| l.contains("(prio 0,")).count();
    let segs: usize = plan.bars().iter().map(|b| b.segments().len()).sum();
    if lines != segs {
        return Err(format!("mtree has {lines} ranges for {segs} segments"));
    }
    for b in plan.bars() {
        let base = placement.address(b.index()).unwrap();
        if b.mapped().any(|s| (base + s.offset) % p != 0) {
            return Err(format!(
                "BAR {} placed so that a mapping is not page aligned",
                b.index()
            ));
        }
    }
    Ok(())
}

fn covered_by_union(areas: impl Iterator<Item = (u64, u64)>, r: (u64, u64)) -> bool {
    let mut v: Vec<_> = areas.collect();
    v.sort_unstable();
    let mut at = r.0;
    for (s, e) in v {
        if s <= at && at < e {
            at = e;
        }
        if at >= r.1 {
            return true;
        }
    }
    at >= r.1
}
