//! Time and bounded waiting.
//!
//! The clock is the TSC, calibrated against the local APIC timer at boot ([`crate::lapic::init`]);
//! the APIC timer's periodic tick only wakes `hlt`. Every wait has two bounds: a time limit, and
//! an iteration limit that still holds if the clock or the tick stops. A wait enables interrupts
//! only inside `sti; hlt; cli` (or `sti; nop; cli` without a tick), so interrupts never land in
//! the middle of other code (see boot.rs about the red zone).

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::io::rdtsc;

static TICK_RUNS: AtomicBool = AtomicBool::new(false);
static TSC_START: AtomicU64 = AtomicU64::new(0);
static TSC_PER_MS: AtomicU64 = AtomicU64::new(0);

/// The fastest time-stamp counter this guest allows for, in counts per millisecond (10 GHz).
/// Without a tick the TSC is not calibrated, so its rate is unknown; the invariant TSC of
/// current x86-64 CPUs runs at their nominal frequency, 2-5 GHz, and 10 GHz leaves twice that.
pub const MAX_TSC_PER_MS: u64 = 10_000_000;

/// TSC counts one [`idle`] without a tick spins for at least: at most [`MAX_TSC_PER_MS`], that
/// is at least 1 µs, which puts a floor under the wait iterations that a [`Deadline`]
/// counts.
pub const SPIN_TSC_COUNTS: u64 = 10_000;

/// Wait iterations per millisecond of timeout when there is no tick, and so no clock: a
/// [`Deadline`] then ends after its iteration count alone. Each iteration lasts at least
/// [`SPIN_TSC_COUNTS`] TSC counts, so at most this many fit in a millisecond even with the
/// fastest TSC; a wait therefore never ends before its timeout. With the TSC of a usual 2.5
/// GHz machine it lasts about 4 times the timeout, which still ends it.
pub const SPIN_ITERATIONS_PER_MS: u64 = MAX_TSC_PER_MS / SPIN_TSC_COUNTS;

/// Wait iterations per millisecond of timeout with the tick: each `hlt` sleeps until the next
/// interrupt, which is the 1 ms tick or a device's, so 16 allows for 15 device interrupts per
/// tick. The clock ends such a wait first; the count only matters if the TSC stops.
pub const TICK_ITERATIONS_PER_MS: u64 = 16;

/// Sets the clock (called once by the runtime): whether the APIC tick runs, and the TSC rate.
pub fn set_clock(tick_runs: bool, tsc_per_ms: Option<u64>) {
    TSC_START.store(rdtsc(), Ordering::SeqCst);
    TSC_PER_MS.store(tsc_per_ms.unwrap_or(0), Ordering::SeqCst);
    TICK_RUNS.store(tick_runs, Ordering::SeqCst);
}

/// Whether waits sleep on the APIC timer tick.
pub fn tick_runs() -> bool {
    TICK_RUNS.load(Ordering::SeqCst)
}

/// Microseconds since the runtime set the clock, or `None` without a calibrated clock.
pub fn now_us() -> Option<u64> {
    let per_ms = TSC_PER_MS.load(Ordering::SeqCst);
    (per_ms != 0).then(|| {
        let cycles = rdtsc().wrapping_sub(TSC_START.load(Ordering::SeqCst));
        (u128::from(cycles) * 1000 / u128::from(per_ms)) as u64
    })
}

/// Milliseconds since the runtime set the clock, or `None` without a calibrated clock.
pub fn now_ms() -> Option<u64> {
    now_us().map(|us| us / 1000)
}

/// Lets pending interrupts in, then returns: with a tick, sleeps until the next interrupt
/// (at most one tick); without, spins with interrupts let in between rounds for at least
/// [`SPIN_TSC_COUNTS`] TSC counts.
#[inline]
pub fn idle() {
    if cfg!(test) {
        // Host tests run in ring 3, where `sti` faults: their device models answer at once, so
        // a wait there that has to idle is a bug in the test.
        panic!("time::idle in a host test: the device model did not answer at once");
    }
    if tick_runs() {
        // SAFETY: enables interrupts for exactly the `hlt` (the `sti` shadow covers it, so no wake-up
        // is lost); the interrupt stubs preserve every register. Not `nomem`/`nostack`: the compiler
        // must assume the handlers touch memory and the stack below RSP.
        unsafe { core::arch::asm!("sti", "hlt", "cli") }
    } else {
        // At most SPIN_TSC_COUNTS rounds too, so that a TSC that does not count still ends it.
        let start = rdtsc();
        for _ in 0..SPIN_TSC_COUNTS {
            // SAFETY: as above, for one `nop`.
            unsafe { core::arch::asm!("sti", "nop", "cli") }
            if rdtsc().wrapping_sub(start) >= SPIN_TSC_COUNTS {
                break;
            }
        }
    }
}

