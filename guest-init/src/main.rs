//! `tessera-init`: PID 1 of a Tessera guest.
//!
//! Marks boot-done, mounts the kernel file systems, reads its task from the kernel command line
//! (see `guest_init::task`), runs it, reaps every zombie, and when the command ends: stops what is
//! left, syncs, reports the exit status on the status port (see `guest_init::report`) and
//! reboots, which ends the microVM. Its own failures are printed as `tessera-init: error: ...`
//! and reported as status 125 (126/127 when the command cannot be executed / is not found). It
//! never returns to the kernel, so the guest never hangs on init.

use std::ffi::CString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use guest_init::report::{
    BOOT_DONE_PORT, BOOT_DONE_VALUE, EXIT_STATUS_PORT, STATUS_CANNOT_EXECUTE, STATUS_INIT_FAILED,
    STATUS_NOT_FOUND,
};
use guest_init::task::{Task, DEFAULT_HOSTNAME};

/// Environment every command starts with; the task's own variables override it.
const BASE_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("TERM", "linux"),
];

/// How long processes left behind by the command get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// The command's pid, for the signal handler that forwards Ctrl-Alt-Del.
static COMMAND_PID: AtomicI32 = AtomicI32::new(0);

fn main() {
    let ports = Ports::open();
    ports.write(BOOT_DONE_PORT, BOOT_DONE_VALUE);
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("tessera-init: error: panic: {info}");
        finish(ports, STATUS_INIT_FAILED);
    }));
    let status = match run() {
        Ok(status) => status,
        Err(failure) => {
            eprintln!("tessera-init: error: {}", failure.message);
            failure.status
        }
    };
    finish(ports, status);
}

/// Why tessera-init could not run the command, and the status that reports it.
struct Failure {
    message: String,
    status: u8,
}

impl Failure {
    fn init(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            status: STATUS_INIT_FAILED,
        }
    }
}

fn run() -> Result<u8, Failure> {
    mount_kernel_filesystems()?;
    ensure_stdio();
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| Failure::init(format!("cannot read /proc/cmdline: {e}")))?;
    let task = Task::from_cmdline(&cmdline).map_err(|e| Failure::init(e.to_string()))?;

    let hostname = task.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME);
    // SAFETY: the pointer and length describe a live byte slice.
    if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } != 0 {
        let e = io::Error::last_os_error();
        return Err(Failure::init(format!(
            "cannot set hostname {hostname:?}: {e}"
        )));
    }
    forward_ctrl_alt_del()?;

    let mut command = Command::new(&task.argv[0]);
    command
        .args(&task.argv[1..])
        .env_clear()
        .envs(BASE_ENV)
        .envs(task.env.iter().map(|(k, v)| (k, v)))
        .current_dir(task.cwd.as_deref().unwrap_or("/"))
        .process_group(0);
    let child = command.spawn().map_err(|e| {
        let status = match e.kind() {
            io::ErrorKind::NotFound => STATUS_NOT_FOUND,
            _ => STATUS_CANNOT_EXECUTE,
        };
        let cwd = task.cwd.as_deref().unwrap_or("/");
        Failure {
            message: format!("cannot run {:?} (in {cwd}): {e}", task.argv[0]),
            status,
        }
    })?;
    let pid = child.id() as libc::pid_t;
    COMMAND_PID.store(pid, Ordering::SeqCst);
    let status = reap_until(pid);
    if status > 128 && status - 128 < 65 {
        eprintln!(
            "tessera-init: {:?} killed by signal {}",
            task.argv[0],
            status - 128
        );
    }
    Ok(status)
}

