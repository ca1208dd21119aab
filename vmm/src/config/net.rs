//! A virtio-net interface: `PUT` and `PATCH /network-interfaces/{id}` bodies.

use serde::{Deserialize, Serialize};

use super::rate_limiter::RateLimiterBody;

/// A virtio-net interface on a host TAP device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceBody {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default)]
    pub guest_mac: Option<String>,
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterBody>,
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterBody>,
}

/// `PATCH /network-interfaces/{id}`: new rate limiters for a running VM's interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdateBody {
    pub iface_id: String,
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterBody>,
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterBody>,
}