/// The iterations a [`Deadline`] of `ms` allows before its backstop ends it (see
/// [`TICK_ITERATIONS_PER_MS`] and [`SPIN_ITERATIONS_PER_MS`]); at least 1000, for waits of
/// 0 ms that still look once or twice.
pub const fn iteration_limit(ms: u64, tick_runs: bool) -> u64 {
    let per_ms = if tick_runs {
        TICK_ITERATIONS_PER_MS
    } else {
        SPIN_ITERATIONS_PER_MS
    };
    ms.saturating_mul(per_ms).saturating_add(1000)
}

/// A time limit with an iteration backstop.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    start_us: Option<u64>,
    limit_ms: u64,
    iterations: u64,
    max_iterations: u64,
}

impl Deadline {
    /// Expires `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Deadline {
            start_us: now_us(),
            limit_ms: ms,
            iterations: 0,
            max_iterations: iteration_limit(ms, tick_runs()),
        }
    }

    /// Counts one iteration; true once the time or the iteration limit is reached.
    pub fn expired(&mut self) -> bool {
        self.iterations += 1;
        self.iterations > self.max_iterations
            || self.elapsed_us() >= self.limit_ms.saturating_mul(1000)
    }

    /// Microseconds since the deadline was set (0 without a clock).
    pub fn elapsed_us(&self) -> u64 {
        match (self.start_us, now_us()) {
            (Some(s), Some(n)) => n.saturating_sub(s),
            _ => 0,
        }
    }

    /// Iterations so far.
    pub fn iterations(&self) -> u64 {
        self.iterations
    }
}

/// A wait that ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    /// Microseconds waited (0 without a clock).
    pub waited_us: u64,
    /// Loop iterations.
    pub iterations: u64,
}

/// Waits until `done()` is true: checks it, then [`idle`]s, for at most `timeout_ms`.
/// Returns the microseconds waited.
pub fn wait_until(timeout_ms: u64, mut done: impl FnMut() -> bool) -> Result<u64, Timeout> {
    let mut deadline = Deadline::after_ms(timeout_ms);
    loop {
        if done() {
            return Ok(deadline.elapsed_us());
        }
        if deadline.expired() {
            // One last look: the condition may have become true during the last idle.
            if done() {
                return Ok(deadline.elapsed_us());
            }
            return Err(Timeout {
                waited_us: deadline.elapsed_us(),
                iterations: deadline.iterations(),
            });
        }
        idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a tick the iteration count is the only bound, so it must not end a wait before
    /// its timeout (the earlier 200 per ms, with nothing under the length of an iteration, ended
    /// a 10 s wait after 2 million `sti; nop; cli` rounds: a fraction of a second).
    #[test]
    fn backstop_without_a_tick_outlasts_the_timeout_at_the_fastest_tsc() {
        for ms in [0, 1, 500, 10_000, 7_500, 60_000] {
            let shortest_iteration_ns = SPIN_TSC_COUNTS * 1_000_000 / MAX_TSC_PER_MS;
            let shortest_wait_ns = iteration_limit(ms, false) * shortest_iteration_ns;
            assert!(
                shortest_wait_ns >= ms * 1_000_000,
                "{ms} ms: {shortest_wait_ns} ns"
            );
        }
        // And it still ends: a 10 s wait is 10,001,000 iterations.
        assert_eq!(iteration_limit(10_000, false), 10_001_000);
        assert_eq!(iteration_limit(u64::MAX, false), u64::MAX);
    }

    #[test]
    fn backstop_with_a_tick_allows_for_device_interrupts() {
        assert_eq!(iteration_limit(1_000, true), 17_000);
        assert_eq!(iteration_limit(0, true), 1_000);
    }
}
