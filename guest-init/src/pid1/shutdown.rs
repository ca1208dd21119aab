//! The end of the guest: stop, sync, report, reboot.

use std::io;
use std::time::{Duration, Instant};

use super::report_ports::ReportPorts;
use super::signals;

use crate::protocol::EXIT_STATUS_PORT;

/// How long processes left behind by the workload get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Stops every other process, syncs, reports `status` and reboots. Never returns: should the
/// reboot fail, init exits and the kernel panics, which the VMM reports.
pub fn finish(ports: ReportPorts, status: u8) -> ! {
    signals::set_workload(0);
    // SAFETY: kill(-1) signals every process but init; no memory is involved.
    if unsafe { libc::kill(-1, libc::SIGTERM) } == 0 {
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            // SAFETY: waitpid with a null status pointer is allowed.
            let reaped = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
            if reaped < 0 {
                break; // ECHILD: nothing left.
            }
            if reaped == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // SAFETY: as above.
        unsafe { libc::kill(-1, libc::SIGKILL) };
    }
    super::stdio::finish();
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    ports.write(EXIT_STATUS_PORT, status);
    // SAFETY: a plain reboot(2) command with no pointer arguments.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    eprintln!(
        "tessera-init: error: reboot failed: {}",
        io::Error::last_os_error()
    );
    std::process::exit(i32::from(status))
}
