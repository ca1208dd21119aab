//! The jailer's command line, with Firecracker's jailer flags, turned into a [`JailConfig`] and
//! checked before anything is made.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use jailer::config::DEFAULT_CHROOT_BASE;
use jailer::{CgroupSetting, ConfigError, Jail, JailConfig, Limit};

/// Builds a jail for a VMM and runs it there, as Firecracker's jailer does.
#[derive(Debug, Parser)]
#[command(name = "tessera-jailer", version)]
pub struct Args {
    /// Jail id: 1 to 64 ASCII letters, digits and '-'; names the jail directory and cgroup,
    /// and is passed to the VMM as `--id`.
    #[arg(long)]
    pub id: String,

    /// The VMM binary; it is copied into the jail and run from there.
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,

    /// User id the VMM runs as.
    #[arg(long)]
    pub uid: u32,

    /// Group id the VMM runs as.
    #[arg(long)]
    pub gid: u32,

    /// Where jails are made: `<dir>/<exec-file name>/<id>/root`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CHROOT_BASE)]
    pub chroot_base_dir: PathBuf,

    /// cgroup version: 2 (unified hierarchy) or 1 (a hierarchy per controller).
    #[arg(long, default_value_t = 2)]
    pub cgroup_version: u8,

    /// A cgroup setting for the VMM, FILE=VALUE (repeatable), e.g. memory.max=256M,
    /// cpu.max="50000 100000", pids.max=64.
    #[arg(long = "cgroup", value_name = "FILE=VALUE")]
    pub cgroups: Vec<String>,

    /// The cgroup under which `<id>`'s cgroup is made [default: the exec file's name].
    #[arg(long, value_name = "NAME")]
    pub parent_cgroup: Option<String>,

    /// A network namespace to run the VMM in (e.g. /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,

    /// A resource limit for the VMM, fsize=BYTES or no-file=N (repeatable)
    /// [default: no-file=2048].
    #[arg(long = "resource-limit", value_name = "RESOURCE=N")]
    pub resource_limits: Vec<String>,

    /// Detach: the jailer returns once the VMM is started, which runs in its own session with
    /// stdio on /dev/null; its pid is written to `<jail root>/<exec-file name>.pid`.
    #[arg(long)]
    pub daemonize: bool,

    /// Run the VMM as PID 1 of a new PID namespace (its host pid goes to the pid file).
    #[arg(long)]
    pub new_pid_ns: bool,

    /// Arguments for the VMM, after `--`.
    #[arg(last = true, value_name = "VMM_ARGS")]
    pub vmm_args: Vec<OsString>,
}

