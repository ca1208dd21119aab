//! Tiny guests that behave as a hostile guest would: one floods a console nobody reads, one
//! pulses the reset line ten times and keeps running, one writes the boot-done port 10,000
//! times. None of them may stall the VMM's stop, run on after a reset, or flood the host's log.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tests::api_client::TempDir;
use tests::{skip_without_kvm, tessera_bin, tiny_guest, Run};

const TIMEOUT: Duration = Duration::from_secs(20);
/// How long the VMM may take to stop once the guest is asked to (the console's final flush
/// gives up after 0.5 s without progress).
const STOP_TIMEOUT: Duration = Duration::from_secs(8);

/// The console pipe's size: one page, so that a guest that prints one byte per VM exit fills
/// it in well under a second.
const PIPE_SIZE: libc::c_int = 4096;

/// A pipe of [`PIPE_SIZE`] bytes: (read end, write end).
fn small_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ on an open, empty pipe.
    let rc = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    assert!(
        rc >= PIPE_SIZE,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    (read, write)
}

/// Bytes waiting in the pipe whose read end is `pipe`, and the pipe's capacity.
fn pipe_fill(pipe: &OwnedFd) -> (usize, usize) {
    let fd = pipe.as_raw_fd();
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD on an open pipe descriptor writes one int into `queued`.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    // SAFETY: F_GETPIPE_SZ on an open pipe descriptor.
    let size = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    assert!(
        size > 0,
        "F_GETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    (
        usize::try_from(queued).unwrap_or(0),
        usize::try_from(size).unwrap_or(0),
    )
}

/// A `tessera` whose stdout is a pipe the test never reads and whose stderr goes to a file.
struct Flooded {
    child: Child,
    /// The console pipe's read end, never read.
    stdout: OwnedFd,
    stderr: std::path::PathBuf,
}

impl Flooded {
    fn spawn(mut cmd: Command, dir: &TempDir) -> Flooded {
        let stderr = dir.join("stderr.log");
        let log = File::create(&stderr).expect("create the stderr file");
        let (stdout, console) = small_pipe();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(log)
            .spawn()
            .expect("spawn tessera");
        Flooded {
            child,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the guest has filled the console pipe: it holds bytes and takes no more
    /// (a pipe fills by pages, so "full" can be a little short of its size).
    fn wait_until_the_pipe_is_full(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = 0;
        loop {
            let (queued, size) = pipe_fill(&self.stdout);
            if queued > size / 2 && queued == last {
                break;
            }
            last = queued;
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "tessera exited ({status}) before the console filled\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the console pipe holds {queued} of {size} bytes after {TIMEOUT:?}\n{}",
                self.stderr()
            );
            // Far longer than the guest takes to print a byte.
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits an i32");
        // SAFETY: sending a signal to our own child process, which has not been reaped.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// The exit code once the process ends within `timeout`; kills it and fails otherwise.
    fn exit_code(mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for tessera") {
                return (status.code(), self.stderr());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "tessera did not stop within {timeout:?} of the signal\n--- stderr\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn run_flooder(_dir: &TempDir) -> Command {
    let mut cmd = Command::new(tessera_bin());
    cmd.arg("run").arg("--kernel").arg(tiny_guest("flood64"));
    cmd
}

fn api_flooder(dir: &TempDir) -> Command {
    let config = dir.join("vm.json");
    let value = json!({
        "boot-source": {"kernel_image_path": tiny_guest("flood64"), "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
    });
    std::fs::write(&config, value.to_string()).expect("write the config file");
    let mut cmd = Command::new(tessera_bin());
    cmd.arg("--api-sock")
        .arg(dir.join("api.sock"))
        .arg("--config-file")
        .arg(&config);
    cmd
}

/// Floods the console pipe, sends one SIGTERM and expects the guest's reset (exit code 0)
/// from the Ctrl-Alt-Del it got, with the dropped output counted in the log.
fn one_sigterm_stops_a_flooding_guest(test: &str, command: fn(&TempDir) -> Command) {
    if skip_without_kvm(test) {
        return;
    }
    let dir = TempDir::new("flood");
    let mut vmm = Flooded::spawn(command(&dir), &dir);
    vmm.wait_until_the_pipe_is_full();
    vmm.signal(libc::SIGTERM);
    let (code, stderr) = vmm.exit_code(STOP_TIMEOUT);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("sent Ctrl-Alt-Del to the guest"),
        "{stderr}"
    );
    assert!(
        stderr.contains("VM stopped: guest reset through the i8042"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bytes of guest console output were dropped"),
        "{stderr}"
    );
}

#[test]
fn one_sigterm_stops_a_guest_flooding_an_unread_console() {
    one_sigterm_stops_a_flooding_guest(
        "one_sigterm_stops_a_guest_flooding_an_unread_console",
        run_flooder,
    );
}

#[test]
fn one_sigterm_stops_a_guest_flooding_an_unread_console_in_api_mode() {
    one_sigterm_stops_a_flooding_guest(
        "one_sigterm_stops_a_guest_flooding_an_unread_console_in_api_mode",
        api_flooder,
    );
}

#[test]
fn sigint_stops_a_guest_flooding_an_unread_console() {
    if skip_without_kvm("sigint_stops_a_guest_flooding_an_unread_console") {
        return;
    }
    let dir = TempDir::new("floodint");
    let mut vmm = Flooded::spawn(run_flooder(&dir), &dir);
    vmm.wait_until_the_pipe_is_full();
    vmm.signal(libc::SIGINT);
    let (code, stderr) = vmm.exit_code(STOP_TIMEOUT);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("VM stopped: VMM stopped by signal 2"),
        "{stderr}"
    );
}

#[test]
fn the_first_reset_pulse_stops_the_vcpu_and_is_logged_once() {
    if skip_without_kvm("the_first_reset_pulse_stops_the_vcpu_and_is_logged_once") {
        return;
    }
    let out = Run::new(&tiny_guest("rereset64")).output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    // Nothing the guest printed after its first reset write reaches the console.
    assert_eq!(out.stdout, "tessera-test: resetting ten times\n", "{out}");
    let resets = out
        .stderr
        .lines()
        .filter(|l| l.contains("guest requested a reset through the i8042"))
        .count();
    assert_eq!(resets, 1, "{out}");
    assert!(
        out.stderr
            .contains("VM stopped: guest reset through the i8042"),
        "{out}"
    );
}

fn boot_done_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("boot-done")).collect()
}

#[test]
fn ten_thousand_boot_done_writes_log_one_line() {
    if skip_without_kvm("ten_thousand_boot_done_writes_log_one_line") {
        return;
    }
    let out = Run::new(&tiny_guest("bootspam64")).output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stdout, "tessera-test: done\n", "{out}");
    let lines = boot_done_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains("guest boot-done: value 0x01 at "),
        "{out}"
    );

    // At the debug level the repeats show, rate-limited: a burst, then one line a second.
    let out = Run::new(&tiny_guest("bootspam64"))
        .args(["--log-level", "debug"])
        .output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    let lines = boot_done_lines(&out.stderr);
    let limit = devices::log_limit::BURST as usize + 1 + 10;
    assert!(
        (2..=limit).contains(&lines.len()),
        "{} boot-done lines (at most {limit} expected)\n{out}",
        lines.len()
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("guest boot-done: value"))
            .count(),
        1,
        "{out}"
    );
}
