//! The host sandbox for a container's workload (`tessera run --image REF --isolation
//! sandbox`): the image's root under an overlay, entered with user, mount, PID, IPC, UTS,
//! network and cgroup namespaces, as runc and crun do, confined by the workload's policy.
//!
//! Three processes: this one (the host side: the id map, the cgroup, the wall-time limit, the
//! exit code), the sandbox's PID 1 ([`init`]: mounts the root, [`rootfs`], and reaps), and the
//! workload, which PID 1 forks and which confines itself ([`guest_init::confine`]) and execs.
//!
//! ```text
//! tessera ── clone(NEWNS|NEWPID|NEWIPC|NEWUTS|NEWNET [|NEWUSER rootless]) ──> PID 1 ── fork ──> workload
//!   joins it to the cgroup, moves the interface, says "go"; PID 1 makes its cgroup namespace
//!   and the mounts, pivots; as root it then unshares a user namespace and asks for its map
//!   (rootless, the map was written before "go"), then becomes root inside
//! ```

mod idmap;
mod init;
mod rootfs;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use guest_init::spec::{Network, Policy, WorkloadSpec};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub use idmap::IdMap;

use crate::cgroup::{self, Cgroups};
use crate::config::CgroupSetting;

/// A host directory bind-mounted into the workload's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub source: PathBuf,
    /// Absolute, in the workload's root.
    pub destination: String,
    pub read_only: bool,
}

/// One sandboxed run.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// What runs (a process spec: args, env, cwd, user, rlimits, hostname, policy).
    pub spec: WorkloadSpec,
    /// The image's root as a directory, owned as [`IdMap::root_owner`] says: the overlay's
    /// read-only lower layer, shared by every run of the image.
    pub lower: PathBuf,
    pub volumes: Vec<Volume>,
    /// An empty directory for this run's own mounts (a tmpfs with the overlay's upper layer and
    /// the new root), seen only in the sandbox's mount namespace; the caller removes it.
    pub staging: PathBuf,
    /// The run's name: its cgroup is `tessera/<name>`.
    pub name: String,
    pub id_map: IdMap,
}

/// Why a sandbox could not start; nothing of it is left behind.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum SandboxError {
    /// sandbox: {0}
    Setup(String),
    /// {0}
    Inside(String),
    /// sandbox: {step}: {source}
    Sys {
        step: &'static str,
        source: nix::Error,
    },
}

fn sys(step: &'static str) -> impl FnOnce(nix::Error) -> SandboxError {
    move |source| SandboxError::Sys { step, source }
}

/// Exit code of a workload killed at its wall-time limit, as if by SIGKILL.
pub const WALL_TIME_EXIT: u8 = 137;

/// The process that signals reach (the sandbox's PID 1), for the forwarding handler.
static SANDBOX_INIT: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int) {
    let pid = SANDBOX_INIT.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

/// The cgroup settings a policy's limits need, for cgroup `version`.
fn cgroup_settings(policy: &Policy, version: u8) -> Vec<CgroupSetting> {
    let limits = &policy.limits;
    let mut settings = Vec::new();
    let mut set = |controller: &str, file: &str, value: String| {
        settings.push(CgroupSetting {
            controller: controller.into(),
            file: format!("{controller}.{file}"),
            value,
        })
    };
    if let Some(mib) = limits.memory_mib {
        let bytes = mib.saturating_mul(1 << 20).to_string();
        match version {
            2 => {
                set("memory", "max", bytes);
                // Where swap is on, the limit is on memory and swap together, as Docker's.
                if swap_on() {
                    set("memory", "swap.max", "0".into());
                }
            }
            _ => set("memory", "limit_in_bytes", bytes),
        }
    }
    if let Some(pids) = limits.pids {
        set("pids", "max", pids.to_string());
    }
    if let Some(cpus) = limits.cpus {
        // Per 100 ms period, as Docker's --cpus.
        let quota = u64::from(cpus.millis) * 100;
        match version {
            2 => set("cpu", "max", format!("{quota} 100000")),
            _ => {
                set("cpu", "cfs_period_us", "100000".into());
                set("cpu", "cfs_quota_us", quota.to_string());
            }
        }
    }
    settings
}

/// Whether the host has swap (and so cgroups account for it).
fn swap_on() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|swaps| swaps.lines().count() > 1)
}

