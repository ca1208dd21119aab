//! The VMM's cgroup: `<mount>/<parent>/<id>` in the unified hierarchy (v2), or in each
//! controller's hierarchy (v1), with the requested values written before the jailer joins it.
//!
//! Directories the jailer makes are remembered, so a failure before the VMM starts removes them
//! again (after moving the jailer back out of them).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::config::CgroupSetting;
use crate::error::{at, JailError};

/// A mounted hierarchy: its mount point and, for v1, its controllers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    mount: PathBuf,
    controllers: Vec<String>,
}

/// The hierarchies of `version` in a /proc/self/mounts text.
fn hierarchies(mounts: &str, version: u8) -> Vec<Hierarchy> {
    let fs_type = if version == 2 { "cgroup2" } else { "cgroup" };
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, mount, kind, options, ..] if *kind == fs_type => Some(Hierarchy {
                    // Mount points with spaces are octal-escaped; cgroup mounts have none.
                    mount: PathBuf::from(mount),
                    controllers: options.split(',').map(str::to_string).collect(),
                }),
                _ => None,
            }
        })
        .collect()
}

/// The cgroup directories made for the VMM, and the ones to undo on failure.
#[derive(Debug, Default)]
pub(crate) struct Cgroups {
    /// Where each setting was written and the jailer joins: one per hierarchy.
    dirs: Vec<(PathBuf, PathBuf)>,
    /// Made by the jailer, parents first.
    created: Vec<PathBuf>,
    /// Whether they are v1 cgroups (joined through `tasks`).
    v1: bool,
}

impl Cgroups {
    /// Makes the cgroup `relative` (`<parent>/<id>`) in the hierarchies of `version` that
    /// `settings` need and writes every setting; nothing joins them yet.
    pub fn create(
        version: u8,
        settings: &[CgroupSetting],
        relative: &Path,
    ) -> Result<Cgroups, JailError> {
        let mut cgroups = Cgroups::default();
        if settings.is_empty() {
            return Ok(cgroups);
        }
        let result = cgroups.make(version, settings, relative);
        if let Err(e) = result {
            cgroups.remove();
            return Err(e);
        }
        Ok(cgroups)
    }

    fn make(
        &mut self,
        version: u8,
        settings: &[CgroupSetting],
        relative: &Path,
    ) -> Result<(), JailError> {
        let mounts_path = Path::new("/proc/self/mounts");
        let mounts = fs::read_to_string(mounts_path).map_err(at("read mounts", mounts_path))?;
        let found = hierarchies(&mounts, version);
        self.v1 = version == 1;
        if version == 2 {
            let hierarchy = found.first().ok_or_else(|| JailError::Refused {
                step: "cgroup",
                reason: "no cgroup2 file system is mounted".into(),
            })?;
            let controllers: BTreeSet<&str> =
                settings.iter().map(|c| c.controller.as_str()).collect();
            let dir = hierarchy.mount.join(relative);
            self.make_dirs(&hierarchy.mount, relative, &controllers)?;
            self.write_settings(&dir, settings.iter())?;
            self.dirs.push((hierarchy.mount.clone(), dir));
        } else {
            // Controllers can share a hierarchy (cpu,cpuacct): one cgroup per hierarchy.
            let mut by_hierarchy: Vec<(&Hierarchy, Vec<&CgroupSetting>)> = Vec::new();
            for setting in settings {
                let controller = setting.controller.as_str();
                let hierarchy = found
                    .iter()
                    .find(|h| h.controllers.iter().any(|c| c == controller))
                    .ok_or_else(|| JailError::Refused {
                        step: "cgroup",
                        reason: format!("no cgroup v1 hierarchy has the {controller} controller"),
                    })?;
                match by_hierarchy
                    .iter_mut()
                    .find(|(h, _)| h.mount == hierarchy.mount)
                {
                    Some((_, settings)) => settings.push(setting),
                    None => by_hierarchy.push((hierarchy, vec![setting])),
                }
            }
            for (hierarchy, settings) in by_hierarchy {
                let dir = hierarchy.mount.join(relative);
                self.make_dirs(&hierarchy.mount, relative, &BTreeSet::new())?;
                if hierarchy.controllers.iter().any(|c| c == "cpuset") {
                    inherit_cpuset(&hierarchy.mount, relative)?;
                }
                self.write_settings(&dir, settings.into_iter())?;
                self.dirs.push((hierarchy.mount.clone(), dir));
            }
        }
        Ok(())
    }

