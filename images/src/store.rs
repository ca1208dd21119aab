//! The image store: one directory per image, named by its digest, holding the image config and
//! a read-only ext4 filesystem of its root (built without root: `mkfs.ext4 -d`), and `refs.json`
//! mapping names (`busybox:latest`) to digests.
//!
//! Imports build in a temporary directory and move it into place with one `rename`; the store's
//! lock file (`flock`) is held only for that step and for changes to `refs.json`, so two tessera
//! processes importing at once both succeed and a failed import leaves the store as it was.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use oci_spec::image::ImageConfiguration;

use crate::import::{self, ImportError, Step};

const REFS: &str = "refs.json";
const LOCK: &str = ".lock";
const CONFIG: &str = "config.json";
pub const ROOTFS: &str = "rootfs.ext4";
/// The image's root as a directory, for the host sandbox's overlay (its lower layer).
pub const TREE: &str = "tree";
/// Who owns the tree's root-owned files on the host, `UID:GID` (the sandbox's id range).
const TREE_OWNER: &str = "tree.owner";
/// Ids inside an image that a shift moves (a user namespace maps at most this many).
const SHIFTED_IDS: u32 = 65_536;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum StoreError {
    /// image store {path}: {source}
    Io { path: PathBuf, source: io::Error },
    /// {0}
    Import(#[from] ImportError),
    /// no image {0:?} in the store (`tessera image ls` lists them)
    NotFound(String),
    /// {reference:?} matches more than one image: {matches}
    Ambiguous { reference: String, matches: String },
    /// cannot build the image's filesystem with mkfs.ext4: {0}
    Mkfs(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An image in the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// `sha256:HEX`.
    pub digest: String,
    pub names: Vec<String>,
    pub config: ImageConfiguration,
    /// The read-only root filesystem.
    pub rootfs: PathBuf,
    /// Bytes on disk (the filesystem image).
    pub size: u64,
}

pub struct Store {
    dir: PathBuf,
}

/// `NAME` without a tag gets `:latest`, as in Docker.
pub fn normalize_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.contains(':') || last.contains('@') {
        true => name.to_string(),
        false => format!("{name}:latest"),
    }
}

impl Store {
    /// The store in `dir`, made if missing.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    fn lock(&self) -> Result<Flock<File>, StoreError> {
        let path = self.dir.join(LOCK);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| StoreError::Io {
            path,
            source: e.into(),
        })
    }

    fn refs(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let path = self.dir.join(REFS);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Io {
                path,
                source: io::Error::other(e),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Written beside and renamed over, so a reader never sees half a file.
    fn write_refs(&self, refs: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let path = self.dir.join(REFS);
        let tmp = self.dir.join(format!(".{REFS}.{}", std::process::id()));
        let json = serde_json::to_vec_pretty(refs).expect("a map of strings serializes");
        fs::write(&tmp, json).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    fn image_dir(&self, digest: &str) -> PathBuf {
        self.dir.join(digest.replace(':', "-"))
    }

    /// Imports the image at `source` (OCI layout directory, OCI archive or `docker save` tar),
    /// naming it `name` (else the names the source gives it).
    pub fn import(&self, source: &Path, name: Option<&str>) -> Result<Image, StoreError> {
        self.import_reporting(source, name, &mut |_| {})
    }

    /// [`Store::import`], telling `report` how far it has got (for a progress bar).
    pub fn import_reporting(
        &self,
        source: &Path,
        name: Option<&str>,
        report: &mut dyn FnMut(Step),
    ) -> Result<Image, StoreError> {
        let work = self.work_dir("import")?;
        self.import_in(source, name, work.path(), report)
    }

    /// A fresh, empty work directory in the store, `.KIND-PID-N` (never listed as an image),
    /// removed with all its contents when the returned guard drops. The guard holds a `flock`
    /// on it; work directories that a killed tessera left (no lock, no such process) are
    /// removed first.
    pub fn work_dir(&self, kind: &str) -> Result<WorkDir, StoreError> {
        self.remove_abandoned_work();
        let path = self
            .dir
            .join(format!(".{kind}-{}-{}", std::process::id(), unique()));
        fs::create_dir(&path).map_err(io_err(&path))?;
        let locked = File::open(&path).map_err(io_err(&path)).and_then(|dir| {
            Flock::lock(dir, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| StoreError::Io {
                path: path.clone(),
                source: e.into(),
            })
        });
        match locked {
            Ok(lock) => Ok(WorkDir { path, _lock: lock }),
            Err(e) => {
                let _ = fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }

    /// Removes `.KIND-PID-N` directories whose process is gone and whose lock nobody holds
    /// (both: a PID may be reused, and another PID namespace may share the store). Best effort.
    fn remove_abandoned_work(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = work_dir_pid(&name.to_string_lossy()) else {
                continue;
            };
            // Signal 0 sends nothing: it only asks whether the process exists.
            let gone = kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH);
            if !gone {
                continue;
            }
            let path = entry.path();
            let Ok(dir) = File::open(&path) else {
                continue;
            };
            if let Ok(_lock) = Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }

    fn import_in(
        &self,
        source: &Path,
        name: Option<&str>,
        work: &Path,
        report: &mut dyn FnMut(Step),
    ) -> Result<Image, StoreError> {
        let (root, scratch, built) = (work.join("root"), work.join("source"), work.join("image"));
        for dir in [&root, &scratch, &built] {
            fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let imported = import::import_reporting(source, &root, &scratch, report)?;
        report(Step::Filesystem);
        fs::write(built.join(CONFIG), &imported.config_json).map_err(io_err(&built))?;
        make_ext4(&root, &built.join(ROOTFS))?;
        // Kept: the host sandbox's overlay needs a directory, and this one has every owner,
        // mode and xattr the layers gave.
        fs::rename(&root, built.join(TREE)).map_err(io_err(&root))?;
        let names: Vec<String> = match name {
            Some(name) => vec![normalize_name(name)],
            None => imported.names.iter().map(|n| normalize_name(n)).collect(),
        };
        let _lock = self.lock()?;
        let dir = self.image_dir(&imported.digest);
        if !dir.exists() {
            fs::rename(&built, &dir).map_err(io_err(&dir))?;
        }
        let mut refs = self.refs()?;
        for name in &names {
            refs.insert(name.clone(), imported.digest.clone());
        }
        self.write_refs(&refs)?;
        self.load(&imported.digest, &refs)
    }

    fn load(&self, digest: &str, refs: &BTreeMap<String, String>) -> Result<Image, StoreError> {
        let dir = self.image_dir(digest);
        let config_path = dir.join(CONFIG);
        let file = File::open(&config_path).map_err(io_err(&config_path))?;
        let config = ImageConfiguration::from_reader(file).map_err(|e| StoreError::Io {
            path: config_path.clone(),
            source: io::Error::other(e),
        })?;
        let rootfs = dir.join(ROOTFS);
        let size = fs::metadata(&rootfs).map_err(io_err(&rootfs))?.len();
        Ok(Image {
            digest: digest.to_string(),
            names: refs
                .iter()
                .filter(|(_, d)| *d == digest)
                .map(|(n, _)| n.clone())
                .collect(),
            config,
            rootfs,
            size,
        })
    }

    /// The image's root as a directory whose files uid/gid 0 owns are owned by `owner` on the
    /// host (and uid N by owner + N), as a user namespace mapping 0 to `owner` needs to see them
    /// as the image says. Images imported before the sandbox level get their tree from their
    /// filesystem (debugfs rdump: set-user-ID bits and xattrs are not kept). Changing owners
    /// shifts the tree in place, under the store's lock.
    /// A rootless caller passes `None`: its files are its own, and stay so.
    pub fn sandbox_tree(
        &self,
        image: &Image,
        owner: Option<(u32, u32)>,
    ) -> Result<PathBuf, StoreError> {
        let dir = self.image_dir(&image.digest);
        let tree = dir.join(TREE);
        if !tree.exists() {
            let work = self.work_dir("tree")?;
            let out = work.path().join(TREE);
            fs::create_dir(&out).map_err(io_err(&out))?;
            let output = Command::new("debugfs")
                .arg("-R")
                .arg(format!("rdump / {}", out.display()))
                .arg(&image.rootfs)
                .output()
                .map_err(|e| {
                    StoreError::Mkfs(format!("cannot run debugfs ({e}); install e2fsprogs"))
                })?;
            if !output.status.success() {
                return Err(StoreError::Mkfs(
                    String::from_utf8_lossy(&output.stderr).trim().to_string(),
                ));
            }
            let _ = fs::remove_dir(out.join("lost+found"));
            let _lock = self.lock()?;
            if !tree.exists() {
                fs::rename(&out, &tree).map_err(io_err(&tree))?;
            }
        }
        let Some(owner) = owner else {
            return Ok(tree);
        };
        let marker = dir.join(TREE_OWNER);
        let read_owner = || -> (u32, u32) {
            let text = fs::read_to_string(&marker).unwrap_or_default();
            let mut parts = text.trim().split(':').map(|p| p.parse().unwrap_or(0));
            (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
        };
        if read_owner() == owner {
            return Ok(tree);
        }
        let _lock = self.lock()?;
        let from = read_owner();
        if from != owner {
            shift_tree(&tree, from, owner, &mut Default::default()).map_err(io_err(&tree))?;
            fs::write(&marker, format!("{}:{}", owner.0, owner.1)).map_err(io_err(&marker))?;
        }
        Ok(tree)
    }

    /// Every image, in name order; image directories that cannot be read are left out (see
    /// [`Store::list_all`]).
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        Ok(self.list_all()?.0)
    }

    /// Every image, in name order, and the errors of image directories that cannot be read
    /// (one broken directory does not hide the others).
    pub fn list_all(&self) -> Result<(Vec<Image>, Vec<StoreError>), StoreError> {
        self.list_in(&self.refs()?)
    }

    fn list_in(
        &self,
        refs: &BTreeMap<String, String>,
    ) -> Result<(Vec<Image>, Vec<StoreError>), StoreError> {
        let (mut images, mut broken) = (Vec::new(), Vec::new());
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(hex) = name.strip_prefix("sha256-") {
                match self.load(&format!("sha256:{hex}"), refs) {
                    Ok(image) => images.push(image),
                    Err(e) => broken.push(e),
                }
            }
        }
        images.sort_by(|a, b| a.names.cmp(&b.names).then(a.digest.cmp(&b.digest)));
        Ok((images, broken))
    }

    /// The image a name, a digest or a digest prefix (at least 4 hex digits) names.
    pub fn find(&self, reference: &str) -> Result<Image, StoreError> {
        let refs = self.refs()?;
        if let Some(digest) = refs.get(&normalize_name(reference)) {
            return self.load(digest, &refs);
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        let matches: Vec<Image> = match hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            true => self
                .list_in(&refs)?
                .0
                .into_iter()
                .filter(|i| i.digest["sha256:".len()..].starts_with(hex))
                .collect(),
            false => Vec::new(),
        };
        match matches.len() {
            0 => Err(StoreError::NotFound(reference.to_string())),
            1 => Ok(matches.into_iter().next().expect("one match")),
            _ => Err(StoreError::Ambiguous {
                reference: reference.to_string(),
                matches: matches
                    .iter()
                    .map(|i| i.digest.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Removes the image `reference` names, with all its names.
    pub fn remove(&self, reference: &str) -> Result<Image, StoreError> {
        let image = self.find(reference)?;
        let _lock = self.lock()?;
        let mut refs = self.refs()?;
        refs.retain(|_, digest| *digest != image.digest);
        self.write_refs(&refs)?;
        let dir = self.image_dir(&image.digest);
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(image)
    }
}

/// A work directory in the store ([`Store::work_dir`]), locked while it lives, removed when
/// dropped.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
    _lock: Flock<File>,
}

impl WorkDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The PID in a work directory's name, `.KIND-PID-N`.
fn work_dir_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix('.')?;
    let mut parts = rest.rsplitn(3, '-');
    let (n, pid, kind) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if kind.is_empty() || !digits(n) || !digits(pid) {
        return None;
    }
    pid.parse().ok().filter(|&pid| pid > 0)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A read-only ext4 filesystem of `root` at `out`, sized to fit (no journal: it is never
/// written).
pub fn make_ext4(root: &Path, out: &Path) -> Result<(), StoreError> {
    let (bytes, inodes) = tree_size(root).map_err(io_err(root))?;
    // Room for metadata: 25% and 16 MiB over the content, in 4 KiB blocks.
    let blocks = (bytes + bytes / 4) / 4096 + 4096;
    let out_str = out.to_string_lossy().into_owned();
    let output = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-O",
            "^has_journal",
            "-L",
            "tessera-image",
        ])
        .args(["-N", &(inodes + inodes / 4 + 64).to_string()])
        .arg("-d")
        .arg(root)
        .arg(&out_str)
        .arg(blocks.to_string())
        .output()
        .map_err(|e| StoreError::Mkfs(format!("cannot run it ({e}); install e2fsprogs")))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(StoreError::Mkfs(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        )),
    }
}

/// Moves the owners of everything under `dir` (itself included) from the range at `from` to
/// the range at `to`; ids outside the range stay. Modes are set again after each chown (it
/// clears set-user-ID and set-group-ID).
fn shift_tree(
    dir: &Path,
    from: (u32, u32),
    to: (u32, u32),
    seen: &mut std::collections::HashSet<(u64, u64)>,
) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shift = |id: u32, from: u32, to: u32| match id.checked_sub(from) {
        Some(offset) if offset < SHIFTED_IDS => to + offset,
        _ => id,
    };
    let meta = fs::symlink_metadata(dir)?;
    if !seen.insert((meta.dev(), meta.ino())) {
        // A hard link to an inode already shifted.
        return Ok(());
    }
    let (uid, gid) = (
        shift(meta.uid(), from.0, to.0),
        shift(meta.gid(), from.1, to.1),
    );
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dir, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(dir)? {
            shift_tree(&entry?.path(), from, to, seen)?;
        }
    }
    Ok(())
}

/// (bytes in 4 KiB blocks, entries) under `dir`, not following symlinks.
pub(crate) fn tree_size(dir: &Path) -> io::Result<(u64, u64)> {
    let (mut bytes, mut entries) = (0u64, 0u64);
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        entries += 1;
        bytes += meta.len().div_ceil(4096) * 4096;
        if meta.is_dir() {
            let (b, e) = tree_size(&entry.path())?;
            bytes += b;
            entries += e;
        }
    }
    Ok((bytes, entries))
}
