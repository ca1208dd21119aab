//! `tessera image` against a busybox-static image this test builds as a `docker save` tar
//! (no internet): import, ls, inspect, rm, and the errors a user meets.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};
use tests::tessera_bin;

const BUSYBOX: &str = "/bin/busybox";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, bytes: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(bytes.len() as u64);
    builder.append_data(&mut header, path, bytes).unwrap();
}

/// A `docker save` tar (legacy form) of one layer: busybox and its `sh` link, /etc/passwd.
fn busybox_docker_save(dir: &Path) -> std::path::PathBuf {
    let mut layer = tar::Builder::new(Vec::new());
    append(
        &mut layer,
        "bin/busybox",
        0o755,
        &std::fs::read(BUSYBOX).unwrap(),
    );
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_mode(0o777);
    link.set_size(0);
    layer.append_link(&mut link, "bin/sh", "busybox").unwrap();
    append(
        &mut layer,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n",
    );
    let layer = layer.into_inner().unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    })
    .to_string();
    let mut save = tar::Builder::new(Vec::new());
    append(&mut save, "0123abcd/layer.tar", 0o644, &layer);
    append(&mut save, "config.json", 0o644, config.as_bytes());
    let manifest = r#"[{"Config": "config.json", "RepoTags": ["busybox:test"], "Layers": ["0123abcd/layer.tar"]}]"#;
    append(&mut save, "manifest.json", 0o644, manifest.as_bytes());
    let path = dir.join("busybox.tar");
    std::fs::write(&path, save.into_inner().unwrap()).unwrap();
    path
}

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn tessera(cache: &Path, args: &[&str]) -> Out {
    let out = Command::new(tessera_bin())
        .args(args)
        .env("TESSERA_CACHE", cache)
        .output()
        .expect("run tessera");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn import_ls_inspect_rm_and_their_errors() {
    if !Path::new(BUSYBOX).exists() || Command::new("mkfs.ext4").arg("-V").output().is_err() {
        println!("SKIPPED import_ls_inspect_rm_and_their_errors: needs {BUSYBOX} (busybox-static) and mkfs.ext4 (e2fsprogs)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tessera-images-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("cache");
    let save = busybox_docker_save(&dir);
    let save = save.to_str().unwrap();

    let out = tessera(&cache, &["image", "import", save]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let digest = out.stdout.trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );

    let out = tessera(&cache, &["image", "ls"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("busybox:test"), "{}", out.stdout);
    assert!(out.stdout.contains(&digest[7..19]), "{}", out.stdout);

    let out = tessera(&cache, &["image", "inspect", "busybox:test"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["Digest"], digest.as_str());
    assert_eq!(json["Config"]["config"]["Cmd"][0], "/bin/sh");
    assert!(Path::new(json["Rootfs"].as_str().unwrap()).is_file());

    // Errors: one line each, exit 1.
    for (args, needle) in [
        (
            vec!["image", "import", "/no/such/image.tar"],
            "cannot import /no/such/image.tar",
        ),
        (vec!["image", "import", "/etc"], "not an image"),
        (
            vec!["image", "inspect", "nope"],
            "no image \"nope\" in the store",
        ),
    ] {
        let out = tessera(&cache, &args);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{args:?}: {}",
            out.stderr
        );
    }

    let out = tessera(&cache, &["image", "rm", "busybox:test"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(&digest), "{}", out.stdout);
    let out = tessera(&cache, &["image", "ls"]);
    assert!(!out.stdout.contains("busybox"), "{}", out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}
