//! `USER[:GROUP]` (names or numbers) resolved in the command's root, as Docker resolves a
//! container's `--user`: the user's uid and primary gid from /etc/passwd (a number need not be
//! there), a group from /etc/group, and the supplementary groups that list the user by name.

use std::path::Path;

use super::RunError;

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary one among them).
    pub groups: Vec<u32>,
    /// From /etc/passwd: $HOME for the command (None for a bare number not listed there).
    pub home: Option<String>,
}

/// (name, id, primary gid, home) of each /etc/passwd line; (name, id, members) of /etc/group.
fn passwd(text: &str) -> impl Iterator<Item = (&str, u32, u32, &str)> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, uid, gid, _, home, ..] => {
                Some((*name, uid.parse().ok()?, gid.parse().ok()?, *home))
            }
            _ => None,
        }
    })
}

fn group(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, gid, members, ..] => Some((
                *name,
                gid.parse().ok()?,
                members.split(',').filter(|m| !m.is_empty()).collect(),
            )),
            [name, _, gid] => Some((*name, gid.parse().ok()?, Vec::new())),
            _ => None,
        }
    })
}

/// Resolves `spec` (`USER`, `USER:GROUP`, numbers or names) against `etc`'s passwd and group.
pub fn resolve(spec: &str, etc: &Path) -> Result<Identity, RunError> {
    let read = |name: &str| std::fs::read_to_string(etc.join(name)).unwrap_or_default();
    let (passwd_text, group_text) = (read("passwd"), read("group"));
    let (user, group_spec) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    if user.is_empty() || group_spec.is_some_and(str::is_empty) {
        return Err(RunError::Setup(format!(
            "user {spec:?}: expected USER[:GROUP]"
        )));
    }
    let entry =
        passwd(&passwd_text).find(|(name, uid, _, _)| *name == user || user.parse() == Ok(*uid));
    let (name, uid, primary, home) = match (entry, user.parse::<u32>()) {
        (Some((name, uid, gid, home)), _) => (Some(name), uid, gid, Some(home.to_string())),
        // A number not in /etc/passwd: that uid with gid 0, as Docker does.
        (None, Ok(uid)) => (None, uid, 0, None),
        (None, Err(_)) => {
            return Err(RunError::Setup(format!(
                "user {user:?} is not in the image's /etc/passwd"
            )))
        }
    };
    let gid = match group_spec {
        None => primary,
        Some(g) => match (
            group(&group_text).find(|(name, gid, _)| *name == g || g.parse() == Ok(*gid)),
            g.parse::<u32>(),
        ) {
            (Some((_, gid, _)), _) => gid,
            (None, Ok(gid)) => gid,
            (None, Err(_)) => {
                return Err(RunError::Setup(format!(
                    "group {g:?} is not in the image's /etc/group"
                )))
            }
        },
    };
    let mut groups = vec![gid];
    if let Some(name) = name {
        for (_, id, members) in group(&group_text) {
            if members.contains(&name) && !groups.contains(&id) {
                groups.push(id);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etc() -> tempfile_dir::Dir {
        tempfile_dir::Dir::new(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n",
            "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nwheel:x:10:app,root\naudio:x:29:app\n",
        )
    }

    /// A directory with passwd and group files, removed when dropped.
    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new(passwd: &str, group: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let dir = std::env::temp_dir().join(format!(
                    "tessera-user-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("passwd"), passwd).unwrap();
                std::fs::write(dir.join("group"), group).unwrap();
                Dir(dir)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn names_numbers_groups_and_supplementary_groups() {
        let etc = etc();
        let app = resolve("app", &etc.0).unwrap();
        assert_eq!(
            (app.uid, app.gid, app.groups.clone()),
            (1000, 1000, vec![1000, 10, 29])
        );
        assert_eq!(app.home.as_deref(), Some("/home/app"));
        let nobody = resolve("nobody:wheel", &etc.0).unwrap();
        assert_eq!(
            (nobody.uid, nobody.gid, nobody.groups),
            (65534, 10, vec![10])
        );
        assert_eq!(resolve("1000:29", &etc.0).unwrap().gid, 29);
        // A number not listed: that uid, gid 0, no home.
        let bare = resolve("4242", &etc.0).unwrap();
        assert_eq!((bare.uid, bare.gid, bare.home), (4242, 0, None));
    }

    #[test]
    fn unknown_users_and_groups_are_one_line_errors() {
        let etc = etc();
        let err = resolve("ghost", &etc.0).unwrap_err().to_string();
        assert_eq!(err, "user \"ghost\" is not in the image's /etc/passwd");
        let err = resolve("app:ghosts", &etc.0).unwrap_err().to_string();
        assert_eq!(err, "group \"ghosts\" is not in the image's /etc/group");
        assert!(resolve(":x", &etc.0).is_err());
        assert!(resolve("app:", &etc.0).is_err());
    }
}
