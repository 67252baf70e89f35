//! Log lines a guest can trigger (a refused MSI address, a refused BAR placement, a route or
//! irqfd the VM would not take, an interrupt set-up the host refused) go through one rate
//! limit per device: a guest repeating what fails, at exit rate, must not fill the host's log.
//! A burst, then one line per period, each saying how many were dropped (`log-limit`).

use std::sync::Arc;
use std::time::Duration;

use log_limit::LogLimiter;

/// Lines let through at once before the limit holds.
const BURST: u32 = 10;
/// Then one line per period.
const PERIOD: Duration = Duration::from_secs(1);

/// A device's limiter for guest-triggered lines.
pub(crate) fn limiter() -> Arc<LogLimiter> {
    Arc::new(LogLimiter::new(BURST, PERIOD))
}

/// `warn!` through a [`LogLimiter`]: `guest_warn!(limiter, "format", args...)`.
macro_rules! guest_warn {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(dropped) = $limiter.allow() {
            log::warn!("{}{}", format_args!($($arg)+), log_limit::suppressed_note(dropped));
        }
    };
}
pub(crate) use guest_warn;
