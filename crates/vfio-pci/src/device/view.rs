//! What a VMM prints about a passed-through device: the live flat view of its BARs in QEMU's
//! `info mtree -f` format (the same lines trap-map's `render_mtree` prints, at the addresses
//! the guest programmed) and the exit counters of its trapped ranges.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use trap_map::{BarKind, MtreeKind, mtree_line};

use super::PassthroughDevice;
use crate::ports::{BarRange, TrapAddress};

/// Accesses to one trapped range of a device that is in the guest now, counted by the device
/// itself (whichever VMM dispatches them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrapCounts {
    /// The range.
    pub range: BarRange,
    /// Where it is registered.
    pub at: TrapAddress,
    /// Reads dispatched to it.
    pub reads: u64,
    /// Writes dispatched to it.
    pub writes: u64,
    /// Accesses the host device failed (reads gave all-ones).
    pub errors: u64,
}

impl TrapCounts {
    /// Reads plus writes: how many exits this range caused.
    pub fn traps(&self) -> u64 {
        self.reads + self.writes
    }
}

impl PassthroughDevice {
    /// The device's part of the guest's flat memory and I/O views, as `info mtree -f` prints
    /// them: one line per mapped (`ramd`) and trapped (`i/o`) range at its current guest
    /// address, then a line for each BAR that is not in the guest's address space and why.
    pub fn mtree(&self) -> String {
        let mut out = String::new();
        for (memory, title) in [(true, "memory"), (false, "I/O")] {
            let mut lines: Vec<(u64, u64, MtreeKind, String)> = Vec::new();
            for bar in self
                .bars
                .iter()
                .filter(|b| (b.kind != BarKind::Io) == memory)
            {
                let Some(base) = bar.placed else { continue };
                for m in &bar.maps {
                    lines.push((
                        base + m.range.offset,
                        base + m.range.offset + m.range.len - 1,
                        MtreeKind::RamDevice,
                        m.range.name.to_string(),
                    ));
                }
                for t in &bar.traps {
                    lines.push((
                        base + t.range.offset,
                        base + t.range.offset + t.range.len - 1,
                        MtreeKind::Io,
                        t.range.name.to_string(),
                    ));
                }
            }
            if lines.is_empty() && !memory {
                continue;
            }
            lines.sort_by_key(|l| l.0);
            let _ = writeln!(out, "FlatView ({title}) of {}", self.name);
            if lines.is_empty() {
                let _ = writeln!(out, "  No rendered FlatView");
            }
            for (start, end, kind, name) in lines {
                let _ = writeln!(out, "{}", mtree_line(start, end, kind, &name));
            }
        }
        for bar in self.bars.iter().filter(|b| b.placed.is_none()) {
            let why = match &bar.refused {
                Some((a, why)) => format!("refused at {a:#x} ({why})"),
                None => "unassigned or decode off".to_string(),
            };
            let _ = writeln!(out, "  {} {}: not mapped: {why}", self.name, bar.label());
        }
        out
    }

    /// Exit counters of the device's trapped ranges that are in the guest now (named like
    /// `0000:01:00.0 BAR0 msix-table`), I/O ports first, then by address. A range keeps its
    /// counts when the guest moves it.
    pub fn exit_counters(&self) -> Vec<TrapCounts> {
        let mut out: Vec<TrapCounts> = self
            .bars
            .iter()
            .flat_map(|b| &b.traps)
            .filter_map(|t| {
                let c = &t.handler.counters;
                Some(TrapCounts {
                    range: t.range.clone(),
                    at: t.registered?,
                    reads: c.reads.load(Ordering::Relaxed),
                    writes: c.writes.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                })
            })
            .collect();
        out.sort_by_key(|c| (matches!(c.at, TrapAddress::Mmio(_)), c.at.raw()));
        out
    }

    /// [`exit_counters`](Self::exit_counters) as a table.
    pub fn render_exit_counters(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<5} {:<18} {:>10} {:>10} {:>10} {:>7}  RANGE",
            "BUS", "BASE", "SIZE", "READS", "WRITES", "ERRORS"
        );
        let counters = self.exit_counters();
        if counters.is_empty() {
            let _ = writeln!(out, "(no trapped range of {} is in the guest)", self.name);
        }
        for c in counters {
            let bus = match c.at {
                TrapAddress::Pio(_) => "pio",
                TrapAddress::Mmio(_) => "mmio",
            };
            let _ = writeln!(
                out,
                "{bus:<5} {:<#18x} {:>#10x} {:>10} {:>10} {:>7}  {}",
                c.at.raw(),
                c.range.len,
                c.reads,
                c.writes,
                c.errors,
                c.range.name
            );
        }
        out
    }
}
