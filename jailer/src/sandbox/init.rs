//! The sandbox's PID 1: waits until it is in its cgroup, makes the workload's root and enters
//! it, is root of its user namespace (as root: one made after the mounts, so that they are
//! made with the host's privileges; rootless: the one it was cloned into), then forks the
//! workload and stays as its init:
//! signals passed on, orphans reaped, the workload's exit status made its own. As in a
//! microVM, the workload is never PID 1, so signals and exit codes mean the same at both
//! levels.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicI32, Ordering};

use guest_init::confine;
use guest_init::runner::process::ProcessRunner;
use guest_init::runner::{exit_status, RunError};
use guest_init::spec::{Network, WorkloadSpec};

use super::{rootfs, Sandbox, SandboxError};

/// Status of a sandbox that could not be set up (as Docker's 125).
const SETUP_FAILED: isize = 125;

static WORKLOAD: AtomicI32 = AtomicI32::new(0);

extern "C" fn pass_on(signal: libc::c_int) {
    let pid = WORKLOAD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe. The workload leads its own process group.
        unsafe { libc::kill(-pid, signal) };
    }
}

/// The host side's pipe ends, as this clone's descriptors.
pub struct Pipes {
    /// "go": in the cgroup (rootless: and mapped); as root, read again once mapped.
    pub go: RawFd,
    /// "map me" (as root): written once the mounts are made and the user namespace entered.
    pub map: RawFd,
    /// A setup failure, for the host side to report.
    pub err: RawFd,
}

/// PID 1's life; returns its exit status. A setup failure is written to the error pipe (read
/// by the host side) before status 125.
pub fn main(sandbox: &Sandbox, rootful: bool, pipes: &Pipes) -> isize {
    // The sandbox ends with tessera, whatever ends tessera (its PID namespace with it).
    // SAFETY: PR_SET_PDEATHSIG takes integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: the descriptors are this clone's copies of the host side's pipe ends.
    let (mut go, map, mut err) = unsafe {
        (
            File::from_raw_fd(pipes.go),
            File::from_raw_fd(pipes.map),
            File::from_raw_fd(pipes.err),
        )
    };
    let mut byte = [0u8; 1];
    if go.read(&mut byte).ok() != Some(1) {
        // The host side gave up (and said why).
        return SETUP_FAILED;
    }
    match prepare(sandbox, rootful, &mut go, map) {
        Ok(spec) => {
            drop(err);
            supervise(&spec)
        }
        Err(e) => {
            let _ = err.write_all(e.to_string().as_bytes());
            SETUP_FAILED
        }
    }
}

fn become_root() -> Result<(), SandboxError> {
    let root = nix::unistd::Uid::from_raw(0);
    let group = nix::unistd::Gid::from_raw(0);
    nix::unistd::setresgid(group, group, group).map_err(super::sys("become root inside"))?;
    nix::unistd::setresuid(root, root, root).map_err(super::sys("become root inside"))
}

/// Names the host, brings up the network the policy allows, makes and enters the workload's
/// root, and is root of its user namespace. Returns the spec to run, with the policy's
/// rlimits in it.
fn prepare(
    sandbox: &Sandbox,
    rootful: bool,
    go: &mut File,
    mut map: File,
) -> Result<WorkloadSpec, SandboxError> {
    if !rootful {
        become_root()?;
    }
    // After the cgroup join, so that the namespace's root is the sandbox's own cgroup.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
        .map_err(super::sys("make the cgroup namespace"))?;
    let spec = &sandbox.spec;
    nix::unistd::sethostname(spec.hostname()).map_err(super::sys("set the hostname"))?;
    let policy = spec.policy();
    match &policy.network {
        Network::None => {}
        Network::Loopback => link_up("lo")?,
        Network::Interface(name) => {
            link_up("lo")?;
            link_up(name)?;
        }
    }
    rootfs::enter(sandbox)?;
    if rootful {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
            .map_err(super::sys("make the user namespace"))?;
        map.write_all(b"m")
            .map_err(|e| SandboxError::Setup(format!("ask for the id map: {e}")))?;
        let mut byte = [0u8; 1];
        if go.read(&mut byte).ok() != Some(1) {
            return Err(SandboxError::Setup("the id map was not written".into()));
        }
        become_root()?;
        let _ = nix::unistd::setgroups(&[]);
    }
    drop(map);
    Ok(spec.clone())
}

fn link_up(name: &str) -> Result<(), SandboxError> {
    confine::fs::link_up(name).map_err(|e| SandboxError::Setup(format!("bring {name} up: {e}")))
}

/// Forks the workload and waits for it, reaping every other process; returns its status.
fn supervise(spec: &WorkloadSpec) -> isize {
    // Not dumpable: the workload (same uid inside) cannot ptrace its init, which keeps the
    // namespace's capabilities.
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // SAFETY: this process has one thread (a fresh clone), so the child may run anything.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let error = exec_workload(spec);
        eprintln!("tessera: {error}");
        // SAFETY: _exit ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(error.status() as i32) };
    }
    if pid < 0 {
        eprintln!(
            "tessera: cannot start the workload: {}",
            std::io::Error::last_os_error()
        );
        return SETUP_FAILED;
    }
    WORKLOAD.store(pid, Ordering::SeqCst);
    for signal in 1..32 {
        if ![libc::SIGCHLD, libc::SIGKILL, libc::SIGSTOP].contains(&signal) {
            // SAFETY: `pass_on` only reads an atomic and calls kill.
            unsafe { libc::signal(signal, pass_on as *const () as libc::sighandler_t) };
        }
    }
    loop {
        let mut wstatus = 0;
        // SAFETY: waitpid writes one int through a valid pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut wstatus, 0) };
        if reaped == pid {
            if let Some(status) = exit_status(wstatus) {
                return status as isize;
            }
        } else if reaped < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
        {
            return SETUP_FAILED;
        }
    }
}

/// In the workload's process: confinement made ready, the user changed, confinement locked,
/// exec. Returns only on failure.
fn exec_workload(spec: &WorkloadSpec) -> RunError {
    // SAFETY: restoring default dispositions takes integers only.
    unsafe {
        for signal in 1..32 {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
    // A spec always has a policy here: the default one confines too.
    let mut spec = spec.clone();
    spec.policy = Some(spec.policy());
    let mut command = match ProcessRunner::command(&spec) {
        Ok(command) => command,
        Err(e) => return e,
    };
    // The runner gives the workload a process group of its own; on a terminal that group must
    // be the foreground one, or reading it would stop the workload (SIGTTIN), and Ctrl-C must
    // reach it, as a shell does for the commands it runs.
    // SAFETY: isatty, signal and tcsetpgrp take integers; the hook runs just before exec.
    unsafe {
        command.pre_exec(|| {
            if libc::isatty(0) == 1 {
                libc::signal(libc::SIGTTOU, libc::SIG_IGN);
                libc::tcsetpgrp(0, libc::getpgrp());
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let source = command.exec();
    let (program, cwd) = (
        spec.args.first().cloned().unwrap_or_default(),
        spec.cwd().to_string(),
    );
    match source.kind() {
        std::io::ErrorKind::NotFound => RunError::NotFound {
            program,
            cwd,
            source,
        },
        std::io::ErrorKind::Other => RunError::Setup(source.to_string()),
        _ => RunError::CannotExecute {
            program,
            cwd,
            source,
        },
    }
}
