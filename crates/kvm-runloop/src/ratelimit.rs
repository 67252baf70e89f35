//! A lock-free limiter for log lines that a guest can trigger at exit rate: a burst of lines, then
//! at most one per period, each saying how many were suppressed.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) struct LogLimiter {
    start: Instant,
    period_ns: u64,
    burst_left: AtomicU32,
    next_ns: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new(burst: u32, period: Duration) -> Self {
        LogLimiter {
            start: Instant::now(),
            period_ns: period.as_nanos() as u64,
            burst_left: AtomicU32::new(burst),
            next_ns: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now (`n` lines were suppressed since the last one),
    /// `None` when this one must be dropped.
    pub(crate) fn allow(&self) -> Option<u64> {
        let burst = self
            .burst_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1));
        if burst.is_ok() {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        let now = self.start.elapsed().as_nanos() as u64;
        let next = self.next_ns.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ns
                .compare_exchange(
                    next,
                    now + self.period_ns,
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
        // Pretend the period elapsed.
        l.next_ns.store(0, Ordering::Relaxed);
        assert_eq!(l.allow(), Some(2));
    }
}
