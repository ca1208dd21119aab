//! `tessera image` against a busybox-static image this test builds as a `docker save` tar
//! (no internet): import, ls, inspect, rm, and the errors a user meets.

use std::path::Path;
use std::process::Command;

use tests::images::{busybox_docker_save, busybox_unavailable};
use tests::tessera_bin;

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
    if let Some(why) = busybox_unavailable() {
        println!("SKIPPED import_ls_inspect_rm_and_their_errors: {why}");
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
    assert_eq!(json["Config"]["config"]["WorkingDir"], "/etc");
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

    // A damaged image directory (its config gone) is left out with a warning; the rest lists.
    let damaged = cache.join("images/sha256-00000000");
    std::fs::create_dir_all(&damaged).unwrap();
    let out = tessera(&cache, &["image", "ls"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("busybox:test"), "{}", out.stdout);
    assert!(
        out.stderr
            .starts_with("tessera: warning: a damaged image is left out: ")
            && out.stderr.contains("sha256-00000000"),
        "{}",
        out.stderr
    );
    std::fs::remove_dir_all(&damaged).unwrap();

    let out = tessera(&cache, &["image", "rm", "busybox:test"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(&digest), "{}", out.stdout);
    let out = tessera(&cache, &["image", "ls"]);
    assert!(!out.stdout.contains("busybox"), "{}", out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}
