//! A [`Jail`]: a [`JailConfig`] checked whole, and its steps in Firecracker's order: sanitise
//! the process, make the jail (copy of the VMM, rlimits, cgroup), enter it (mount namespace,
//! pivot_root, chroot), make the device nodes, join the network namespace, detach and/or enter
//! a new PID namespace, drop privileges, exec.
//!
//! Until the jail is entered, a failure removes what was made (jail directory, cgroups); after
//! `pivot_root` the host's view of the jail is out of reach, and a failure leaves the jail
//! directory for the caller to remove, as Firecracker's jailer does.

use std::convert::Infallible;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::sys::stat::{umask, Mode};

use crate::cgroup::Cgroups;
use crate::chroot::{self, JailDir};
use crate::config::{valid_cgroup_path, valid_id, ConfigError, JailConfig, Limit, DEFAULT_NO_FILE};
use crate::error::{at, JailError};
use crate::exec_file::ExecFile;
use crate::privileges::drop_privileges;
use crate::vmm_process::{detach, exec_vmm, fork_vmm_process};

/// A jail, checked and ready to be made: nothing exists on the host yet, but the exec file is
/// open (so the program checked is the one copied into the jail).
#[derive(Debug)]
pub struct Jail {
    config: JailConfig,
    exec: ExecFile,
    exec_name: String,
    parent_cgroup: String,
    dir: PathBuf,
}

impl Jail {
    /// Checks every input that can be checked without making anything, in the order the
    /// jailer always has (the first refusal is the one reported), and opens the exec file.
    pub fn new(mut config: JailConfig) -> Result<Jail, ConfigError> {
        if !valid_id(&config.id) {
            return Err(ConfigError::BadId(config.id));
        }
        let shown = config.exec_file.display().to_string();
        let exec = ExecFile::open(&config.exec_file)?;
        for (which, value) in [("uid", config.uid), ("gid", config.gid)] {
            if value == u32::MAX {
                return Err(ConfigError::BadOwner { which, value });
            }
        }
        exec.check_static()?;
        let exec_name = config
            .exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or(ConfigError::ExecNoName(shown))?
            .to_string();
        if ["dev", "run", "old_root"].contains(&exec_name.as_str()) || exec_name.ends_with(".pid") {
            return Err(ConfigError::ReservedName(exec_name));
        }
        if !config.chroot_base_dir.is_absolute() {
            return Err(ConfigError::RelativeBase(
                config.chroot_base_dir.display().to_string(),
            ));
        }
        if !matches!(config.cgroup_version, 1 | 2) {
            return Err(ConfigError::BadCgroupVersion(config.cgroup_version));
        }
        for setting in &config.cgroups {
            setting.check()?;
        }
        let parent_cgroup = config
            .parent_cgroup
            .clone()
            .unwrap_or_else(|| exec_name.clone());
        if !valid_cgroup_path(&parent_cgroup) {
            return Err(ConfigError::BadParentCgroup(parent_cgroup));
        }
        if !config
            .limits
            .iter()
            .any(|l| matches!(l, Limit::OpenFiles(_)))
        {
            config.limits.push(Limit::OpenFiles(DEFAULT_NO_FILE));
        }
        let dir = config.chroot_base_dir.join(&exec_name).join(&config.id);
        Ok(Jail {
            config,
            exec,
            exec_name,
            parent_cgroup,
            dir,
        })
    }

    /// What was asked for (with the default open-files limit added).
    pub fn config(&self) -> &JailConfig {
        &self.config
    }

    /// The exec file's name: the VMM is `/<name>` in the jail.
    pub fn exec_name(&self) -> &str {
        &self.exec_name
    }

    /// `<base>/<exec name>/<id>`: made by [`Jail::run`], refused if it exists.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<jail dir>/root`, the VMM's `/`.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The cgroup under which the jail's `<id>` cgroup is made.
    pub fn parent_cgroup(&self) -> &str {
        &self.parent_cgroup
    }

