//! The virtio-rng device: `PUT /entropy`'s body.

use serde::{Deserialize, Serialize};

use super::rate_limiter::RateLimiterBody;

/// The virtio-rng device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyBody {
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterBody>,
}
