//! The VMM's process: forked when it must be detached or PID 1 of a new PID namespace (the
//! jailer then reports its start, writes its pid file, and returns or waits for it), and the
//! exec that makes it the VMM.

use std::convert::Infallible;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout, execve, fork, setsid, ForkResult, Pid};

use crate::error::{at, JailError};

/// Forks the process that becomes the VMM (PID 1 of the new PID namespace if one was made)
/// and returns, in it, the write end of a close-on-exec pipe for reporting a failure.
///
/// The jailer waits until the pipe closes: a successful exec closes it empty, a failed step
/// writes its error first, which the jailer prints before exiting 1. After an exec it writes
/// the VMM's host pid to `/<exec name>.pid` in the jail, then exits at once when daemonizing,
/// or waits for the VMM and exits with its status.
pub(crate) fn fork_vmm_process(exec_name: &str, daemonize: bool) -> Result<File, JailError> {
    let pid_file = format!("/{exec_name}.pid");
    let (read, write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(at("create a pipe", Path::new("/")))?;
    // SAFETY: the jailer is single-threaded (a documented precondition of `Jail::run`), so
    // the child may run any code after fork.
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
            let code = match daemonize {
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
pub(crate) fn detach(dev_null: &File) -> Result<(), JailError> {
    setsid().map_err(at("setsid", Path::new("/")))?;
    let redirect = at("redirect stdio", Path::new("/dev/null"));
    dup2_stdin(dev_null)
        .and_then(|()| dup2_stdout(dev_null))
        .and_then(|()| dup2_stderr(dev_null))
        .map_err(redirect)
}

/// Runs `/<exec name> --id <id> <VMM args>` with an empty environment.
pub(crate) fn exec_vmm(
    exec_name: &str,
    id: &str,
    vmm_args: &[OsString],
) -> Result<Infallible, JailError> {
    let path = format!("/{exec_name}");
    let c = |s: &OsStr| CString::new(s.as_bytes());
    let mut argv: Vec<OsString> = vec![path.clone().into(), "--id".into(), id.into()];
    argv.extend(vmm_args.iter().cloned());
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
