//! Paths opened without following symbolic links.
//!
//! The jail is built from paths a caller names (the chroot base dir, `<base>/<exec name>`, the
//! exec file). Whoever can write to a directory on one of them could plant a link there and
//! turn root's `mkdir`, copy and `chown` onto a file of their choosing, so a link anywhere in
//! such a path is refused, never followed, and the refusal names it.
//!
//! `openat2(RESOLVE_NO_SYMLINKS)` resolves a whole path that way in one call (Linux 5.6+);
//! where it is missing, and to name the link when it refuses, each component is opened with
//! `O_NOFOLLOW` from the directory opened before it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag, AT_FDCWD};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};

/// Why a path could not be opened.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ResolveError {
    /// {0}: is a symbolic link (refused: the jail is built only through real directories)
    Symlink(String),
    /// {0}
    Io(#[from] io::Error),
}

impl From<Errno> for ResolveError {
    fn from(errno: Errno) -> ResolveError {
        ResolveError::Io(errno.into())
    }
}

/// Flags for a directory passed through on the way to the last component.
const THROUGH: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Opens `path` with `flags`, refusing a symbolic link in any of its components (the last
/// included). Relative paths start at the working directory.
pub fn open(path: &Path, flags: OFlag) -> Result<OwnedFd, ResolveError> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(AT_FDCWD, path, how) {
        Ok(fd) => Ok(fd),
        // No openat2 (ENOSYS; E2BIG or EPERM under some seccomp profiles), or a link to be
        // named (ELOOP; ENOTDIR for a link where a directory was asked for): the component by
        // component walk does the same without it.
        Err(Errno::ENOSYS | Errno::E2BIG | Errno::EPERM | Errno::ELOOP | Errno::ENOTDIR) => {
            walk(AT_FDCWD, path, flags, None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens the directory `path`, making each missing component with `mode` (as
/// `mkdir -p` would), and refusing a symbolic link in any component.
pub fn create_dirs(path: &Path, mode: Mode) -> Result<OwnedFd, ResolveError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
    match open(path, flags) {
        Err(ResolveError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            walk(AT_FDCWD, path, flags, Some(mode))
        }
        other => other,
    }
}

/// Opens the directory `name` (one component) in `dir`, made with `mode` if missing; a link
/// there is refused and named as `shown`.
pub fn create_dir_in(
    dir: BorrowedFd<'_>,
    name: &Path,
    mode: Mode,
    shown: &Path,
) -> Result<OwnedFd, ResolveError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    step(dir, name, flags, Some(mode), shown)
}

/// Opens the directory `name` (one component) in `dir`, which must be one, not a link.
pub fn open_dir_in(
    dir: BorrowedFd<'_>,
    name: &Path,
    shown: &Path,
) -> Result<OwnedFd, ResolveError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    step(dir, name, flags, None, shown)
}

/// Resolves `path` from `start` one component at a time, each opened with `O_NOFOLLOW`: the
/// last with `flags`, those before it as directories. With `create`, missing components are
/// made as directories with that mode.
fn walk(
    start: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
    create: Option<Mode>,
) -> Result<OwnedFd, ResolveError> {
    let mut shown = PathBuf::new();
    let mut dir: Option<OwnedFd> = None;
    let mut components = path.components().peekable();
    if components.peek().is_none() {
        return Err(io::Error::from(io::ErrorKind::NotFound).into());
    }
    while let Some(component) = components.next() {
        let last = components.peek().is_none();
        let name: &Path = match component {
            Component::RootDir => {
                shown.push("/");
                let root = openat(AT_FDCWD, "/", THROUGH, Mode::empty())?;
                if last {
                    return Ok(openat(AT_FDCWD, "/", flags, Mode::empty())?);
                }
                dir = Some(root);
                continue;
            }
            Component::CurDir => Path::new("."),
            Component::ParentDir => Path::new(".."),
            Component::Normal(name) => Path::new(name),
            Component::Prefix(_) => return Err(io::Error::from(io::ErrorKind::InvalidInput).into()),
        };
        shown.push(name);
        let at = dir.as_ref().map_or(start, |d| d.as_fd());
        let next = match last {
            true => step(at, name, flags, create, &shown)?,
            false => step(at, name, THROUGH, create, &shown)?,
        };
        dir = Some(next);
    }
    dir.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound).into())
}

