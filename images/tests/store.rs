//! The image store with images this test builds itself: an OCI layout (two layers, the second
//! deleting and replacing files), an OCI archive of it, a legacy `docker save` tar, and a layout
//! with a corrupt layer. Files are read back out of the built ext4 with e2fsprogs' `debugfs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use images::import::sha256;
use images::store::{Store, StoreError};
use tests::registry::{gzip, put_blob};

/// A tar of `entries` (a path ending in `/` is a directory); `xattrs` (path, name, value) go in
/// PAX records before their entry.
fn layer(entries: &[(&str, &str)], xattrs: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .filter(|(p, _, _)| p == path)
            .map(|(_, name, value)| (format!("SCHILY.xattr.{name}"), *value))
            .collect();
        if !records.is_empty() {
            builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap();
        }
        let mut header = tar::Header::new_gnu();
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, path, &[][..]).unwrap();
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(content.len() as u64);
            builder
                .append_data(&mut header, path, content.as_bytes())
                .unwrap();
        }
    }
    builder.into_inner().unwrap()
}

/// cap_net_raw+ep (VFS_CAP_REVISION_2), as `setcap` writes it.
const CAP_NET_RAW: &[u8] = &[
    0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn layers() -> [Vec<u8>; 2] {
    [
        layer(
            &[
                ("etc/", ""),
                ("etc/motd", "lower\n"),
                ("etc/old", "to be deleted\n"),
                ("var/cache/", ""),
                ("var/cache/stale", "x"),
            ],
            &[],
        ),
        layer(
            &[
                ("etc/motd", "upper\n"),
                ("etc/.wh.old", ""),
                ("var/cache/.wh..wh..opq", ""),
                ("var/cache/fresh", "y"),
            ],
            &[
                ("etc/motd", "user.origin", b"upper"),
                ("etc/motd", "security.capability", CAP_NET_RAW),
            ],
        ),
    ]
}

fn config_json(diff_ids: &[String]) -> Vec<u8> {
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "cat /etc/motd"], "Env": ["PATH=/bin"], "WorkingDir": "/etc"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes()
}

/// An OCI image layout of the two layers (gzip-compressed), named `test/image:1`.
fn oci_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    fs::create_dir_all(&layout).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .unwrap();
    let [a, b] = layers();
    let diff_ids = [sha256(&a), sha256(&b)];
    let (ga, gb) = (gzip(&a), gzip(&b));
    let layer_descs: Vec<_> = [&ga, &gb]
        .iter()
        .map(|bytes| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put_blob(&layout, bytes),
                "size": bytes.len(),
            })
        })
        .collect();
    let config = config_json(&diff_ids);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put_blob(&layout, &config), "size": config.len()},
        "layers": layer_descs,
    })
    .to_string();
    let manifest_digest = put_blob(&layout, manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "test/image:1"},
        }],
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    layout
}

/// A legacy `docker save` tar of the same layers (uncompressed, `<id>/layer.tar`).
fn docker_save(dir: &Path) -> PathBuf {
    let [a, b] = layers();
    let config = config_json(&[sha256(&a), sha256(&b)]);
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        builder.append_data(&mut header, path, bytes).unwrap();
    };
    add("aaaa/layer.tar", &a);
    add("bbbb/layer.tar", &b);
    add("cfg.json", &config);
    let manifest = r#"[{"Config": "cfg.json", "RepoTags": ["legacy/image:2"], "Layers": ["aaaa/layer.tar", "bbbb/layer.tar"]}]"#;
    add("manifest.json", manifest.as_bytes());
    let path = dir.join("docker-save.tar");
    fs::write(&path, builder.into_inner().unwrap()).unwrap();
    path
}

/// `path` read out of the ext4 image, or None when it is not there.
fn read_ext4(image: &Path, path: &str) -> Option<String> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .expect("run debugfs (e2fsprogs)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    match stderr.contains("File not found") {
        true => None,
        false => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
    }
}

fn have_mkfs() -> bool {
    let ok = Command::new("mkfs.ext4").arg("-V").output().is_ok()
        && Command::new("debugfs").arg("-V").output().is_ok();
    if !ok {
        println!("SKIPPED image store test: mkfs.ext4 or debugfs missing (install e2fsprogs)");
    }
    ok
}

