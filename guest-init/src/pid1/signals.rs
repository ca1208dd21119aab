//! Ctrl-Alt-Del forwarding: the VMM's answer to SIGTERM reaches the workload as SIGTERM, as
//! `docker stop` does.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

use super::Pid1Error;

/// The workload's pid (leader of its process group), for the signal handler; 0 for none.
static WORKLOAD_PID: AtomicI32 = AtomicI32::new(0);

/// Names the process that forwarded signals go to; 0 stops forwarding.
pub fn set_workload(pid: libc::pid_t) {
    WORKLOAD_PID.store(pid, Ordering::SeqCst);
}

/// Turns Ctrl-Alt-Del (and SIGTERM) into a SIGTERM for the workload.
pub fn forward_ctrl_alt_del() -> Result<(), Pid1Error> {
    extern "C" fn forward(_signal: libc::c_int) {
        let pid = WORKLOAD_PID.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill is async-signal-safe; the pid is our child's process group leader.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    // With C-A-D off the kernel sends SIGINT to init instead of rebooting at once.
    // SAFETY: a plain reboot(2) command with no pointer arguments.
    if unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) } != 0 {
        return Err(Pid1Error::CtrlAltDel(io::Error::last_os_error()));
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only reads an atomic and calls kill, both async-signal-safe.
        let previous = unsafe { libc::signal(signal, forward as *const () as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            return Err(Pid1Error::Signal {
                signal,
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}