impl Args {
    /// Checks every input that can be checked without making anything: the `--cgroup` and
    /// `--resource-limit` texts as they are parsed, then the whole by [`Jail::new`].
    pub fn check(self) -> Result<Jail, ConfigError> {
        let cgroups = self
            .cgroups
            .iter()
            .map(|c| c.parse::<CgroupSetting>())
            .collect::<Result<_, _>>()?;
        let limits = self
            .resource_limits
            .iter()
            .map(|l| l.parse::<Limit>())
            .collect::<Result<_, _>>()?;
        Jail::new(JailConfig {
            id: self.id,
            exec_file: self.exec_file,
            uid: self.uid,
            gid: self.gid,
            chroot_base_dir: self.chroot_base_dir,
            cgroup_version: self.cgroup_version,
            cgroups,
            parent_cgroup: self.parent_cgroup,
            netns: self.netns,
            limits,
            daemonize: self.daemonize,
            new_pid_ns: self.new_pid_ns,
            vmm_args: self.vmm_args,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use jailer::config::{valid_id, DEFAULT_NO_FILE};

    use super::*;

    /// The static test executable itself stands in for the VMM (the workspace builds
    /// static-pie binaries).
    fn args(extra: &[&str]) -> Result<Jail, ConfigError> {
        let exe = std::env::current_exe().unwrap();
        let mut argv = vec![
            "tessera-jailer".to_string(),
            "--id".into(),
            "vm-1".into(),
            "--exec-file".into(),
            exe.display().to_string(),
            "--uid".into(),
            "123".into(),
            "--gid".into(),
            "456".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        Args::try_parse_from(argv).unwrap().check()
    }

    #[test]
    fn defaults_follow_firecracker() {
        let spec = args(&["--", "--api-sock", "/api.sock"]).unwrap();
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        assert_eq!(spec.dir(), Path::new("/srv/jailer").join(name).join("vm-1"));
        assert_eq!(spec.root(), spec.dir().join("root"));
        assert_eq!(spec.parent_cgroup(), name);
        assert_eq!(spec.config().cgroup_version, 2);
        assert_eq!(
            spec.config().limits,
            vec![Limit::OpenFiles(DEFAULT_NO_FILE)]
        );
        assert_eq!(spec.config().vmm_args, vec!["--api-sock", "/api.sock"]);
    }

    #[test]
    fn bad_inputs_are_named() {
        let bad_id = |id: &str| {
            let exe = std::env::current_exe().unwrap();
            Args::try_parse_from([
                "j",
                "--id",
                id,
                "--exec-file",
                exe.to_str().unwrap(),
                "--uid",
                "1",
                "--gid",
                "1",
            ])
            .unwrap()
            .check()
            .unwrap_err()
        };
        for id in ["", "a/b", "..", "a b", "é", &"x".repeat(65)] {
            assert_eq!(bad_id(id), ConfigError::BadId(id.to_string()), "{id:?}");
        }
        assert!(valid_id(&"x".repeat(64)));
        assert!(matches!(
            args(&["--cgroup", "memory"]),
            Err(ConfigError::BadCgroup(_))
        ));
        assert!(matches!(
            args(&["--cgroup", "../x=1"]),
            Err(ConfigError::BadCgroup(_))
        ));
        assert!(matches!(
            args(&["--resource-limit", "bogus=1"]),
            Err(ConfigError::BadResourceLimit(_))
        ));
        assert!(matches!(
            args(&["--parent-cgroup", "../up"]),
            Err(ConfigError::BadParentCgroup(_))
        ));
        assert!(matches!(
            args(&["--cgroup-version", "3"]),
            Err(ConfigError::BadCgroupVersion(3))
        ));
        assert!(matches!(
            args(&["--chroot-base-dir", "rel"]),
            Err(ConfigError::RelativeBase(_))
        ));
        // -1 to setresuid means "leave as is": the VMM would stay root.
        let exe = std::env::current_exe().unwrap();
        let owner = Args::try_parse_from([
            "j",
            "--id",
            "a",
            "--exec-file",
            exe.to_str().unwrap(),
            "--uid",
            "4294967295",
            "--gid",
            "1",
        ])
        .unwrap()
        .check();
        assert_eq!(
            owner.unwrap_err(),
            ConfigError::BadOwner {
                which: "uid",
                value: u32::MAX
            }
        );
        let spec = args(&[
            "--cgroup",
            "memory.max=64M",
            "--resource-limit",
            "fsize=1024",
        ])
        .unwrap();
        assert_eq!(
            spec.config().cgroups,
            vec![CgroupSetting {
                controller: "memory".into(),
                file: "memory.max".into(),
                value: "64M".into()
            }]
        );
        assert_eq!(
            spec.config().limits,
            vec![Limit::FileSize(1024), Limit::OpenFiles(DEFAULT_NO_FILE)]
        );
    }

    /// Cgroup names and values that would escape their cgroup, or forge more than one line,
    /// are argument errors.
    #[test]
    fn cgroup_escapes_are_refused() {
        for parent in ["a\nb", "/abs", "a/../b", "..", "a//b", "a/", "./a", ""] {
            assert_eq!(
                args(&["--parent-cgroup", parent]).unwrap_err(),
                ConfigError::BadParentCgroup(parent.into()),
                "{parent:?}"
            );
        }
        for setting in ["memory.max=1\n2", "pids.max=10\n"] {
            assert_eq!(
                args(&["--cgroup", setting]).unwrap_err(),
                ConfigError::BadCgroupValue(setting.into()),
                "{setting:?}"
            );
        }
        for setting in ["memory.max\n=1", "memory\n.max=1", "memory./x=1"] {
            assert_eq!(
                args(&["--cgroup", setting]).unwrap_err(),
                ConfigError::BadCgroup(setting.into()),
                "{setting:?}"
            );
        }
    }
}
