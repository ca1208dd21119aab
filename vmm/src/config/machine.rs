//! The machine: `machine-config`'s body and the checked vCPU count and memory size.

use serde::{Deserialize, Serialize};

use super::ConfigError;

pub const MAX_VCPUS: u8 = 32;
/// Below this a kernel, its boot structures and an initrd cannot fit.
pub const MIN_MEM_MIB: u64 = 8;
/// 1 TiB: far above any microVM, low enough that a typo is caught.
pub const MAX_MEM_MIB: u64 = 1 << 20;

/// The machine: how many vCPUs and how much memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
        }
    }
}

impl MachineConfig {
    /// Checks counts and sizes given as plain numbers (a CLI flag, a JSON field).
    pub fn new(vcpu_count: u64, mem_size_mib: u64) -> Result<Self, ConfigError> {
        let vcpu_count = u8::try_from(vcpu_count)
            .ok()
            .filter(|n| (1..=MAX_VCPUS).contains(n))
            .ok_or(ConfigError::VcpuCount(vcpu_count))?;
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mem_size_mib) {
            return Err(ConfigError::MemorySize(mem_size_mib));
        }
        Ok(Self {
            vcpu_count,
            mem_size_mib,
        })
    }
}

/// `PUT`/`PATCH /machine-config` and the config file's `machine-config`. Fields Firecracker
/// has but Tessera does not implement are accepted only with the values that mean "off".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigBody {
    #[serde(default)]
    pub vcpu_count: Option<u64>,
    #[serde(default)]
    pub mem_size_mib: Option<u64>,
    #[serde(default)]
    pub smt: Option<bool>,
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    #[serde(default)]
    pub huge_pages: Option<String>,
    /// Deprecated in Firecracker; kept so older clients' bodies are accepted.
    #[serde(default, skip_serializing)]
    pub cpu_template: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_and_memory_bounds() {
        assert!(MachineConfig::new(1, 8).is_ok());
        assert!(MachineConfig::new(32, MAX_MEM_MIB).is_ok());
        assert_eq!(MachineConfig::new(0, 128), Err(ConfigError::VcpuCount(0)));
        assert_eq!(MachineConfig::new(33, 128), Err(ConfigError::VcpuCount(33)));
        assert_eq!(
            MachineConfig::new(256, 128),
            Err(ConfigError::VcpuCount(256))
        );
        assert_eq!(MachineConfig::new(1, 7), Err(ConfigError::MemorySize(7)));
        assert_eq!(
            MachineConfig::new(1, MAX_MEM_MIB + 1),
            Err(ConfigError::MemorySize(MAX_MEM_MIB + 1))
        );
    }
}
