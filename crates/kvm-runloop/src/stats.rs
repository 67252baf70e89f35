//! Exit counters: per exit kind per vCPU (single writer, so a plain load+store, no locked
//! instruction on the hot path), summed on demand into an [`ExitCounts`] snapshot.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bus::BusCounts;
use crate::exit::ExitKind;

/// The counters of one vCPU. Only that vCPU's thread writes them; anyone may read them while it
/// runs. Aligned to a cache line so two vCPUs never share one.
#[repr(align(64))]
#[derive(Debug, Default)]
pub struct ExitStats {
    counts: [AtomicU64; ExitKind::COUNT],
}

impl ExitStats {
    /// Adds one exit of `kind`. Must only be called from the owning vCPU thread: it is a relaxed
    /// load and store (no `lock` prefix), which is exact with a single writer.
    #[inline]
    pub(crate) fn bump(&self, kind: ExitKind) {
        let c = &self.counts[kind as usize];
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// The current count for `kind`.
    pub fn get(&self, kind: ExitKind) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    /// A copy of every per-kind count.
    pub fn snapshot(&self) -> [u64; ExitKind::COUNT] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

/// A snapshot of a VM's counters: exits per kind summed over vCPUs, plus what the bus saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// Exits per kind, indexed by `ExitKind as usize`.
    pub by_kind: [u64; ExitKind::COUNT],
    /// Bus-level counters (unhandled accesses, device failures, writes to read-only regions).
    pub bus: BusCounts,
}

impl ExitCounts {
    /// Count for one kind.
    pub fn get(&self, kind: ExitKind) -> u64 {
        self.by_kind[kind as usize]
    }

    /// All exits, every kind.
    pub fn total(&self) -> u64 {
        self.by_kind.iter().sum()
    }

    /// Kinds with a non-zero count, in counter order.
    pub fn nonzero(&self) -> impl Iterator<Item = (ExitKind, u64)> + '_ {
        ExitKind::ALL
            .iter()
            .map(|k| (*k, self.get(*k)))
            .filter(|(_, n)| *n > 0)
    }

    pub(crate) fn add(&mut self, per_vcpu: &[u64; ExitKind::COUNT]) {
        for (sum, n) in self.by_kind.iter_mut().zip(per_vcpu) {
            *sum += n;
        }
    }
}

impl fmt::Display for ExitCounts {
    /// One `kind  count` line per non-zero kind, then the bus counters that are non-zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (kind, n) in self.nonzero() {
            writeln!(f, "{:<16}{n:>12}", kind.name())?;
        }
        let b = &self.bus;
        for (name, n) in [
            ("unhandled-pio", b.unhandled_pio),
            ("unhandled-mmio", b.unhandled_mmio),
            ("read-only-writes", b.read_only_writes),
            ("device-panics", b.device_panics),
            ("device-errors", b.device_errors),
        ] {
            if n > 0 {
                writeln!(f, "{name:<16}{n:>12}")?;
            }
        }
        Ok(())
    }
}
