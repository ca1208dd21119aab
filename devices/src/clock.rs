//! The host's monotonic clock, as raw microseconds.
//!
//! Timestamps in log lines use CLOCK_MONOTONIC so a benchmark in another process can subtract its
//! own readings of the same clock (Rust's `Instant` is opaque).

/// Microseconds on CLOCK_MONOTONIC.
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}
