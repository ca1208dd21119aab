//! What a jail is asked for ([`JailConfig`]), its parts, and why a request is refused.
//!
//! The messages name the `tessera-jailer` flag each field comes from, so the binary prints them
//! as they are; an in-process caller reads the flag as the field's name.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;

/// Longest jail id (Firecracker's limit).
pub const MAX_ID_LEN: usize = 64;
/// Open files allowed to the VMM unless a [`Limit::OpenFiles`] says otherwise (Firecracker's
/// default).
pub const DEFAULT_NO_FILE: u64 = 2048;
/// Where jails are made unless told otherwise (Firecracker's default).
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";

/// A request refused before anything is made.
#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum ConfigError {
    /// --id {0:?}: use 1 to 64 characters of ASCII letters, digits and '-'
    BadId(String),
    /// --exec-file {0}: not a regular file
    ExecNotAFile(String),
    /// --exec-file {path}: {link} is a symbolic link (refused: name the program itself)
    ExecSymlink { path: String, link: String },
    /// --exec-file {0}: has no file name
    ExecNoName(String),
    /// --exec-file {path}: {why}
    ExecUnusable { path: String, why: &'static str },
    /// --cgroup {0:?}: expected FILE=VALUE with FILE like memory.max (controller.setting)
    BadCgroup(String),
    /// --cgroup {0:?}: the value must be one line, without control characters
    BadCgroupValue(String),
    /// --cgroup-version {0}: use 1 or 2
    BadCgroupVersion(u8),
    /// --parent-cgroup {0:?}: use a relative path without '..' (nor '.', empty parts or control characters)
    BadParentCgroup(String),
    /// --resource-limit {0:?}: expected fsize=N or no-file=N
    BadResourceLimit(String),
    /// --chroot-base-dir {0}: must be an absolute path
    RelativeBase(String),
    /// --{which} {value}: not a usable id (4294967295 means "unchanged" to the kernel)
    BadOwner { which: &'static str, value: u32 },
    /// --exec-file {0}: the name collides with the jail's own entries (dev, run, old_root)
    ReservedName(String),
}

/// A jail for a VMM, as Firecracker's jailer makes it: `<chroot_base_dir>/<exec file
/// name>/<id>/root` holding a copy of `exec_file`, the cgroup `<parent_cgroup>/<id>`, and the
/// VMM run there as `uid:gid`. Checked whole by [`crate::Jail::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// 1 to 64 ASCII letters, digits and '-'; names the jail directory and cgroup, and is passed
    /// to the VMM as `--id`.
    pub id: String,
    /// The VMM: a static x86_64 ELF program, named by its own path (no symbolic links).
    pub exec_file: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Absolute, and reached through no symbolic link.
    pub chroot_base_dir: PathBuf,
    /// 2 (unified hierarchy) or 1 (a hierarchy per controller).
    pub cgroup_version: u8,
    pub cgroups: Vec<CgroupSetting>,
    /// The cgroup under which `<id>`'s is made: a relative path of plain names; `None` for the
    /// exec file's name.
    pub parent_cgroup: Option<String>,
    /// A network namespace file to join (e.g. /var/run/netns/NAME).
    pub netns: Option<PathBuf>,
    /// Resource limits; open files default to [`DEFAULT_NO_FILE`].
    pub limits: Vec<Limit>,
    /// Detach: return once the VMM is started, in its own session with stdio on /dev/null.
    pub daemonize: bool,
    /// Run the VMM as PID 1 of a new PID namespace.
    pub new_pid_ns: bool,
    /// Arguments for the VMM after `--id <id>`.
    pub vmm_args: Vec<OsString>,
}

impl JailConfig {
    /// A jail `id` for `exec_file` run as `uid:gid`, everything else Firecracker's defaults.
    pub fn new(id: impl Into<String>, exec_file: impl Into<PathBuf>, uid: u32, gid: u32) -> Self {
        JailConfig {
            id: id.into(),
            exec_file: exec_file.into(),
            uid,
            gid,
            chroot_base_dir: PathBuf::from(DEFAULT_CHROOT_BASE),
            cgroup_version: 2,
            cgroups: Vec::new(),
            parent_cgroup: None,
            netns: None,
            limits: Vec::new(),
            daemonize: false,
            new_pid_ns: false,
            vmm_args: Vec::new(),
        }
    }
}

