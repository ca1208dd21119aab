//! The whole configuration: the config file and `GET /vm/config`.

use serde::{Deserialize, Serialize};

use super::boot::BootSourceBody;
use super::drive::DriveBody;
use super::entropy::EntropyBody;
use super::logger::LoggerBody;
use super::machine::MachineConfigBody;
use super::metrics::MetricsBody;
use super::net::NetworkInterfaceBody;
use super::vsock::VsockBody;

/// The whole configuration: the config file's shape and `GET /vm/config`'s.
///
/// `balloon`, `mmds-config` and `cpu-config` are Firecracker sections Tessera does not
/// implement yet: `null` is accepted (so `GET /vm/config` output can be fed back), anything
/// else is refused by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfigBody {
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSourceBody>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfigBody>,
    #[serde(default)]
    pub drives: Vec<DriveBody>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterfaceBody>,
    #[serde(default)]
    pub vsock: Option<VsockBody>,
    #[serde(default)]
    pub entropy: Option<EntropyBody>,
    #[serde(default)]
    pub logger: Option<LoggerBody>,
    #[serde(default)]
    pub metrics: Option<MetricsBody>,
    #[serde(default)]
    pub balloon: Option<serde_json::Value>,
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<serde_json::Value>,
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<serde_json::Value>,
    /// Tessera's extension: the workload spec tessera-init runs (docs/WORKLOAD_SPEC.md), as
    /// `PUT /workload` sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<guest_init::spec::WorkloadSpec>,
}
