//! Volumes for `tessera run -v HOST:GUEST[:ro]` and the `--scratch` disk: a host directory as
//! an ext4 disk image (`mke2fs -d`, no root needed), and, after a read-write run, the
//! image's contents copied back into the directory (`debugfs rdump`, then a sync that adds,
//! replaces and removes entries so the directory ends as the guest left it).
//!
//! The copy is of regular files, directories and symlinks with their modes (and owners when
//! run as root); hard links come back as separate files, devices, FIFOs and sockets are not
//! copied back. Writes reach the host when the run ends, not during it.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Room a volume's disk has for the guest's writes beyond the directory's contents (the image
/// is sparse: only what is written takes host disk).
const VOLUME_ROOM: u64 = 1 << 30;

/// Why a volume could not be made or copied back; one line each.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum VolumeError {
    /// {0}: {1}
    Io(String, io::Error),
    /// mke2fs failed for {0}: {1}
    Mkfs(String, String),
    /// debugfs could not read the volume image {0}: {1}
    Debugfs(String, String),
    /// scratch size {0:?}: expected a size such as 512M, 2G or 1073741824 (at least 64M)
    ScratchSize(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |e| VolumeError::Io(path.display().to_string(), e)
}

fn mkfs(image: &Path, blocks: u64, label: &str, content: Option<&Path>) -> Result<(), VolumeError> {
    // mke2fs -t ext4 is mkfs.ext4, under the name every e2fsprogs install has.
    let mut command = Command::new("mke2fs");
    command.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-O",
        "^has_journal",
        "-L",
        label,
    ]);
    if let Some(dir) = content {
        command.arg("-d").arg(dir);
    }
    let output = command
        .arg(image)
        .arg(blocks.to_string())
        .output()
        .map_err(|e| {
            VolumeError::Mkfs(
                image.display().to_string(),
                format!("cannot run it ({e}); install e2fsprogs"),
            )
        })?;
    match output.status.success() {
        true => Ok(()),
        false => Err(VolumeError::Mkfs(
            image.display().to_string(),
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        )),
    }
}

/// A sparse ext4 image at `image` holding `dir`'s contents, with room to write.
pub fn create(dir: &Path, image: &Path) -> Result<(), VolumeError> {
    let (bytes, _) = crate::store::tree_size(dir).map_err(io_err(dir))?;
    let blocks = (2 * bytes + VOLUME_ROOM) / 4096;
    mkfs(image, blocks, "tessera-volume", Some(dir))
}

/// Parses a scratch size: bytes, or a number with K, M, G or T (powers of 1024).
pub fn parse_size(size: &str) -> Result<u64, VolumeError> {
    let bad = || VolumeError::ScratchSize(size.to_string());
    let s = size.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let shift = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(bad)?;
    match bytes >= 64 << 20 {
        true => Ok(bytes),
        false => Err(bad()),
    }
}

/// An empty sparse ext4 image of `bytes` for the overlay's writes.
pub fn create_scratch(image: &Path, bytes: u64) -> Result<(), VolumeError> {
    mkfs(image, bytes / 4096, "tessera-scratch", None)
}

/// Copies the image's contents back into `dir` (created if missing); `work` is an empty
/// directory for the extraction, left empty.
pub fn copy_back(image: &Path, dir: &Path, work: &Path) -> Result<(), VolumeError> {
    fs::create_dir_all(work).map_err(io_err(work))?;
    let output = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", work.display()))
        .arg(image)
        .output()
        .map_err(|e| VolumeError::Debugfs(image.display().to_string(), e.to_string()))?;
    // debugfs reports most failures on stderr with status 0: its banner is the only line
    // expected there.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaint = stderr
        .lines()
        .find(|l| !l.starts_with("debugfs ") && !l.trim().is_empty());
    if !output.status.success() || complaint.is_some() {
        let message = complaint.unwrap_or("failed").to_string();
        return Err(VolumeError::Debugfs(image.display().to_string(), message));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let had_lost_found = dir.join("lost+found").exists();
    if !had_lost_found {
        // mkfs.ext4 made it; the directory never had it.
        let _ = fs::remove_dir_all(work.join("lost+found"));
    }
    sync_tree(work, dir)?;
    let mode = fs::metadata(work).map_err(io_err(work))?.mode();
    fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o7777)).map_err(io_err(dir))?;
    let _ = fs::remove_dir_all(work);
    Ok(())
}

/// Makes `dst` hold what `src` holds: entries added or replaced where they differ, entries
/// `src` lacks removed.
fn sync_tree(src: &Path, dst: &Path) -> Result<(), VolumeError> {
    let mut wanted: Vec<OsString> = Vec::new();
    for entry in fs::read_dir(src).map_err(io_err(src))? {
        let entry = entry.map_err(io_err(src))?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        wanted.push(entry.file_name());
        sync_entry(&from, &to)?;
    }
    for entry in fs::read_dir(dst).map_err(io_err(dst))? {
        let entry = entry.map_err(io_err(dst))?;
        if !wanted.contains(&entry.file_name()) {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), VolumeError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    match meta.is_dir() {
        true => fs::remove_dir_all(path),
        false => fs::remove_file(path),
    }
    .map_err(io_err(path))
}

fn sync_entry(from: &Path, to: &Path) -> Result<(), VolumeError> {
    let meta = fs::symlink_metadata(from).map_err(io_err(from))?;
    let old = fs::symlink_metadata(to).ok();
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(from).map_err(io_err(from))?;
        if old.is_some() && fs::read_link(to).ok().as_ref() == Some(&target) {
            return Ok(());
        }
        if old.is_some() {
            remove(to)?;
        }
        return symlink(&target, to).map_err(io_err(to));
    }
    if kind.is_dir() {
        if old.as_ref().is_some_and(|m| !m.is_dir()) {
            remove(to)?;
        }
        if !to.is_dir() {
            fs::create_dir(to).map_err(io_err(to))?;
        }
        sync_tree(from, to)?;
    } else if kind.is_file() {
        let same = old.as_ref().is_some_and(|m| {
            m.is_file() && m.len() == meta.len() && fs::read(from).ok() == fs::read(to).ok()
        });
        if !same {
            if old.is_some() {
                remove(to)?;
            }
            fs::copy(from, to).map_err(io_err(to))?;
        }
    } else {
        return Ok(()); // Devices, FIFOs, sockets: not copied back.
    }
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err(to))?;
    // As root, the guest's owners too (elsewhere every file is the caller's).
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid())).map_err(io_err(to))?;
    }
    Ok(())
}

/// Where [`copy_back`] may extract an image kept beside it.
pub fn work_dir(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".extract");
    PathBuf::from(name)
}