    /// Makes `relative` below `mount`; the last part (the jail's own) must be new. In v2, each
    /// level above it hands `controllers` down through `cgroup.subtree_control`.
    fn make_dirs(
        &mut self,
        mount: &Path,
        relative: &Path,
        controllers: &BTreeSet<&str>,
    ) -> Result<(), JailError> {
        let mut dir = mount.to_path_buf();
        let parts: Vec<_> = relative.components().collect();
        for (index, part) in parts.iter().enumerate() {
            for controller in controllers {
                let control = dir.join("cgroup.subtree_control");
                fs::write(&control, format!("+{controller}"))
                    .map_err(at("enable cgroup controller", &control))?;
            }
            dir.push(part);
            let last = index + 1 == parts.len();
            match fs::create_dir(&dir) {
                Ok(()) => self.created.push(dir.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && !last => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(JailError::Refused {
                        step: "create cgroup",
                        reason: format!(
                            "{}: exists (a jail with this id is running?)",
                            dir.display()
                        ),
                    })
                }
                Err(e) => return Err(at("create cgroup", &dir)(e)),
            }
        }
        Ok(())
    }

    fn write_settings<'a>(
        &self,
        dir: &Path,
        settings: impl Iterator<Item = &'a CgroupSetting>,
    ) -> Result<(), JailError> {
        for setting in settings {
            let file = dir.join(&setting.file);
            fs::write(&file, &setting.value).map_err(at("write cgroup setting", &file))?;
        }
        Ok(())
    }

    /// Moves this process into every cgroup made (the VMM inherits them).
    ///
    /// In v1 the jailer's one thread moves itself, by writing 0 to `tasks`: a thread moving
    /// itself skips the kernel's global threadgroup lock that `cgroup.procs` takes, whose write
    /// side waits for an RCU grace period (5 to 13 ms per hierarchy measured; 0.1 ms without).
    /// The jailer has no other thread, and the VMM comes from this one (fork or exec) anyway.
    pub fn join(&self) -> Result<(), JailError> {
        let (file, id) = match self.v1 {
            true => ("tasks", "0".to_string()),
            false => ("cgroup.procs", std::process::id().to_string()),
        };
        for (_, dir) in &self.dirs {
            let procs = dir.join(file);
            fs::write(&procs, &id).map_err(at("join cgroup", &procs))?;
        }
        Ok(())
    }

    /// Moves process `pid` (and its threads) into every cgroup made.
    pub fn join_pid(&self, pid: i32) -> Result<(), JailError> {
        for (_, dir) in &self.dirs {
            let procs = dir.join("cgroup.procs");
            fs::write(&procs, pid.to_string()).map_err(at("join cgroup", &procs))?;
        }
        Ok(())
    }

    /// Removes the directories made, once no process is left in them (after `join_pid`).
    pub fn remove_empty(&mut self) {
        for dir in self.created.drain(..).rev() {
            let _ = fs::remove_dir(dir);
        }
        self.dirs.clear();
    }

    /// Undoes `create` (and `join`): back to each hierarchy's root, directories removed.
    pub fn remove(&mut self) {
        let pid = std::process::id().to_string();
        for (mount, _) in &self.dirs {
            let _ = fs::write(mount.join("cgroup.procs"), &pid);
        }
        for dir in self.created.drain(..).rev() {
            let _ = fs::remove_dir(dir);
        }
        self.dirs.clear();
    }
}

/// The cgroup version whose hierarchies have every one of `controllers`: 2 when the unified
/// hierarchy's root offers them all (a pure v2 host), else 1 (a v1 or hybrid host).
pub fn version_for(controllers: &[&str]) -> u8 {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let v2_has_all = hierarchies(&mounts, 2).first().is_some_and(|h| {
        let offered = fs::read_to_string(h.mount.join("cgroup.controllers")).unwrap_or_default();
        controllers
            .iter()
            .all(|c| offered.split_whitespace().any(|o| o == *c))
    });
    match v2_has_all {
        true => 2,
        false => 1,
    }
}

/// A new v1 cpuset cgroup has no CPUs or memory nodes until given some: copy each new level's
/// from its parent, as the kernel's `cgroup.clone_children` would.
fn inherit_cpuset(mount: &Path, relative: &Path) -> Result<(), JailError> {
    let mut dir = mount.to_path_buf();
    for part in relative.components() {
        let parent = dir.clone();
        dir.push(part);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let current = fs::read_to_string(dir.join(file)).unwrap_or_default();
            if current.trim().is_empty() {
                let from = parent.join(file);
                let value = fs::read_to_string(&from).map_err(at("read cpuset", &from))?;
                let to = dir.join(file);
                fs::write(&to, value.trim()).map_err(at("write cpuset", &to))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/net_cls,net_prio cgroup rw,net_cls,net_prio 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
";

    #[test]
    fn hierarchies_are_found_by_version_and_controller() {
        let v2 = hierarchies(MOUNTS, 2);
        assert_eq!(v2.len(), 1);
        assert_eq!(v2[0].mount, Path::new("/sys/fs/cgroup/unified"));
        let v1 = hierarchies(MOUNTS, 1);
        assert_eq!(v1.len(), 3);
        let memory = v1
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == "memory"))
            .unwrap();
        assert_eq!(memory.mount, Path::new("/sys/fs/cgroup/memory"));
        assert!(v1
            .iter()
            .any(|h| h.controllers.iter().any(|c| c == "net_prio")));
    }
}
