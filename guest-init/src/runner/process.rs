//! The process runner: execs the spec's program directly, with a fixed base environment, the
//! spec's variables on top, in the spec's working directory.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::{RunError, Runner, Workload};
use crate::spec::WorkloadSpec;

/// Environment every command starts with; the spec's own variables override it.
pub const BASE_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("TERM", "linux"),
];

/// Runs the spec's program as a child of this process, in a process group of its own.
#[derive(Debug, Default)]
pub struct ProcessRunner;

impl ProcessRunner {
    /// The command `start` spawns (exposed for tests). With the `confine` feature, a spec with
    /// a policy gets its confinement (capabilities, no_new_privs, Landlock, seccomp) around the
    /// change of user, the last thing before exec.
    pub fn command(spec: &WorkloadSpec) -> Result<Command, RunError> {
        let (program, args) = spec
            .args
            .split_first()
            .ok_or_else(|| RunError::Setup("workload spec: args is empty".into()))?;
        let mut command = Command::new(program);
        command.args(args).env_clear().envs(BASE_ENV);
        #[cfg(feature = "confine")]
        let confinement = confine(&mut command, spec)?;
        if let Some(user) = &spec.user {
            let id = super::user::resolve(user, std::path::Path::new("/etc"))?;
            if let Some(home) = &id.home {
                command.env("HOME", home);
            }
            let (uid, gid, groups) = (id.uid, id.gid, id.groups);
            // In this order, while still root: the groups, the gid, then the uid. (std's own
            // uid/gid would run before this hook and clear the supplementary groups.)
            // SAFETY: setgroups, setgid and setuid are async-signal-safe; `groups` was built
            // before the fork and is only read.
            unsafe {
                command.pre_exec(move || {
                    let ok = libc::setgroups(groups.len(), groups.as_ptr()) == 0
                        && libc::setgid(gid) == 0
                        && libc::setuid(uid) == 0;
                    match ok {
                        true => Ok(()),
                        false => Err(io::Error::last_os_error()),
                    }
                });
            }
        }
        #[allow(unused_mut)]
        let mut limits = rlimits(&spec.rlimits)?;
        #[cfg(feature = "confine")]
        if let Some(policy) = &spec.policy {
            limits.extend(rlimits(&crate::confine::rlimits(policy))?);
        }
        let tty = spec.stdio.as_ref().is_some_and(|s| s.tty.is_some());
        // SAFETY: setrlimit, setsid and ioctl are async-signal-safe; `limits` was built before
        // the fork and is only read.
        unsafe {
            command.pre_exec(move || {
                for (resource, limit) in &limits {
                    if libc::setrlimit(*resource, limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                // A terminal's command leads a session of its own with it as the controlling
                // terminal (fd 0, the pty PID 1 made), so ^C reaches it as SIGINT.
                if tty && (libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0) {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        #[cfg(feature = "confine")]
        if let Some(mut confinement) = confinement {
            // SAFETY: the hook makes system calls only (capset, prctl, landlock, seccomp) on
            // what was built before the fork.
            unsafe {
                command.pre_exec(move || confinement.lock().map_err(io::Error::other));
            }
        }
        command
            .envs(spec.env.iter().map(|v| (&v.name, &v.value)))
            .current_dir(spec.cwd());
        if !tty {
            // (setsid makes the session's command a group leader too.)
            command.process_group(0);
        }
        Ok(command)
    }
}

/// The spec's policy's confinement, built now, with its first step (the bounding set) hooked
/// before the change of user; the last step is the caller's to hook after it.
#[cfg(feature = "confine")]
fn confine(
    command: &mut Command,
    spec: &WorkloadSpec,
) -> Result<Option<crate::confine::Confinement>, RunError> {
    let Some(policy) = &spec.policy else {
        return Ok(None);
    };
    let mut confinement = crate::confine::Confinement::new(policy).map_err(RunError::Setup)?;
    let mut first = confinement.before_user();
    // SAFETY: the hook makes system calls only (write, prctl) on what was built before the fork.
    unsafe {
        command.pre_exec(move || first.apply().map_err(io::Error::other));
    }
    Ok(Some(confinement))
}

/// The spec's resource limits as setrlimit(2) takes them.
fn rlimits(
    rlimits: &[crate::spec::Rlimit],
) -> Result<Vec<(libc::__rlimit_resource_t, libc::rlimit)>, RunError> {
    rlimits
        .iter()
        .map(|limit| {
            let resource = match limit.kind.as_str() {
                "RLIMIT_AS" => libc::RLIMIT_AS,
                "RLIMIT_CORE" => libc::RLIMIT_CORE,
                "RLIMIT_CPU" => libc::RLIMIT_CPU,
                "RLIMIT_DATA" => libc::RLIMIT_DATA,
                "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
                "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
                "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
                "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
                "RLIMIT_NICE" => libc::RLIMIT_NICE,
                "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
                "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
                "RLIMIT_RSS" => libc::RLIMIT_RSS,
                "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
                "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
                "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
                "RLIMIT_STACK" => libc::RLIMIT_STACK,
                other => return Err(RunError::Setup(format!("unknown resource limit {other}"))),
            };
            let limit = libc::rlimit {
                rlim_cur: limit.soft,
                rlim_max: limit.hard,
            };
            Ok((resource, limit))
        })
        .collect()
}

impl Runner for ProcessRunner {
    fn start(&mut self, spec: &WorkloadSpec) -> Result<Workload, RunError> {
        let program = spec.args.first().cloned().unwrap_or_default();
        let child = Self::command(spec)?.spawn().map_err(|source| {
            let (program, cwd) = (program.clone(), spec.cwd().to_string());
            match source.kind() {
                io::ErrorKind::NotFound => RunError::NotFound {
                    program,
                    cwd,
                    source,
                },
                _ => RunError::CannotExecute {
                    program,
                    cwd,
                    source,
                },
            }
        })?;
        let pid = libc::pid_t::try_from(child.id())
            .map_err(|_| RunError::Setup(format!("pid {} out of range", child.id())))?;
        // The child is waited for by pid (PID 1 reaps with waitpid(-1)); dropping the handle
        // neither kills nor waits for it.
        drop(child);
        Ok(Workload { pid, program })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{STATUS_CANNOT_EXECUTE, STATUS_NOT_FOUND};
    use crate::runner::exit_status;
    use crate::spec::EnvVar;

    fn wait(pid: libc::pid_t) -> u8 {
        let mut wstatus = 0;
        // SAFETY: waitpid writes one int through a valid pointer.
        let reaped = unsafe { libc::waitpid(pid, &mut wstatus, 0) };
        assert_eq!(reaped, pid);
        exit_status(wstatus).unwrap()
    }

    #[test]
    fn runs_with_base_env_overrides_and_cwd() {
        let mut spec = WorkloadSpec::new(vec![
            "/bin/sh".into(),
            "-c".into(),
            r#"[ "$(pwd)" = /tmp ] && [ "$HOME" = /elsewhere ] && [ "$TERM" = linux ] && [ "$X" = 'a b' ] && [ -z "$USER" ] && read -r _ _ _ _ pgrp _ < /proc/$$/stat && [ "$pgrp" = $$ ] || exit 9; exit 4"#.into(),
        ]);
        spec.env = vec![EnvVar::new("HOME", "/elsewhere"), EnvVar::new("X", "a b")];
        spec.cwd = Some("/tmp".into());
        let workload = ProcessRunner.start(&spec).unwrap();
        assert_eq!(workload.program, "/bin/sh");
        assert_eq!(wait(workload.pid), 4);
    }

    #[test]
    fn exec_failures_map_to_126_and_127() {
        let err = ProcessRunner
            .start(&WorkloadSpec::new(vec!["/no/such/binary".into()]))
            .unwrap_err();
        assert_eq!(err.status(), STATUS_NOT_FOUND);
        assert!(
            err.to_string()
                .starts_with("cannot run \"/no/such/binary\" (in /): "),
            "{err}"
        );
        let err = ProcessRunner
            .start(&WorkloadSpec::new(vec!["/proc/self/stat".into()]))
            .unwrap_err();
        assert_eq!(err.status(), STATUS_CANNOT_EXECUTE);
    }
}
