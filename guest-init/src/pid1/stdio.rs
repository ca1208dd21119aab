//! The command's standard streams as vsock streams to the host (the spec's `stdio`), apart
//! from the console and the kernel's messages on it.
//!
//! PID 1 connects them onto its own fds 0-2 before anything can fail, so the command inherits
//! them and tessera-init's own errors reach the host's stderr too. At the end
//! ([`finish`]) it closes its sending sides and waits until the host has read everything, so no
//! output is lost to the VM's stop. With a terminal (`tty`), the command gets a pty whose master
//! a relay thread joins to one stream.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::spec::Stdio;

/// How long the host gets to take the last output once the command has ended.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);

/// What [`finish`] must close and wait for.
enum Connected {
    /// fds 1 and 2 are the stdout and stderr streams.
    Streams,
    /// fds 0-2 are a pty's terminal; the relay joins its master to the stream.
    Tty(JoinHandle<()>),
}

static CONNECTED: Mutex<Option<Connected>> = Mutex::new(None);

fn vsock_connect(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor no one else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid start.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_HOST;
    addr.svm_port = port;
    // SAFETY: the address is a valid sockaddr_vm of the given length.
    let rc = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(socket),
        _ => Err(io::Error::last_os_error()),
    }
}

fn dup_onto(fd: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on descriptors this process owns; the new one is not close-on-exec.
    match unsafe { libc::dup2(fd, target) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

fn dev_null() -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated literal path; the fd is owned at once.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    match fd {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: a new descriptor no one else owns.
        fd => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
    }
}

/// Connects the streams `stdio` names onto fds 0-2. On failure the console stays.
pub fn connect(stdio: &Stdio) -> io::Result<()> {
    let port = stdio.vsock_port;
    let connected = match stdio.tty {
        None => {
            let out = vsock_connect(port)?;
            let err = vsock_connect(port + 1)?;
            let input = match stdio.stdin {
                true => vsock_connect(port + 2)?,
                false => dev_null()?,
            };
            dup_onto(input.as_raw_fd(), 0)?;
            dup_onto(out.as_raw_fd(), 1)?;
            dup_onto(err.as_raw_fd(), 2)?;
            Connected::Streams
        }
        Some(size) => {
            let stream = vsock_connect(port)?;
            let (master, terminal) = open_pty(size.rows, size.cols)?;
            for fd in 0..3 {
                dup_onto(terminal.as_raw_fd(), fd)?;
            }
            Connected::Tty(relay(master, stream, stdio.stdin)?)
        }
    };
    *CONNECTED.lock().unwrap_or_else(|e| e.into_inner()) = Some(connected);
    Ok(())
}

/// A pty (master, terminal), both close-on-exec.
fn open_pty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut terminal) = (-1, -1);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds; the name pointer may be null, the termios too, and the
    // winsize is read only.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two new descriptors no one else owns.
    let fds = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(terminal)) };
    for fd in [&fds.0, &fds.1] {
        // SAFETY: fcntl on an owned fd.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(fds)
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reads into a buffer we own, of its length.
    match unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } {
        n if n >= 0 => Ok(n as usize),
        _ => Err(io::Error::last_os_error()),
    }
}

fn write_all_fd(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: writes from a buffer we own, of its length.
        match unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) } {
            n if n > 0 => buf = &buf[n as usize..],
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Copies `from` to `to` until `from` ends or either fails.
fn pump(from: RawFd, to: RawFd) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match read_fd(from, &mut buf) {
            Ok(0) => return,
            Ok(n) if write_all_fd(to, &buf[..n]).is_ok() => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => return, // EIO on the master: every terminal fd is closed.
        }
    }
}

/// Joins a pty's master to the stream: its output to the host, and (with `stdin`) the host's
/// input to it. The returned thread ends once the terminal is closed and the host has the rest.
fn relay(master: OwnedFd, stream: OwnedFd, stdin: bool) -> io::Result<JoinHandle<()>> {
    if stdin {
        let (master, stream) = (master.as_raw_fd(), stream.as_raw_fd());
        // Ends with the stream; the fds outlive it (they are closed only by the output thread,
        // after the VM's last output, when nothing reads input any more).
        std::thread::Builder::new()
            .name("tty-input".into())
            .spawn(move || pump(stream, master))?;
    }
    std::thread::Builder::new()
        .name("tty-output".into())
        .spawn(move || {
            pump(master.as_raw_fd(), stream.as_raw_fd());
            drain(&[stream.as_raw_fd()], Instant::now() + DRAIN_DEADLINE);
            // Both stay open until the VM stops: the input thread may still use them.
            std::mem::forget((master, stream));
        })
}

/// Ends our sending side of each stream and waits (until `deadline`) for the host to close
/// it, which it does once it has written out everything it got.
fn drain(streams: &[RawFd], deadline: Instant) {
    for &fd in streams {
        // SAFETY: shutdown on a socket we hold.
        unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    }
    let mut buf = [0u8; 512];
    for &fd in streams {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut poll = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: polls one pollfd we own.
            if ms == 0 || unsafe { libc::poll(&mut poll, 1, ms) } <= 0 {
                break;
            }
            // Anything the host sends now is late input: dropped.
            if !matches!(read_fd(fd, &mut buf), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

/// Hands the host the command's last output: called once every other process is gone.
pub fn finish() {
    let connected = CONNECTED.lock().unwrap_or_else(|e| e.into_inner()).take();
    match connected {
        None => {}
        Some(Connected::Streams) => drain(&[1, 2], Instant::now() + DRAIN_DEADLINE),
        Some(Connected::Tty(relay)) => {
            // The terminal's last holder goes: the master reads EIO after the rest.
            for fd in 0..3 {
                // SAFETY: closing our own copies of the terminal.
                unsafe { libc::close(fd) };
            }
            let deadline = Instant::now() + DRAIN_DEADLINE + Duration::from_millis(100);
            while !relay.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}
