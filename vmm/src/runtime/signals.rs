//! The VMM's signals: which thread takes them, the sockets the running VM's loop watches, and
//! the flags the pre-boot loop checks.
//!
//! SIGINT, SIGTERM and the like go to any thread that does not block them. The API and vCPU
//! threads block them all, so their handlers run on the VMM thread, whose seccomp filter allows
//! what the handlers do; the vCPU kick (SIGRTMIN) and the faults a thread raises itself stay
//! open.

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::vm::{io_err, VmError};

/// Signals a thread raises on itself, which must reach it: blocking them would turn a fault
/// (or a seccomp verdict) into a silent kill.
const SYNCHRONOUS: [libc::c_int; 7] = [
    libc::SIGSYS,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGABRT,
];

/// Blocks every signal but the synchronous ones and `keep` on the calling thread.
pub fn leave_to_vmm_thread(keep: &[libc::c_int]) -> io::Result<()> {
    // SAFETY: the set is initialised by sigfillset before use, and pthread_sigmask only reads it.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for signal in SYNCHRONOUS.iter().chain(keep) {
            libc::sigdelset(&mut set, *signal);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    match rc {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// A socket that receives a byte each time `signal` arrives, with the handler's id (to
/// unregister it when the VM is dropped, say after a failed start).
pub fn signal_stream(signal: i32) -> Result<(UnixStream, signal_hook::SigId), VmError> {
    let (read, write) = UnixStream::pair().map_err(io_err("create a signal socket"))?;
    read.set_nonblocking(true)
        .map_err(io_err("configure a signal socket"))?;
    let id = signal_hook::low_level::pipe::register(signal, write)
        .map_err(io_err("install a signal handler"))?;
    Ok((read, id))
}

/// SIGINT and SIGTERM before the VM exists: noted, so the pre-boot loop can end the process
/// cleanly (the API socket removed) instead of the default action killing it. Unregistered
/// on drop; the running VM has its own handling (Ctrl-Alt-Del on SIGTERM).
pub struct PrebootSignals {
    flags: Vec<(i32, Arc<AtomicBool>, signal_hook::SigId)>,
}

impl PrebootSignals {
    pub fn register() -> io::Result<Self> {
        let mut flags = Vec::new();
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let flag = Arc::new(AtomicBool::new(false));
            let id = signal_hook::flag::register(signal, flag.clone())?;
            flags.push((signal, flag, id));
        }
        Ok(Self { flags })
    }

    pub fn received(&self) -> Option<i32> {
        self.flags
            .iter()
            .find(|(_, flag, _)| flag.load(Ordering::Relaxed))
            .map(|(signal, _, _)| *signal)
    }
}

impl Drop for PrebootSignals {
    fn drop(&mut self) {
        for (_, _, id) in &self.flags {
            signal_hook::low_level::unregister(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(signal: libc::c_int) -> bool {
        // SAFETY: reads the calling thread's mask into a zeroed set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
            libc::sigismember(&set, signal) == 1
        }
    }

    #[test]
    fn blocks_process_signals_and_keeps_faults_and_kick() {
        std::thread::spawn(|| {
            let kick = libc::SIGRTMIN();
            leave_to_vmm_thread(&[kick]).unwrap();
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD] {
                assert!(blocked(signal), "signal {signal} not blocked");
            }
            for signal in SYNCHRONOUS.iter().chain([&kick]) {
                assert!(!blocked(*signal), "signal {signal} blocked");
            }
        })
        .join()
        .unwrap();
    }
}
