//! What a VMM prints about a passed-through device: the live flat view of its BARs in QEMU's
//! `info mtree -f` format (the same lines trap-map's `render_mtree` prints, at the addresses
//! the guest programmed) and the exit counters of its trapped ranges.

use std::fmt::Write as _;

use kvm_runloop::{BusKind, DeviceCounts};
use pci_config::BarKind;
use trap_map::{MtreeKind, mtree_line};

use super::PassthroughDevice;

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
                        base + m.offset,
                        base + m.offset + m.len - 1,
                        MtreeKind::RamDevice,
                        m.name.clone(),
                    ));
                }
                for t in &bar.traps {
                    lines.push((
                        base + t.offset,
                        base + t.offset + t.len - 1,
                        MtreeKind::Io,
                        t.name.clone(),
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

    /// Exit counters of the device's trapped ranges (one per registered range, named like
    /// `0000:01:00.0 BAR0 msix-table`).
    pub fn exit_counters(&self) -> Vec<DeviceCounts> {
        let prefix = format!("{} ", self.name);
        self.bus
            .device_counts()
            .into_iter()
            .filter(|c| c.name.starts_with(&prefix))
            .collect()
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
            let bus = match c.bus {
                BusKind::Pio => "pio",
                BusKind::Mmio => "mmio",
            };
            let _ = writeln!(
                out,
                "{bus:<5} {:<#18x} {:>#10x} {:>10} {:>10} {:>7}  {}",
                c.base,
                c.size,
                c.reads,
                c.writes,
                c.errors + c.panics,
                c.name
            );
        }
        out
    }
}
