//! Tessera's jailer: builds a jail for a VMM (a chroot with a copy of the program and its
//! device nodes, a cgroup, private mount and optional PID and network namespaces), drops to an
//! unprivileged user and execs the VMM there, as Firecracker's jailer does.
//!
//! ```no_run
//! use jailer::{Jail, JailConfig};
//!
//! let mut config = JailConfig::new("vm1", "/usr/local/bin/tessera", 123, 456);
//! config.cgroups.push("memory.max=256M".parse()?);
//! config.vmm_args = vec!["--api-sock".into(), "/api.sock".into()];
//! let jail = Jail::new(config)?; // checked whole; nothing made yet
//! let never = jail.run()?; // made, entered, exec'd: returns only on failure
//! match never {}
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Modules: [`config`] (the request and its refusals), `exec_file` (the VMM program),
//! `nofollow` (paths opened through no symbolic link), `chroot` (the jail's file system),
//! `cgroup`, `privileges`, `vmm_process` (fork, supervision, exec) and `jail` (the steps).

mod cgroup;
mod chroot;
pub mod config;
mod error;
mod exec_file;
mod jail;
mod nofollow;
mod privileges;
pub mod sandbox;
pub mod usage;
mod vmm_process;

pub use config::{CgroupSetting, ConfigError, JailConfig, Limit};
pub use error::JailError;
pub use jail::Jail;
