//! Every device of a VM as the config file lists them.

use serde::{Deserialize, Serialize};

use super::drive::Drive;
use super::entropy::Entropy;
use super::net::NetworkInterface;
use super::vsock::Vsock;

/// Every device of a VM, in the order the guest sees them (drives first, so the root drive
/// and `/dev/vda` agree with the order given).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(default, rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    pub vsock: Option<Vsock>,
    #[serde(default)]
    pub entropy: Option<Entropy>,
}