fn assert_applied(image: &Path) {
    assert_eq!(read_ext4(image, "/etc/motd").as_deref(), Some("upper\n"));
    assert_eq!(read_ext4(image, "/etc/old"), None);
    assert_eq!(read_ext4(image, "/var/cache/stale"), None);
    assert_eq!(read_ext4(image, "/var/cache/fresh").as_deref(), Some("y"));
    // The layer's xattrs reach the ext4 image (mkfs.ext4 -d copies them).
    let xattrs = debugfs(image, "ea_list /etc/motd");
    assert!(xattrs.contains("user.origin (5) = \"upper\""), "{xattrs}");
    if nix::unistd::Uid::effective().is_root() {
        assert!(
            xattrs.contains("security.capability (20) = 00 00 00 02 00 20 00"),
            "{xattrs}"
        );
    } else {
        println!("not root: the layer's security.capability was left out");
    }
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .expect("run debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn oci_layout_oci_archive_and_docker_save_import_list_find_and_remove() {
    if !have_mkfs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let layout = oci_layout(dir.path());

    let image = store.import(&layout, None).unwrap();
    assert_eq!(image.names, ["test/image:1"]);
    assert_applied(&image.rootfs);
    let config = image.config.config().as_ref().unwrap();
    assert_eq!(
        config.entrypoint().as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );
    assert_eq!(config.working_dir().as_deref(), Some("/etc"));

    // The same image as an OCI archive (a tar of the layout), under another name.
    let archive = dir.path().join("oci.tar");
    let mut builder = tar::Builder::new(fs::File::create(&archive).unwrap());
    builder.append_dir_all(".", &layout).unwrap();
    builder.finish().unwrap();
    let again = store.import(&archive, Some("again")).unwrap();
    assert_eq!(again.digest, image.digest);
    assert_eq!(again.names, ["again:latest", "test/image:1"]);

    let legacy = store.import(&docker_save(dir.path()), None).unwrap();
    assert_eq!(legacy.names, ["legacy/image:2"]);
    assert_applied(&legacy.rootfs);

    assert_eq!(store.list().unwrap().len(), 2);
    assert_eq!(store.find("again").unwrap().digest, image.digest);
    assert_eq!(
        store.find(&image.digest[..14]).unwrap().digest,
        image.digest
    );
    assert!(matches!(
        store.find("missing"),
        Err(StoreError::NotFound(_))
    ));
    store.remove("legacy/image:2").unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    // No leftovers of the imports' work directories.
    let names: Vec<_> = fs::read_dir(dir.path().join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".import"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn a_corrupt_layer_is_refused_and_leaves_the_store_unchanged() {
    if !have_mkfs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let layout = oci_layout(dir.path());
    // Flip a byte near the end of the second layer's blob.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(layout.join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    let layer = layout
        .join("blobs/sha256")
        .join(&manifest["layers"][1]["digest"].as_str().unwrap()[7..]);
    let mut bytes = fs::read(&layer).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0xff;
    fs::write(&layer, bytes).unwrap();

    let err = store.import(&layout, None).unwrap_err().to_string();
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(err.contains("layer 1"), "{err}");
    assert!(store.list().unwrap().is_empty());
    let left: Vec<_> = fs::read_dir(dir.path().join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter().all(|n| n == ".lock" || n == "refs.json"),
        "{left:?}"
    );
}

#[test]
fn work_left_by_a_killed_tessera_is_removed_and_live_work_is_kept() {
    if !have_mkfs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = Store::open(&store_dir).unwrap();
    // A process that is gone: its PID is free (until reused, which this test would only see
    // as a kept directory, never as a removed live one).
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let abandoned = store_dir.join(format!(".pull-{dead}-0"));
    fs::create_dir_all(abandoned.join("layout/blobs")).unwrap();
    fs::write(abandoned.join("layout/blobs/partial"), "half a blob").unwrap();
    // This process's own work (alive), and a dead PID's whose lock someone (here: this test,
    // as another PID namespace would) holds.
    let own = store_dir.join(format!(".import-{}-99", std::process::id()));
    fs::create_dir(&own).unwrap();
    let locked = store_dir.join(format!(".import-{dead}-1"));
    fs::create_dir(&locked).unwrap();
    let _lock = nix::fcntl::Flock::lock(
        fs::File::open(&locked).unwrap(),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .unwrap();

    store.import(&oci_layout(dir.path()), None).unwrap();
    assert!(!abandoned.exists(), "the killed pull's work was kept");
    assert!(own.exists(), "a live process's work was removed");
    assert!(locked.exists(), "locked work was removed");
}
