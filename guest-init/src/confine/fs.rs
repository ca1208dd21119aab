//! The filesystem part of a policy as mounts, the same in the host sandbox and in a guest:
//! read-write paths bound onto themselves (so they stay writable under a read-only root), the
//! root made read-only if asked, then the read-only paths. Landlock (in [`super`]) is the
//! second wall where the kernel has it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::spec::Filesystem;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a path with a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Binds `source` onto `target` (recursively), read-only when asked.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    let (from, to) = (c_path(source)?, c_path(target)?);
    // SAFETY: valid C strings; no data argument.
    check(unsafe {
        libc::mount(
            from.as_ptr(),
            to.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    })?;
    match read_only {
        true => remount_read_only(target),
        false => Ok(()),
    }
}

/// Makes the mount at `target` read-only, keeping the flags it has (a user namespace may not
/// drop nosuid, nodev, noexec or the atime flags of a mount it did not make).
pub fn remount_read_only(target: &Path) -> io::Result<()> {
    let path = c_path(target)?;
    // SAFETY: an all-zero statvfs is valid; statvfs fills it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a statvfs that outlives the call.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut stat) })?;
    let kept = [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| stat.f_flag & *st != 0)
    .fold(0, |flags, (_, ms)| flags | ms);
    // SAFETY: valid C string; no source, type or data.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | kept,
            std::ptr::null(),
        )
    })
}

/// `path` (absolute, checked clean by the policy) inside `root`.
pub fn inside(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Applies `policy` to the tree at `root`; read-write directories it makes are given to
/// `owner` (the workload's root on the host, when that is not this process's uid).
pub fn apply(root: &Path, policy: &Filesystem, owner: Option<(u32, u32)>) -> Result<(), String> {
    for path in &policy.read_write {
        let target = inside(root, path);
        if !target.exists() {
            std::fs::create_dir_all(&target)
                .map_err(|e| format!("policy filesystem.read_write {path:?}: {e}"))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                    .map_err(|e| format!("policy filesystem.read_write {path:?}: {e}"))?;
            }
        }
        bind(&target, &target, false)
            .map_err(|e| format!("policy filesystem.read_write {path:?}: {e}"))?;
    }
    if policy.read_only_root {
        remount_read_only(root).map_err(|e| format!("policy filesystem.read_only_root: {e}"))?;
    }
    for path in &policy.read_only {
        let target = inside(root, path);
        if !target.exists() {
            return Err(format!(
                "policy filesystem.read_only {path:?}: no such path in the workload's root"
            ));
        }
        bind(&target, &target, true)
            .map_err(|e| format!("policy filesystem.read_only {path:?}: {e}"))?;
    }
    Ok(())
}

/// Sets network interface `name` up (SIOCSIFFLAGS on a datagram socket of this namespace).
pub fn link_up(name: &str) -> io::Result<()> {
    // SAFETY: socket takes integers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an all-zero ifreq is valid; the name is cut to fit with its NUL.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *to = from as libc::c_char;
    }
    // SAFETY: `request` is a valid ifreq for both calls; `fd` is ours and closed after.
    unsafe {
        let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request) == 0 && {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &request) == 0
        };
        let error = io::Error::last_os_error();
        libc::close(fd);
        match ok {
            true => Ok(()),
            false => Err(error),
        }
    }
}
