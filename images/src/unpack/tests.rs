use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

/// One tar entry with its name and link name written as raw bytes (so that hostile names the
/// `tar` crate's builder refuses can be made).
fn raw(name: &str, kind: EntryType, link: &str, mode: u32, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    {
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn file(name: &str, data: &str) -> Vec<u8> {
    raw(name, EntryType::Regular, "", 0o644, data.as_bytes())
}

fn dir(name: &str) -> Vec<u8> {
    raw(name, EntryType::Directory, "", 0o755, b"")
}

fn tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0; 1024]);
    out
}

/// A root inside a scratch directory, beside an `outside` directory that must stay empty.
struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    Scratch {
        root,
        outside,
        _dir: dir,
    }
}

impl Scratch {
    fn apply(&self, entries: &[Vec<u8>]) -> Result<LayerStats, UnpackError> {
        apply_layer(&self.root, &tar(entries)[..])
    }

    fn read(&self, path: &str) -> Option<String> {
        fs::read_to_string(self.root.join(path)).ok()
    }

    fn assert_outside_untouched(&self) {
        let left: Vec<_> = fs::read_dir(&self.outside).unwrap().collect();
        assert!(left.is_empty(), "written outside the root: {left:?}");
        let parent = self.root.parent().unwrap();
        let mut names: Vec<_> = fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["outside", "root"],
            "something appeared beside the root"
        );
    }
}

