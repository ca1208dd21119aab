//! The boot source: `boot-source`'s body and the checked kernel, initrd and command line;
//! and where the guest console goes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::kernel_cmdline::{validate_cmdline, DEFAULT_CMDLINE};

/// `PUT /boot-source` and the config file's `boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceBody {
    pub kernel_image_path: PathBuf,
    #[serde(default)]
    pub initrd_path: Option<PathBuf>,
    #[serde(default)]
    pub boot_args: Option<String>,
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
    /// The VMM's stderr, with no input: a command run's console, whose stdio travels apart
    /// (over vsock), so this carries only what the kernel and tessera-init have to say.
    Stderr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cmdline_is_used_when_none_is_given() {
        let b = BootSource::new("k".into(), None, None).unwrap();
        assert_eq!(b.boot_args, DEFAULT_CMDLINE);
    }
}
