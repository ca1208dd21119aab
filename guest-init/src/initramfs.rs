//! The initramfs packer behind the `tessera-initramfs` tool (feature `initramfs`, so neither
//! PID 1 nor the VMM links it): a newc cpio archive (the format the kernel unpacks into its
//! rootfs), optionally gzip-compressed. Device nodes and owners are only recorded in the
//! archive, so building one needs no root.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flate2::write::GzEncoder;

use crate::newc;

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum InitramfsError {
    /// archive path {0:?} is empty, absolute after trimming, or has a `..` or empty component
    BadPath(String),
    /// archive path {0:?} is added twice
    Duplicate(String),
    /// archive path {0:?} is not a directory, so nothing can go under it
    NotADirectory(String),
    /// {0:?} is larger than the 4 GiB a cpio entry can hold
    TooLarge(String),
    /// cannot read {path}: {source}
    Read { path: String, source: io::Error },
    /// {path} is not a file, a directory or a symlink, or not what was asked for
    Unsupported { path: String },
}

/// The entries of an archive, kept sorted so that parents come before children and the same
/// inputs give the same bytes.
#[derive(Debug, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, (u32, Node)>,
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// An archive with the directories a Tessera guest mounts on and `/dev/console`, so the
    /// kernel can give init a console before devtmpfs is mounted.
    pub fn with_base_layout() -> Self {
        let mut archive = Self::new();
        for dir in ["dev", "proc", "sys", "tmp", "run", "root"] {
            // These names are valid and distinct: adding them cannot fail.
            let _ = archive.add(dir, 0o755, Node::Dir);
        }
        let _ = archive.add(
            "dev/console",
            0o600,
            Node::CharDevice { major: 5, minor: 1 },
        );
        archive
    }

    /// Adds `node` at `path` (relative to the archive root; a leading `/` is ignored) with
    /// permission bits `mode`, creating missing parent directories with mode 0755.
    pub fn add(&mut self, path: &str, mode: u32, node: Node) -> Result<(), InitramfsError> {
        let path = normalize(path)?;
        if let Node::File(data) = &node {
            if u32::try_from(data.len()).is_err() {
                return Err(InitramfsError::TooLarge(path));
            }
        }
        let mut parent = String::new();
        for component in path.split('/').take(path.split('/').count() - 1) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            let (_, existing) = self
                .entries
                .entry(parent.clone())
                .or_insert((0o755, Node::Dir));
            if *existing != Node::Dir {
                return Err(InitramfsError::NotADirectory(parent));
            }
        }
        match self.entries.get(&path) {
            // An implicit parent directory may be given its own mode later.
            Some((_, Node::Dir)) if node == Node::Dir => {}
            Some(_) => return Err(InitramfsError::Duplicate(path)),
            None => {}
        }
        self.entries.insert(path, (mode & 0o7777, node));
        Ok(())
    }

    /// True when the archive already holds `path` (leading `/` ignored).
    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// Adds the host file, symlink or directory tree at `src` as `dest`, keeping permission bits.
    pub fn add_from_host(&mut self, src: &Path, dest: &str) -> Result<(), InitramfsError> {
        let read_err = |source| InitramfsError::Read {
            path: src.display().to_string(),
            source,
        };
        let meta = fs::symlink_metadata(src).map_err(read_err)?;
        let mode = meta.permissions().mode();
        if meta.file_type().is_symlink() {
            let target = fs::read_link(src).map_err(read_err)?;
            self.add(
                dest,
                0o777,
                Node::Symlink(target.to_string_lossy().into_owned()),
            )
        } else if meta.is_file() {
            self.add(dest, mode, Node::File(fs::read(src).map_err(read_err)?))
        } else if meta.is_dir() {
            self.add(dest, mode, Node::Dir)?;
            let mut children: Vec<_> = fs::read_dir(src)
                .map_err(read_err)?
                .collect::<Result<_, _>>()
                .map_err(read_err)?;
            children.sort_by_key(|e| e.file_name());
            for child in children {
                let name = child.file_name();
                let dest = format!("{}/{}", dest.trim_end_matches('/'), name.to_string_lossy());
                self.add_from_host(&child.path(), &dest)?;
            }
            Ok(())
        } else {
            Err(InitramfsError::Unsupported {
                path: src.display().to_string(),
            })
        }
    }

    /// Adds a static busybox at /bin/busybox and a symlink to it for each applet it lists
    /// (`busybox --list-full`), leaving paths already in the archive alone.
    pub fn add_busybox(&mut self, busybox: &Path) -> Result<(), InitramfsError> {
        let list = std::process::Command::new(busybox)
            .arg("--list-full")
            .output()
            .map_err(|source| InitramfsError::Read {
                path: busybox.display().to_string(),
                source,
            })?;
        if !list.status.success() {
            return Err(InitramfsError::Unsupported {
                path: format!(
                    "{} (`--list-full` failed: not a busybox?)",
                    busybox.display()
                ),
            });
        }
        self.add_from_host(busybox, "bin/busybox")?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "bin/busybox" {
                continue;
            }
            if let Ok(path) = normalize(applet) {
                if !self.entries.contains_key(&path) {
                    self.add(&path, 0o777, Node::Symlink("/bin/busybox".into()))?;
                }
            }
        }
        Ok(())
    }

    /// Writes the archive as an uncompressed newc cpio (its length a multiple of 4).
    pub fn write_cpio(&self, out: &mut impl Write) -> io::Result<()> {
        let mut writer = newc::Writer::new(out);
        for (ino, (path, (mode, node))) in self.entries.iter().enumerate() {
            let (kind, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir => (newc::S_IFDIR, &[], (0, 0)),
                Node::File(data) => (newc::S_IFREG, data, (0, 0)),
                Node::Symlink(target) => (newc::S_IFLNK, target.as_bytes(), (0, 0)),
                Node::CharDevice { major, minor } => (newc::S_IFCHR, &[], (*major, *minor)),
            };
            let nlink = if *node == Node::Dir { 2 } else { 1 };
            // `add` keeps entries below 4 GiB and there are far fewer than 2^32 of them.
            let header = newc::Header {
                ino: ino as u32 + 1,
                mode: kind | mode,
                nlink,
                filesize: data.len() as u32,
                rdev,
                name: path,
            };
            writer.entry(&header, data)?;
        }
        writer.finish().map(drop)
    }

    /// Writes the archive as a gzip-compressed newc cpio.
    pub fn write_cpio_gz(&self, out: &mut impl Write) -> io::Result<()> {
        let mut gz = GzEncoder::new(out, flate2::Compression::default());
        self.write_cpio(&mut gz)?;
        gz.finish()?;
        Ok(())
    }
}

