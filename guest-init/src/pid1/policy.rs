//! The workload's policy inside a microVM, on top of the VM boundary: the network it may use,
//! its filesystem (read-only mounts; the guest kernel has no Landlock), its limits (a cgroup v2
//! of its own for memory, pids and CPU; the wall time kept here), and (through the process
//! runner) its capabilities and seccomp profile, as the host sandbox applies them.

use std::path::Path;
use std::time::Duration;

use crate::confine::{self, WORKLOAD_CGROUP};
use crate::spec::{Network, Policy};

use super::Pid1Error;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn err(what: &str) -> impl FnOnce(std::io::Error) -> Pid1Error + '_ {
    move |e| Pid1Error::Policy(format!("{what}: {e}"))
}

/// Applies what PID 1 enforces before the workload starts (in the workload's root).
pub fn apply(policy: &Policy) -> Result<(), Pid1Error> {
    match &policy.network {
        Network::None => {}
        Network::Loopback => confine::fs::link_up("lo").map_err(err("bring lo up"))?,
        // The host named a TAP: it is this guest's first virtio-net interface.
        Network::Interface(_) => {
            confine::fs::link_up("lo").map_err(err("bring lo up"))?;
            confine::fs::link_up("eth0").map_err(err("bring eth0 up"))?;
        }
    }
    confine::fs::apply(Path::new("/"), &policy.filesystem, None).map_err(Pid1Error::Policy)?;
    cgroup(policy)
}

/// The workload's cgroup with the policy's limits, if it has any; the runner's hook joins it.
fn cgroup(policy: &Policy) -> Result<(), Pid1Error> {
    let limits = &policy.limits;
    let mut settings = Vec::new();
    if let Some(mib) = limits.memory_mib {
        settings.push((
            "memory",
            "memory.max",
            mib.saturating_mul(1 << 20).to_string(),
        ));
        settings.push(("memory", "memory.swap.max", "0".to_string()));
    }
    if let Some(pids) = limits.pids {
        settings.push(("pids", "pids.max", pids.to_string()));
    }
    if let Some(cpus) = limits.cpus {
        let quota = u64::from(cpus.millis) * 100;
        settings.push(("cpu", "cpu.max", format!("{quota} 100000")));
    }
    if settings.is_empty() {
        return Ok(());
    }
    let root = Path::new(CGROUP_ROOT);
    std::fs::create_dir_all(root).map_err(err(CGROUP_ROOT))?;
    if !root.join("cgroup.controllers").exists() {
        let (source, target) = (c"cgroup2", c"/sys/fs/cgroup");
        // SAFETY: constant C strings; no data.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                source.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(err("mount cgroup2 on /sys/fs/cgroup")(
                std::io::Error::last_os_error(),
            ));
        }
    }
    let mut controllers: Vec<&str> = settings.iter().map(|(c, _, _)| *c).collect();
    controllers.dedup();
    for controller in controllers {
        std::fs::write(
            root.join("cgroup.subtree_control"),
            format!("+{controller}"),
        )
        .map_err(err(&format!("enable the {controller} controller")))?;
    }
    let dir = Path::new(WORKLOAD_CGROUP);
    std::fs::create_dir_all(dir).map_err(err(WORKLOAD_CGROUP))?;
    for (_, file, value) in settings {
        // No swap accounting in a kernel without swap: nothing to turn off.
        if file == "memory.swap.max" && !dir.join(file).exists() {
            continue;
        }
        std::fs::write(dir.join(file), value).map_err(err(file))?;
    }
    Ok(())
}

/// Kills the workload's process group once its wall time is spent (exit 137, as the host
/// sandbox's).
pub fn watch_wall_time(policy: &Policy, pid: libc::pid_t) {
    let Some(seconds) = policy.limits.wall_time_s else {
        return;
    };
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(seconds));
        eprintln!("tessera: the workload ran past its wall-time limit ({seconds} s): killed");
        // SAFETY: kill takes integers; the workload leads its process group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
    });
}
