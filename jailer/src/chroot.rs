//! The jail's file system: the root directory with a copy of the VMM, entered through a private
//! mount namespace and `pivot_root`, then the device nodes the VMM needs.
//!
//! The directories on the host are made and filled through descriptors opened without
//! following symbolic links (see [`crate::nofollow`]): a link at the chroot base, at
//! `<base>/<exec name>`, or anywhere above them is refused, never followed.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{lchown, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{fstat, makedev, mkdirat, mknod, Mode, SFlag};
use nix::unistd::{chroot, fchdir, fchown, fchownat, pivot_root, Gid, Uid};

use crate::error::{at, resolving, JailError};
use crate::exec_file::ExecFile;
use crate::nofollow;

/// A character device the VMM opens: path in the jail, major, minor.
const DEVICES: &[(&str, u64, u64)] = &[
    // KVM itself.
    ("/dev/kvm", 10, 232),
    // TAP devices for virtio-net.
    ("/dev/net/tun", 10, 200),
    // Randomness for anything that reads it rather than calling getrandom.
    ("/dev/urandom", 1, 9),
];

/// The jail directory `<base>/<exec name>/<id>` on the host, made by this jailer and held open,
/// with the directory it is in.
#[derive(Debug)]
pub(crate) struct JailDir {
    path: PathBuf,
    /// `<base>/<exec name>`.
    parent: OwnedFd,
    /// `<id>`, the jail directory's name in `parent`.
    name: PathBuf,
    dir: OwnedFd,
}

impl JailDir {
    /// Removes the jail directory and everything in it, found through the directory it was
    /// made in (whatever has become of the path to that since).
    pub fn remove(&self) {
        let path = Path::new("/proc/self/fd")
            .join(self.parent.as_raw_fd().to_string())
            .join(&self.name);
        let _ = fs::remove_dir_all(path);
    }
}

fn dir_mode() -> Mode {
    Mode::from_bits_truncate(0o755)
}

/// Makes the jail directory `jail_dir`, `<base>/<exec name>/<id>`, which must not exist yet (so
/// no two jailers share one); the base and `<exec name>` are made if missing.
pub(crate) fn create_jail_dir(jail_dir: &Path, id: &str) -> Result<JailDir, JailError> {
    let exec_dir = jail_dir.parent().unwrap_or(Path::new("/"));
    let base = exec_dir.parent().unwrap_or(Path::new("/"));
    let exec_name = exec_dir
        .file_name()
        .map(Path::new)
        .unwrap_or(Path::new("."));
    let step = "create the chroot base";
    let base_fd = nofollow::create_dirs(base, dir_mode()).map_err(resolving(step, exec_dir))?;
    let parent = nofollow::create_dir_in(base_fd.as_fd(), exec_name, dir_mode(), exec_dir)
        .map_err(resolving(step, exec_dir))?;
    let name = PathBuf::from(id);
    mkdirat(parent.as_fd(), &name, dir_mode()).map_err(|e| match e {
        Errno::EEXIST => JailError::Refused {
            step: "create the jail",
            reason: format!(
                "{}: a jail with id {id} exists (remove it first)",
                jail_dir.display(),
            ),
        },
        _ => at("create the jail", jail_dir)(e),
    })?;
    let dir = nofollow::open_dir_in(parent.as_fd(), &name, jail_dir)
        .map_err(resolving("create the jail", jail_dir))?;
    Ok(JailDir {
        path: jail_dir.to_path_buf(),
        parent,
        name,
        dir,
    })
}

