//! Container images the tests build themselves (no internet): busybox-static as a `docker save`
//! tar, and a store imported from it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::registry::sha256;

/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";
/// The name the busybox image carries.
pub const BUSYBOX_IMAGE: &str = "busybox:test";
/// What the image's /etc/motd holds.
pub const MOTD: &str = "from the image\n";
/// The image's users: root, and app (1000) whose home is /home/app.
pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
/// The image's groups: app (1000), and wheel (10) with app as a member.
pub const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:app\n";
/// What the image's default Cmd prints.
pub const DEFAULT_CMD_OUTPUT: &str = "the image Cmd ran";

fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, bytes: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(bytes.len() as u64);
    builder.append_data(&mut header, path, bytes).unwrap();
}

/// Why the busybox image cannot be built here, if it cannot.
pub fn busybox_unavailable() -> Option<String> {
    if !Path::new(BUSYBOX).exists() {
        return Some(format!("{BUSYBOX} is missing (install busybox-static)"));
    }
    if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        return Some("mkfs.ext4 is missing (install e2fsprogs)".into());
    }
    None
}

/// The busybox image's one layer (a tar): busybox with `sh`, `cat`, `echo`, `pwd`, `ls`, `id`,
/// `touch` and `true` links, /etc/passwd, /etc/group and /etc/motd.
pub fn busybox_layer() -> Vec<u8> {
    let mut layer = tar::Builder::new(Vec::new());
    append(
        &mut layer,
        "bin/busybox",
        0o755,
        &std::fs::read(BUSYBOX).unwrap(),
    );
    for applet in ["sh", "cat", "echo", "pwd", "ls", "id", "touch", "true"] {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        layer
            .append_link(&mut link, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    append(&mut layer, "etc/passwd", 0o644, PASSWD.as_bytes());
    append(&mut layer, "etc/group", 0o644, GROUP.as_bytes());
    append(&mut layer, "etc/motd", 0o644, MOTD.as_bytes());
    layer.into_inner().unwrap()
}

/// A `docker save` tar (legacy form) of [`busybox_layer`]; Env PATH=/bin, WorkingDir /etc.
pub fn busybox_docker_save(dir: &Path) -> PathBuf {
    let layer = busybox_layer();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {
            "Cmd": ["/bin/sh", "-c", format!("echo {DEFAULT_CMD_OUTPUT}")],
            "Env": ["PATH=/bin"],
            "WorkingDir": "/etc",
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    })
    .to_string();
    let mut save = tar::Builder::new(Vec::new());
    append(&mut save, "0123abcd/layer.tar", 0o644, &layer);
    append(&mut save, "config.json", 0o644, config.as_bytes());
    let manifest = format!(
        r#"[{{"Config": "config.json", "RepoTags": ["{BUSYBOX_IMAGE}"], "Layers": ["0123abcd/layer.tar"]}}]"#
    );
    append(&mut save, "manifest.json", 0o644, manifest.as_bytes());
    let path = dir.join("busybox.tar");
    std::fs::write(&path, save.into_inner().unwrap()).unwrap();
    path
}

/// Every file of an image store under `dir` (its work files left out), as (path here, path in
/// the nested test host under `to`), for `HostOptions::extra_files`.
pub fn store_files(dir: &Path, to: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_dir() {
            files.extend(store_files(&path, &format!("{to}/{name}")));
        } else if !name.starts_with('.') {
            files.push((path, format!("{to}/{name}")));
        }
    }
    files
}

/// The busybox image built in `dir` and imported with `tessera` (of this build) into a store
/// under `dir`; the files to pack into the nested test host, where the store goes at `to` and
/// `tessera-image` beside the host's tessera.
pub fn busybox_store_for_host(dir: &Path, to: &str) -> Vec<(PathBuf, String)> {
    let save = busybox_docker_save(dir);
    let imported = Command::new(crate::tessera_bin())
        .args(["image", "import"])
        .arg(&save)
        .env("TESSERA_CACHE", dir.join("cache"))
        .output()
        .expect("run tessera image import");
    assert!(imported.status.success(), "{imported:?}");
    let mut files = store_files(&dir.join("cache/images"), to);
    for helper in ["tessera-image", "tessera-volume"] {
        files.push((
            crate::bin_dir().join(helper),
            format!("/opt/tessera/bin/{helper}"),
        ));
    }
    files
}
