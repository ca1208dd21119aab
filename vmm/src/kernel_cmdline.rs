//! The kernel command line: the default lines, the limit, and the device parameters the
//! builder adds once devices are placed.

use crate::config::{BootSource, ConfigError};
use crate::device_manager::DeviceManager;
use crate::resources::DeviceSettings;
use crate::vm::VmError;
use crate::x86_64::layout::CMDLINE_MAX_SIZE;

/// The command line a microVM kernel gets when none is given: console on the 8250, reboot
/// through the i8042 (the only reset line we model), no PCI probing, no i8042 AUX/MUX probing.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// The command line for a guest running a command under tessera-init: silent (`loglevel=0`:
/// the command's streams travel over vsock and the console, on tessera's stderr, shows only a
/// panic, which raises the level itself, or tessera-init's own fallback), reboot through the
/// i8042 at the end or at once on a panic, nothing probed that a microVM lacks.
pub const COMMAND_CMDLINE: &str = "console=ttyS0 quiet loglevel=0 reboot=k panic=-1 pci=off \
     nomodule i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// A command line fits when it and its terminating NUL fit Linux's buffer.
pub fn validate_cmdline(cmdline: &str) -> Result<(), ConfigError> {
    if !cmdline.is_ascii() || cmdline.contains('\0') {
        return Err(ConfigError::CmdlineInvalid);
    }
    if cmdline.len() + 1 > CMDLINE_MAX_SIZE {
        return Err(ConfigError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    Ok(())
}

/// The boot source with the virtio devices' `virtio_mmio.device=` entries (and `root=` for a
/// root drive) added before any ` -- ` that starts init's arguments.
pub fn with_device_args(
    boot: &BootSource,
    devices: &DeviceManager,
    settings: &DeviceSettings,
) -> Result<BootSource, VmError> {
    let mut extra = devices.cmdline_suffix();
    if let Some((disk, read_only)) = &settings.root_device {
        extra.push_str(&format!(
            " root={disk} {}",
            if *read_only { "ro" } else { "rw" }
        ));
    }
    if extra.is_empty() {
        return Ok(boot.clone());
    }
    let boot_args = insert_kernel_args(&boot.boot_args, &extra);
    validate_cmdline(&boot_args)?;
    Ok(BootSource {
        boot_args,
        ..boot.clone()
    })
}

/// `args` with `extra` (led by a space) added at the end of the kernel's parameters: before the
/// first `--` word, after which the kernel passes everything to init.
fn insert_kernel_args(args: &str, extra: &str) -> String {
    let mut offset = 0;
    for word in args.split(' ') {
        if word == "--" {
            return format!("{}{extra} {}", args[..offset].trim_end(), &args[offset..]);
        }
        offset += word.len() + 1;
    }
    format!("{args}{extra}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_args_go_before_init_arguments() {
        let extra = " virtio_mmio.device=4K@0xd0000000:5";
        assert_eq!(
            insert_kernel_args("console=ttyS0 quiet", extra),
            "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(
            insert_kernel_args("console=ttyS0 -- init-arg", extra),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 -- init-arg"
        );
        assert_eq!(
            insert_kernel_args("console=ttyS0 --", extra),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 --"
        );
        assert_eq!(
            insert_kernel_args("-- a", extra),
            " virtio_mmio.device=4K@0xd0000000:5 -- a"
        );
        // A `--` inside a word is not the separator; spacing is kept.
        assert_eq!(
            insert_kernel_args("a=--  b", extra),
            "a=--  b virtio_mmio.device=4K@0xd0000000:5"
        );
    }

    #[test]
    fn cmdline_limits() {
        let longest = "a".repeat(CMDLINE_MAX_SIZE - 1);
        assert!(validate_cmdline(&longest).is_ok());
        assert_eq!(
            validate_cmdline(&format!("{longest}b")),
            Err(ConfigError::CmdlineTooLong {
                len: CMDLINE_MAX_SIZE,
                max: CMDLINE_MAX_SIZE - 1
            })
        );
        assert_eq!(validate_cmdline("a\0b"), Err(ConfigError::CmdlineInvalid));
        assert_eq!(validate_cmdline("café"), Err(ConfigError::CmdlineInvalid));
    }
}
