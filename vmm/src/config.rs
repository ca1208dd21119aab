//! What a user asks for: the machine, the boot source, the console.
//!
//! Field names follow Firecracker's `machine-config` and `boot-source` so the REST API and the
//! config file can share these types.

use std::path::PathBuf;

use crate::kernel_cmdline::{validate_cmdline, DEFAULT_CMDLINE};

pub const MAX_VCPUS: u8 = 32;
/// Below this a kernel, its boot structures and an initrd cannot fit.
pub const MIN_MEM_MIB: u64 = 8;
/// 1 TiB: far above any microVM, low enough that a typo is caught.
pub const MAX_MEM_MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum ConfigError {
    /// vCPU count {0} is out of range: use 1 to 32
    VcpuCount(u64),
    /// memory size {0} MiB is out of range: use 8 to 1048576 MiB
    MemorySize(u64),
    /// kernel command line is {len} bytes; the limit is {max} bytes
    CmdlineTooLong { len: usize, max: usize },
    /// kernel command line contains a NUL byte or a non-ASCII character
    CmdlineInvalid,
}

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

/// The kernel to boot, its initrd and command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    pub initrd_path: Option<PathBuf>,
    pub boot_args: String,
    /// Bytes the guest gets after the initrd file, at its next 4-byte boundary, the initrd's
    /// size covering both: the workload spec's newc archive
    /// (`guest_init::protocol::spec_archive`), which Linux unpacks after the initrd's own.
    /// Without an initrd file they are the whole initrd. Empty for none.
    pub initrd_append: Vec<u8>,
}

impl BootSource {
    pub fn new(
        kernel_image_path: PathBuf,
        initrd_path: Option<PathBuf>,
        boot_args: Option<String>,
    ) -> Result<Self, ConfigError> {
        let boot_args = boot_args.unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
        validate_cmdline(&boot_args)?;
        Ok(Self {
            kernel_image_path,
            initrd_path,
            boot_args,
            initrd_append: Vec::new(),
        })
    }
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConsoleOutput {
    /// The VMM's stdout; the VMM's stdin feeds the guest.
    #[default]
    Stdio,
    /// Appended to a file; the guest gets no input.
    File(PathBuf),
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

    #[test]
    fn default_cmdline_is_used_when_none_is_given() {
        let b = BootSource::new("k".into(), None, None).unwrap();
        assert_eq!(b.boot_args, DEFAULT_CMDLINE);
    }
}
