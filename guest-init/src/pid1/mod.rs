//! PID 1 of a Tessera guest (`tessera-init`): the duties of an init around one workload.
//!
//! Marks boot-done, mounts the kernel file systems, reads the workload spec the VMM appended to
//! the initrd (see [`crate::protocol::spec_transport`]), sets the hostname, starts the workload
//! with a [`Runner`], forwards Ctrl-Alt-Del to it, reaps every zombie, and when the workload
//! ends: stops what is left, syncs, reports the exit status on the status port (see
//! [`crate::protocol::report`]) and reboots, which ends the microVM. Its own failures are
//! printed as `tessera-init: error: ...` and reported as status 125 (126/127 when the command
//! cannot be executed / is not found). It never returns to the kernel, so the guest never hangs
//! on init.

mod console;
mod hostname;
mod image_root;
mod mounts;
#[cfg(feature = "confine")]
mod policy;
mod reaper;
mod report_ports;
mod shutdown;
mod signals;
mod stdio;
mod volumes;

use std::io;

use crate::protocol::{self, TransportError, BOOT_DONE_PORT, BOOT_DONE_VALUE, STATUS_INIT_FAILED};
use crate::runner::{killed_by, RunError, Runner};
use crate::spec::WASM_RUNNER;
use report_ports::ReportPorts;

/// Why PID 1 could not run the workload.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum Pid1Error {
    /// cannot create mount point {target}: {source}
    MountPoint {
        target: &'static str,
        source: io::Error,
    },
    /// cannot mount {fstype} on {target}: {source}
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: io::Error,
    },
    /// {0}
    Spec(#[from] TransportError),
    /// the kernel could not unpack the whole initramfs ({why}), so the workload spec never arrived: {mib} MiB of guest memory is too little for it; give the VM more with --memory
    InitramfsIncomplete { why: String, mib: u64 },
    /// cannot set hostname {name:?}: {source}
    Hostname { name: String, source: io::Error },
    /// cannot turn Ctrl-Alt-Del into a signal: {0}
    CtrlAltDel(io::Error),
    /// cannot handle signal {signal}: {source}
    Signal {
        signal: libc::c_int,
        source: io::Error,
    },
    /// {0}
    Run(#[from] RunError),
    /// lost track of the command (pid {0})
    LostWorkload(libc::pid_t),
    /// the image's root file system: {0}
    ImageRoot(String),
    /// volume {0}
    Volume(String),
    /// the workload's policy: {0}
    Policy(String),
    /// the workload is a Wasm module, and this initramfs has no Wasm runner ({0}): boot the Wasm initramfs (tessera-init-wasm.cpio, which scripts/setup builds)
    NoWasmRunner(&'static str),
}

impl Pid1Error {
    /// The exit status that reports this failure.
    pub fn status(&self) -> u8 {
        match self {
            Pid1Error::Run(e) => e.status(),
            _ => STATUS_INIT_FAILED,
        }
    }
}

/// Runs PID 1 with `runner` for the workload. Never returns.
pub fn main(mut runner: impl Runner) -> ! {
    let ports = ReportPorts::open();
    ports.write(BOOT_DONE_PORT, BOOT_DONE_VALUE);
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("tessera-init: error: panic: {info}");
        shutdown::finish(ports, STATUS_INIT_FAILED);
    }));
    let status = match run(&mut runner) {
        Ok(status) => status,
        Err(e) => {
            eprintln!("tessera-init: error: {e}");
            e.status()
        }
    };
    shutdown::finish(ports, status);
}

fn run(runner: &mut impl Runner) -> Result<u8, Pid1Error> {
    mounts::mount_kernel_filesystems()?;
    console::ensure_stdio();
    let spec = protocol::read_spec().map_err(|e| match (&e, initramfs_unpack_failure()) {
        (TransportError::Missing(_), Some(why)) => Pid1Error::InitramfsIncomplete {
            why,
            mib: guest_memory_mib(),
        },
        _ => e.into(),
    })?;
    if let Some(streams) = &spec.stdio {
        if let Err(e) = stdio::connect(streams) {
            eprintln!(
                "tessera-init: warning: cannot connect the command's stdio to the host ({e}); it stays on the console"
            );
        }
    }
    if let Some(root) = &spec.root {
        image_root::enter(root)?;
    }
    volumes::mount_all(&spec.mounts)?;
    hostname::set(spec.hostname())?;
    signals::forward_ctrl_alt_del()?;
    #[cfg(feature = "confine")]
    if let Some(policy) = &spec.policy {
        policy::apply(policy)?;
    }
    #[cfg(not(feature = "confine"))]
    if spec.policy.is_some() {
        return Err(Pid1Error::Policy(
            "this tessera-init was built without the confine feature".into(),
        ));
    }

    let ooms_before = oom_kills();
    if spec.wasm.is_some() && !std::path::Path::new(WASM_RUNNER).exists() {
        return Err(Pid1Error::NoWasmRunner(WASM_RUNNER));
    }
    let workload = runner.start(&spec.process())?;
    signals::set_workload(workload.pid);
    #[cfg(feature = "confine")]
    if let Some(policy) = &spec.policy {
        policy::watch_wall_time(policy, workload.pid);
    }
    let status = reaper::reap_until(workload.pid)?;
    match killed_by(status) {
        Some(9) if oom_kills() > ooms_before => eprintln!(
            "tessera-init: {:?} was killed: the guest ran out of memory ({} MiB; give the VM more with --memory)",
            workload.program,
            guest_memory_mib()
        ),
        Some(signal) => eprintln!(
            "tessera-init: {:?} killed by signal {signal}",
            workload.program
        ),
        None => {}
    }
    Ok(status)
}

/// How many processes the kernel's OOM killer has killed since boot.
fn oom_kills() -> u64 {
    let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    vmstat
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The guest's memory as the kernel counts it (MemTotal), in MiB.
/// Why the kernel stopped unpacking the initramfs, from its log (`Initramfs unpacking failed:
/// write error` when the guest's memory ran out), if it did.
fn initramfs_unpack_failure() -> Option<String> {
    const SYSLOG_ACTION_READ_ALL: libc::c_int = 3;
    let mut log = vec![0u8; 1 << 16];
    let len = libc::c_int::try_from(log.len()).ok()?;
    // SAFETY: READ_ALL copies at most `len` bytes of the kernel log into `log`, which lives
    // across the call; it returns how many it copied, or -1.
    let n = unsafe { libc::klogctl(SYSLOG_ACTION_READ_ALL, log.as_mut_ptr().cast(), len) };
    let log = String::from_utf8_lossy(&log[..usize::try_from(n).ok()?]).into_owned();
    log.lines().find_map(|line| {
        let (_, why) = line.split_once("Initramfs unpacking failed: ")?;
        Some(why.trim().to_string())
    })
}

fn guest_memory_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}
