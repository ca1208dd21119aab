//! How a VM ends, and the process exit code each ending maps to.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the guest reset through the i8042 (`reboot`), or halted its vCPU (`poweroff` without ACPI) |
//! | 0-255 | the guest command's exit status, when the guest reported one (tessera-init) and reset |
//! | 1 | the VMM could not start or run the VM (bad argument, file, or host KVM) |
//! | 2 | command-line usage error |
//! | 130 / 143 | the VMM was stopped by SIGINT / by a second SIGTERM |
//! | 201 | the guest triple-faulted (KVM_EXIT_SHUTDOWN) |
//! | 202 | KVM could not run the guest (internal error or failed VM entry) |
//! | 203 | a vCPU exited for a reason the VMM does not handle, or KVM_RUN failed |
//! | 204 | the guest kernel panicked (its "Kernel panic - not syncing" line was seen on the console) |
//! | 205 | a command was given, but the guest reset without reporting its exit status (CLI) |

use std::fmt;

/// The reason the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest pulsed the reset line of the i8042.
    Reset,
    /// A vCPU executed HLT with the VMM handling it (no in-kernel wake-up source).
    Halted { vcpu: u8 },
    /// A triple fault: the CPU shut down.
    TripleFault { vcpu: u8 },
    /// KVM reported an internal error or a failed VM entry.
    KvmFailure { vcpu: u8, detail: String },
    /// An exit the VMM does not handle, or an error from KVM_RUN.
    Unexpected { vcpu: u8, detail: String },
    /// The host stopped the VMM with a signal.
    Signal { signal: i32 },
    /// The guest kernel panicked with this reason, then reset or stopped.
    GuestPanic { message: String },
    /// The guest reported its command's exit status, then reset.
    CommandExited { status: u8 },
}

/// Exit code when a command was given but the guest never reported its status.
pub const EXIT_NO_STATUS: i32 = 205;

impl VmExit {
    /// The process exit code documented above.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::Reset | VmExit::Halted { .. } => 0,
            VmExit::Signal { signal } => 128 + signal,
            VmExit::TripleFault { .. } => 201,
            VmExit::KvmFailure { .. } => 202,
            VmExit::Unexpected { .. } => 203,
            VmExit::GuestPanic { .. } => 204,
            VmExit::CommandExited { status } => i32::from(*status),
        }
    }

    /// Whether the VM ended as it was meant to: by the guest, not by a fault or the VMM. A
    /// command with a non-zero status still ended cleanly.
    pub fn is_clean(&self) -> bool {
        matches!(self, VmExit::CommandExited { .. }) || self.exit_code() == 0
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::Reset => write!(f, "guest reset through the i8042"),
            VmExit::Halted { vcpu } => write!(f, "guest halted vCPU {vcpu}"),
            VmExit::TripleFault { vcpu } => {
                write!(f, "guest triple fault on vCPU {vcpu} (the CPU shut down)")
            }
            VmExit::KvmFailure { vcpu, detail } => {
                write!(f, "KVM could not run vCPU {vcpu}: {detail}")
            }
            VmExit::Unexpected { vcpu, detail } => write!(f, "vCPU {vcpu} stopped: {detail}"),
            VmExit::Signal { signal } => write!(f, "VMM stopped by signal {signal}"),
            VmExit::GuestPanic { message } => write!(f, "guest kernel panic: {message}"),
            VmExit::CommandExited { status } => {
                write!(f, "guest command exited with status {status}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        assert_eq!(VmExit::Reset.exit_code(), 0);
        assert_eq!(VmExit::Halted { vcpu: 0 }.exit_code(), 0);
        assert_eq!(VmExit::TripleFault { vcpu: 0 }.exit_code(), 201);
        assert_eq!(VmExit::Signal { signal: 2 }.exit_code(), 130);
        let failure = VmExit::KvmFailure {
            vcpu: 1,
            detail: "x".into(),
        };
        assert_eq!(failure.exit_code(), 202);
        assert_eq!(failure.to_string(), "KVM could not run vCPU 1: x");
        let panic = VmExit::GuestPanic {
            message: "Attempted to kill init!".into(),
        };
        assert_eq!(panic.exit_code(), 204);
        assert!(!panic.is_clean());
        let command = VmExit::CommandExited { status: 3 };
        assert_eq!(command.exit_code(), 3);
        assert!(command.is_clean());
    }
}
