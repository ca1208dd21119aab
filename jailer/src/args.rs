//! The jailer's command line, with Firecracker's jailer flags, checked before anything is made.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use clap::Parser;

/// Longest jail id (Firecracker's limit).
pub const MAX_ID_LEN: usize = 64;
/// Open files allowed to the VMM unless `--resource-limit no-file=` says otherwise
/// (Firecracker's default).
pub const DEFAULT_NO_FILE: u64 = 2048;

#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum ArgsError {
    /// --id {0:?}: use 1 to 64 characters of ASCII letters, digits and '-'
    BadId(String),
    /// --exec-file {0}: not a regular file
    ExecNotAFile(String),
    /// --exec-file {0}: has no file name
    ExecNoName(String),
    /// --exec-file {path}: {why}
    ExecUnusable { path: String, why: &'static str },
    /// --cgroup {0:?}: expected FILE=VALUE with FILE like memory.max (controller.setting)
    BadCgroup(String),
    /// --cgroup-version {0}: use 1 or 2
    BadCgroupVersion(u8),
    /// --parent-cgroup {0:?}: use a relative path without '..'
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
    #[arg(long, value_name = "DIR", default_value = "/srv/jailer")]
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

/// One `--cgroup` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupSetting {
    /// `memory` for `memory.max`.
    pub controller: String,
    pub file: String,
    pub value: String,
}

/// A resource the VMM is limited in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    FileSize(u64),
    OpenFiles(u64),
}

/// Everything the jail needs, checked.
#[derive(Debug)]
pub struct JailSpec {
    pub id: String,
    pub exec_file: PathBuf,
    pub exec_name: String,
    pub uid: u32,
    pub gid: u32,
    /// `<base>/<exec name>/<id>`: made by the jailer, refused if it exists.
    pub jail_dir: PathBuf,
    pub cgroup_version: u8,
    pub cgroups: Vec<CgroupSetting>,
    pub parent_cgroup: String,
    pub netns: Option<PathBuf>,
    pub limits: Vec<Limit>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    pub vmm_args: Vec<OsString>,
}

impl JailSpec {
    /// `<jail dir>/root`, the VMM's `/`.
    pub fn root(&self) -> PathBuf {
        self.jail_dir.join("root")
    }
}

impl Args {
    /// Checks every input that can be checked without making anything.
    pub fn check(self) -> Result<JailSpec, ArgsError> {
        if !valid_id(&self.id) {
            return Err(ArgsError::BadId(self.id));
        }
        let shown = self.exec_file.display().to_string();
        if !std::fs::metadata(&self.exec_file).is_ok_and(|m| m.is_file()) {
            return Err(ArgsError::ExecNotAFile(shown));
        }
        for (which, value) in [("uid", self.uid), ("gid", self.gid)] {
            if value == u32::MAX {
                return Err(ArgsError::BadOwner { which, value });
            }
        }
        check_static_executable(&self.exec_file)?;
        let exec_name = self
            .exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or(ArgsError::ExecNoName(shown))?
            .to_string();
        if ["dev", "run", "old_root"].contains(&exec_name.as_str()) || exec_name.ends_with(".pid") {
            return Err(ArgsError::ReservedName(exec_name));
        }
        if !self.chroot_base_dir.is_absolute() {
            return Err(ArgsError::RelativeBase(
                self.chroot_base_dir.display().to_string(),
            ));
        }
        if !matches!(self.cgroup_version, 1 | 2) {
            return Err(ArgsError::BadCgroupVersion(self.cgroup_version));
        }
        let cgroups = self
            .cgroups
            .iter()
            .map(|c| parse_cgroup(c))
            .collect::<Result<_, _>>()?;
        let parent_cgroup = self.parent_cgroup.unwrap_or_else(|| exec_name.clone());
        if !valid_relative(Path::new(&parent_cgroup)) {
            return Err(ArgsError::BadParentCgroup(parent_cgroup));
        }
        let mut limits: Vec<Limit> = self
            .resource_limits
            .iter()
            .map(|l| parse_limit(l))
            .collect::<Result<_, _>>()?;
        if !limits.iter().any(|l| matches!(l, Limit::OpenFiles(_))) {
            limits.push(Limit::OpenFiles(DEFAULT_NO_FILE));
        }
        Ok(JailSpec {
            jail_dir: self.chroot_base_dir.join(&exec_name).join(&self.id),
            id: self.id,
            exec_file: self.exec_file,
            exec_name,
            uid: self.uid,
            gid: self.gid,
            cgroup_version: self.cgroup_version,
            cgroups,
            parent_cgroup,
            netns: self.netns,
            limits,
            daemonize: self.daemonize,
            new_pid_ns: self.new_pid_ns,
            vmm_args: self.vmm_args,
        })
    }
}