/// One cgroup setting, `FILE=VALUE` (`memory.max=256M`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// `memory` for `memory.max`.
    pub controller: String,
    pub file: String,
    pub value: String,
}

impl CgroupSetting {
    /// Refuses a file that is not `controller.setting` in plain names, or a value that is not
    /// one line (a newline would let one setting write several).
    pub fn check(&self) -> Result<(), ConfigError> {
        let text = || format!("{}={}", self.file, self.value);
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        };
        let shape_ok = self
            .file
            .split_once('.')
            .is_some_and(|(controller, setting)| {
                controller == self.controller
                    && name_ok(controller)
                    && name_ok(setting)
                    && !controller.contains('.')
            });
        if !shape_ok {
            return Err(ConfigError::BadCgroup(text()));
        }
        if self.value.chars().any(char::is_control) {
            return Err(ConfigError::BadCgroupValue(text()));
        }
        Ok(())
    }
}

impl FromStr for CgroupSetting {
    type Err = ConfigError;

    /// `FILE=VALUE`, checked.
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadCgroup(text.to_string());
        let (file, value) = text.split_once('=').ok_or_else(bad)?;
        let (controller, _) = file.split_once('.').ok_or_else(bad)?;
        let setting = CgroupSetting {
            controller: controller.to_string(),
            file: file.to_string(),
            value: value.to_string(),
        };
        setting.check()?;
        Ok(setting)
    }
}

/// A resource the VMM is limited in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `fsize=BYTES`
    FileSize(u64),
    /// `no-file=N`
    OpenFiles(u64),
}

impl FromStr for Limit {
    type Err = ConfigError;

    /// `fsize=N` or `no-file=N`.
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadResourceLimit(text.to_string());
        let (name, value) = text.split_once('=').ok_or_else(bad)?;
        let value: u64 = value.parse().map_err(|_| bad())?;
        match name {
            "fsize" => Ok(Limit::FileSize(value)),
            "no-file" => Ok(Limit::OpenFiles(value)),
            _ => Err(bad()),
        }
    }
}

/// Whether `id` is a usable jail id: 1 to [`MAX_ID_LEN`] ASCII letters, digits and '-'.
pub fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A cgroup path that stays below the cgroup it is joined to and names it one way: plain
/// names between single slashes (no leading or trailing one), none of them `.` or `..`, and
/// no control characters (a newline would forge lines of `/proc/<pid>/cgroup`).
pub(crate) fn valid_cgroup_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|part| {
            !part.is_empty() && part != "." && part != ".." && !part.chars().any(char::is_control)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_are_plain_relative_names() {
        for good in ["tessera", "a/b", "a-b_c.d", "x/y/z"] {
            assert!(valid_cgroup_path(good), "{good:?}");
        }
        for bad in [
            "", "/", "/abs", "a/", "a//b", ".", "..", "../up", "a/../b", "a/./b", "./a", "a\nb",
            "a\n", "\n", "a\rb", "a\tb",
        ] {
            assert!(!valid_cgroup_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn cgroup_settings_are_one_line_in_their_own_controller() {
        let setting: CgroupSetting = "cpu.max=50000 100000".parse().unwrap();
        assert_eq!(setting.controller, "cpu");
        assert_eq!(setting.value, "50000 100000");
        for bad in [
            "memory",
            "=1",
            "../x=1",
            "memory./x=1",
            "memory.max/../x=1",
            ".max=1",
        ] {
            assert_eq!(
                bad.parse::<CgroupSetting>(),
                Err(ConfigError::BadCgroup(bad.into())),
                "{bad:?}"
            );
        }
        for bad in ["memory.max=1\n2", "memory.max=64M\n", "pids.max=\r1"] {
            assert_eq!(
                bad.parse::<CgroupSetting>(),
                Err(ConfigError::BadCgroupValue(bad.into())),
                "{bad:?}"
            );
        }
        // Built by hand, checked the same.
        let forged = CgroupSetting {
            controller: "memory".into(),
            file: "pids.max".into(),
            value: "1".into(),
        };
        assert!(matches!(forged.check(), Err(ConfigError::BadCgroup(_))));
    }
}
