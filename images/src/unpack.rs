//! Applying an OCI image layer (a tar stream, plain, gzip or zstd) onto a root directory.
//!
//! Every path is resolved inside the root as if the root were `/` (`openat2` with
//! `RESOLVE_IN_ROOT`): a symlink an earlier entry or layer left (`/lib -> usr/lib`, or a hostile
//! `/x -> /etc`) is followed within the root, never out of it, and every file is made with the
//! `*at` calls relative to its parent's descriptor, never through a path string. Entry names with
//! a `..` component are refused outright, as are hard links whose target has one.
//!
//! Whiteouts follow the OCI image spec: `.wh.NAME` deletes `NAME` of the lower layers, and
//! `.wh..wh..opq` empties its directory of what the lower layers put there; what this layer itself
//! adds is kept whatever the order of the entries. Ownership and device nodes are applied when
//! running as root; without root, ownership stays the caller's and device nodes are refused.
//! Extended attributes (PAX `SCHILY.xattr.*`) are set after the owner and mode; without root,
//! those only root may set (`security.*`, `trusted.*`) are left out and counted.
//!
//! On an error the root is left part-written: callers unpack into a fresh directory and discard
//! it on failure.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, mknodat, Mode, SFlag};
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use tar::EntryType;

/// The prefix of a whiteout entry's name.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of an opaque-directory whiteout.
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum UnpackError {
    /// cannot open the root {root}: {source}
    Root { root: PathBuf, source: Errno },
    /// cannot read the layer: {0}
    Read(io::Error),
    /// layer entry {path:?}: {what}
    Entry { path: String, what: String },
}

/// What a layer held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    pub whiteouts: u64,
    /// Extended attributes set (PAX `SCHILY.xattr.NAME` records).
    pub xattrs: u64,
    /// Extended attributes left out: those only root may set, when not running as root, and
    /// `trusted.overlay.*`, which would speak to an overlay mount instead of describing a file.
    pub xattrs_dropped: u64,
}

/// The layer's bytes decompressed, by their magic number: gzip, zstd, or a plain tar.
pub fn decompress<'a>(layer: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut layer = BufReader::new(layer);
    let magic = layer.fill_buf()?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(layer))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(layer)?)
    } else {
        Box::new(layer)
    })
}

/// Applies the tar stream `layer` (plain; see [`decompress`]) onto the directory `root`.
pub fn apply_layer(root: &Path, layer: impl Read) -> Result<LayerStats, UnpackError> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_DIRECTORY | OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| UnpackError::Root {
        root: root.to_path_buf(),
        source,
    })?;
    let mut applier = Applier {
        root: root_fd,
        added: HashSet::new(),
        opaque: Vec::new(),
        whiteouts: Vec::new(),
        as_root: Uid::effective().is_root(),
        stats: LayerStats::default(),
    };
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let fail = |what: String| UnpackError::Entry {
            path: raw.clone(),
            what,
        };
        let path = inside_root(Path::new(std::ffi::OsStr::from_bytes(&entry.path_bytes())))
            .map_err(|what| fail(what.into()))?;
        applier.stats.entries += 1;
        applier.entry(&path, &mut entry).map_err(fail)?;
    }
    // Whiteouts remove what the lower layers had, so they run after this layer's own entries
    // (the spec does not order them within a layer).
    applier.apply_whiteouts()?;
    Ok(applier.stats)
}

/// `path` as components relative to the root: leading `/` and `.` dropped, `..` refused.
fn inside_root(path: &Path) -> Result<PathBuf, &'static str> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("a `..` component would leave the root"),
            Component::Prefix(_) => return Err("not a Unix path"),
        }
    }
    Ok(clean)
}

struct Applier {
    root: OwnedFd,
    /// Paths this layer added: whiteouts and opaque directories leave them.
    added: HashSet<PathBuf>,
    /// Directories whose lower-layer contents go (`.wh..wh..opq`).
    opaque: Vec<PathBuf>,
    /// Paths of the lower layers to delete (`.wh.NAME`).
    whiteouts: Vec<PathBuf>,
    as_root: bool,
    stats: LayerStats,
}