fn pipe() -> Result<(File, File), SandboxError> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    Ok((File::from(read), File::from(write)))
}

impl Sandbox {
    /// Runs the workload and returns its exit code (128 + N for signal N, 137 past the wall
    /// time). Signals this process gets (Ctrl-C, SIGTERM) go to the sandbox's PID 1, which
    /// passes them on to the workload.
    pub fn run(&self) -> Result<u8, SandboxError> {
        let policy = self.spec.policy();
        let controllers: Vec<&str> = cgroup_settings(&policy, 2)
            .iter()
            .map(|s| match s.controller.as_str() {
                "memory" => "memory",
                "pids" => "pids",
                _ => "cpu",
            })
            .collect();
        let version = cgroup::version_for(&controllers);
        let settings = cgroup_settings(&policy, version);
        let relative = Path::new("tessera").join(&self.name);
        let mut cgroups = Cgroups::create(version, &settings, &relative)
            .map_err(|e| SandboxError::Setup(format!("cgroup for the policy's limits: {e}")))?;
        let result = self.run_in(&policy, &cgroups);
        cgroups.remove_empty();
        result
    }

    fn run_in(&self, policy: &Policy, cgroups: &Cgroups) -> Result<u8, SandboxError> {
        // "go" from here to PID 1 (once it is in the cgroup; as root, again once its ids are
        // mapped), "map me" from PID 1 to here, and PID 1's setup error.
        let (go_read, mut go_write) = pipe()?;
        let (mut map_read, map_write) = pipe()?;
        let (mut err_read, err_write) = pipe()?;
        let mut stack = vec![0u8; 256 * 1024];
        // As root, PID 1 makes the root's mounts with the host's privileges (the image's tree is
        // in root's home, which a mapped uid may not enter) and only then enters a new user
        // namespace; rootless, it needs the user namespace first to mount anything.
        let rootful = self.id_map.rootful();
        let mut flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET;
        if !rootful {
            flags |= CloneFlags::CLONE_NEWUSER;
        }
        let fds = init::Pipes {
            go: go_read.as_raw_fd(),
            map: map_write.as_raw_fd(),
            err: err_write.as_raw_fd(),
        };
        let child = Box::new(|| -> isize { init::main(self, rootful, &fds) });
        // SAFETY: the child gets its own copy of this process (no CLONE_VM) and runs only the
        // closure above on `stack`, which outlives the call.
        let pid = unsafe {
            nix::sched::clone(
                child,
                &mut stack,
                flags,
                Some(libc::SIGCHLD),
            )
        }
        .map_err(|e| match e {
            nix::Error::EPERM | nix::Error::ENOSPC | nix::Error::EINVAL => SandboxError::Setup(format!(
                "cannot make the sandbox's namespaces ({e}): this host does not allow user namespaces here (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone)"
            )),
            e => SandboxError::Sys { step: "clone", source: e },
        })?;
        drop((go_read, map_write, err_write));
        SANDBOX_INIT.store(pid.as_raw(), Ordering::SeqCst);
        let mut prepared = cgroups
            .join_pid(pid.as_raw())
            .map_err(|e| SandboxError::Setup(e.to_string()))
            .and_then(|()| match &policy.network {
                Network::Interface(name) => move_interface(name, pid.as_raw()),
                _ => Ok(()),
            });
        if !rootful {
            prepared = prepared.and_then(|()| self.id_map.write(pid.as_raw()));
        }
        prepared = prepared.and_then(|()| {
            go_write
                .write_all(b"g")
                .map_err(|e| SandboxError::Setup(format!("start the sandbox: {e}")))
        });
        if rootful && prepared.is_ok() {
            // PID 1 asks once its mounts are made and it is in its user namespace (EOF: it
            // failed, and says why on its error pipe).
            let mut byte = [0u8; 1];
            if map_read.read(&mut byte).ok() == Some(1) {
                prepared = self.id_map.write(pid.as_raw()).and_then(|()| {
                    go_write
                        .write_all(b"g")
                        .map_err(|e| SandboxError::Setup(format!("start the sandbox: {e}")))
                });
            }
        }
        if let Err(e) = prepared {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(e);
        }
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            // SAFETY: `forward` only reads an atomic and calls kill.
            unsafe { libc::signal(signal, forward as *const () as libc::sighandler_t) };
        }
        drop(go_write);
        let deadline = policy
            .limits
            .wall_time_s
            .map(|s| Instant::now() + Duration::from_secs(s));
        let code = wait(pid, deadline)?;
        let mut setup_error = String::new();
        let _ = err_read.read_to_string(&mut setup_error);
        SANDBOX_INIT.store(0, Ordering::SeqCst);
        match (code, setup_error.is_empty()) {
            (Exit::Code(code), true) => Ok(code),
            (Exit::Code(_), false) => Err(SandboxError::Inside(setup_error)),
            (Exit::WallTime, _) => {
                eprintln!(
                    "tessera: the workload ran past its wall-time limit ({} s): killed",
                    policy.limits.wall_time_s.unwrap_or_default()
                );
                Ok(WALL_TIME_EXIT)
            }
        }
    }
}