/// Opens the one component `name` in `dir` with `flags` (which hold `O_NOFOLLOW`), making it
/// a directory first with `create`'s mode if it is missing. A link there is named as `shown`.
fn step(
    dir: BorrowedFd<'_>,
    name: &Path,
    flags: OFlag,
    create: Option<Mode>,
    shown: &Path,
) -> Result<OwnedFd, ResolveError> {
    let opened = match (openat(dir, name, flags, Mode::empty()), create) {
        (Err(Errno::ENOENT), Some(mode)) => match mkdirat(dir, name, mode) {
            Ok(()) | Err(Errno::EEXIST) => openat(dir, name, flags, Mode::empty()),
            Err(e) => Err(e),
        },
        (opened, _) => opened,
    };
    match opened {
        Ok(fd) => Ok(fd),
        // A link as the last component gives ELOOP (ENOTDIR with O_PATH | O_DIRECTORY).
        Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
            let link = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|st| {
                SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
            });
            match link {
                true => Err(ResolveError::Symlink(shown.display().to_string())),
                false => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("jailer-nofollow-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::fs::write(dir.join("real/file"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.join("real/file"), dir.join("real/file-link")).unwrap();
        dir
    }

    fn symlink_named(result: Result<OwnedFd, ResolveError>) -> String {
        match result {
            Err(ResolveError::Symlink(path)) => path,
            other => panic!("expected a refused link, got {other:?}"),
        }
    }

    #[test]
    fn links_are_refused_and_named_in_every_component() {
        let dir = scratch("open");
        open(&dir.join("real/file"), OFlag::O_RDONLY).unwrap();
        let link = dir.join("link");
        assert_eq!(
            symlink_named(open(&link.join("file"), OFlag::O_RDONLY)),
            link.display().to_string()
        );
        assert_eq!(
            symlink_named(open(&link, OFlag::O_RDONLY | OFlag::O_DIRECTORY)),
            link.display().to_string()
        );
        let file_link = dir.join("real/file-link");
        assert_eq!(
            symlink_named(open(&file_link, OFlag::O_RDONLY)),
            file_link.display().to_string()
        );
        // The walk alone (the fallback where openat2 is missing) refuses the same.
        let walked = walk(
            AT_FDCWD,
            &link.join("file"),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW,
            None,
        );
        assert_eq!(symlink_named(walked), link.display().to_string());
        let walked = walk(
            AT_FDCWD,
            &file_link,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW,
            None,
        );
        assert_eq!(symlink_named(walked), file_link.display().to_string());
        assert!(matches!(
            open(&dir.join("missing"), OFlag::O_RDONLY),
            Err(ResolveError::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directories_are_made_but_never_through_a_link() {
        let dir = scratch("create");
        let mode = Mode::from_bits_truncate(0o755);
        create_dirs(&dir.join("a/b/c"), mode).unwrap();
        assert!(dir.join("a/b/c").is_dir());
        create_dirs(&dir.join("a/b/c"), mode).unwrap();
        let link = dir.join("link");
        assert_eq!(
            symlink_named(create_dirs(&link.join("new/deeper"), mode)),
            link.display().to_string()
        );
        assert!(!dir.join("real/new").exists(), "made through the link");
        assert_eq!(
            symlink_named(create_dirs(&link, mode)),
            link.display().to_string()
        );
        let base = create_dirs(&dir, mode).unwrap();
        let shown = dir.join("link");
        assert_eq!(
            symlink_named(create_dir_in(base.as_fd(), Path::new("link"), mode, &shown)),
            shown.display().to_string()
        );
        create_dir_in(base.as_fd(), Path::new("fresh"), mode, &dir.join("fresh")).unwrap();
        assert!(dir.join("fresh").is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