fn mount_kernel_filesystems() -> Result<(), Failure> {
    const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mounts: [(&str, &str, libc::c_ulong, &str); 8] = [
        ("proc", "/proc", NOSUID_NODEV_NOEXEC, ""),
        ("sysfs", "/sys", NOSUID_NODEV_NOEXEC, ""),
        ("devtmpfs", "/dev", libc::MS_NOSUID, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0620,ptmxmode=0666",
        ),
        (
            "tmpfs",
            "/dev/shm",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            "/tmp",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            "/run",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        ),
        ("cgroup2", "/sys/fs/cgroup", NOSUID_NODEV_NOEXEC, ""),
    ];
    for (fstype, target, flags, data) in mounts {
        std::fs::create_dir_all(target)
            .map_err(|e| Failure::init(format!("cannot create mount point {target}: {e}")))?;
        let c = |s: &str| CString::new(s).map_err(|_| Failure::init("NUL in a mount argument"));
        let (source, target_c, fstype_c, data_c) = (c(fstype)?, c(target)?, c(fstype)?, c(data)?);
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target_c.as_ptr(),
                fstype_c.as_ptr(),
                flags,
                data_c.as_ptr().cast(),
            )
        };
        let err = io::Error::last_os_error();
        // EBUSY: the kernel mounted it already (devtmpfs.mount=1).
        if rc != 0 && err.raw_os_error() != Some(libc::EBUSY) {
            return Err(Failure::init(format!(
                "cannot mount {fstype} on {target}: {err}"
            )));
        }
    }
    Ok(())
}

/// Gives fds 0-2 the console when the kernel could not (no /dev/console in the initramfs).
fn ensure_stdio() {
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

/// Turns Ctrl-Alt-Del (and SIGTERM) into a SIGTERM for the command, as `docker stop` does.
fn forward_ctrl_alt_del() -> Result<(), Failure> {
    extern "C" fn forward(_signal: libc::c_int) {
        let pid = COMMAND_PID.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill is async-signal-safe; the pid is our child's process group leader.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    // With C-A-D off the kernel sends SIGINT to init instead of rebooting at once.
    // SAFETY: a plain reboot(2) command with no pointer arguments.
    if unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) } != 0 {
        let e = io::Error::last_os_error();
        return Err(Failure::init(format!(
            "cannot turn Ctrl-Alt-Del into a signal: {e}"
        )));
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only reads an atomic and calls kill, both async-signal-safe.
        let previous = unsafe { libc::signal(signal, forward as *const () as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            let e = io::Error::last_os_error();
            return Err(Failure::init(format!("cannot handle signal {signal}: {e}")));
        }
    }
    Ok(())
}

/// Reaps children (the command and any orphan the kernel hands to PID 1) until `pid` ends, and
/// returns its exit status: the exit code, or 128 + the signal that killed it.
fn reap_until(pid: libc::pid_t) -> u8 {
    loop {
        let mut wstatus = 0;
        // SAFETY: waitpid writes one int through a valid pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut wstatus, 0) };
        if reaped == pid {
            if libc::WIFEXITED(wstatus) {
                return libc::WEXITSTATUS(wstatus) as u8;
            }
            if libc::WIFSIGNALED(wstatus) {
                return 128u8.saturating_add(libc::WTERMSIG(wstatus) as u8);
            }
        } else if reaped < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            eprintln!("tessera-init: error: lost track of the command (pid {pid})");
            return STATUS_INIT_FAILED;
        }
    }
}

/// Stops every other process, syncs, reports `status` and reboots. Never returns: should the
/// reboot fail, init exits and the kernel panics, which the VMM reports.
fn finish(ports: Ports, status: u8) -> ! {
    COMMAND_PID.store(0, Ordering::SeqCst);
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

/// Access to the report ports, granted by ioperm(2). Without it (a kernel lacking
/// CONFIG_X86_IOPL_IOPERM) writes are skipped and the VMM sees no status.
#[derive(Clone, Copy)]
struct Ports {
    usable: bool,
}

impl Ports {
    fn open() -> Self {
        // SAFETY: ioperm only changes this process's I/O permission bitmap.
        let usable = unsafe { libc::ioperm(BOOT_DONE_PORT.into(), 2, 1) } == 0;
        if !usable {
            eprintln!(
                "tessera-init: warning: no access to ports {BOOT_DONE_PORT:#x}-{EXIT_STATUS_PORT:#x} ({}); the exit status cannot be reported",
                io::Error::last_os_error()
            );
        }
        Self { usable }
    }

    fn write(self, port: u16, value: u8) {
        if self.usable {
            // SAFETY: ioperm granted this port; an OUT to it has no effect on our memory.
            unsafe {
                std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
            };
        }
    }
}
