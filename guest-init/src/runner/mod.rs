//! Runners: what turns a [`WorkloadSpec`] into a running workload. Today's is [`process`] (the
//! spec's program, exec'd directly). A Wasm spec runs as the process of the Wasm runner
//! (`tessera-wasm`, a separate binary so that wasmtime never reaches the VMM or tessera-init):
//! [`WorkloadSpec::process`] turns the one into the other.
//!
//! A runner only starts the workload. Waiting is left to the caller because it depends on where
//! the runner runs: PID 1 of a guest must reap every orphan while it waits
//! (`pid1::reaper`), a host sandbox waits for its own child.

pub mod process;
pub mod user;

use crate::protocol::{STATUS_CANNOT_EXECUTE, STATUS_INIT_FAILED, STATUS_NOT_FOUND};
use crate::spec::WorkloadSpec;

/// Starts workloads described by a [`WorkloadSpec`].
pub trait Runner {
    /// Starts `spec`'s workload. Its process leads a process group of its own, so a signal
    /// forwarded to [`Workload::pid`] (as PID 1 forwards Ctrl-Alt-Del) reaches it and only it.
    fn start(&mut self, spec: &WorkloadSpec) -> Result<Workload, RunError>;
}

/// A started workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// The workload's main process: the one whose exit status is the workload's.
    pub pid: libc::pid_t,
    /// What it runs, for messages.
    pub program: String,
}

/// Why a runner could not start a workload; [`RunError::status`] is the exit status that
/// reports it.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum RunError {
    /// cannot run {program:?} (in {cwd}): {source}
    NotFound {
        program: String,
        cwd: String,
        source: std::io::Error,
    },
    /// cannot run {program:?} (in {cwd}): {source}
    CannotExecute {
        program: String,
        cwd: String,
        source: std::io::Error,
    },
    /// {0}
    Setup(String),
}

impl RunError {
    /// The exit status to report, as a shell and Docker report these failures.
    pub fn status(&self) -> u8 {
        match self {
            RunError::NotFound { .. } => STATUS_NOT_FOUND,
            RunError::CannotExecute { .. } => STATUS_CANNOT_EXECUTE,
            RunError::Setup(_) => STATUS_INIT_FAILED,
        }
    }
}

/// A wait(2) status as a shell reports it: the exit code, or 128 + the signal that killed the
/// process. None for a stop or continue report.
pub fn exit_status(wstatus: libc::c_int) -> Option<u8> {
    if libc::WIFEXITED(wstatus) {
        return Some(libc::WEXITSTATUS(wstatus) as u8);
    }
    if libc::WIFSIGNALED(wstatus) {
        return Some(128u8.saturating_add(libc::WTERMSIG(wstatus) as u8));
    }
    None
}

/// The signal number in a status from [`exit_status`], if a signal ended the process.
pub fn killed_by(status: u8) -> Option<u8> {
    (status > 128 && status - 128 < 65).then(|| status - 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_as_a_shell_reads_them() {
        // Exit code 3: (3 << 8); SIGKILL: 9.
        assert_eq!(exit_status(3 << 8), Some(3));
        assert_eq!(exit_status(9), Some(137));
        assert_eq!(killed_by(137), Some(9));
        assert_eq!(killed_by(3), None);
        assert_eq!(killed_by(128), None);
    }
}
