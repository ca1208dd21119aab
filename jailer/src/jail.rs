//! The jailer's steps, in Firecracker's order: sanitise the process, make the jail (copy of the
//! VMM, rlimits, cgroup), enter it (mount namespace, pivot_root, chroot), make the device nodes,
//! join the network namespace, detach and/or enter a new PID namespace, drop privileges, exec.
//!
//! Until the jail is entered, a failure removes what was made (jail directory, cgroups); after
//! `pivot_root` the host's view of the jail is out of reach, and a failure leaves the jail
//! directory for the caller to remove, as Firecracker's jailer does.

use std::convert::Infallible;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{
    dup2_stderr, dup2_stdin, dup2_stdout, execve, fork, setgroups, setresgid, setresuid, setsid,
    ForkResult, Gid, Pid, Uid,
};

use crate::args::{JailSpec, Limit};
use crate::cgroup::Cgroups;
use crate::chroot;
use crate::error::{at, JailError};

/// What the jail made on the host, removed if a later step fails before the jail is entered.
struct Undo<'a> {
    spec: &'a JailSpec,
    cgroups: Cgroups,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.cgroups.remove();
            let _ = fs::remove_dir_all(&self.spec.jail_dir);
        }
    }
}

/// Runs every step; returns only on failure (success ends in the VMM's exec).
pub fn run(spec: &JailSpec) -> Result<Infallible, JailError> {
    close_inherited_fds()?;
    // Joined first: a bad namespace file is refused before anything is made.
    if let Some(path) = spec.netns.as_deref() {
        let netns = File::open(path).map_err(at("open the network namespace", path))?;
        setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(at("join the network namespace", path))?;
    }
    let dev_null = match spec.daemonize {
        true => Some(
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open("/dev/null")
                .map_err(at("open", Path::new("/dev/null")))?,
        ),
        false => None,
    };
    // Directories and the device nodes get the modes written here, whatever the caller's
    // umask (0077 would lock the VMM out of /dev; 0 would leave the base world-writable).
    umask(Mode::from_bits_truncate(0o022));
    chroot::create_jail_dir(spec)?;
    // From here on the jail directory is ours to remove on failure (never an existing one).
    let mut undo = Undo {
        spec,
        cgroups: Cgroups::default(),
        armed: true,
    };
    chroot::populate(spec)?;
    set_limits(&spec.limits)?;
    undo.cgroups = Cgroups::create(spec)?;
    undo.cgroups.join()?;
    let root = spec.root();
    chroot::enter(&root)?;
    undo.armed = false;

    chroot::make_devices(spec.uid, spec.gid)?;
    if spec.new_pid_ns {
        unshare(CloneFlags::CLONE_NEWPID).map_err(at("unshare the PID namespace", &root))?;
    }
    let report = match spec.new_pid_ns || spec.daemonize {
        true => Some(fork_vmm_process(spec)?),
        false => None,
    };
    let result = finish(spec, dev_null.as_ref());
    // Only a failure gets here: tell the waiting jailer, whose stderr is still the caller's.
    if let (Some(mut report), Err(e)) = (report, &result) {
        let _ = write!(report, "{e}");
        std::process::exit(1);
    }
    result
}

/// The last steps, in the process that becomes the VMM.
fn finish(spec: &JailSpec, dev_null: Option<&File>) -> Result<Infallible, JailError> {
    if let Some(dev_null) = dev_null {
        detach(dev_null)?;
    }
    drop_privileges(spec.uid, spec.gid)?;
    if spec.new_pid_ns && !spec.daemonize {
        // The jailer waits for this VMM: if it dies, so does the VMM (set after the
        // credential change, which clears it).
        set_pdeathsig(Signal::SIGKILL).map_err(|e| JailError::Refused {
            step: "set the parent-death signal",
            reason: e.to_string(),
        })?;
    }
    exec_vmm(spec)
}

/// Closes every descriptor but stdin, stdout and stderr, so the VMM inherits nothing else.
fn close_inherited_fds() -> Result<(), JailError> {
    let dir = Path::new("/proc/self/fd");
    let fds: Vec<RawFd> = fs::read_dir(dir)
        .map_err(at("list open files", dir))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor this process holds and no Rust object owns (the
        // directory listing that showed it is gone; a stale number just gives EBADF).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn set_limits(limits: &[Limit]) -> Result<(), JailError> {
    for limit in limits {
        let (resource, value, name) = match *limit {
            Limit::FileSize(n) => (Resource::RLIMIT_FSIZE, n, "fsize"),
            Limit::OpenFiles(n) => (Resource::RLIMIT_NOFILE, n, "no-file"),
        };
        setrlimit(resource, value, value).map_err(|e| JailError::Refused {
            step: "set resource limit",
            reason: format!("{name}={value}: {e}"),
        })?;
    }
    Ok(())
}

/// Forks the process that becomes the VMM (PID 1 of the new PID namespace if one was made)
/// and returns, in it, the write end of a close-on-exec pipe for reporting a failure.
///
/// The jailer waits until the pipe closes: a successful exec closes it empty, a failed step
/// writes its error first, which the jailer prints before exiting 1. After an exec it writes
/// the VMM's host pid to `/<exec name>.pid` in the jail, then exits at once when daemonizing,
/// or waits for the VMM and exits with its status.
fn fork_vmm_process(spec: &JailSpec) -> Result<File, JailError> {
    let pid_file = format!("/{}.pid", spec.exec_name);
    let (read, write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(at("create a pipe", Path::new("/")))?;
    // SAFETY: the jailer is single-threaded, so the child may run any code after fork.
    match unsafe { fork() }.map_err(at("fork", Path::new("/")))? {
        ForkResult::Child => {
            drop(read);
            Ok(File::from(write))
        }
        ForkResult::Parent { child } => {
            drop(write);
            let mut failure = String::new();
            let _ = File::from(read).read_to_string(&mut failure);
            // An empty pipe means an exec, unless the child died first (say, killed by a tiny
            // memory limit) without writing anything.
            if failure.is_empty() {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(status) => {
                        failure = format!("the VMM process ended before it started ({status:?})")
                    }
                    Err(e) => failure = format!("the VMM process: {e}"),
                }
            }
            if !failure.is_empty() {
                let _ = waitpid(child, None);
                eprintln!("tessera-jailer: error: {failure}");
                std::process::exit(1);
            }
            let written = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&pid_file)
                .and_then(|mut file| writeln!(file, "{child}"));
            if let Err(e) = written {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(child, None);
                eprintln!("tessera-jailer: error: write the pid file: {pid_file}: {e}");
                std::process::exit(1);
            }
            let code = match spec.daemonize {
                true => 0,
                false => wait_forwarding_signals(child),
            };
            std::process::exit(code);
        }
    }
}

