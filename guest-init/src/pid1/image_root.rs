//! Switching PID 1 into a container image's root: the image's read-only disk under a tmpfs
//! overlay that takes the writes, with the kernel file systems moved in, then `chroot` (the
//! initramfs cannot be pivoted away from; this is switch_root's move-mount and chroot).

use std::ffi::CString;
use std::io;

use super::Pid1Error;
use crate::spec::RootFs;

const LOWER: &str = "/.tessera/image";
const RW: &str = "/.tessera/rw";
const ROOT: &str = "/.tessera/root";
/// Mounted before the switch and moved into the new root.
const MOVED: [&str; 5] = ["/dev", "/proc", "/sys", "/run", "/tmp"];

fn c(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} has a NUL byte"))
}

pub(super) fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let (source_c, target_c, fstype_c, data_c) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                fstype_c.as_ptr()
            },
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                data_c.as_ptr().cast()
            },
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(format!(
            "cannot mount {source} on {target}: {}",
            io::Error::last_os_error()
        )),
    }
}

pub(super) fn mkdir(path: &str) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {path}: {e}"))
}

/// The read-ahead of the image's disk, in KiB: large, because every request costs a round trip
/// to the VMM while the image is read-only and its files are mostly read whole (a program's
/// first run faults its text in a few requests instead of one per 128 KiB, Linux's default).
const READ_AHEAD_KB: u32 = 4096;

/// Sets the read-ahead of `device` (a whole disk such as /dev/vda); a disk without the
/// setting keeps the kernel's.
fn read_ahead(device: &str) {
    let Some(name) = device.strip_prefix("/dev/") else {
        return;
    };
    let _ = std::fs::write(
        format!("/sys/class/block/{name}/queue/read_ahead_kb"),
        READ_AHEAD_KB.to_string(),
    );
}

/// Makes `root` this process's `/`; the command started afterwards sees only the image.
pub fn enter(root: &RootFs) -> Result<(), Pid1Error> {
    switch(root).map_err(Pid1Error::ImageRoot)
}

fn switch(root: &RootFs) -> Result<(), String> {
    for dir in [LOWER, RW, ROOT] {
        mkdir(dir)?;
    }
    read_ahead(&root.device);
    mount(&root.device, LOWER, &root.fstype, libc::MS_RDONLY, "")?;
    match &root.scratch {
        // A disk the host formatted: the writes may outgrow guest memory.
        Some(scratch) => mount(scratch, RW, "ext4", libc::MS_NOSUID | libc::MS_NODEV, "")?,
        None => mount(
            "tmpfs",
            RW,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        )?,
    }
    mkdir(&format!("{RW}/upper"))?;
    mkdir(&format!("{RW}/work"))?;
    let options = format!("lowerdir={LOWER},upperdir={RW}/upper,workdir={RW}/work");
    mount("overlay", ROOT, "overlay", 0, &options)?;
    for dir in MOVED {
        let target = format!("{ROOT}{dir}");
        mkdir(&target)?;
        mount(dir, &target, "", libc::MS_MOVE, "")?;
    }
    let root_c = c(ROOT)?;
    // SAFETY: chdir, mount(MS_MOVE), chroot and chdir on NUL-terminated paths that outlive the
    // calls; this is the only thread of PID 1 at this point.
    let failed = unsafe {
        libc::chdir(root_c.as_ptr()) != 0
            || libc::mount(
                c".".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_MOVE,
                std::ptr::null(),
            ) != 0
            || libc::chroot(c".".as_ptr()) != 0
            || libc::chdir(c"/".as_ptr()) != 0
    };
    match failed {
        true => Err(format!(
            "cannot switch into {ROOT}: {}",
            io::Error::last_os_error()
        )),
        false => Ok(()),
    }
}
