//! Rate limits for log lines a guest can trigger.
//!
//! A guest that repeats an access which logs a line (a bad descriptor, a port write) must not
//! be able to flood the host's log. Every such line goes through [`guest_log!`] or one of its
//! level shorthands ([`guest_error!`], [`guest_warn!`], [`guest_info!`], [`guest_debug!`]):
//! each call site lets a burst of [`BURST`] lines through, then one line per [`INTERVAL`]; the
//! next line that passes says how many were suppressed since the previous one.
//!
//! ```
//! # fn handle(bad: u16) {
//! devices::guest_warn!("virtio: descriptor {bad} is out of range");
//! # }
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a call site may log at once.
pub const BURST: u32 = 10;
/// After the burst, one line per interval (the burst refills at the same rate).
pub const INTERVAL: Duration = Duration::from_secs(1);

/// A token bucket for one call site's log lines.
pub struct LogLimit {
    state: Mutex<State>,
}

struct State {
    tokens: u32,
    /// When the last token was added (the first line starts the clock).
    refilled: Option<Instant>,
    /// Lines suppressed since the last one let through.
    suppressed: u64,
}

impl LogLimit {
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(State {
                tokens: BURST,
                refilled: None,
                suppressed: 0,
            }),
        }
    }

    /// `Some(lines suppressed since the last one let through)` when a line may be logged now,
    /// `None` when this one is suppressed (and counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let refilled = *state.refilled.get_or_insert(now);
        let elapsed = now.saturating_duration_since(refilled);
        let earned = elapsed.as_nanos() / INTERVAL.as_nanos();
        match u32::try_from(earned) {
            Ok(0) => {}
            // Whole intervals only, so that a steady trickle still earns one line per interval.
            Ok(earned) if earned < BURST => {
                state.tokens = (state.tokens + earned).min(BURST);
                state.refilled = Some(refilled + INTERVAL * earned);
            }
            _ => {
                state.tokens = BURST;
                state.refilled = Some(now);
            }
        }
        if state.tokens == 0 {
            state.suppressed = state.suppressed.saturating_add(1);
            return None;
        }
        state.tokens -= 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs at `level` like `log::log!`, limited per call site (see the module docs). A line whose
/// level is disabled costs nothing and uses none of the budget.
#[macro_export]
macro_rules! guest_log {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        let level: $crate::log_limit::__log::Level = $level;
        if $crate::log_limit::__log::log_enabled!(level) {
            match LIMIT.admit() {
                Some(0) => $crate::log_limit::__log::log!(level, $($arg)+),
                Some(suppressed) => $crate::log_limit::__log::log!(
                    level,
                    "{} ({} similar lines suppressed)",
                    ::std::format_args!($($arg)+),
                    suppressed
                ),
                None => {}
            }
        }
    }};
}

/// [`guest_log!`] at the error level.
#[macro_export]
macro_rules! guest_error {
    ($($arg:tt)+) => { $crate::guest_log!($crate::log_limit::__log::Level::Error, $($arg)+) };
}

/// [`guest_log!`] at the warn level.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => { $crate::guest_log!($crate::log_limit::__log::Level::Warn, $($arg)+) };
}

/// [`guest_log!`] at the info level.
#[macro_export]
macro_rules! guest_info {
    ($($arg:tt)+) => { $crate::guest_log!($crate::log_limit::__log::Level::Info, $($arg)+) };
}

/// [`guest_log!`] at the debug level.
#[macro_export]
macro_rules! guest_debug {
    ($($arg:tt)+) => { $crate::guest_log!($crate::log_limit::__log::Level::Debug, $($arg)+) };
}

#[doc(hidden)]
pub use log as __log;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_line_per_interval_with_the_suppressed_count() {
        let limit = LogLimit::new();
        let start = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limit.admit_at(start), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(limit.admit_at(start + Duration::from_millis(500)), None);
        }
        assert_eq!(limit.admit_at(start + INTERVAL), Some(1000));
        assert_eq!(limit.admit_at(start + INTERVAL), None);
        assert_eq!(limit.admit_at(start + INTERVAL * 2), Some(1));
        // A quiet spell refills the burst, no further.
        let later = start + INTERVAL * 100;
        for _ in 0..BURST {
            assert_eq!(limit.admit_at(later), Some(0));
        }
        assert_eq!(limit.admit_at(later), None);
        assert_eq!(limit.admit_at(later + INTERVAL), Some(1));
    }

    #[test]
    fn each_call_site_has_its_own_budget() {
        // Only checks that the macros expand and run in a loop; the budget is tested above.
        for i in 0..100 {
            crate::guest_warn!("first site {i}");
            crate::guest_debug!("second site {}", i);
        }
    }
}
