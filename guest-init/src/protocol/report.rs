//! The I/O ports through which `tessera-init` reports to the VMM. The VMM side is
//! `devices::legacy::GuestReport`, which takes its port numbers from here.
//!
//! | port | width | written when | value |
//! |---|---|---|---|
//! | 0x3f0 | byte | tessera-init starts (boot-done mark) | 0x7e |
//! | 0x3f1 | byte | the command ended, after `sync`, right before reboot | exit code, or 128 + signal |

/// Boot-done mark: the guest reached its init.
pub const BOOT_DONE_PORT: u16 = 0x3f0;
/// The command's exit status.
pub const EXIT_STATUS_PORT: u16 = 0x3f1;
/// How many consecutive ports the report uses, from [`BOOT_DONE_PORT`].
pub const REPORT_PORT_COUNT: u16 = 2;
/// The value tessera-init writes to [`BOOT_DONE_PORT`].
pub const BOOT_DONE_VALUE: u8 = 0x7e;

/// Exit status when tessera-init itself failed (bad spec, mount failure, panic), as Docker's 125.
pub const STATUS_INIT_FAILED: u8 = 125;
/// Exit status when the command exists but cannot be executed, as a shell's 126.
pub const STATUS_CANNOT_EXECUTE: u8 = 126;
/// Exit status when the command is not found, as a shell's 127.
pub const STATUS_NOT_FOUND: u8 = 127;

const _: () = assert!(EXIT_STATUS_PORT == BOOT_DONE_PORT + 1 && REPORT_PORT_COUNT == 2);