/// Fills the jail: `root` with `/run` and a copy of the VMM, made while `root` is still
/// root's, and only then handed to the VMM's user (so it can make its API socket there): a
/// process of that user can plant no link for root to follow. Returns `root`, held open.
pub(crate) fn populate(
    jail: &JailDir,
    exec: &ExecFile,
    exec_name: &str,
    uid: u32,
    gid: u32,
) -> Result<OwnedFd, JailError> {
    let root_path = jail.path.join("root");
    let run_path = root_path.join("run");
    let step = "create a jail directory";
    mkdirat(jail.dir.as_fd(), "root", dir_mode()).map_err(at(step, &root_path))?;
    let root = nofollow::open_dir_in(jail.dir.as_fd(), Path::new("root"), &root_path)
        .map_err(resolving(step, &root_path))?;
    mkdirat(root.as_fd(), "run", dir_mode()).map_err(at(step, &run_path))?;
    // A copy, not a link: the jail must not share an inode with a binary outside it. It is
    // read from the file that was checked, not from its path again.
    let exec_path = root_path.join(exec_name);
    let copy = || -> std::io::Result<()> {
        let mut from = exec.file();
        from.seek(SeekFrom::Start(0))?;
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut to = File::from(openat(
            root.as_fd(),
            exec_name,
            flags,
            Mode::from_bits_truncate(0o755),
        )?);
        // Its blocks allocated at once: ext4 then writes the 3 MB copy ~0.3 ms (a fifth) faster
        // than with delayed allocation, block by block. Only a hint, so a file system without
        // fallocate is no error (nor is a full one: the copy reports that).
        let size = from.metadata()?.len();
        let hinted = i64::try_from(size).is_ok_and(|len| {
            nix::fcntl::fallocate(&to, nix::fcntl::FallocateFlags::empty(), 0, len).is_ok()
        });
        let copied = std::io::copy(&mut from, &mut to)?;
        // The program shrank meanwhile: no zeros past what was copied.
        if hinted && copied < size {
            to.set_len(copied)?;
        }
        Ok(())
    };
    copy().map_err(at("copy the VMM into the jail", &exec_path))?;
    let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    fchownat(root.as_fd(), "run", uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(at("chown", &run_path))?;
    fchown(root.as_fd(), uid, gid).map_err(at("chown", &root_path))?;
    Ok(root)
}

/// Opens the directory at `path` through no link, and checks it is `made` (the same inode).
fn reopen(path: &Path, made: &OwnedFd) -> Result<OwnedFd, JailError> {
    let step = "enter the jail";
    let fd = nofollow::open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
        .map_err(resolving(step, path))?;
    let id = |fd: &OwnedFd| fstat(fd).map(|st| (st.st_dev, st.st_ino));
    if id(&fd).map_err(at(step, path))? != id(made).map_err(at(step, path))? {
        return Err(JailError::Refused {
            step,
            reason: format!("{}: was replaced while the jail was made", path.display()),
        });
    }
    Ok(fd)
}

/// Enters the jail: a private mount namespace in which the root is bind-mounted onto itself,
/// becomes `/` through `pivot_root`, and the old root is detached and removed.
///
/// `root` is the jail root as made. Mounts take paths in this (new) namespace, so the path is
/// opened again here, through no link, checked to lead to that same directory, and mounted
/// through that descriptor; after the bind mount it is opened once more, to reach the mount.
pub(crate) fn enter(root_path: &Path, root: &OwnedFd) -> Result<(), JailError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(at("unshare the mount namespace", root_path))?;
    // Nothing mounted from now on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(at("make mounts private", Path::new("/")))?;
    // pivot_root needs the new root to be a mount point.
    let here = reopen(root_path, root)?;
    let here_path = Path::new("/proc/self/fd").join(here.as_raw_fd().to_string());
    mount(
        Some(&here_path),
        &here_path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(at("bind-mount the jail", root_path))?;
    drop(here);
    let mounted = reopen(root_path, root)?;
    fchdir(&mounted).map_err(at("chdir", root_path))?;
    drop(mounted);
    let old_root = Path::new("old_root");
    fs::create_dir(old_root).map_err(at(
        "make the old-root mount point",
        &root_path.join("old_root"),
    ))?;
    pivot_root(".", old_root).map_err(at("pivot_root", root_path))?;
    nix::unistd::chdir("/").map_err(at("chdir", Path::new("/")))?;
    umount2("/old_root", MntFlags::MNT_DETACH)
        .map_err(at("detach the old root", Path::new("/old_root")))?;
    fs::remove_dir("/old_root").map_err(at(
        "remove the old-root mount point",
        Path::new("/old_root"),
    ))?;
    chroot(".").map_err(at("chroot", root_path))?;
    Ok(())
}

/// Makes the device nodes in the jail, owned by the VMM's user and group, read-write for the
/// user only (Firecracker's modes).
pub(crate) fn make_devices(uid: u32, gid: u32) -> Result<(), JailError> {
    for (path, major, minor) in DEVICES {
        let path = Path::new(path);
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(at("create a device directory", dir))?;
        }
        mknod(
            path,
            SFlag::S_IFCHR,
            Mode::S_IRUSR | Mode::S_IWUSR,
            makedev(*major, *minor),
        )
        .map_err(at("mknod", path))?;
        // mknod's mode is cut by the umask; set it exactly.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(at("chmod", path))?;
        lchown(path, Some(uid), Some(gid)).map_err(at("chown", path))?;
    }
    Ok(())
}
