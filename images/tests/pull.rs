//! `tessera image pull` against a real registry: Debian's `docker-registry` (the CNCF
//! distribution registry) on 127.0.0.1, filled by `skopeo copy` from OCI layouts this test
//! builds itself (no network beyond the loopback). It runs the built `tessera-image` binary as
//! `tessera image` would and reads the pulled root filesystem back with e2fsprogs' `debugfs`.
//! Without docker-registry, skopeo or e2fsprogs it prints `SKIPPED ...` and why.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use tests::registry::{self, free_port, index, registry_unavailable, runs, tag, Built, Registry};

/// Why the test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    if let Some(why) = registry_unavailable() {
        return Some(why);
    }
    if !runs("mkfs.ext4", "-V") || !runs("debugfs", "-V") {
        return Some("mkfs.ext4 or debugfs missing (apt-get install e2fsprogs)".into());
    }
    None
}

/// A tar of `files` (path, content), each under its directories.
fn layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, content) in files {
        let mut parent = String::new();
        for dir in path
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .iter()
            .rev()
        {
            parent.push_str(dir);
            parent.push('/');
            if !dirs.insert(parent.clone()) {
                continue;
            }
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, &parent, &[][..]).unwrap();
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(content.len() as u64);
        builder
            .append_data(&mut header, path, content.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap()
}

/// An image for `arch` of one gzip layer of `files`, its blobs put in `layout`.
fn image(layout: &Path, arch: &str, files: &[(&str, &str)]) -> Built {
    registry::image(layout, arch, &layer(files))
}

/// `tessera-image --store STORE ARGS...`, with no registry credentials in its environment
/// but `env`, `stdin` as its standard input.
fn tessera(store: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera-image"));
    command.arg("--store").arg(store).args(args);
    for name in [
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "DOCKER_CONFIG",
        "TESSERA_REGISTRY_USER",
        "TESSERA_REGISTRY_PASSWORD",
    ] {
        command.env_remove(name);
    }
    // No ~/.docker/config.json of the machine's.
    command.env("HOME", store.with_extension("home"));
    command.envs(env.iter().copied());
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tessera-image");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A pull that succeeds; the digest it printed.
fn pulls(store: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> String {
    let out = tessera(store, args, env, stdin);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{args:?}: {stderr}");
    // Quiet when stderr is not a terminal: no progress bars.
    assert_eq!(stderr, "", "{args:?}");
    let digest = stdout.trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{stdout:?}"
    );
    digest
}

/// A pull that fails with exit 1 and one `tessera: error: cannot pull REF: ...` line, leaving
/// nothing in the store; that line.
fn fails(store: &Path, reference: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut args = vec!["pull", reference];
    args.extend_from_slice(extra);
    let before = entries(store);
    let out = tessera(store, &args, env, "");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert_eq!(text(&out.stdout), "", "{args:?}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    let prefix = format!("tessera: error: cannot pull {reference}: ");
    assert!(stderr.starts_with(&prefix), "{stderr}");
    assert_eq!(
        entries(store),
        before,
        "{args:?} left something in the store"
    );
    stderr.trim_end().to_string()
}

/// The store's entries (none of a pull's work directory may remain).
fn entries(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(store) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// `path` read out of the ext4 image `rootfs`, or None when it is not there.
fn read_ext4(rootfs: &Path, path: &str) -> Option<String> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(rootfs)
        .output()
        .expect("run debugfs (e2fsprogs)");
    match text(&out.stderr).contains("File not found") {
        true => None,
        false => Some(text(&out.stdout)),
    }
}

/// `tessera image inspect REF` as JSON.
fn inspect(store: &Path, reference: &str) -> serde_json::Value {
    let out = tessera(store, &["inspect", reference], &[], "");
    assert!(
        out.status.success(),
        "inspect {reference}: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rootfs(json: &serde_json::Value) -> PathBuf {
    PathBuf::from(json["Rootfs"].as_str().unwrap())
}

#[test]
fn pull_tags_digests_indexes_and_errors_from_a_registry() {
    if let Some(why) = missing_tools() {
        println!("SKIPPED image pull test: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), false);
    let host = registry.host();
    let layout = dir.path().join("layout");
    let amd64 = image(
        &layout,
        "amd64",
        &[("etc/motd", "pulled\n"), ("etc/arch", "amd64\n")],
    );
    let arm64 = image(&layout, "arm64", &[("etc/arch", "arm64\n")]);
    let corrupt = image(&layout, "amd64", &[("etc/corrupt", "soon\n")]);
    tag(&layout, "latest", amd64.descriptor.clone());
    tag(&layout, "1.36", amd64.descriptor.clone());
    tag(&layout, "multi", index(&layout, &[&arm64, &amd64]));
    tag(&layout, "armonly", index(&layout, &[&arm64]));
    tag(&layout, "corrupt", corrupt.descriptor.clone());
    registry.push(&layout, "latest", "busybox", &[]);
    // As a Docker schema 2 manifest (Docker's media types), not OCI.
    registry.push(&layout, "1.36", "busybox", &["--format", "v2s2"]);
    registry.push(&layout, "multi", "busybox", &["--all"]);
    registry.push(&layout, "armonly", "busybox", &["--all"]);
    registry.push(&layout, "corrupt", "busybox", &[]);
    let manifest_digest = amd64.descriptor["digest"].as_str().unwrap().to_string();

    // A tag, named without it: stored as REF:latest, found by `inspect REF`.
    let store = dir.path().join("store");
    let reference = format!("{host}/busybox");
    let digest = pulls(&store, &["pull", "--insecure", &reference], &[], "");
    assert_eq!(digest, manifest_digest);
    let json = inspect(&store, &reference);
    assert_eq!(json["Digest"], digest);
    assert_eq!(
        json["Names"],
        serde_json::json!([format!("{host}/busybox:latest")])
    );
    assert_eq!(json["Config"]["architecture"], "amd64");
    assert_eq!(
        read_ext4(&rootfs(&json), "/etc/motd").as_deref(),
        Some("pulled\n")
    );
    assert_eq!(
        read_ext4(&rootfs(&json), "/etc/arch").as_deref(),
        Some("amd64\n")
    );
    println!("pulled {reference}: {digest}");

    // The Docker-format tag: the same content (another manifest, so another digest).
    let docker_ref = format!("{host}/busybox:1.36");
    let docker_digest = pulls(&store, &["pull", "--insecure", &docker_ref], &[], "");
    let json = inspect(&store, &docker_ref);
    assert_eq!(json["Digest"], docker_digest);
    assert_eq!(
        read_ext4(&rootfs(&json), "/etc/motd").as_deref(),
        Some("pulled\n")
    );
    println!("pulled {docker_ref} (Docker schema 2): {docker_digest}");

    // By digest: the manifest checked against it, stored under NAME@DIGEST.
    let by_digest = format!("{host}/busybox@{manifest_digest}");
    let fresh = dir.path().join("store-digest");
    assert_eq!(
        pulls(&fresh, &["pull", "--insecure", &by_digest], &[], ""),
        manifest_digest
    );
    assert_eq!(
        inspect(&fresh, &by_digest)["Names"],
        serde_json::json!([by_digest])
    );

    // A multi-platform index: resolved to linux/amd64 (listed after arm64).
    let multi = format!("{host}/busybox:multi");
    let fresh = dir.path().join("store-multi");
    assert_eq!(
        pulls(&fresh, &["pull", "--insecure", &multi], &[], ""),
        manifest_digest
    );
    let json = inspect(&fresh, &multi);
    assert_eq!(
        read_ext4(&rootfs(&json), "/etc/arch").as_deref(),
        Some("amd64\n")
    );
    println!("pulled {multi}: the linux/amd64 image of its index");

    let empty = dir.path().join("store-failures");
    let line = fails(
        &empty,
        &format!("{host}/busybox:armonly"),
        &["--insecure"],
        &[],
    );
    assert!(line.contains("no linux/amd64 image"), "{line}");
    assert!(line.contains("linux/arm64"), "{line}");
    println!("{line}");

    let missing = format!("{host}/busybox:nope");
    let line = fails(&empty, &missing, &["--insecure"], &[]);
    assert!(line.contains("not found"), "{line}");
    println!("{line}");
    let line = fails(&empty, &format!("{host}/nothing"), &["--insecure"], &[]);
    assert!(line.contains("not found"), "{line}");

    // A layer the registry serves corrupt (its stored file flipped, same length).
    let blob = registry.blob_file(&corrupt.layer_digest);
    let mut bytes = fs::read(&blob).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let line = fails(
        &empty,
        &format!("{host}/busybox:corrupt"),
        &["--insecure"],
        &[],
    );
    assert!(line.contains("digest mismatch"), "{line}");
    assert!(line.contains(&corrupt.layer_digest), "{line}");
    println!("{line}");

    // Nobody listening.
    let closed = format!("127.0.0.1:{}", free_port());
    let line = fails(&empty, &format!("{closed}/busybox"), &["--insecure"], &[]);
    assert!(
        line.contains(&format!("registry {closed} is unreachable")),
        "{line}"
    );
    println!("{line}");

    // TLS to a plain-HTTP registry: one line that says --insecure.
    let line = fails(&empty, &reference, &[], &[]);
    assert!(line.contains("TLS"), "{line}");
    assert!(line.contains("--insecure"), "{line}");
    println!("{line}");

    let line = fails(&empty, "Bad/Name", &[], &[]);
    assert!(line.contains("invalid image reference"), "{line}");
    assert!(
        entries(&empty).iter().all(|e| e == ".lock"),
        "{:?}",
        entries(&empty)
    );
}

#[test]
fn pull_with_basic_auth() {
    if let Some(why) = missing_tools() {
        println!("SKIPPED image pull auth test: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), true);
    let layout = dir.path().join("layout");
    let built = image(&layout, "amd64", &[("etc/motd", "private\n")]);
    tag(&layout, "private", built.descriptor.clone());
    registry.push(
        &layout,
        "private",
        "busybox",
        &["--dest-creds", "tessera:s3cret"],
    );
    let reference = format!("{}/busybox:private", registry.host());

    let empty = dir.path().join("store-failures");
    let line = fails(&empty, &reference, &["--insecure"], &[]);
    assert!(line.contains("authentication failed"), "{line}");
    assert!(line.contains("--username"), "{line}");
    println!("{line}");
    let wrong = [
        ("TESSERA_REGISTRY_USER", "tessera"),
        ("TESSERA_REGISTRY_PASSWORD", "wrong"),
    ];
    let line = fails(&empty, &reference, &["--insecure"], &wrong);
    assert!(line.contains("authentication failed"), "{line}");
    assert!(line.contains("refused the username and password"), "{line}");
    println!("{line}");
    let line = fails(
        &empty,
        &reference,
        &["--insecure", "--username", "tessera"],
        &[],
    );
    assert!(line.contains("--password-stdin"), "{line}");

    // --username with the password on standard input.
    let store = dir.path().join("store");
    let args = [
        "pull",
        "--insecure",
        "--username",
        "tessera",
        "--password-stdin",
        &reference,
    ];
    let digest = pulls(&store, &args, &[], "s3cret\n");
    assert_eq!(digest, built.descriptor["digest"]);
    let json = inspect(&store, &reference);
    assert_eq!(
        read_ext4(&rootfs(&json), "/etc/motd").as_deref(),
        Some("private\n")
    );
    println!("pulled {reference} with --username and --password-stdin");

    // The environment, and an auth file's `auths` entry.
    let right = [
        ("TESSERA_REGISTRY_USER", "tessera"),
        ("TESSERA_REGISTRY_PASSWORD", "s3cret"),
    ];
    pulls(
        &dir.path().join("store-env"),
        &["pull", "--insecure", &reference],
        &right,
        "",
    );
    let auth_file = dir.path().join("auth.json");
    let entry = base64::engine::general_purpose::STANDARD.encode("tessera:s3cret");
    fs::write(
        &auth_file,
        serde_json::json!({"auths": {registry.host(): {"auth": entry}}}).to_string(),
    )
    .unwrap();
    let file_env = [("REGISTRY_AUTH_FILE", auth_file.to_str().unwrap())];
    pulls(
        &dir.path().join("store-file"),
        &["pull", "--insecure", &reference],
        &file_env,
        "",
    );
    println!("pulled {reference} with $TESSERA_REGISTRY_* and with $REGISTRY_AUTH_FILE");
}
