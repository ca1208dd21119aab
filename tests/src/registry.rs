//! A real registry for the image tests and benches: Debian's `docker-registry` (the CNCF
//! distribution registry) on 127.0.0.1, filled by `skopeo copy` from OCI image layouts built
//! here (no network beyond the loopback).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const REGISTRY: &str = "/usr/bin/docker-registry";
pub const SKOPEO: &str = "skopeo";
/// `htpasswd -Bbn tessera s3cret` (apache2-utils): the registry's htpasswd auth takes bcrypt.
pub const HTPASSWD: &str = "tessera:$2y$05$jCep8dbiPx2u0mJd0N.4T.wUkfDXf.0jXfNUE4FxdafDSkymFR7Za\n";

/// Whether `program arg` runs here.
pub fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Why a registry cannot be started and filled here, if it cannot.
pub fn registry_unavailable() -> Option<String> {
    if !Path::new(REGISTRY).is_file() {
        return Some(format!(
            "{REGISTRY} missing (apt-get install docker-registry)"
        ));
    }
    if !runs(SKOPEO, "--version") {
        return Some("skopeo missing (apt-get install skopeo)".into());
    }
    None
}

/// A registry process on 127.0.0.1:`port`, its storage under `root`; killed when dropped.
pub struct Registry {
    child: Child,
    port: u16,
    root: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on (the kernel's pick, closed again).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The HTTP status of `GET /v2/` on 127.0.0.1:`port`, None while nothing answers.
fn v2_status(port: u16) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

impl Registry {
    /// A fresh registry in `dir`, with htpasswd basic auth ([`HTPASSWD`]: user tessera,
    /// password s3cret) when `auth`; it answers `GET /v2/` before this returns.
    pub fn start(dir: &Path, auth: bool) -> Registry {
        fs::create_dir_all(dir).unwrap();
        let root = dir.join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:PORT\n",
            root.display()
        );
        if auth {
            let file = dir.join("htpasswd");
            fs::write(&file, HTPASSWD).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: tessera-test\n    path: {}\n",
                file.display()
            ));
        }
        // The port free_port found may be taken again before the registry binds it (tests run
        // in parallel, each with a registry): then this one exits and another answers, so it
        // starts again on a new port.
        for _ in 0..5 {
            if let Some(registry) = Registry::serve(dir, &config, auth) {
                return registry;
            }
        }
        panic!("the registry could not get a free port in 5 tries")
    }

    /// One start of the registry with `config` (`PORT` in it replaced by a free port); None
    /// when it could not bind that port.
    fn serve(dir: &Path, config: &str, auth: bool) -> Option<Registry> {
        let port = free_port();
        let root = dir.join("storage");
        let config_path = dir.join("config.yml");
        fs::write(&config_path, config.replace("PORT", &port.to_string())).unwrap();
        let log_path = dir.join("registry.log");
        let log = fs::File::create(&log_path).unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut registry = Registry { child, port, root };
        let log = || fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = v2_status(port);
            let exited = registry.child.try_wait().unwrap();
            match (answer, exited) {
                (_, Some(_)) if log().contains("address already in use") => return None,
                (_, Some(status)) => panic!("the registry exited ({status}): {}", log()),
                (Some(200), None) if !auth => return Some(registry),
                (Some(401), None) if auth => return Some(registry),
                // Another test's registry on this port, while this one fails to bind it.
                (Some(_), None) => {}
                (None, None) => {}
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not answer as expected: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `HOST:PORT`, as image references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy` of the layout's `tag` to `REPO:TAG` here, with `extra` options.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str, extra: &[&str]) {
        let out = Command::new(SKOPEO)
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .args(extra)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host()))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The registry's own file of blob `digest`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = &digest["sha256:".len()..];
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// `sha256:HEX` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `bytes` gzipped (fast: the tests' layers are built at every run).
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Writes `bytes` as a blob of the OCI layout at `layout`; its digest.
pub fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&digest["sha256:".len()..]), bytes).unwrap();
    digest
}

/// One platform's image in a layout: its manifest's descriptor (digest, size, platform),
/// its one gzip layer's digest.
pub struct Built {
    pub descriptor: serde_json::Value,
    pub layer_digest: String,
}

/// An image for `arch` whose one layer is the tar `layer` (gzipped), its blobs put in
/// `layout`; Cmd /bin/sh, Env PATH=/bin.
pub fn image(layout: &Path, arch: &str, layer: &[u8]) -> Built {
    let gz = gzip(layer);
    let layer_digest = put_blob(layout, &gz);
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
    })
    .to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put_blob(layout, config.as_bytes()),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": gz.len(),
        }],
    })
    .to_string();
    Built {
        descriptor: serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put_blob(layout, manifest.as_bytes()),
            "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }),
        layer_digest,
    }
}

/// Adds `descriptor` to the layout's index.json as `tag`.
pub fn tag(layout: &Path, tag: &str, mut descriptor: serde_json::Value) {
    let path = layout.join("index.json");
    let mut index: serde_json::Value = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(_) => serde_json::json!({"schemaVersion": 2, "manifests": []}),
    };
    descriptor["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    index["manifests"].as_array_mut().unwrap().push(descriptor);
    fs::write(&path, index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion": "1.0.0"}"#,
    )
    .unwrap();
}

/// An image index of `manifests`, put in `layout`; its descriptor.
pub fn index(layout: &Path, manifests: &[&Built]) -> serde_json::Value {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests.iter().map(|b| b.descriptor.clone()).collect::<Vec<_>>(),
    })
    .to_string();
    serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": put_blob(layout, index.as_bytes()),
        "size": index.len(),
    })
}
