//! Every device of a VM as the config file lists them.

use serde::{Deserialize, Serialize};

use super::drive::DriveBody;
use super::entropy::EntropyBody;
use super::net::NetworkInterfaceBody;
use super::vsock::VsockBody;

/// Every device of a VM, in the order the guest sees them (drives first, so the root drive
/// and `/dev/vda` agree with the order given).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesBody {
    #[serde(default)]
    pub drives: Vec<DriveBody>,
    #[serde(default, rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterfaceBody>,
    #[serde(default)]
    pub vsock: Option<VsockBody>,
    #[serde(default)]
    pub entropy: Option<EntropyBody>,
}
