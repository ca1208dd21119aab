//! The whole configuration: the config file and `GET /vm/config`.

use serde::{Deserialize, Serialize};

use super::boot::BootSourceConfig;
use super::drive::Drive;
use super::entropy::Entropy;
use super::logger::LoggerConfig;
use super::machine::MachineConfigBody;
use super::metrics::MetricsConfig;
use super::net::NetworkInterface;
use super::vsock::Vsock;

/// The whole configuration: the config file's shape and `GET /vm/config`'s.
///
/// `balloon`, `mmds-config` and `cpu-config` are Firecracker sections Tessera does not
/// implement yet: `null` is accepted (so `GET /vm/config` output can be fed back), anything
/// else is refused by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSourceConfig>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfigBody>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    pub vsock: Option<Vsock>,
    #[serde(default)]
    pub entropy: Option<Entropy>,
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    #[serde(default)]
    pub balloon: Option<serde_json::Value>,
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<serde_json::Value>,
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<serde_json::Value>,
}