    /// Makes the jail, enters it and execs the VMM there; returns only on failure.
    ///
    /// Meant for a process of its own (the jailer, or one forked for it): it closes every
    /// descriptor but stdio, changes namespaces, root and ids, and ends in the VMM's exec (or,
    /// with `daemonize` or `new_pid_ns`, in a forked VMM and this process's exit). The process
    /// must have one thread: it may fork and run on in the child, and namespace and credential
    /// changes must hold for the whole process.
    pub fn run(self) -> Result<Infallible, JailError> {
        let config = &self.config;
        close_inherited_fds(&[self.exec.file().as_raw_fd()])?;
        // Joined first: a bad namespace file is refused before anything is made.
        if let Some(path) = config.netns.as_deref() {
            let netns = File::open(path).map_err(at("open the network namespace", path))?;
            setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(at("join the network namespace", path))?;
        }
        let dev_null = match config.daemonize {
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
        let made = chroot::create_jail_dir(&self.dir, &config.id)?;
        // From here on the jail directory is ours to remove on failure (never an existing one).
        let mut undo = Undo {
            jail_dir: made,
            cgroups: Cgroups::default(),
            armed: true,
        };
        let root = chroot::populate(
            &undo.jail_dir,
            &self.exec,
            &self.exec_name,
            config.uid,
            config.gid,
        )?;
        set_limits(&config.limits)?;
        let relative = Path::new(&self.parent_cgroup).join(&config.id);
        undo.cgroups = Cgroups::create(config.cgroup_version, &config.cgroups, &relative)?;
        undo.cgroups.join()?;
        let root_path = self.root();
        chroot::enter(&root_path, &root)?;
        undo.armed = false;
        // No descriptor of the host's file system is kept inside the jail.
        drop(undo);
        drop(root);
        let Jail {
            config,
            exec,
            exec_name,
            ..
        } = self;
        drop(exec);

        chroot::make_devices(config.uid, config.gid)?;
        if config.new_pid_ns {
            unshare(CloneFlags::CLONE_NEWPID)
                .map_err(at("unshare the PID namespace", &root_path))?;
        }
        let report = match config.new_pid_ns || config.daemonize {
            true => Some(fork_vmm_process(&exec_name, config.daemonize)?),
            false => None,
        };
        let result = finish(&config, &exec_name, dev_null.as_ref());
        // Only a failure gets here: tell the waiting jailer, whose stderr is still the caller's.
        if let (Some(mut report), Err(e)) = (report, &result) {
            let _ = write!(report, "{e}");
            std::process::exit(1);
        }
        result
    }
}

/// What the jail made on the host, removed if a later step fails before the jail is entered.
struct Undo {
    jail_dir: JailDir,
    cgroups: Cgroups,
    armed: bool,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.armed {
            self.cgroups.remove();
            self.jail_dir.remove();
        }
    }
}

/// The last steps, in the process that becomes the VMM.
fn finish(
    config: &JailConfig,
    exec_name: &str,
    dev_null: Option<&File>,
) -> Result<Infallible, JailError> {
    if let Some(dev_null) = dev_null {
        detach(dev_null)?;
    }
    drop_privileges(config.uid, config.gid)?;
    if config.new_pid_ns && !config.daemonize {
        // The jailer waits for this VMM: if it dies, so does the VMM (set after the
        // credential change, which clears it).
        set_pdeathsig(Signal::SIGKILL).map_err(|e| JailError::Refused {
            step: "set the parent-death signal",
            reason: e.to_string(),
        })?;
    }
    exec_vmm(exec_name, &config.id, &config.vmm_args)
}

/// Closes every descriptor but stdin, stdout, stderr and `keep` (this jail's own), so the VMM
/// inherits nothing else.
fn close_inherited_fds(keep: &[RawFd]) -> Result<(), JailError> {
    let dir = Path::new("/proc/self/fd");
    let fds: Vec<RawFd> = fs::read_dir(dir)
        .map_err(at("list open files", dir))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && !keep.contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor this process holds and no Rust object owns (the
        // directory listing that showed it is gone, the jail's own are kept; a stale number
        // just gives EBADF).
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
