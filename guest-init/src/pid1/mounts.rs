//! The kernel file systems every workload expects.

use std::ffi::CString;
use std::io;

use super::Pid1Error;

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// (fstype, target, flags, data), mounted in order; the fstype is also the source.
const MOUNTS: [(&str, &str, libc::c_ulong, &str); 8] = [
    ("proc", "/proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", NOSUID_NODEV_NOEXEC, ""),
    ("devtmpfs", "/dev", libc::MS_NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "mode=0620,ptmxmode=0666",
    ),
    (
        "tmpfs",
        "/dev/shm",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
    (
        "tmpfs",
        "/tmp",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
    (
        "tmpfs",
        "/run",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    ),
    ("cgroup2", "/sys/fs/cgroup", NOSUID_NODEV_NOEXEC, ""),
];

/// Mounts /proc, /sys, /dev (devtmpfs, devpts, shm), /tmp, /run and the cgroup2 hierarchy.
pub fn mount_kernel_filesystems() -> Result<(), Pid1Error> {
    for (fstype, target, flags, data) in MOUNTS {
        std::fs::create_dir_all(target)
            .map_err(|source| Pid1Error::MountPoint { target, source })?;
        let mount_err = |source| Pid1Error::Mount {
            fstype,
            target,
            source,
        };
        let c = |s: &str| {
            CString::new(s).map_err(|_| mount_err(io::Error::from(io::ErrorKind::InvalidInput)))
        };
        let (source_c, target_c, fstype_c, data_c) = (c(fstype)?, c(target)?, c(fstype)?, c(data)?);
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                source_c.as_ptr(),
                target_c.as_ptr(),
                fstype_c.as_ptr(),
                flags,
                data_c.as_ptr().cast(),
            )
        };
        let err = io::Error::last_os_error();
        // EBUSY: the kernel mounted it already (devtmpfs.mount=1).
        if rc != 0 && err.raw_os_error() != Some(libc::EBUSY) {
            return Err(mount_err(err));
        }
    }
    Ok(())
}
