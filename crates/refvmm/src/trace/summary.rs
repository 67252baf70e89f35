//! `--show-counters` with a trace: per register, how often the guest read and wrote it and the
//! last value, so "the guest wrote SQ3TDBL 24 times, last value 8" is one line.
//!
//! Bounded like the trace: at most `MAX_REGISTERS` distinct registers are kept; accesses to
//! others are counted together.

use std::collections::BTreeMap;

use pci_config::Bdf;
use pci_regnames::Location;

use super::line::AccessKind;

/// Distinct registers kept.
pub const MAX_REGISTERS: usize = 4096;

#[derive(Debug, Clone, Default)]
struct Counter {
    name: String,
    reads: u64,
    writes: u64,
    last_read: Option<u64>,
    last_written: Option<u64>,
}

/// Counts per register.
#[derive(Debug, Clone, Default)]
pub struct RegisterSummary {
    counters: BTreeMap<(Bdf, Location), Counter>,
    others: u64,
}

impl RegisterSummary {
    /// An empty summary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one access to the register starting at `at`, called `name`.
    pub fn count(&mut self, device: Bdf, at: Location, name: &str, kind: AccessKind, value: u64) {
        let key = (device, at);
        if !self.counters.contains_key(&key) && self.counters.len() >= MAX_REGISTERS {
            self.others += 1;
            return;
        }
        let c = self.counters.entry(key).or_insert_with(|| Counter {
            name: name.to_string(),
            ..Counter::default()
        });
        match kind {
            AccessKind::Read => {
                c.reads += 1;
                c.last_read = Some(value);
            }
            AccessKind::Write => {
                c.writes += 1;
                c.last_written = Some(value);
            }
        }
    }

    /// One line per register, in device and offset order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for ((device, at), c) in &self.counters {
            let mut parts = Vec::new();
            if c.writes > 0 {
                parts.push(format!(
                    "written {} time(s), last value {}",
                    c.writes,
                    value(c.last_written)
                ));
            }
            if c.reads > 0 {
                parts.push(format!(
                    "read {} time(s), last value {}",
                    c.reads,
                    value(c.last_read)
                ));
            }
            out += &format!("  {device} {at} {}: {}\n", c.name, parts.join("; "));
        }
        if self.others > 0 {
            out += &format!(
                "  {} access(es) to further registers (only the first {MAX_REGISTERS} are \
                 counted one by one)\n",
                self.others
            );
        }
        out
    }
}

fn value(v: Option<u64>) -> String {
    match v {
        Some(v) if v < 10 => v.to_string(),
        Some(v) => format!("{v:#x}"),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci_regnames::Region;

    #[test]
    fn one_line_per_register() {
        let d: Bdf = "00:01.0".parse().unwrap();
        let sq3 = Location::new(Region::Bar(0), 0x1018);
        let csts = Location::new(Region::Bar(0), 0x1c);
        let mut s = RegisterSummary::new();
        for tail in 1..=24 {
            s.count(d, sq3, "SQ3TDBL", AccessKind::Write, tail % 16);
        }
        s.count(d, csts, "CSTS", AccessKind::Read, 0x1);
        s.count(d, csts, "CSTS", AccessKind::Read, 0x10001);
        assert_eq!(
            s.render(),
            "  0000:00:01.0 bar0+0x1c CSTS: read 2 time(s), last value 0x10001\n\
             \x20 0000:00:01.0 bar0+0x1018 SQ3TDBL: written 24 time(s), last value 8\n"
        );
    }

    #[test]
    fn bounded() {
        let d: Bdf = "00:01.0".parse().unwrap();
        let mut s = RegisterSummary::new();
        for i in 0..(MAX_REGISTERS as u64 + 10) {
            s.count(
                d,
                Location::new(Region::Bar(0), i * 4),
                "X",
                AccessKind::Write,
                0,
            );
        }
        let text = s.render();
        assert_eq!(text.lines().count(), MAX_REGISTERS + 1);
        assert!(text.ends_with(
            "  10 access(es) to further registers (only the first 4096 are counted one by one)\n"
        ));
    }
}