impl Applier {
    fn entry<R: Read>(&mut self, path: &Path, entry: &mut tar::Entry<R>) -> Result<(), String> {
        let Some(name) = path.file_name().map(|n| n.to_os_string()) else {
            // The root itself (`./`): only its mode could change; left as it is.
            return Ok(());
        };
        let parent_path = path.parent().unwrap_or(Path::new(""));
        let name_str = name.to_string_lossy();
        if name_str == OPAQUE_WHITEOUT {
            self.opaque.push(parent_path.to_path_buf());
            self.stats.whiteouts += 1;
            return Ok(());
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err("a whiteout without a name".into());
            }
            self.whiteouts.push(parent_path.join(hidden));
            self.stats.whiteouts += 1;
            return Ok(());
        }
        let xattrs = xattrs_of(entry)?;
        let header = entry.header();
        let kind = header.entry_type();
        let mode = Mode::from_bits_truncate(header.mode().map_err(|e| e.to_string())? & 0o7777);
        // An empty owner field reads as 0, as Go's archive/tar (and so Docker) reads it.
        let owner = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        let parent = self.make_dirs(parent_path)?;
        let name = name.as_os_str();
        match kind {
            EntryType::Directory => {
                match fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st)
                        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
                            == SFlag::S_IFDIR => {}
                    Ok(_) => {
                        remove_all(&parent, name)?;
                        mkdirat(&parent, name, Mode::from_bits_truncate(0o700))
                            .map_err(errno("create the directory"))?;
                    }
                    Err(Errno::ENOENT) => mkdirat(&parent, name, Mode::from_bits_truncate(0o700))
                        .map_err(errno("create the directory"))?,
                    Err(e) => return Err(format!("cannot inspect it: {e}")),
                }
                self.own(&parent, name, owner)?;
                let dir = openat(
                    &parent,
                    name,
                    OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno("open the directory"))?;
                nix::sys::stat::fchmod(&dir, mode).map_err(errno("set the directory's mode"))?;
            }
            EntryType::Regular | EntryType::Continuous => {
                // Whatever is at the name goes first (a symlink is replaced, never written through).
                remove_all(&parent, name)?;
                let fd = openat(
                    &parent,
                    name,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(errno("create the file"))?;
                let mut file = File::from(fd);
                let declared = entry.size();
                let written = io::copy(entry, &mut file)
                    .map_err(|e| format!("cannot write its content: {e}"))?;
                if written != declared {
                    return Err(format!("truncated: {written} of its {declared} bytes"));
                }
                self.stats.bytes += written;
                self.own(&parent, name, owner)?;
                // After the owner: chown clears set-user-ID and set-group-ID.
                nix::sys::stat::fchmod(file.as_fd(), mode).map_err(errno("set the file's mode"))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or("a symlink without a target")?
                    .into_owned();
                remove_all(&parent, name)?;
                // The target is stored as written: every later lookup resolves it inside the root.
                symlinkat(std::ffi::OsStr::from_bytes(&target), &parent, name)
                    .map_err(errno("create the symlink"))?;
                self.own(&parent, name, owner)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or("a hard link without a target")?
                    .into_owned();
                let target = inside_root(Path::new(std::ffi::OsStr::from_bytes(&target)))
                    .map_err(|why| format!("its hard-link target: {why}"))?;
                let (Some(target_name), target_parent) =
                    (target.file_name(), target.parent().unwrap_or(Path::new("")))
                else {
                    return Err("a hard link to the root".into());
                };
                let target_dir = self
                    .open_dir(target_parent)
                    .map_err(|e| format!("its hard-link target: {e}"))?;
                remove_all(&parent, name)?;
                // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
                linkat(&target_dir, target_name, &parent, name, AtFlags::empty())
                    .map_err(errno("create the hard link"))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let sflag = match kind {
                    EntryType::Char => SFlag::S_IFCHR,
                    EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                if sflag != SFlag::S_IFIFO && !self.as_root {
                    return Err("device nodes need root to be made".into());
                }
                let major = header
                    .device_major()
                    .map_err(|e| e.to_string())?
                    .unwrap_or(0);
                let minor = header
                    .device_minor()
                    .map_err(|e| e.to_string())?
                    .unwrap_or(0);
                remove_all(&parent, name)?;
                mknodat(&parent, name, sflag, mode, libc::makedev(major, minor))
                    .map_err(errno("create the node"))?;
                self.own(&parent, name, owner)?;
            }
            // Metadata the tar crate folds into the entries it returns (long names, PAX).
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => {}
            other => return Err(format!("unsupported entry type {other:?}")),
        }
        // Last: chown clears security.capability. A hard link shares its target's inode.
        if kind != EntryType::Link {
            self.set_xattrs(&parent, name, &xattrs)?;
        }
        self.added.insert(path.to_path_buf());
        Ok(())
    }

    /// Sets the entry's extended attributes on what was made at `name` in `parent`.
    fn set_xattrs(
        &mut self,
        parent: &OwnedFd,
        name: &std::ffi::OsStr,
        xattrs: &[(CString, Vec<u8>)],
    ) -> Result<(), String> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let node = openat(
            parent,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno("open it to set its xattrs"))?;
        // The descriptor's magic link names the very inode just made (a symlink included), so
        // nothing can be swapped in between; no *at form of setxattr exists before Linux 6.13.
        let path = CString::new(format!("/proc/self/fd/{}", node.as_raw_fd()))
            .expect("a decimal path has no NUL");
        for (key, value) in xattrs {
            if key.to_bytes().starts_with(b"trusted.overlay.") {
                self.stats.xattrs_dropped += 1;
                continue;
            }
            // SAFETY: `path` and `key` are NUL-terminated and outlive the call; `value` is a
            // live buffer of `value.len()` bytes that setxattr only reads.
            let rc = unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    key.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            if rc == 0 {
                self.stats.xattrs += 1;
                continue;
            }
            match Errno::last() {
                Errno::EPERM | Errno::EACCES | Errno::ENOTSUP if !self.as_root => {
                    self.stats.xattrs_dropped += 1;
                }
                e => return Err(format!("cannot set its xattr {key:?}: {e}")),
            }
        }
        Ok(())
    }

    /// Sets the entry's owner when running as root (without root it stays the caller's).
    fn own(
        &self,
        parent: &OwnedFd,
        name: &std::ffi::OsStr,
        (uid, gid): (u64, u64),
    ) -> Result<(), String> {
        if !self.as_root {
            return Ok(());
        }
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(format!("owner {uid}:{gid} is out of range"));
        };
        fchownat(
            parent,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(errno("set the owner"))
    }

    /// The directory `path` inside the root, symlinks resolved within the root.
    fn open_dir(&self, path: &Path) -> Result<OwnedFd, String> {
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(&self.root, path, how).map_err(|e| format!("cannot open {}: {e}", path.display()))
    }

    /// `path` as a directory inside the root, made (mode 0755) where missing, like `mkdir -p`.
    fn make_dirs(&self, path: &Path) -> Result<OwnedFd, String> {
        if let Ok(dir) = self.open_dir(path) {
            return Ok(dir);
        }
        let mut dir = self.open_dir(Path::new(""))?;
        let mut walked = PathBuf::new();
        for component in path.components() {
            walked.push(component);
            match self.open_dir(&walked) {
                Ok(next) => dir = next,
                Err(_) => {
                    mkdirat(&dir, component.as_os_str(), Mode::from_bits_truncate(0o755))
                        .map_err(|e| format!("cannot create {}: {e}", walked.display()))?;
                    dir = self.open_dir(&walked)?;
                }
            }
        }
        Ok(dir)
    }

    fn apply_whiteouts(&mut self) -> Result<(), UnpackError> {
        let fail = |path: &Path, what: String| UnpackError::Entry {
            path: path.display().to_string(),
            what,
        };
        for dir in std::mem::take(&mut self.opaque) {
            let Ok(fd) = self.open_dir(&dir) else {
                continue;
            };
            for name in list_dir(&fd).map_err(|e| fail(&dir, e))? {
                if !self.added.contains(&dir.join(&name)) {
                    remove_all(&fd, &name).map_err(|e| fail(&dir.join(&name), e))?;
                }
            }
        }
        for path in std::mem::take(&mut self.whiteouts) {
            let (Some(name), parent) = (path.file_name(), path.parent().unwrap_or(Path::new("")))
            else {
                continue;
            };
            if self.added.contains(&path) {
                continue;
            }
            // Nothing to delete when the lower layers never had it (or its directory).
            if let Ok(fd) = self.open_dir(parent) {
                remove_all(&fd, name).map_err(|e| fail(&path, e))?;
            }
        }
        Ok(())
    }
}