fn normalize(path: &str) -> Result<String, InitramfsError> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    let bad = trimmed.is_empty()
        || trimmed.contains('\0')
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(InitramfsError::BadPath(path.to_string()));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive entry read back: name, mode, (rdev major, minor), data.
    type Parsed = (String, u32, (u32, u32), Vec<u8>);

    /// Parses a newc archive back into entries, checking framing as it goes.
    fn parse(bytes: &[u8]) -> Vec<Parsed> {
        assert_eq!(bytes.len() % 4, 0);
        newc::parse(bytes)
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.mode, e.rdev, e.data))
            .collect()
    }

    #[test]
    fn writes_parents_first_with_modes_and_devices() {
        let mut archive = Initramfs::with_base_layout();
        archive
            .add("/init", 0o755, Node::File(b"#!x".to_vec()))
            .unwrap();
        archive
            .add("usr/bin/tool", 0o700, Node::File(vec![7; 5]))
            .unwrap();
        archive
            .add("bin", 0o777, Node::Symlink("usr/bin".into()))
            .unwrap();
        let mut bytes = Vec::new();
        archive.write_cpio(&mut bytes).unwrap();
        let entries = parse(&bytes);
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "dev",
                "dev/console",
                "init",
                "proc",
                "root",
                "run",
                "sys",
                "tmp",
                "usr",
                "usr/bin",
                "usr/bin/tool"
            ]
        );
        let get = |n: &str| entries.iter().find(|e| e.0 == n).unwrap().clone();
        assert_eq!(get("dev/console").1, 0o020600);
        assert_eq!(get("dev/console").2, (5, 1));
        assert_eq!(get("init").1, 0o100755);
        assert_eq!(get("usr/bin/tool").3, vec![7; 5]);
        assert_eq!(get("usr").1, 0o040755);
        assert_eq!(get("bin").1, 0o120777);
        assert_eq!(get("bin").3, b"usr/bin");
    }

    #[test]
    fn is_reproducible_and_gzips() {
        let build = || {
            let mut a = Initramfs::with_base_layout();
            a.add("init", 0o755, Node::File(vec![1, 2, 3])).unwrap();
            let mut gz = Vec::new();
            a.write_cpio_gz(&mut gz).unwrap();
            gz
        };
        let gz = build();
        assert_eq!(gz, build());
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let mut plain = Vec::new();
        io::copy(&mut flate2::read::GzDecoder::new(&gz[..]), &mut plain).unwrap();
        assert!(parse(&plain)
            .iter()
            .any(|e| e.0 == "init" && e.3 == [1, 2, 3]));
    }

    #[test]
    fn refuses_bad_paths_and_duplicates() {
        let mut a = Initramfs::new();
        for bad in ["", "/", "a/../b", "a//b", "./a", "a\0b"] {
            assert!(
                matches!(
                    a.add(bad, 0o644, Node::Dir),
                    Err(InitramfsError::BadPath(_))
                ),
                "{bad:?}"
            );
        }
        a.add("x/y", 0o644, Node::File(vec![])).unwrap();
        assert!(matches!(
            a.add("x/y", 0o644, Node::Dir),
            Err(InitramfsError::Duplicate(_))
        ));
        assert!(matches!(
            a.add("x/y/z", 0o644, Node::Dir),
            Err(InitramfsError::NotADirectory(_))
        ));
        a.add("x", 0o700, Node::Dir).unwrap();
        assert_eq!(a.entries["x"].0, 0o700);
    }

    #[test]
    fn adds_host_trees() {
        let dir = std::env::temp_dir().join(format!("initramfs-test-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/f"), b"data").unwrap();
        std::os::unix::fs::symlink("sub/f", dir.join("link")).unwrap();
        let mut a = Initramfs::new();
        a.add_from_host(&dir, "opt/t").unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(a.entries["opt/t/sub/f"].1, Node::File(b"data".to_vec()));
        assert_eq!(a.entries["opt/t/link"].1, Node::Symlink("sub/f".into()));
        let missing = a
            .add_from_host(Path::new("/nonexistent/x"), "y")
            .unwrap_err();
        assert_eq!(
            missing.to_string().split(':').next(),
            Some("cannot read /nonexistent/x")
        );
    }
}
