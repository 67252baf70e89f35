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

/// Wait-loop iterations per nominal millisecond when there is no tick to sleep on (a guess:
/// waits then end after an iteration count rather than a time).
pub const SPIN_ITERATIONS_PER_MS: u64 = 200;

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
/// (at most one tick); without, lets interrupts in for one instruction.
#[inline]
pub fn idle() {
    if tick_runs() {
        // SAFETY: enables interrupts for exactly the `hlt` (the `sti` shadow covers it, so no wake-up
        // is lost); the interrupt stubs preserve every register. Not `nomem`/`nostack`: the compiler
        // must assume the handlers touch memory and the stack below RSP.
        unsafe { core::arch::asm!("sti", "hlt", "cli") }
    } else {
        // SAFETY: as above, for one `nop`.
        unsafe { core::arch::asm!("sti", "nop", "cli") }
    }
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
        // With a tick, each `idle` returns at least once per tick (1 ms); device interrupts add a few.
        let per_ms = if tick_runs() {
            16
        } else {
            SPIN_ITERATIONS_PER_MS
        };
        Deadline {
            start_us: now_us(),
            limit_ms: ms,
            iterations: 0,
            max_iterations: ms.saturating_mul(per_ms).saturating_add(1000),
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