/// The entry's extended attributes, from its PAX `SCHILY.xattr.NAME` records (what Docker, Go's
/// archive/tar, GNU tar and libarchive write).
fn xattrs_of<R: Read>(entry: &mut tar::Entry<R>) -> Result<Vec<(CString, Vec<u8>)>, String> {
    let Some(extensions) = entry
        .pax_extensions()
        .map_err(|e| format!("cannot read its PAX header: {e}"))?
    else {
        return Ok(Vec::new());
    };
    let mut xattrs = Vec::new();
    for extension in extensions {
        let extension = extension.map_err(|e| format!("cannot read its PAX header: {e}"))?;
        let Some(name) = extension.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        let name =
            CString::new(name).map_err(|_| "an xattr whose name holds a NUL byte".to_string())?;
        if name.is_empty() {
            return Err("an xattr without a name".into());
        }
        xattrs.push((name, extension.value_bytes().to_vec()));
    }
    Ok(xattrs)
}

fn errno(what: &'static str) -> impl Fn(Errno) -> String {
    move |e| format!("cannot {what}: {e}")
}

/// Removes `name` from `parent` (a directory recursively, never following a symlink); nothing
/// there is fine.
fn remove_all(parent: &impl AsFd, name: &std::ffi::OsStr) -> Result<(), String> {
    let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(format!("cannot inspect {name:?}: {e}")),
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
        let dir = openat(
            parent,
            name,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open {name:?}: {e}"))?;
        for child in list_dir(&dir)? {
            remove_all(&dir, &child)?;
        }
        unlinkat(parent, name, UnlinkatFlags::RemoveDir)
            .map_err(|e| format!("cannot remove {name:?}: {e}"))
    } else {
        unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| format!("cannot remove {name:?}: {e}"))
    }
}

/// The names in the directory `dir` (not `.` and `..`).
fn list_dir(dir: &impl AsFd) -> Result<Vec<std::ffi::OsString>, String> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot list a directory: {e}"))?;
    let mut listing =
        nix::dir::Dir::from_fd(fd).map_err(|e| format!("cannot list a directory: {e}"))?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry.map_err(|e| format!("cannot list a directory: {e}"))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(std::ffi::OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests;