enum Exit {
    Code(u8),
    WallTime,
}

/// Waits for PID 1 (its exit code is the workload's); past `deadline`, kills it (and with it
/// the whole PID namespace).
fn wait(pid: Pid, deadline: Option<Instant>) -> Result<Exit, SandboxError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let pidfd = match raw {
        -1 => None,
        // SAFETY: a new descriptor that nothing else owns.
        fd => Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
    };
    let mut timed_out = false;
    if let (Some(deadline), Some(pidfd)) = (deadline, &pidfd) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut poll = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one pollfd, valid for the call.
            let ready = unsafe { libc::poll(&mut poll, 1, ms) };
            if ready > 0 {
                break;
            }
            if ready == 0 || left.is_zero() {
                timed_out = true;
                let _ = kill(pid, Signal::SIGKILL);
                break;
            }
        }
    }
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Ok(status) => {
                let code = match status {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code as u8,
                    nix::sys::wait::WaitStatus::Signaled(_, signal, _) => 128 + signal as u8,
                    _ => continue,
                };
                return Ok(match timed_out {
                    true => Exit::WallTime,
                    false => Exit::Code(code),
                });
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(sys("wait for the sandbox")(e)),
        }
    }
}

/// Moves host interface `name` into the network namespace of `pid` (the workload brings it
/// up), with iproute2 as an operator would.
fn move_interface(name: &str, pid: i32) -> Result<(), SandboxError> {
    let output = std::process::Command::new("ip")
        .args(["link", "set", "dev", name, "netns", &pid.to_string()])
        .output()
        .map_err(|e| {
            SandboxError::Setup(format!(
                "network interface {name}: cannot run ip ({e}); install iproute2"
            ))
        })?;
    match output.status.success() {
        true => Ok(()),
        false => Err(SandboxError::Setup(format!(
            "network interface {name}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_init::spec::Cpus;

    #[test]
    fn limits_become_the_settings_of_each_cgroup_version() {
        let mut policy = Policy::new();
        policy.limits.memory_mib = Some(64);
        policy.limits.pids = Some(32);
        policy.limits.cpus = Some(Cpus { millis: 500 });
        let v2: Vec<String> = cgroup_settings(&policy, 2)
            .iter()
            .map(|s| format!("{}={}", s.file, s.value))
            .collect();
        let swap = ["memory.swap.max=0"].into_iter().filter(|_| swap_on());
        let expected: Vec<&str> = ["memory.max=67108864"]
            .into_iter()
            .chain(swap)
            .chain(["pids.max=32", "cpu.max=50000 100000"])
            .collect();
        assert_eq!(v2, expected);
        let v1: Vec<String> = cgroup_settings(&policy, 1)
            .iter()
            .map(|s| format!("{}={}", s.file, s.value))
            .collect();
        assert_eq!(
            v1,
            [
                "memory.limit_in_bytes=67108864",
                "pids.max=32",
                "cpu.cfs_period_us=100000",
                "cpu.cfs_quota_us=50000"
            ]
        );
        assert!(cgroup_settings(&Policy::new(), 2).is_empty());
    }
}
