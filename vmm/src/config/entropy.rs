//! The virtio-rng device: `PUT /entropy`'s body.

use serde::{Deserialize, Serialize};

use super::rate_limiter::RateLimiter;

/// The virtio-rng device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    #[serde(default)]
    pub rate_limiter: Option<RateLimiter>,
}
