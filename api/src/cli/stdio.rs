//! `tessera run`'s end of the command's standard streams (the workload spec's `stdio`): unix
//! sockets at `UDS_PORT`, where the vsock device connects the guest's streams to CID 2 (as
//! Firecracker's vsock does). stdout and stderr arrive apart from each other and from the
//! console's kernel messages; stdin is sent when asked (`-i`); with `-t` one stream carries a
//! terminal and this terminal is put in raw mode for the run.
//!
//! The relay threads run under the VMM thread's seccomp filter: they read, write and accept,
//! all of which it allows.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use guest_init::spec::{Stdio, TtySize};
use vmm::seccomp::{Filters, ThreadKind};

/// The guest's first stdio port: stdout here, stderr and stdin after it.
pub const STDIO_VSOCK_PORT: u32 = 0x5445_0000;

/// How long the last output may take to arrive once the VM has stopped (the guest hands it
/// over before it reports its exit, so this only bounds a guest that died mid-way).
const LATE_OUTPUT: Duration = Duration::from_millis(500);

/// Which streams to offer, from the flags.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdioFlags {
    pub interactive: bool,
    pub tty: bool,
}

/// The listeners, bound before the boot so the guest's connections never find them missing.
pub struct HostStdio {
    flags: StdioFlags,
    /// (port, listener, its socket file), in the order stdout, stderr, stdin.
    listeners: Vec<(u32, UnixListener, PathBuf)>,
}

/// The running relays.
pub struct Relays {
    outputs: mpsc::Receiver<()>,
    output_count: usize,
    _raw: Option<RawTerminal>,
}

impl StdioFlags {
    /// The spec's `stdio` for these flags; the terminal's size is this one's, if any.
    pub fn spec(self) -> Stdio {
        Stdio {
            vsock_port: STDIO_VSOCK_PORT,
            stdin: self.interactive,
            tty: self.tty.then(terminal_size),
        }
    }
}

impl HostStdio {
    /// Binds the listeners beside `uds` (the vsock device's socket path).
    pub fn bind(uds: &Path, flags: StdioFlags) -> Result<Self, String> {
        let ports: &[u32] = match (flags.tty, flags.interactive) {
            (true, _) => &[STDIO_VSOCK_PORT],
            (false, false) => &[STDIO_VSOCK_PORT, STDIO_VSOCK_PORT + 1],
            (false, true) => &[STDIO_VSOCK_PORT, STDIO_VSOCK_PORT + 1, STDIO_VSOCK_PORT + 2],
        };
        let mut listeners = Vec::new();
        for &port in ports {
            let mut path = uds.as_os_str().to_owned();
            path.push(format!("_{port}"));
            let path = PathBuf::from(path);
            let _ = fs::remove_file(&path);
            let listener = UnixListener::bind(&path).map_err(|e| {
                format!(
                    "cannot listen for the command's output at {}: {e}",
                    path.display()
                )
            })?;
            listeners.push((port, listener, path));
        }
        Ok(Self { flags, listeners })
    }

    /// The socket files bound.
    pub fn files(&self) -> Vec<PathBuf> {
        self.listeners
            .iter()
            .map(|(_, _, path)| path.clone())
            .collect()
    }

    /// Starts one relay thread per stream.
    pub fn start(self, filters: &Filters) -> Result<Relays, String> {
        let (done_tx, outputs) = mpsc::channel();
        let mut output_count = 0;
        let raw = match self.flags.tty && self.flags.interactive {
            true => RawTerminal::enter(),
            false => None,
        };
        for (port, listener, _) in self.listeners {
            let filters = filters.clone();
            let tty = self.flags.tty;
            let interactive = self.flags.interactive;
            let done = done_tx.clone();
            let role = port - STDIO_VSOCK_PORT;
            if role < 2 {
                output_count += 1;
            }
            // A terminal's input goes out on the output's stream, handed over once accepted
            // (spawned here: a filtered thread may not create threads).
            let tty_input = match (role, tty && interactive) {
                (0, true) => {
                    let (tx, rx) = mpsc::channel::<Arc<UnixStream>>();
                    let filters = filters.clone();
                    thread::Builder::new()
                        .name("stdio-tty-in".into())
                        .spawn(move || {
                            if filters.confine_worker(ThreadKind::Vmm).is_ok() {
                                if let Ok(stream) = rx.recv() {
                                    send_input(&stream);
                                }
                            }
                        })
                        .map_err(|e| format!("cannot start a stdio relay thread: {e}"))?;
                    Some(tx)
                }
                _ => None,
            };
            let spawned = thread::Builder::new()
                .name(format!("stdio-{role}"))
                .spawn(move || {
                    if filters.confine_worker(ThreadKind::Vmm).is_err() {
                        return;
                    }
                    let Ok((stream, _)) = listener.accept() else {
                        return;
                    };
                    drop(listener);
                    let stream = Arc::new(stream);
                    if let Some(tx) = tty_input {
                        let _ = tx.send(stream.clone());
                    }
                    match role {
                        0 => relay_output(&stream, io::stdout()),
                        1 => relay_output(&stream, io::stderr()),
                        _ => send_input(&stream),
                    }
                    let _ = done.send(());
                });
            spawned.map_err(|e| format!("cannot start a stdio relay thread: {e}"))?;
        }
        Ok(Relays {
            outputs,
            output_count,
            _raw: raw,
        })
    }
}

impl Relays {
    /// Waits (briefly) for the last output once the VM has stopped.
    pub fn finish(self) {
        let deadline = Instant::now() + LATE_OUTPUT;
        for _ in 0..self.output_count {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.outputs.recv_timeout(left).is_err() {
                break;
            }
        }
    }
}

/// Copies the guest's stream to `out` until the guest ends it, then closes it: the guest waits
/// for that close before it reports the exit, so nothing is lost.
fn relay_output(mut stream: &UnixStream, mut out: impl Write) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // A closed stdout (`| head`) ends the copy but not the command.
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // Closed now, even while a terminal's input thread still holds it.
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Sends this process's stdin to the guest until it ends; then ends the guest's stdin.
fn send_input(mut stream: &UnixStream) {
    let mut buf = [0u8; 16 * 1024];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if stream.write_all(&buf[..n]).is_ok() => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// This terminal's size (stdout's, else stdin's); 0 x 0 when neither is a terminal.
fn terminal_size() -> TtySize {
    for fd in [1, 0] {
        // SAFETY: winsize is plain data; TIOCGWINSZ fills it in or fails.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: the pointer is to a winsize we own.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0 {
            return TtySize {
                rows: size.ws_row,
                cols: size.ws_col,
            };
        }
    }
    TtySize::default()
}

/// stdin in raw mode for a `-it` run, as it was before once dropped.
struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    fn enter() -> Option<Self> {
        // SAFETY: termios is plain data; tcgetattr fills it in or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: the pointer is to a termios we own.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return None; // Not a terminal: nothing to change.
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw changes the termios we own; tcsetattr reads it.
        unsafe {
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(0, libc::TCSANOW, &raw);
        }
        Some(Self { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: tcsetattr reads the termios we saved.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}
