//! Who the sandbox's users are on the host. As root: a range of 65536 ids from root's
//! /etc/subuid and /etc/subgid entries (else 100000, as useradd's defaults), so the
//! workload's root is never the host's root. Rootless: the caller's own uid and gid as the
//! workload's root, and the caller's subordinate ranges for the rest when newuidmap and
//! newgidmap (Debian's uidmap) are installed and /etc/subuid grants some.

use std::path::Path;
use std::process::Command;

use super::SandboxError;

/// The range a root caller maps when /etc/subuid names none for root.
pub const DEFAULT_RANGE: (u32, u32) = (100_000, 65_536);

/// A user namespace's id maps: (inside, outside, count) lines, uids and gids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    pub uids: Vec<(u32, u32, u32)>,
    pub gids: Vec<(u32, u32, u32)>,
    /// Written through newuidmap/newgidmap (a rootless caller's subordinate ranges).
    helpers: bool,
    /// Made for a root caller (the sandbox's PID 1 is root inside either way).
    rootful: bool,
}

/// The first `NAME:START:COUNT` line of a subuid/subgid file for `name` or `id`.
fn sub_range(file: &Path, name: &str, id: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let (who, start, count) = (fields.next()?, fields.next()?, fields.next()?);
        (who == name || who == id.to_string())
            .then(|| Some((start.parse().ok()?, count.parse().ok()?)))
            .flatten()
    })
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default()
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

impl IdMap {
    /// The map for this caller, as the module's documentation says.
    pub fn for_caller() -> IdMap {
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let name = user_name(uid);
        let subuid = sub_range(Path::new("/etc/subuid"), &name, uid);
        let subgid = sub_range(Path::new("/etc/subgid"), &name, uid);
        if uid == 0 {
            let (ustart, ucount) = subuid.unwrap_or(DEFAULT_RANGE);
            let (gstart, gcount) = subgid.unwrap_or(DEFAULT_RANGE);
            return IdMap {
                uids: vec![(0, ustart, ucount.min(65_536))],
                gids: vec![(0, gstart, gcount.min(65_536))],
                helpers: false,
                rootful: true,
            };
        }
        match (subuid, subgid, have("newuidmap") && have("newgidmap")) {
            (Some((ustart, ucount)), Some((gstart, gcount)), true) => IdMap {
                uids: vec![(0, uid, 1), (1, ustart, ucount.min(65_535))],
                gids: vec![(0, gid, 1), (1, gstart, gcount.min(65_535))],
                helpers: true,
                rootful: false,
            },
            _ => IdMap {
                uids: vec![(0, uid, 1)],
                gids: vec![(0, gid, 1)],
                helpers: false,
                rootful: false,
            },
        }
    }

    /// The host uid and gid that own the image's files for uid/gid 0 inside, when the caller
    /// is root (the lower layer's files are shifted by these); None for a rootless caller,
    /// whose files are its own.
    pub fn root_owner(&self) -> Option<(u32, u32)> {
        self.rootful.then(|| (self.uids[0].1, self.gids[0].1))
    }

    /// Whether the map is a root caller's.
    pub fn rootful(&self) -> bool {
        self.rootful
    }

    /// How many ids inside the namespace are mapped (ids past it read as nobody).
    pub fn size(&self) -> u32 {
        self.uids
            .iter()
            .map(|(inside, _, n)| inside + n)
            .max()
            .unwrap_or(1)
    }

    /// Writes the maps of process `pid`'s new user namespace.
    pub fn write(&self, pid: i32) -> Result<(), SandboxError> {
        let lines = |map: &[(u32, u32, u32)]| {
            map.iter()
                .map(|(i, o, n)| format!("{i} {o} {n}\n"))
                .collect::<String>()
        };
        let fail = |what: &str, e: String| {
            SandboxError::Setup(format!("cannot map the sandbox's {what}: {e}"))
        };
        if self.helpers {
            for (helper, map, what) in [
                ("newuidmap", &self.uids, "users"),
                ("newgidmap", &self.gids, "groups"),
            ] {
                let mut command = Command::new(helper);
                command.arg(pid.to_string());
                for (i, o, n) in map {
                    command.args([i.to_string(), o.to_string(), n.to_string()]);
                }
                let output = command.output().map_err(|e| fail(what, e.to_string()))?;
                if !output.status.success() {
                    let said = String::from_utf8_lossy(&output.stderr).trim().to_string();
                    return Err(fail(what, format!("{helper}: {said}")));
                }
            }
            return Ok(());
        }
        let proc = Path::new("/proc").join(pid.to_string());
        if !nix::unistd::getuid().is_root() {
            // An unprivileged map may not keep setgroups(2).
            std::fs::write(proc.join("setgroups"), "deny")
                .map_err(|e| fail("groups", e.to_string()))?;
        }
        std::fs::write(proc.join("uid_map"), lines(&self.uids))
            .map_err(|e| fail("users", e.to_string()))?;
        std::fs::write(proc.join("gid_map"), lines(&self.gids))
            .map_err(|e| fail("groups", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_found_by_name_or_id() {
        let dir = std::env::temp_dir().join(format!("tessera-subuid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("subuid");
        std::fs::write(&file, "alice:100000:65536\n1001:200000:1000\nbad line\n").unwrap();
        assert_eq!(sub_range(&file, "alice", 1000), Some((100000, 65536)));
        assert_eq!(sub_range(&file, "bob", 1001), Some((200000, 1000)));
        assert_eq!(sub_range(&file, "carol", 1002), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
