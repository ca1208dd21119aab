//! PID 1's standard streams.

/// Gives fds 0-2 the console when the kernel could not (no /dev/console in the initramfs).
pub fn ensure_stdio() {
    // SAFETY: fcntl(F_GETFD) only queries the fd table.
    let missing: Vec<i32> = (0..3)
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1)
        .collect();
    if missing.is_empty() {
        return;
    }
    // SAFETY: the path is a NUL-terminated literal.
    let console = unsafe { libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if console < 0 {
        return;
    }
    for fd in missing {
        // SAFETY: dup2 on fds this process owns.
        unsafe { libc::dup2(console, fd) };
    }
    if console > 2 {
        // SAFETY: `console` is our own fd and no longer used.
        unsafe { libc::close(console) };
    }
}
