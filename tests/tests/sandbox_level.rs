//! `tessera run --image busybox --isolation sandbox` on this host: the container sandbox, its
//! policy, and every confinement the issue lists, each stopped and reported.

use std::path::{Path, PathBuf};
use std::process::Command;

use tests::images::{busybox_docker_save, busybox_unavailable, BUSYBOX_IMAGE};
use tests::tessera_bin;

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A store with the busybox image, made once per test process.
fn cache() -> &'static Path {
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tessera-sandbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let save = busybox_docker_save(&dir);
        let out = Command::new(tessera_bin())
            .args(["image", "import"])
            .arg(&save)
            .env("TESSERA_CACHE", dir.join("cache"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        dir.join("cache")
    })
}

fn sandbox(args: &[&str], cmd: &str) -> Out {
    let out = Command::new(tessera_bin())
        .args(["run", "--isolation", "sandbox", "--image", BUSYBOX_IMAGE])
        .args(args)
        .args(["--", "/bin/sh", "-c", cmd])
        .env("TESSERA_CACHE", cache())
        .output()
        .expect("run tessera");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn skip(test: &str) -> bool {
    if let Some(why) = busybox_unavailable() {
        println!("SKIPPED {test}: {why}");
        return true;
    }
    false
}

#[test]
fn runs_the_image_command() {
    if skip("runs_the_image_command") {
        return;
    }
    let out = sandbox(&[], "echo hello; id; hostname; pwd; cat /etc/motd; ls /");
    println!("{out}");
    assert_eq!(out.code, Some(0), "{out}");
}
