#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A burst of lines, then at most one per period (see the crate docs). Lock-free: every method
/// takes `&self` and may be called from any number of threads at once.
#[derive(Debug)]
pub struct LogLimiter {
    start: Instant,
    period_ns: u64,
    burst_left: AtomicU32,
    next_ns: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// `burst` lines at once, then one per `period`.
    pub fn new(burst: u32, period: Duration) -> Self {
        LogLimiter {
            start: Instant::now(),
            period_ns: u64::try_from(period.as_nanos()).unwrap_or(u64::MAX),
            burst_left: AtomicU32::new(burst),
            next_ns: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were dropped since the last one),
    /// `None` when this one must be dropped (it is counted).
    pub fn allow(&self) -> Option<u64> {
        let burst = self
            .burst_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
        if burst.is_ok() {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let next = self.next_ns.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ns
                .compare_exchange(
                    next,
                    now.saturating_add(self.period_ns),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Lines dropped since the last one allowed.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

/// `" (N similar lines suppressed)"`, or nothing for 0: the tail of a line [`LogLimiter::allow`]
/// let through.
pub fn suppressed_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar lines suppressed)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_per_period_with_suppressed_count() {
        let l = LogLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
        // First line after the burst is allowed (next_ns starts at 0), then the period holds.
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        assert_eq!(l.suppressed(), 2);
        // Pretend the period elapsed.
        l.next_ns.store(0, Ordering::Relaxed);
        assert_eq!(l.allow(), Some(2));
    }

    #[test]
    fn note_says_nothing_for_zero() {
        assert_eq!(suppressed_note(0), "");
        assert_eq!(suppressed_note(3), " (3 similar lines suppressed)");
    }
}
