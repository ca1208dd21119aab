//! Token-bucket rate limiting for device I/O (bytes/s and ops/s), in Firecracker's shape.
//!
//! A bucket holds `size` tokens and refills completely every `refill_time_ms`; a one-time burst
//! is spent before the bucket. A request bigger than the bucket is let through when the bucket is
//! full and leaves a debt, so large requests are slowed, never stuck. When a request is refused
//! the limiter arms its timerfd; the device registers that fd on the event loop and retries when
//! it fires.
//!
//! The settings can change while the VM runs ([`RateLimiter::update`]). The limiter object and
//! its timerfd stay the same, because the event loop holds that fd's registration: a new limiter
//! would leave the loop watching a closed (or, worse, reused) fd number.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// One bucket's settings, as the config file and API spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucketConfig {
    /// Tokens (bytes or operations) the bucket holds when full.
    pub size: u64,
    /// Extra tokens available once, before the bucket is used.
    pub one_time_burst: u64,
    /// Milliseconds to refill an empty bucket.
    pub refill_time_ms: u64,
}

/// A limiter's settings: either bucket may be absent (unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimiterConfig {
    pub bandwidth: Option<TokenBucketConfig>,
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// Checks both buckets' settings, so a caller changing several limiters can refuse a bad
    /// request before changing any of them.
    pub fn validate(&self) -> Result<(), RateLimiterError> {
        for (bucket, which) in [(self.bandwidth, "bandwidth"), (self.ops, "ops")] {
            if let Some(config) = bucket {
                TokenBucket::check(&config, which)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum RateLimiterError {
    /// rate limiter {which} bucket: size and refill_time must both be above zero
    Invalid { which: &'static str },
    /// cannot create the rate limiter's timer: {0}
    Timer(String),
}

#[derive(Debug)]
struct TokenBucket {
    config: TokenBucketConfig,
    burst: u64,
    /// Signed: a request larger than the bucket leaves it in debt.
    budget: i128,
    last_refill: Instant,
}

impl TokenBucket {
    fn check(config: &TokenBucketConfig, which: &'static str) -> Result<(), RateLimiterError> {
        if config.size == 0 || config.refill_time_ms == 0 {
            return Err(RateLimiterError::Invalid { which });
        }
        Ok(())
    }

    fn new(config: TokenBucketConfig, which: &'static str) -> Result<Self, RateLimiterError> {
        Self::check(&config, which)?;
        Ok(Self {
            config,
            burst: config.one_time_burst,
            budget: i128::from(config.size),
            last_refill: Instant::now(),
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed_ns = i128::try_from(now.saturating_duration_since(self.last_refill).as_nanos())
            .unwrap_or(i128::MAX);
        let refill_ns = i128::from(self.config.refill_time_ms) * 1_000_000;
        let size = i128::from(self.config.size);
        let tokens = elapsed_ns.saturating_mul(size) / refill_ns;
        if tokens > 0 {
            // Advance only by the time the whole tokens took, so fractions are not lost.
            // Saturating: absurd settings (u64::MAX tokens per u64::MAX ms) must not panic.
            let used_ns = tokens.saturating_mul(refill_ns) / size;
            let used = Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
            self.last_refill = self.last_refill.checked_add(used).unwrap_or(now);
            self.budget = self.budget.saturating_add(tokens).min(size);
        }
        if self.budget >= size {
            self.last_refill = now;
        }
    }

    /// Takes `tokens` if they are available (or the bucket is full); false otherwise.
    fn try_take(&mut self, tokens: u64, now: Instant) -> bool {
        let from_burst = tokens.min(self.burst);
        let tokens = i128::from(tokens - from_burst);
        if tokens == 0 {
            self.burst -= from_burst;
            return true;
        }
        self.refill(now);
        let size = i128::from(self.config.size);
        if self.budget >= tokens || self.budget >= size {
            self.burst -= from_burst;
            self.budget -= tokens;
            true
        } else {
            false
        }
    }

    /// Gives back tokens taken for a request that was not carried out.
    fn give_back(&mut self, tokens: u64) {
        self.budget = (self.budget + i128::from(tokens)).min(i128::from(self.config.size));
    }

    /// How long until `tokens` (capped at the bucket size) are available.
    fn wait_for(&self, tokens: u64) -> Duration {
        let size = i128::from(self.config.size);
        let need = i128::from(tokens).min(size) - self.budget;
        if need <= 0 {
            return Duration::ZERO;
        }
        let refill_ns = i128::from(self.config.refill_time_ms) * 1_000_000;
        // i128 holds u64 * u64 * 10^6 / u64 for any settings; clamp what u64 cannot.
        let ns = need.saturating_mul(refill_ns) / size + 1;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// Limits a device's bytes and operations; refusals arm a timer the device waits on.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
}

impl RateLimiter {
    pub fn new(config: RateLimiterConfig) -> Result<Self, RateLimiterError> {
        let bandwidth = config
            .bandwidth
            .map(|c| TokenBucket::new(c, "bandwidth"))
            .transpose()?;
        let ops = config.ops.map(|c| TokenBucket::new(c, "ops")).transpose()?;
        let timer = crate::timer::nonblocking_timer()
            .map_err(|e| RateLimiterError::Timer(e.to_string()))?;
        Ok(Self {
            bandwidth,
            ops,
            timer,
            blocked: false,
        })
    }

    /// A limiter that never refuses (its timer is never armed).
    pub fn unlimited() -> Result<Self, RateLimiterError> {
        Self::new(RateLimiterConfig::default())
    }

    /// Takes one operation of `bytes`; false means "not now": the timer is armed and the caller
    /// retries when [`RateLimiter::as_raw_fd`] becomes readable.
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.blocked {
            return false;
        }
        let now = Instant::now();
        let ops_ok = self.ops.as_mut().is_none_or(|b| b.try_take(1, now));
        if !ops_ok {
            let wait = self.ops.as_ref().map_or(Duration::ZERO, |b| b.wait_for(1));
            return !self.block(wait);
        }
        let bytes_ok = self
            .bandwidth
            .as_mut()
            .is_none_or(|b| b.try_take(bytes, now));
        if !bytes_ok {
            if let Some(ops) = self.ops.as_mut() {
                ops.give_back(1);
            }
            let wait = self
                .bandwidth
                .as_ref()
                .map_or(Duration::ZERO, |b| b.wait_for(bytes));
            return !self.block(wait);
        }
        true
    }

    /// Arms the timer; false when it cannot be armed (then nothing would wake the device, so
    /// the caller lets the request through rather than stalling it).
    fn block(&mut self, wait: Duration) -> bool {
        // A zero timer would disarm it; wait at least a microsecond.
        let wait = wait.max(Duration::from_micros(1));
        match self.timer.reset(wait, None) {
            Ok(()) => {
                self.blocked = true;
                true
            }
            Err(e) => {
                crate::guest_error!(
                    "rate limiter: cannot arm timer, not limiting this request: {e}"
                );
                false
            }
        }
    }

    /// True while a refusal is waiting for the timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Call when the timer fd is readable: clears the block so requests are tried again.
    pub fn timer_fired(&mut self) {
        // The count read is irrelevant; reading only clears readiness (non-blocking: a stray
        // call cannot stall the loop).
        let _ = self.timer.wait();
        self.blocked = false;
    }

    /// True when either bucket is configured.
    pub fn is_limited(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// The current settings.
    pub fn config(&self) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: self.bandwidth.as_ref().map(|b| b.config),
            ops: self.ops.as_ref().map(|b| b.config),
        }
    }

    /// Replaces the settings at run time, keeping this limiter's timerfd (the event loop has it
    /// registered). Invalid settings change nothing.
    ///
    /// Per bucket, as in Firecracker: `None` makes it unlimited; new settings give a fresh, full
    /// bucket with its one-time burst, so tokens and debt under the old settings are forgotten;
    /// settings equal to the current ones keep the bucket as it is, so re-sending them hands out
    /// no free refill.
    ///
    /// A refusal waiting on the timer may not be owed any more, so when a bucket changed while
    /// the limiter is blocked, the timer is re-armed to fire at once: the device retries on its
    /// usual timer path (and is refused again, re-arming the timer, if an unchanged bucket still
    /// says no). Nothing else is needed from the device.
    pub fn update(&mut self, config: RateLimiterConfig) -> Result<(), RateLimiterError> {
        // Both are built before either is applied: an error leaves the limiter as it was.
        let bandwidth = replacement(&self.bandwidth, config.bandwidth, "bandwidth")?;
        let ops = replacement(&self.ops, config.ops, "ops")?;
        let changed = bandwidth.is_some() || ops.is_some();
        if let Some(bucket) = bandwidth {
            self.bandwidth = bucket;
        }
        if let Some(bucket) = ops {
            self.ops = bucket;
        }
        if changed && self.blocked {
            self.retry_now();
        }
        Ok(())
    }

    /// Makes the armed timer fire as soon as it can, so a blocked device tries again.
    fn retry_now(&mut self) {
        // A zero timer would disarm it; a microsecond is "now".
        if let Err(e) = self.timer.reset(Duration::from_micros(1), None) {
            // Unblock anyway: the device then resumes on its next queue or backend event rather
            // than on a timer set for the old settings.
            crate::guest_error!("rate limiter: cannot re-arm the timer after an update: {e}");
            self.blocked = false;
        }
    }
}

/// What an update to `config` does to the bucket `current`: `None` keeps it as it is (same
/// settings), `Some` replaces it with a fresh bucket or none at all.
fn replacement(
    current: &Option<TokenBucket>,
    config: Option<TokenBucketConfig>,
    which: &'static str,
) -> Result<Option<Option<TokenBucket>>, RateLimiterError> {
    if current.as_ref().map(|b| b.config) == config {
        return Ok(None);
    }
    let fresh = config.map(|c| TokenBucket::new(c, which)).transpose()?;
    Ok(Some(fresh))
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: u64, refill_time_ms: u64) -> Option<TokenBucketConfig> {
        Some(TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time_ms,
        })
    }

    #[test]
    fn unlimited_never_refuses() {
        let mut rl = RateLimiter::unlimited().unwrap();
        for _ in 0..1000 {
            assert!(rl.consume(1 << 30));
        }
        assert!(!rl.is_limited());
    }

    #[test]
    fn bandwidth_refuses_once_spent_and_refills() {
        let mut rl = RateLimiter::new(RateLimiterConfig {
            bandwidth: bucket(1000, 0, 100),
            ops: None,
        })
        .unwrap();
        assert!(rl.consume(600));
        assert!(rl.consume(400));
        assert!(!rl.consume(100));
        assert!(rl.is_blocked());
        // Blocked until the timer fires, even if tokens came back meanwhile.
        std::thread::sleep(Duration::from_millis(30));
        assert!(!rl.consume(1));
        rl.timer_fired();
        assert!(!rl.is_blocked());
        assert!(rl.consume(100));
    }

    #[test]
    fn one_time_burst_is_spent_first_and_only_once() {
        let mut rl = RateLimiter::new(RateLimiterConfig {
            bandwidth: bucket(100, 1000, 1000),
            ops: None,
        })
        .unwrap();
        assert!(rl.consume(1000)); // burst
        assert!(rl.consume(100)); // bucket
        assert!(!rl.consume(100));
    }

    #[test]
    fn oversized_request_passes_when_full_and_leaves_a_debt() {
        let mut rl = RateLimiter::new(RateLimiterConfig {
            bandwidth: bucket(100, 0, 1000),
            ops: None,
        })
        .unwrap();
        assert!(rl.consume(250));
        assert!(!rl.consume(1));
    }

    #[test]
    fn ops_bucket_counts_requests() {
        let mut rl = RateLimiter::new(RateLimiterConfig {
            bandwidth: None,
            ops: bucket(3, 0, 1000),
        })
        .unwrap();
        assert!(rl.consume(1 << 20));
        assert!(rl.consume(1 << 20));
        assert!(rl.consume(1 << 20));
        assert!(!rl.consume(1));
    }

    #[test]
    fn refused_bandwidth_gives_back_the_op() {
        let mut rl = RateLimiter::new(RateLimiterConfig {
            bandwidth: bucket(10, 0, 1000),
            ops: bucket(2, 0, 100_000),
        })
        .unwrap();
        assert!(rl.consume(10));
        assert!(!rl.consume(10)); // bandwidth refused: the op token returns
        rl.timer_fired();
        let ops = rl.ops.as_ref().unwrap();
        assert_eq!(ops.budget, 1);
    }

    #[test]
    fn zero_sizes_are_refused() {
        let err = RateLimiter::new(RateLimiterConfig {
            bandwidth: bucket(0, 0, 100),
            ops: None,
        })
        .unwrap_err();
        assert_eq!(err, RateLimiterError::Invalid { which: "bandwidth" });
        assert!(RateLimiter::new(RateLimiterConfig {
            bandwidth: None,
            ops: bucket(1, 0, 0),
        })
        .is_err());
    }

    /// Waits up to `ms` for the limiter's timer; true if it fired.
    fn timer_fires_within(rl: &RateLimiter, ms: i32) -> bool {
        let mut fds = [libc::pollfd {
            fd: rl.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, length 1.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) == 1 }
    }

    #[test]
    fn update_with_bad_or_equal_settings_changes_nothing() {
        let slow = RateLimiterConfig {
            bandwidth: bucket(100, 0, 60_000),
            ops: None,
        };
        let mut rl = RateLimiter::new(slow).unwrap();
        let fd = rl.as_raw_fd();
        assert!(rl.consume(100));
        assert!(!rl.consume(1));
        let bad = RateLimiterConfig {
            bandwidth: bucket(1 << 20, 0, 10),
            ops: bucket(0, 0, 10),
        };
        assert_eq!(
            rl.update(bad).unwrap_err(),
            RateLimiterError::Invalid { which: "ops" }
        );
        assert_eq!(rl.config(), slow);
        // The same settings again: no free refill, the timer stays set for the old wait.
        rl.update(slow).unwrap();
        assert!(rl.is_blocked());
        assert!(!timer_fires_within(&rl, 20));
        assert_eq!(rl.as_raw_fd(), fd);
    }

    #[test]
    fn update_gives_full_new_buckets_and_wakes_a_blocked_limiter() {
        let mut rl = RateLimiter::new(RateLimiterConfig {
            bandwidth: bucket(100, 0, 60_000),
            ops: bucket(10, 0, 60_000),
        })
        .unwrap();
        let fd = rl.as_raw_fd();
        assert!(rl.consume(250)); // leaves a debt a minute long
        assert!(!rl.consume(1));
        let faster = RateLimiterConfig {
            bandwidth: bucket(1000, 500, 60_000),
            ops: bucket(10, 0, 60_000), // unchanged: keeps its state (9 left)
        };
        rl.update(faster).unwrap();
        assert_eq!(rl.config(), faster);
        assert_eq!(rl.as_raw_fd(), fd, "the registered fd stays");
        // Still blocked until the device sees the timer, which fires at once.
        assert!(rl.is_blocked());
        assert!(timer_fires_within(&rl, 1000));
        rl.timer_fired();
        assert!(rl.consume(1500), "burst and full bucket");
        assert!(!rl.consume(1));
        assert_eq!(rl.ops.as_ref().unwrap().budget, 8);

        // None: unlimited.
        rl.update(RateLimiterConfig::default()).unwrap();
        assert!(!rl.is_limited());
        assert!(timer_fires_within(&rl, 1000));
        rl.timer_fired();
        for _ in 0..100 {
            assert!(rl.consume(1 << 30));
        }
        // And limited again, from an unlimited start.
        rl.update(RateLimiterConfig {
            bandwidth: None,
            ops: bucket(1, 0, 60_000),
        })
        .unwrap();
        assert!(!rl.is_blocked());
        assert!(rl.consume(1 << 30));
        assert!(!rl.consume(1));
    }

    #[test]
    fn average_rate_matches_the_bucket() {
        // 1000 tokens per 100 ms: 50 requests of 100 tokens after the first full bucket need
        // about 400 ms more of refill.
        let mut rl = RateLimiter::new(RateLimiterConfig {
            bandwidth: bucket(1000, 0, 100),
            ops: None,
        })
        .unwrap();
        let start = Instant::now();
        let mut done = 0;
        while done < 50 {
            if rl.consume(100) {
                done += 1;
            } else {
                let mut fds = [libc::pollfd {
                    fd: rl.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: one valid pollfd, length 1.
                unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
                rl.timer_fired();
            }
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(380), "{elapsed:?}");
    }
}
