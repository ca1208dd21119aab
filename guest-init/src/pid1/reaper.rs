//! Reaping: PID 1 inherits every orphan of the guest and must wait for each.

use std::io;

use super::Pid1Error;
use crate::runner::exit_status;

/// Reaps children (the workload and any orphan the kernel hands to PID 1) until `pid` ends, and
/// returns its exit status: the exit code, or 128 + the signal that killed it.
pub fn reap_until(pid: libc::pid_t) -> Result<u8, Pid1Error> {
    loop {
        let mut wstatus = 0;
        // SAFETY: waitpid writes one int through a valid pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut wstatus, 0) };
        if reaped == pid {
            if let Some(status) = exit_status(wstatus) {
                return Ok(status);
            }
        } else if reaped < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            return Err(Pid1Error::LostWorkload(pid));
        }
    }
}