#[test]
fn files_directories_links_and_modes_land_inside_the_root() {
    let s = scratch();
    let stats = s
        .apply(&[
            dir("etc/"),
            file("etc/hostname", "box\n"),
            raw("bin/su", EntryType::Regular, "", 0o4755, b"#!"),
            raw("etc/name", EntryType::Link, "etc/hostname", 0o644, b""),
            raw("lib", EntryType::Symlink, "usr/lib", 0o777, b""),
            dir("usr/lib/"),
            file("lib/libc.so", "elf"),
            raw("run/fifo", EntryType::Fifo, "", 0o600, b""),
        ])
        .unwrap();
    assert_eq!(stats.entries, 8);
    assert_eq!(s.read("etc/hostname").as_deref(), Some("box\n"));
    // Missing parents (bin/, run/) are made; a hard link shares the inode.
    let a = fs::metadata(s.root.join("etc/hostname")).unwrap();
    let b = fs::metadata(s.root.join("etc/name")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    // Set-user-ID survives (the mode is set after the owner).
    let su = fs::metadata(s.root.join("bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
    // Through the symlink lib -> usr/lib, inside the root.
    assert_eq!(s.read("usr/lib/libc.so").as_deref(), Some("elf"));
    assert_eq!(
        fs::read_link(s.root.join("lib")).unwrap(),
        Path::new("usr/lib")
    );
    assert!(fs::symlink_metadata(s.root.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    s.assert_outside_untouched();
}

use std::os::unix::fs::FileTypeExt;

#[test]
fn whiteouts_and_opaque_directories_remove_only_the_lower_layers() {
    let s = scratch();
    s.apply(&[
        file("etc/old", "lower"),
        file("etc/keep", "lower"),
        file("var/cache/a", "lower"),
        file("var/cache/b", "lower"),
        file("tmp/gone", "lower"),
    ])
    .unwrap();
    let stats = s
        .apply(&[
            // This layer's own file in the opaque directory, before the marker: it stays.
            file("var/cache/new", "upper"),
            file("var/cache/.wh..wh..opq", ""),
            file("etc/.wh.old", ""),
            file(".wh.tmp", ""),
            file("etc/keep", "upper"),
        ])
        .unwrap();
    assert_eq!(stats.whiteouts, 3);
    assert_eq!(s.read("etc/old"), None);
    assert_eq!(s.read("etc/keep").as_deref(), Some("upper"));
    assert!(!s.root.join("tmp").exists());
    let mut cache: Vec<_> = fs::read_dir(s.root.join("var/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    cache.sort();
    assert_eq!(cache, ["new"]);
    // A whiteout for something no lower layer had is nothing to do.
    s.apply(&[file("nowhere/.wh.thing", "")]).unwrap();
}

#[test]
fn dot_dot_names_and_link_targets_are_refused() {
    for entries in [
        vec![file("../outside/evil", "x")],
        vec![file("etc/../../outside/evil", "x")],
        vec![file("a/b/../../../outside/evil", "x")],
        vec![raw(
            "evil",
            EntryType::Link,
            "../outside/target",
            0o644,
            b"",
        )],
        vec![file("../outside/.wh.x", "")],
    ] {
        let s = scratch();
        fs::write(s.root.parent().unwrap().join("outside/target"), "t").ok();
        let err = s.apply(&entries).unwrap_err();
        assert!(err.to_string().contains("would leave the root"), "{err}");
        let _ = fs::remove_file(s.outside.join("target"));
        s.assert_outside_untouched();
    }
}

#[test]
fn absolute_paths_are_taken_inside_the_root() {
    let s = scratch();
    s.apply(&[file("/etc/passwd", "root:x:0:0::/root:/bin/sh\n")])
        .unwrap();
    assert!(s.read("etc/passwd").unwrap().starts_with("root:"));
    s.assert_outside_untouched();
}

#[test]
fn symlinks_pointing_out_are_followed_inside_the_root_only() {
    let s = scratch();
    let outside = s.outside.to_str().unwrap().to_string();
    // A symlink to the absolute path of the outside directory, and one climbing out of the root.
    s.apply(&[
        raw("abs", EntryType::Symlink, &outside, 0o777, b""),
        raw("up", EntryType::Symlink, "../../../../outside", 0o777, b""),
    ])
    .unwrap();
    for path in ["abs/evil", "up/evil"] {
        // Resolved inside the root: the directory does not exist there, so nothing is written.
        let _ = s.apply(&[file(path, "x")]);
        s.assert_outside_untouched();
    }
    // A hard link through such a symlink to a file outside cannot reach it either.
    fs::write(s.outside.join("secret"), "s").unwrap();
    let err = s
        .apply(&[raw("stolen", EntryType::Link, "abs/secret", 0o644, b"")])
        .unwrap_err();
    assert!(err.to_string().contains("hard-link target"), "{err}");
    assert!(!s.root.join("stolen").exists());
    fs::remove_file(s.outside.join("secret")).unwrap();
    s.assert_outside_untouched();
}

#[test]
fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
    let s = scratch();
    let target = s.outside.join("victim");
    s.apply(&[raw(
        "etc/shadow",
        EntryType::Symlink,
        target.to_str().unwrap(),
        0o777,
        b"",
    )])
    .unwrap();
    s.apply(&[file("etc/shadow", "mine")]).unwrap();
    assert_eq!(s.read("etc/shadow").as_deref(), Some("mine"));
    assert!(!fs::symlink_metadata(s.root.join("etc/shadow"))
        .unwrap()
        .file_type()
        .is_symlink());
    s.assert_outside_untouched();
}

#[test]
fn a_truncated_entry_with_a_huge_declared_size_is_refused() {
    let s = scratch();
    let mut entry = raw("big", EntryType::Regular, "", 0o644, b"only a little");
    // Declare 1 TiB in the header and keep only the little data that follows.
    let mut header = tar::Header::from_byte_slice(&entry[..512]).clone();
    header.set_size(1 << 40);
    header.set_cksum();
    entry[..512].copy_from_slice(header.as_bytes());
    let err = apply_layer(&s.root, &entry[..]).unwrap_err();
    assert!(
        err.to_string().contains("truncated") || matches!(err, UnpackError::Read(_)),
        "{err}"
    );
    s.assert_outside_untouched();
}

#[test]
fn gzip_and_zstd_layers_are_recognised() {
    let layer = tar(&[file("hello", "hi")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut gz, &layer).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&layer[..], 1).unwrap();
    for compressed in [gz, zst, layer.clone()] {
        let s = scratch();
        apply_layer(&s.root, decompress(&compressed[..]).unwrap()).unwrap();
        assert_eq!(s.read("hello").as_deref(), Some("hi"));
    }
}

/// A tar entry preceded by a PAX header of `xattrs` (as Docker and Go's archive/tar write
/// them: `SCHILY.xattr.NAME`).
fn with_xattrs(entry: Vec<u8>, xattrs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let records: Vec<(String, &[u8])> = xattrs
        .iter()
        .map(|(name, value)| (format!("SCHILY.xattr.{name}"), *value))
        .collect();
    builder
        .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
        .unwrap();
    let mut out = builder.into_inner().unwrap();
    // Without the end-of-archive blocks that into_inner wrote.
    out.truncate(out.len() - 1024);
    out.extend_from_slice(&entry);
    out
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut value = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated; `value` is a live buffer of its length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    (n >= 0).then(|| value[..n as usize].to_vec())
}

#[test]
fn extended_attributes_are_set_after_the_owner_and_mode() {
    let s = scratch();
    // A file capability (cap_net_raw+ep, VFS_CAP_REVISION_2), as `setcap` writes it for ping.
    let cap: &[u8] = &[
        0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let stats = s
        .apply(&[
            with_xattrs(dir("etc/"), &[("user.kind", b"config")]),
            with_xattrs(
                raw("bin/ping", EntryType::Regular, "", 0o755, b"elf"),
                &[("user.tessera", b"hello"), ("security.capability", cap)],
            ),
            with_xattrs(file("etc/upper", "x"), &[("trusted.overlay.opaque", b"y")]),
        ])
        .unwrap();
    assert_eq!(
        xattr(&s.root.join("etc"), "user.kind").as_deref(),
        Some(&b"config"[..])
    );
    assert_eq!(
        xattr(&s.root.join("bin/ping"), "user.tessera").as_deref(),
        Some(&b"hello"[..])
    );
    // overlayfs's own attributes describe no file: never set.
    assert_eq!(
        xattr(&s.root.join("etc/upper"), "trusted.overlay.opaque"),
        None
    );
    if Uid::effective().is_root() {
        // Set after chown, which would have cleared it.
        assert_eq!(
            xattr(&s.root.join("bin/ping"), "security.capability").as_deref(),
            Some(cap)
        );
        assert_eq!((stats.xattrs, stats.xattrs_dropped), (3, 1));
    } else {
        println!("not root: security.capability is left out");
        assert_eq!((stats.xattrs, stats.xattrs_dropped), (2, 2));
    }
    s.assert_outside_untouched();
}

#[test]
fn an_xattr_without_a_name_is_refused() {
    let s = scratch();
    let err = s
        .apply(&[with_xattrs(file("a", "x"), &[("", b"v")])])
        .unwrap_err();
    assert!(err.to_string().contains("an xattr without a name"), "{err}");
}