/// The VMM must be a statically linked 64-bit ELF program: the jail holds no libraries or
/// dynamic loader, so anything else would fail only at exec, inside the jail.
fn check_static_executable(path: &Path) -> Result<(), ArgsError> {
    let unusable = |why| ArgsError::ExecUnusable {
        path: path.display().to_string(),
        why,
    };
    let mode = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .map_err(|_| unusable("cannot be read"))?;
    if mode & 0o111 == 0 {
        return Err(unusable("is not executable"));
    }
    // Only the ELF header and the program header table are read: reading the whole 3 MB VMM
    // took 4-7 ms here, a third of the jailer's start-up.
    let file = File::open(path).map_err(|_| unusable("cannot be read"))?;
    let size = file
        .metadata()
        .map_err(|_| unusable("cannot be read"))?
        .len();
    let read = |offset: u64, len: u64| {
        read_at_most(&file, size, offset, len).map_err(|_| unusable("cannot be read"))
    };
    // The 64-byte ELF header, or as much of it as the file has.
    let bytes = read(0, 64)?;
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return Err(unusable("is not a 64-bit ELF program"));
    }
    // Little-endian x86_64 (EI_DATA = 1, e_machine = EM_X86_64).
    if bytes.get(5) != Some(&1) || bytes.get(0x12..0x14) != Some(&62u16.to_le_bytes()[..]) {
        return Err(unusable("is not an x86_64 program"));
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    const PT_INTERP: u32 = 3;
    let (Some(phoff), Some(entsize), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err(unusable("has a truncated ELF header"));
    };
    // From the table's start to the end of the last entry's type (4 bytes), or as much of it as
    // the file has: entry `index`'s type is at `index * entsize` in it.
    let table = match u64::from(count).checked_sub(1) {
        Some(last) => read(phoff, last * u64::from(entsize) + 4)?,
        None => Vec::new(),
    };
    for index in 0..usize::from(count) {
        let at = index * usize::from(entsize);
        let at = table
            .get(at..at + 4)
            .ok_or(unusable("has a truncated program header table"))?;
        if u32::from_le_bytes([at[0], at[1], at[2], at[3]]) == PT_INTERP {
            return Err(unusable(
                "is dynamically linked; the jail has no libraries (build it static)",
            ));
        }
    }
    Ok(())
}

