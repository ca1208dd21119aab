//! Rate limiters as Firecracker's bodies carry them: a bandwidth and an ops token bucket.

use devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use serde::{Deserialize, Serialize};

/// One token bucket: `size` tokens refilled over `refill_time` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketBody {
    pub size: u64,
    #[serde(default)]
    pub one_time_burst: u64,
    pub refill_time: u64,
}

/// Bandwidth (bytes) and ops buckets; an absent bucket is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterBody {
    #[serde(default)]
    pub bandwidth: Option<TokenBucketBody>,
    #[serde(default)]
    pub ops: Option<TokenBucketBody>,
}

impl RateLimiterBody {
    /// This `PATCH` limiter applied over `current`, as Firecracker does it: a bucket the
    /// update names replaces the current one (a zero-sized bucket lifts that limit), a bucket
    /// it leaves out stays as it is.
    pub fn patched(self, current: Option<RateLimiterBody>) -> RateLimiterBody {
        let current = current.unwrap_or_default();
        RateLimiterBody {
            bandwidth: self.bandwidth.or(current.bandwidth),
            ops: self.ops.or(current.ops),
        }
    }

    /// The device-model limits. As in Firecracker, a bucket with a zero `size` or
    /// `refill_time` is no bucket: that resource is unlimited (how a PATCH lifts a limit).
    pub fn to_config(self) -> RateLimiterConfig {
        let bucket = |b: TokenBucketBody| {
            (b.size > 0 && b.refill_time > 0).then_some(TokenBucketConfig {
                size: b.size,
                one_time_burst: b.one_time_burst,
                refill_time_ms: b.refill_time,
            })
        };
        RateLimiterConfig {
            bandwidth: self.bandwidth.and_then(bucket),
            ops: self.ops.and_then(bucket),
        }
    }
}