/// Waits for the VMM, passing on the signals a supervisor or a terminal sends the jailer (as
/// PID 1 of its namespace the VMM sees only what is sent to it), and returns its exit status.
fn wait_forwarding_signals(child: Pid) -> i32 {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGCHLD,
    ] {
        set.add(signal);
    }
    // Blocked only here, after the fork: the VMM must not inherit a blocked mask.
    if set.thread_block().is_err() {
        return status_code(waitpid(child, None));
    }
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            other => return status_code(other),
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(signal) => {
                let _ = kill(child, signal);
            }
            Err(_) => return status_code(waitpid(child, None)),
        }
    }
}

fn status_code(status: nix::Result<WaitStatus>) -> i32 {
    match status {
        Ok(WaitStatus::Exited(_, code)) => code,
        Ok(WaitStatus::Signaled(_, signal, _)) => 128 + signal as i32,
        _ => 1,
    }
}

/// A new session without a terminal, stdio on /dev/null.
fn detach(dev_null: &File) -> Result<(), JailError> {
    setsid().map_err(at("setsid", Path::new("/")))?;
    let redirect = at("redirect stdio", Path::new("/dev/null"));
    dup2_stdin(dev_null)
        .and_then(|()| dup2_stdout(dev_null))
        .and_then(|()| dup2_stderr(dev_null))
        .map_err(redirect)
}

/// Becomes `uid:gid` with no supplementary groups, and can never gain privileges again.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    let step = |step| {
        move |e: nix::Error| JailError::Refused {
            step,
            reason: format!("{uid}:{gid}: {e}"),
        }
    };
    // Neither inherited securebits (which could keep capabilities across the uid change) nor
    // ambient capabilities survive.
    // SAFETY: prctl with integer arguments only; the results are checked.
    let (securebits, ambient) = unsafe {
        (
            libc::prctl(libc::PR_SET_SECUREBITS, 0, 0, 0, 0),
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
        )
    };
    if securebits != 0 || ambient != 0 {
        return Err(JailError::Refused {
            step: "clear securebits and ambient capabilities",
            reason: std::io::Error::last_os_error().to_string(),
        });
    }
    setgroups(&[]).map_err(step("clear supplementary groups"))?;
    let gid = Gid::from_raw(gid);
    setresgid(gid, gid, gid).map_err(step("set the group id"))?;
    let uid = Uid::from_raw(uid);
    setresuid(uid, uid, uid).map_err(step("set the user id"))?;
    nix::sys::prctl::set_no_new_privs().map_err(step("set no_new_privs"))?;
    // Trust nothing: the ids must be the asked ones now (a -1 would have meant "unchanged").
    let ids = (nix::unistd::getresuid(), nix::unistd::getresgid());
    let dropped = matches!(&ids, (Ok(u), Ok(g))
        if [u.real, u.effective, u.saved] == [uid; 3] && [g.real, g.effective, g.saved] == [gid; 3]);
    if !dropped {
        return Err(JailError::Refused {
            step: "drop privileges",
            reason: format!("the process still runs as {ids:?}"),
        });
    }
    Ok(())
}

/// Runs `/<exec name> --id <id> <VMM args>` with an empty environment.
fn exec_vmm(spec: &JailSpec) -> Result<Infallible, JailError> {
    let path = format!("/{}", spec.exec_name);
    let c = |s: &OsStr| CString::new(s.as_bytes());
    let mut argv: Vec<OsString> = vec![path.clone().into(), "--id".into(), spec.id.clone().into()];
    argv.extend(spec.vmm_args.iter().cloned());
    let argv = argv
        .iter()
        .map(|a| c(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| JailError::Refused {
            step: "exec the VMM",
            reason: "an argument contains a NUL byte".into(),
        })?;
    let program = CString::new(path.clone()).map_err(|_| JailError::Refused {
        step: "exec the VMM",
        reason: "the exec file name contains a NUL byte".into(),
    })?;
    let env: [CString; 0] = [];
    let error = execve(&program, &argv, &env).unwrap_err();
    Err(at("exec the VMM", Path::new(&path))(error))
}
