//! Handing the VM's teardown to a keeper process, so that whoever waits for tessera sees the
//! exit status as soon as it is known.
//!
//! Ending a KVM VM costs the host milliseconds to tens of milliseconds (the guest's memory
//! unmapped and its shadow page tables zapped, the vCPUs and the VM freed), and Linux does it
//! in the exit of the last process that holds the VM, before that process's parent can reap
//! it. So, once the VM has ended, [`detach`] clones a keeper that shares tessera's memory
//! (`CLONE_VM`) and holds a copy of the VM's descriptors and nothing else (not stdio, not a
//! socket, not a TAP device or disk). tessera then exits at the cost of an ordinary process;
//! the keeper notices, as the last write end of its pipe closes, and exits in turn, doing the
//! teardown. It is a separate process named `tessera-release` in the same cgroup (Linux
//! reparents it to the nearest subreaper, which reaps it); in a PID namespace of tessera's own
//! (`tessera-jailer --new-pid-ns`) the namespace's end waits for it, as before.
//!
//! The keeper runs on its own small stack with the parent's thread state, so it makes raw
//! system calls only: no allocation, no locks.

use std::ffi::c_void;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The keeper's stack: it only makes system calls.
const KEEPER_STACK_BYTES: usize = 16 * 1024;

/// How long tessera waits for the keeper to close its copies of the descriptors the caller
/// can see (stdout, sockets, TAP devices): they must be gone when tessera's exit is seen.
const KEEPER_READY_WAIT: Duration = Duration::from_millis(100);

/// The flags `detach` clones with, allowed by the VMM seccomp filter: shared memory, no exit
/// signal (the keeper's own parent never waits for it).
pub const KEEPER_CLONE_FLAGS: u64 = libc::CLONE_VM as u64;

/// What the keeper reads, in memory shared with tessera.
struct Plan {
    /// Descriptors to keep, ascending: the VM's, then the pipe's read end.
    keep: Vec<RawFd>,
    /// Ends the keeper when it reads end-of-file: tessera holds the only write end.
    wait_fd: RawFd,
    /// Set to 1 by the keeper once it has closed everything else.
    ready: AtomicU32,
    stack: Vec<u8>,
}

/// Starts the keeper holding `vm_fds` (the descriptors whose last close ends the VM). After
/// `Ok`, the caller must not unmap guest memory or close `vm_fds` itself: it exits soon, and
/// the keeper does both as it ends.
pub fn detach(vm_fds: &[RawFd]) -> io::Result<()> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = fds;
    let mut keep: Vec<RawFd> = vm_fds.iter().copied().chain([read_end]).collect();
    keep.sort_unstable();
    keep.dedup();
    // Leaked: the keeper reads it until it exits, and tessera exits first.
    let plan: &'static Plan = Box::leak(Box::new(Plan {
        keep,
        wait_fd: read_end,
        ready: AtomicU32::new(0),
        stack: vec![0; KEEPER_STACK_BYTES],
    }));
    let stack_top = plan.stack.as_ptr_range().end as usize & !0xf;
    // SAFETY: `keeper` runs on its own stack (`plan.stack`, leaked, 16-byte aligned top) and
    // only reads `plan`, which is leaked and never written by this process after this call.
    let pid = unsafe {
        libc::clone(
            keeper,
            stack_top as *mut c_void,
            KEEPER_CLONE_FLAGS as libc::c_int,
            plan as *const Plan as *mut c_void,
        )
    };
    let cloned = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: `read_end` is this process's own, closed once here; the keeper has its copy.
    unsafe { libc::close(read_end) };
    if let Err(e) = cloned {
        // SAFETY: as above, the write end is ours and nothing else uses it.
        unsafe { libc::close(write_end) };
        return Err(e);
    }
    // `write_end` stays open until the process exits: its close is what ends the keeper.
    wait_until_ready(&plan.ready);
    Ok(())
}

/// Waits, a bounded time, for the keeper to have closed what the caller can see.
fn wait_until_ready(ready: &AtomicU32) {
    let deadline = std::time::Instant::now() + KEEPER_READY_WAIT;
    while ready.load(Ordering::Acquire) == 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            log::warn!("the teardown keeper did not start within {KEEPER_READY_WAIT:?}");
            return;
        }
        let timeout = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos().into(),
        };
        // SAFETY: FUTEX_WAIT reads the aligned u32 behind `ready` and sleeps while it is 0 (or
        // until the timeout); `timeout` lives across the call.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                ready.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                0u32,
                &timeout as *const libc::timespec,
            )
        };
    }
}

/// The keeper: closes every descriptor but the VM's and its pipe, says so, waits for
/// tessera's exit (end-of-file on the pipe), then exits, releasing the VM.
extern "C" fn keeper(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `arg` is the leaked `Plan` that `detach` passed.
    let plan = unsafe { &*(arg as *const Plan) };
    let mut next: u32 = 0;
    for &fd in &plan.keep {
        let fd = fd as u32;
        if fd > next {
            close_range(next, fd - 1);
        }
        next = fd + 1;
    }
    close_range(next, u32::MAX);
    // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"tessera-release".as_ptr()) };
    plan.ready.store(1, Ordering::Release);
    // SAFETY: FUTEX_WAKE on the aligned u32 behind `ready`.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            plan.ready.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        )
    };
    let mut byte = 0u8;
    // Returns 0 once tessera has exited (a signal's EINTR ends the wait early, which only
    // makes the teardown start sooner).
    // SAFETY: reads at most one byte into `byte`.
    unsafe { libc::read(plan.wait_fd, (&mut byte as *mut u8).cast(), 1) };
    // SAFETY: ends this process only; nothing of it needs cleaning up.
    unsafe { libc::_exit(0) }
}

fn close_range(first: u32, last: u32) {
    // SAFETY: closes descriptors in this process's own (copied) table; the kept ones are
    // outside the range.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
}
