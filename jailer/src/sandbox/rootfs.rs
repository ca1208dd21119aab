//! The workload's root, made by the sandbox's PID 1 in its own mount namespace: the image's
//! tree under an overlay (writes go to a tmpfs, gone with the run), volumes, a minimal /dev,
//! /proc and a read-only /sys, Docker's masked and read-only paths, the policy's read-only and
//! read-write paths, then `pivot_root` into it and the host's tree detached.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use guest_init::confine::fs::{self as fs_policy, inside};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{Sandbox, SandboxError};

/// Paths Docker hides from a container (a file gets /dev/null over it, a directory an empty
/// read-only tmpfs).
const MASKED: [&str; 10] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker leaves visible but read-only.
const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Device nodes bound from the host's /dev (a user namespace cannot mknod).
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn setup(what: String) -> impl FnOnce(nix::Error) -> SandboxError {
    move |e| SandboxError::Setup(format!("{what}: {e}"))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |e| SandboxError::Setup(format!("{what}: {e}"))
}

fn mount_at(
    source: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), SandboxError> {
    mount(Some(source), target, fstype, flags, data)
        .map_err(setup(format!("mount {source} on {}", target.display())))
}

/// Binds `source` onto `target` (recursively), read-only when asked.
fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), SandboxError> {
    fs_policy::bind(source, target, read_only).map_err(io(format!(
        "bind {} on {}",
        source.display(),
        target.display()
    )))
}

/// Makes the root and enters it.
pub fn enter(sandbox: &Sandbox) -> Result<(), SandboxError> {
    let flags = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
        .map_err(setup("make the mounts private".into()))?;
    let run = &sandbox.staging;
    mount_at(
        "tessera",
        run,
        Some("tmpfs"),
        MsFlags::MS_NOSUID,
        Some("mode=0700"),
    )?;
    let (upper, work, root) = (run.join("upper"), run.join("work"), run.join("root"));
    for dir in [&upper, &work, &root] {
        fs::create_dir(dir).map_err(io(format!("make {}", dir.display())))?;
    }
    // The overlay's root takes its owner from the upper layer's: the workload's root.
    if let Some((uid, gid)) = sandbox.id_map.root_owner() {
        let mode = fs::metadata(&sandbox.lower).map(|m| m.permissions());
        std::os::unix::fs::lchown(&upper, Some(uid), Some(gid))
            .and_then(|()| mode.and_then(|mode| fs::set_permissions(&upper, mode)))
            .map_err(io(format!("own {}", upper.display())))?;
    }
    let lower = sandbox.lower.display();
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={},userxattr",
        upper.display(),
        work.display()
    );
    mount_at(
        "overlay",
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(&options),
    )?;
    let spec_fs = sandbox.spec.policy().filesystem;
    system_mounts(&root)?;
    for volume in &sandbox.volumes {
        let target = inside(&root, &volume.destination);
        make_mount_point(&target, volume.source.is_dir())?;
        bind(&volume.source, &target, volume.read_only)?;
    }
    guest_init::confine::fs::apply(&root, &spec_fs, sandbox.id_map.root_owner())
        .map_err(SandboxError::Setup)?;
    pivot(&root)
}

/// A file or directory to mount over, made if missing.
fn make_mount_point(target: &Path, dir: bool) -> Result<(), SandboxError> {
    let made = match dir {
        true => fs::create_dir_all(target),
        false => target
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| {
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)
                    .map(drop)
            }),
    };
    made.map_err(io(format!("make mount point {}", target.display())))
}

/// /proc, /sys, /dev, and what Docker masks in them.
fn system_mounts(root: &Path) -> Result<(), SandboxError> {
    let safe = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc = root.join("proc");
    make_mount_point(&proc, true)?;
    mount_at("proc", &proc, Some("proc"), safe, None)?;
    let sys = root.join("sys");
    make_mount_point(&sys, true)?;
    // A sysfs of the sandbox's own network namespace; where the kernel refuses one, the host's,
    // read-only.
    if mount(
        Some("sysfs"),
        &sys,
        Some("sysfs"),
        safe | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .is_err()
    {
        bind(Path::new("/sys"), &sys, true)?;
    }
    let dev = root.join("dev");
    make_mount_point(&dev, true)?;
    mount_at(
        "tmpfs",
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )?;
    for name in DEVICES {
        let node = dev.join(name);
        make_mount_point(&node, false)?;
        bind(&Path::new("/dev").join(name), &node, false)?;
    }
    let pts = dev.join("pts");
    make_mount_point(&pts, true)?;
    mount_at(
        "devpts",
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    make_mount_point(&shm, true)?;
    mount_at(
        "shm",
        &shm,
        Some("tmpfs"),
        safe,
        Some("mode=1777,size=65536k"),
    )?;
    let mqueue = dev.join("mqueue");
    make_mount_point(&mqueue, true)?;
    let _ = mount(Some("mqueue"), &mqueue, Some("mqueue"), safe, None::<&str>);
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        symlink(to, dev.join(link)).map_err(io(format!("make /dev/{link}")))?;
    }
    for path in MASKED {
        let target = inside(root, path);
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => mount_at(
                "tmpfs",
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | safe,
                Some("size=0"),
            )?,
            Ok(_) => bind(&dev.join("null"), &target, false)?,
            Err(_) => {}
        }
    }
    for path in READ_ONLY {
        let target = inside(root, path);
        if target.exists() {
            bind(&target, &target, true)?;
        }
    }
    Ok(())
}

/// `pivot_root` into `root` with the old root stacked on it, then the old root detached.
fn pivot(root: &Path) -> Result<(), SandboxError> {
    nix::unistd::chdir(root).map_err(setup(format!("enter {}", root.display())))?;
    nix::unistd::pivot_root(".", ".").map_err(setup("pivot_root".into()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(setup("detach the host's root".into()))?;
    nix::unistd::chdir("/").map_err(setup("enter /".into()))
}