/// Up to `len` bytes of `file` (`size` bytes long) from `offset`: fewer where the file ends
/// first, none from past its end.
fn read_at_most(file: &File, size: u64, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let Some(len) = size.checked_sub(offset).map(|left| left.min(len)) else {
        return Ok(Vec::new());
    };
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    file.take(len).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A path that stays below the directory it is joined to.
fn valid_relative(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

fn parse_cgroup(text: &str) -> Result<CgroupSetting, ArgsError> {
    let bad = || ArgsError::BadCgroup(text.to_string());
    let (file, value) = text.split_once('=').ok_or_else(bad)?;
    let (controller, setting) = file.split_once('.').ok_or_else(bad)?;
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    if !name_ok(controller) || !name_ok(setting) || controller.contains('.') {
        return Err(bad());
    }
    Ok(CgroupSetting {
        controller: controller.to_string(),
        file: file.to_string(),
        value: value.to_string(),
    })
}

fn parse_limit(text: &str) -> Result<Limit, ArgsError> {
    let bad = || ArgsError::BadResourceLimit(text.to_string());
    let (name, value) = text.split_once('=').ok_or_else(bad)?;
    let value: u64 = value.parse().map_err(|_| bad())?;
    match name {
        "fsize" => Ok(Limit::FileSize(value)),
        "no-file" => Ok(Limit::OpenFiles(value)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The static test executable itself stands in for the VMM (the workspace builds
    /// static-pie binaries).
    fn args(extra: &[&str]) -> Result<JailSpec, ArgsError> {
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
        assert_eq!(
            spec.jail_dir,
            Path::new("/srv/jailer").join(name).join("vm-1")
        );
        assert_eq!(spec.root(), spec.jail_dir.join("root"));
        assert_eq!(spec.parent_cgroup, name);
        assert_eq!(spec.cgroup_version, 2);
        assert_eq!(spec.limits, vec![Limit::OpenFiles(DEFAULT_NO_FILE)]);
        assert_eq!(spec.vmm_args, vec!["--api-sock", "/api.sock"]);
    }

    #[test]
    fn only_static_elf_programs_can_be_jailed() {
        let dir = std::env::temp_dir();
        let script = dir.join(format!("jailer-args-{}.sh", std::process::id()));
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = check_static_executable(&script).unwrap_err().to_string();
        assert!(err.ends_with("is not a 64-bit ELF program"), "{err}");
        std::fs::remove_file(&script).unwrap();
        // /bin/sh is a dynamically linked program on any distribution this runs on.
        let err = check_static_executable(Path::new("/bin/sh"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        check_static_executable(&std::env::current_exe().unwrap()).unwrap();
    }

    /// Only the headers are read: a file cut short in them, or pointing past its end, is named
    /// as before, and a program whose interpreter entry is all that is left is still refused.
    #[test]
    fn cut_programs_are_named() {
        let path = std::env::temp_dir().join(format!("jailer-args-{}.elf", std::process::id()));
        let check = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            check_static_executable(&path).map_err(|e| e.to_string())
        };
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let phoff = u64::from_le_bytes(exe[0x20..0x28].try_into().unwrap()) as usize;
        let entsize = usize::from(u16::from_le_bytes([exe[0x36], exe[0x37]]));
        let count = usize::from(u16::from_le_bytes([exe[0x38], exe[0x39]]));
        let table_end = phoff + (count - 1) * entsize + 4;
        assert!(check(&exe[..table_end]).is_ok());
        let err = check(&exe[..0x30]).unwrap_err();
        assert!(err.ends_with("has a truncated ELF header"), "{err}");
        let err = check(&exe[..table_end - 1]).unwrap_err();
        assert!(
            err.ends_with("has a truncated program header table"),
            "{err}"
        );
        let mut far = exe[..table_end].to_vec();
        far[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = check(&far).unwrap_err();
        assert!(
            err.ends_with("has a truncated program header table"),
            "{err}"
        );
        // An interpreter entry in front of a cut: refused as dynamic, as the whole file would be.
        let mut dynamic = exe[..phoff + entsize + 4].to_vec();
        dynamic[phoff..phoff + 4].copy_from_slice(&3u32.to_le_bytes());
        let err = check(&dynamic).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        std::fs::remove_file(&path).unwrap();
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
            assert_eq!(bad_id(id), ArgsError::BadId(id.to_string()), "{id:?}");
        }
        assert!(valid_id(&"x".repeat(64)));
        assert!(matches!(
            args(&["--cgroup", "memory"]),
            Err(ArgsError::BadCgroup(_))
        ));
        assert!(matches!(
            args(&["--cgroup", "../x=1"]),
            Err(ArgsError::BadCgroup(_))
        ));
        assert!(matches!(
            args(&["--resource-limit", "bogus=1"]),
            Err(ArgsError::BadResourceLimit(_))
        ));
        assert!(matches!(
            args(&["--parent-cgroup", "../up"]),
            Err(ArgsError::BadParentCgroup(_))
        ));
        assert!(matches!(
            args(&["--cgroup-version", "3"]),
            Err(ArgsError::BadCgroupVersion(3))
        ));
        assert!(matches!(
            args(&["--chroot-base-dir", "rel"]),
            Err(ArgsError::RelativeBase(_))
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
            ArgsError::BadOwner {
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
            spec.cgroups,
            vec![CgroupSetting {
                controller: "memory".into(),
                file: "memory.max".into(),
                value: "64M".into()
            }]
        );
        assert_eq!(
            spec.limits,
            vec![Limit::FileSize(1024), Limit::OpenFiles(DEFAULT_NO_FILE)]
        );
    }
}
