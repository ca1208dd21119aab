//! Which thread takes the process's signals.
//!
//! SIGINT, SIGTERM and the like go to any thread that does not block them. The API and vCPU
//! threads block them all, so their handlers run on the VMM thread, whose seccomp filter allows
//! what the handlers do; the vCPU kick (SIGRTMIN) and the faults a thread raises itself stay
//! open.

use std::io;

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
