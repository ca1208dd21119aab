//! A non-blocking timerfd: devices read it only after epoll says it fired, and a stray read must
//! never block the event loop.

use std::io;
use std::os::fd::AsRawFd;

use vmm_sys_util::timerfd::TimerFd;

pub fn nonblocking_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    // SAFETY: fcntl on an fd we own; the result is checked.
    if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}
