//! `tessera image pull`: an image from an OCI or Docker registry (the distribution API, spoken by
//! `oci-client`), its manifest, config and layers downloaded into a temporary OCI image layout
//! in the store's work area and imported from there with [`Store::import_reporting`], so that
//! layer application, the digest and diff_id checks, the ext4 build, naming and locking are the
//! import's own. Every blob is checked against its descriptor's sha256 as it arrives (and again
//! by the import); a manifest pulled by digest is checked against that digest; a multi-platform
//! index is resolved to linux/amd64. The functions here are async; the `tessera-image` binary
//! runs them on a current-thread tokio runtime.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, Os};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::import::sha256;
use crate::progress::ImportBar;
use crate::store::{normalize_name, Image, Store, StoreError};

/// The manifest media types asked for: OCI and Docker (schema 2), single images and indexes.
const ACCEPT: &[&str] = &[
    OCI_IMAGE_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    IMAGE_MANIFEST_MEDIA_TYPE,
    IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// How deep image indexes may nest (as in the import).
const MAX_NESTED_INDEXES: usize = 4;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum PullError {
    /// invalid image reference {reference:?}: {message}
    Reference { reference: String, message: String },
    /// registry {registry} is unreachable: {message}
    Unreachable { registry: String, message: String },
    /// TLS with registry {registry} failed: {message}
    Tls { registry: String, message: String },
    /// not found in registry {registry} ({message})
    NotFound { registry: String, message: String },
    /// authentication failed at registry {registry}: {message}
    Auth { registry: String, message: String },
    /// {what} {expected}: digest mismatch: got {actual} (a corrupt or tampered download)
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    /// {what} {digest}: {message}
    Size {
        what: String,
        digest: String,
        message: String,
    },
    /// no linux/amd64 image in its index (it has {available})
    NoPlatform { available: String },
    /// {what} from registry {registry}: {message}
    Registry {
        what: String,
        registry: String,
        message: String,
    },
    /// {what}: {message}
    Format { what: String, message: String },
    /// registry credentials: {0}
    Credentials(String),
    /// {path}: {source}
    Io { path: PathBuf, source: io::Error },
    /// {0}
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PullError + '_ {
    move |source| PullError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to log in to the registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username:?}, <redacted>)"),
        }
    }
}

/// What `tessera image pull` was asked.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Speak plain HTTP to this reference's registry (a local test registry).
    pub insecure: bool,
    pub credentials: Credentials,
    /// Draw progress bars on stderr (only where stderr is a terminal, whatever this says).
    pub progress: bool,
}

/// A reference as Docker users write it (`busybox`, `127.0.0.1:5000/busybox:1.36`,
/// `name@sha256:...`), parsed: `busybox` is `docker.io/library/busybox:latest`.
pub fn parse_reference(reference: &str) -> Result<Reference, PullError> {
    let parsed: Reference = reference.parse().map_err(|e| PullError::Reference {
        reference: reference.to_string(),
        message: format!("{e}"),
    })?;
    if let Some(digest) = parsed.digest() {
        if sha256_hex(digest).is_none() {
            return Err(PullError::Reference {
                reference: reference.to_string(),
                message: "only sha256 digests are supported".into(),
            });
        }
    }
    Ok(parsed)
}

/// The hex of a `sha256:` digest of 64 lowercase hex digits (a blob's file name), else None.
fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    valid.then_some(hex)
}

/// The host:port a reference's registry is reached at.
fn endpoint(reference: &Reference, insecure: bool) -> String {
    let host = reference.resolve_registry();
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()));
    match (has_port, insecure) {
        (true, _) => host.to_string(),
        (false, true) => format!("{host}:80"),
        (false, false) => format!("{host}:443"),
    }
}

/// Pulls `reference` into `store`, naming it as the user wrote it (normalized: `busybox` is
/// `busybox:latest`), and returns the stored image. Nothing is left in the store on an error.
pub async fn pull(
    store: &Store,
    reference: &str,
    options: &PullOptions,
) -> Result<Image, PullError> {
    let parsed = parse_reference(reference)?;
    let name = normalize_name(reference);
    let client = client(&parsed, options)?;
    let auth = match &options.credentials {
        Credentials::Anonymous => RegistryAuth::Anonymous,
        Credentials::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
    };
    let bars = MultiProgress::with_draw_target(match options.progress {
        true => ProgressDrawTarget::stderr(),
        false => ProgressDrawTarget::hidden(),
    });
    let context = Context {
        client: &client,
        reference: &parsed,
        auth: &auth,
        options,
        bars: &bars,
    };
    let work = store.work_dir("pull")?;
    let layout = work.path().join("layout");
    context.download(&layout).await?;

    let bar = ImportBar::new(bars.add(ProgressBar::new(0)));
    let image = store.import_reporting(&layout, Some(&name), &mut |step| bar.step(step));
    drop(bar);
    Ok(image?)
}

fn client(reference: &Reference, options: &PullOptions) -> Result<Client, PullError> {
    // reqwest loads the system's trust store and panics (inside oci-client) when it finds no
    // certificate at all, even for a plain-HTTP registry: say so first, in one line.
    if rustls_native_certs::load_native_certs().certs.is_empty() {
        return Err(PullError::Registry {
            what: "TLS set-up".into(),
            registry: reference.resolve_registry().to_string(),
            message: "no CA certificates on this machine (install Debian's ca-certificates, or set SSL_CERT_FILE)".into(),
        });
    }
    // reqwest is built without a default crypto provider (ring is lighter to build than
    // aws-lc-rs); a second install (a second pull in one process) fails harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientConfig {
        protocol: match options.insecure {
            true => ClientProtocol::HttpsExcept(vec![reference.resolve_registry().to_string()]),
            false => ClientProtocol::Https,
        },
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("tessera/", env!("CARGO_PKG_VERSION")),
        // An insecure registry, as Docker's insecure-registries: plain HTTP, or HTTPS whose
        // certificate is not checked (so no trust store is needed for it either).
        accept_invalid_certificates: options.insecure,
        ..ClientConfig::default()
    };
    Client::try_from(config).map_err(|e| {
        // reqwest says only "builder error"; the reason is further down the chain.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            message = format!("{message}: {inner}");
            source = inner.source();
        }
        PullError::Registry {
            what: "TLS set-up".into(),
            registry: reference.resolve_registry().to_string(),
            message: one_line(&message),
        }
    })
}

/// What a request was for, to name in its error.
#[derive(Clone, Copy)]
enum Wanted<'a> {
    Manifest,
    Blob { what: &'a str, digest: &'a str },
}

struct Context<'a> {
    client: &'a Client,
    reference: &'a Reference,
    auth: &'a RegistryAuth,
    options: &'a PullOptions,
    bars: &'a MultiProgress,
}

/// The top of a manifest, to tell an index from an image manifest.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

impl Context<'_> {
    /// The image's manifest, config and layers written as an OCI image layout at `layout`.
    async fn download(&self, layout: &Path) -> Result<(), PullError> {
        let blobs = layout.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let (bytes, digest, media_type, manifest) = self.manifest().await?;
        let hex = sha256_hex(&digest).expect("sha256() gives sha256 digests");
        write(&blobs.join(hex), &bytes)?;
        self.blob("image config", manifest.config(), &blobs, false)
            .await?;
        for layer in manifest.layers() {
            self.blob("layer", layer, &blobs, true).await?;
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
            "manifests": [{"mediaType": media_type, "digest": digest, "size": bytes.len()}],
        });
        write(&layout.join("index.json"), index.to_string().as_bytes())?;
        write(
            &layout.join("oci-layout"),
            br#"{"imageLayoutVersion": "1.0.0"}"#,
        )
    }

    /// The image manifest (its bytes, digest, media type and parsed form), through indexes
    /// resolved to linux/amd64.
    async fn manifest(&self) -> Result<(Vec<u8>, String, String, ImageManifest), PullError> {
        let mut target = self.reference.clone();
        let mut expected = self.reference.digest().map(str::to_string);
        let mut depth = 0;
        loop {
            let (body, _) = self
                .client
                .pull_manifest_raw(&target, self.auth, ACCEPT)
                .await
                .map_err(|e| self.classify(e, Wanted::Manifest))?;
            let body = body.to_vec();
            let digest = sha256(&body);
            if let Some(expected) = &expected {
                if *expected != digest {
                    return Err(PullError::Digest {
                        what: "manifest".into(),
                        expected: expected.clone(),
                        actual: digest,
                    });
                }
            }
            let probe: Probe = serde_json::from_slice(&body).map_err(|e| PullError::Format {
                what: format!("manifest {digest}"),
                message: e.to_string(),
            })?;
            let is_index = probe.manifests.is_some()
                || matches!(
                    probe.media_type.as_deref(),
                    Some(OCI_IMAGE_INDEX_MEDIA_TYPE | IMAGE_MANIFEST_LIST_MEDIA_TYPE)
                );
            if !is_index {
                let manifest =
                    ImageManifest::from_reader(&body[..]).map_err(|e| PullError::Format {
                        what: format!("manifest {digest}"),
                        message: e.to_string(),
                    })?;
                let media_type = probe
                    .media_type
                    .unwrap_or_else(|| OCI_IMAGE_MEDIA_TYPE.to_string());
                return Ok((body, digest, media_type, manifest));
            }
            depth += 1;
            if depth > MAX_NESTED_INDEXES {
                return Err(PullError::Format {
                    what: format!("image index {digest}"),
                    message: format!("image indexes nested more than {MAX_NESTED_INDEXES} deep"),
                });
            }
            let index = ImageIndex::from_reader(&body[..]).map_err(|e| PullError::Format {
                what: format!("image index {digest}"),
                message: e.to_string(),
            })?;
            let chosen = index.manifests().iter().find(|d| {
                d.platform()
                    .as_ref()
                    .is_some_and(|p| *p.architecture() == Arch::Amd64 && *p.os() == Os::Linux)
            });
            let Some(chosen) = chosen else {
                let mut available: Vec<String> = index
                    .manifests()
                    .iter()
                    .filter_map(|d| d.platform().as_ref())
                    .map(|p| format!("{}/{}", p.os(), p.architecture()))
                    .filter(|p| p != "unknown/unknown")
                    .collect();
                available.dedup();
                if available.is_empty() {
                    available.push("no platforms".into());
                }
                return Err(PullError::NoPlatform {
                    available: available.join(", "),
                });
            };
            let chosen = chosen.digest().to_string();
            if sha256_hex(&chosen).is_none() {
                return Err(PullError::Format {
                    what: format!("image index {digest}"),
                    message: format!("unsupported manifest digest {chosen:?}"),
                });
            }
            target = self.reference.clone_with_digest(chosen.clone());
            expected = Some(chosen);
        }
    }

    /// The blob `descriptor` names, into `blobs`, its size and sha256 checked as it arrives.
    async fn blob(
        &self,
        what: &str,
        descriptor: &Descriptor,
        blobs: &Path,
        show: bool,
    ) -> Result<(), PullError> {
        let digest = descriptor.digest().to_string();
        let Some(name) = sha256_hex(&digest) else {
            return Err(PullError::Format {
                what: format!("{what} {digest:?}"),
                message: "only sha256 digests of 64 hex digits are supported".into(),
            });
        };
        let path = blobs.join(name);
        if path.exists() {
            // The same blob twice in one image (an empty layer, say): already checked.
            return Ok(());
        }
        let size = descriptor.size();
        let bar = match show {
            true => self.bars.add(ProgressBar::new(size)),
            false => ProgressBar::hidden(),
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(name[..12].to_string());
        let wanted = || Wanted::Blob {
            what,
            digest: &digest,
        };
        let mut stream = self
            .client
            .pull_blob_stream(self.reference, digest.as_str())
            .await
            .map_err(|e| self.classify(e, wanted()))?;
        // Written beside and renamed into place once checked, so the layout never holds a
        // blob that does not match its name.
        let part = blobs.join(format!(".{name}.part"));
        let mut out = BufWriter::new(File::create(&part).map_err(io_err(&part))?);
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.stream_error(e, what, &digest))?;
            received += chunk.len() as u64;
            if received > size {
                return Err(PullError::Size {
                    what: what.to_string(),
                    digest,
                    message: format!("the registry sent more than its descriptor's {size} bytes"),
                });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).map_err(io_err(&part))?;
            bar.set_position(received);
        }
        out.flush().map_err(io_err(&part))?;
        drop(out);
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(PullError::Digest {
                what: what.to_string(),
                expected: digest,
                actual,
            });
        }
        if received != size {
            return Err(PullError::Size {
                what: what.to_string(),
                digest,
                message: format!("{received} bytes, but its descriptor says {size}"),
            });
        }
        fs::rename(&part, &path).map_err(io_err(&path))?;
        bar.finish();
        Ok(())
    }

    /// An error in the middle of a blob's body: oci-client's own digest check, or the transfer.
    fn stream_error(&self, e: io::Error, what: &str, digest: &str) -> PullError {
        if let Some(DigestError::VerificationError { expected, actual }) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<DigestError>())
        {
            return PullError::Digest {
                what: what.to_string(),
                expected: expected.clone(),
                actual: actual.clone(),
            };
        }
        PullError::Registry {
            what: format!("{what} {digest}"),
            registry: self.reference.registry().to_string(),
            message: format!("download failed: {}", chain(&e)),
        }
    }

    /// One clear error for what oci-client returned.
    fn classify(&self, error: OciDistributionError, wanted: Wanted<'_>) -> PullError {
        let registry = self.reference.registry().to_string();
        let logged_in = matches!(self.auth, RegistryAuth::Basic(..));
        let auth = |status: &str| PullError::Auth {
            registry: registry.clone(),
            message: match logged_in {
                true => format!("{status}: the registry refused the username and password"),
                false => format!(
                    "{status}: the image needs credentials, or does not exist \
                     (log in with --username and --password-stdin)"
                ),
            },
        };
        let what = match wanted {
            Wanted::Manifest => "manifest".to_string(),
            Wanted::Blob { what, digest } => format!("{what} {digest}"),
        };
        let not_found = |message: &str| match wanted {
            Wanted::Manifest => PullError::NotFound {
                registry: registry.clone(),
                message: message.to_string(),
            },
            Wanted::Blob { .. } => PullError::Registry {
                what: what.clone(),
                registry: registry.clone(),
                message: format!("missing ({message})"),
            },
        };
        match error {
            OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
                let registry = endpoint(self.reference, self.options.insecure);
                match tls_error(&e) {
                    Some(mut message) => {
                        if !self.options.insecure {
                            message.push_str(" (a plain-HTTP registry needs --insecure)");
                        }
                        PullError::Tls { registry, message }
                    }
                    None => PullError::Unreachable {
                        registry,
                        message: match e.is_timeout() {
                            true => "timed out".into(),
                            false => root_cause(&e),
                        },
                    },
                }
            }
            OciDistributionError::RequestError(e) => PullError::Registry {
                what,
                registry,
                message: chain(&e),
            },
            OciDistributionError::UnauthorizedError { .. } => auth("401 Unauthorized"),
            OciDistributionError::AuthenticationFailure(reason) => PullError::Auth {
                registry,
                message: format!("the token server refused: {}", one_line(&reason)),
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let messages = envelope
                    .errors
                    .iter()
                    .map(|e| one_line(&e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    not_found(&messages)
                } else if codes.contains(&&OciErrorCode::Denied) {
                    auth("403 Forbidden")
                } else if codes.contains(&&OciErrorCode::Unauthorized) {
                    auth("401 Unauthorized")
                } else {
                    PullError::Registry {
                        what,
                        registry,
                        message: messages,
                    }
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                404 => not_found("404 Not Found"),
                401 => auth("401 Unauthorized"),
                403 => auth("403 Forbidden"),
                _ => PullError::Registry {
                    what,
                    registry,
                    message: format!("HTTP {code}: {}", one_line(&message)),
                },
            },
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => PullError::Digest {
                what,
                expected,
                actual,
            },
            other => PullError::Registry {
                what,
                registry,
                message: one_line(&other.to_string()),
            },
        }
    }
}

/// An error and its sources, `a: b: c`, on one line (reqwest's own text is only "error
/// sending request").
fn chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    one_line(&parts.join(": "))
}

/// The innermost of an error's sources (`Connection refused (os error 111)`).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(source) = last.source() {
        last = source;
    }
    one_line(&last.to_string())
}

/// The TLS error among an error's sources (an `io::Error` hides the error it wraps from
/// `source()`, and reqwest's connector wraps one `io::Error` in another, so each is opened).
fn tls_error(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        let mut inner = e;
        loop {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(one_line(&tls.to_string()));
            }
            match inner
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(wrapped) => inner = wrapped,
                None => break,
            }
        }
        next = e.source();
    }
    None
}

fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.chars().count() > 300 {
        true => format!("{}...", line.chars().take(300).collect::<String>()),
        false => line,
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), PullError> {
    fs::write(path, bytes).map_err(io_err(path))
}

/// Credentials for `reference`'s registry from the first auth file that has them:
/// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `~/.config/containers/auth.json`, `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`
/// (their `auths` entries' base64 `auth`: `USER:PASSWORD`; credential helpers are not run).
pub fn credentials_from_files(
    reference: &Reference,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Credentials>, PullError> {
    let mut files = Vec::new();
    if let Some(file) = env("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(file));
    }
    if let Some(dir) = env("XDG_RUNTIME_DIR") {
        files.push(Path::new(&dir).join("containers/auth.json"));
    }
    let home = env("HOME");
    if let Some(home) = &home {
        files.push(Path::new(home).join(".config/containers/auth.json"));
    }
    match env("DOCKER_CONFIG") {
        Some(dir) => files.push(Path::new(&dir).join("config.json")),
        None => {
            if let Some(home) = &home {
                files.push(Path::new(home).join(".docker/config.json"));
            }
        }
    }
    for file in files {
        let text = match fs::read(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&file)(e)),
        };
        if let Some(found) = credentials_in(&text, reference)
            .map_err(|message| PullError::Credentials(format!("{}: {message}", file.display())))?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
}

/// The names Docker Hub goes by in auth files.
fn same_registry(a: &str, b: &str) -> bool {
    let hub = |r: &str| matches!(r, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    a == b || (hub(a) && hub(b))
}

/// The entry of one auth file for `reference`: a key naming its registry (`host[:port]`, with
/// or without `https://` and a `/v1/` path), or the registry and a repository prefix
/// (`host/namespace`), the longest match winning.
fn credentials_in(text: &[u8], reference: &Reference) -> Result<Option<Credentials>, String> {
    let file: AuthFile = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut best: Option<(usize, &AuthEntry)> = None;
    for (key, entry) in &file.auths {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let (host, path) = key.split_once('/').unwrap_or((key, ""));
        let path = path.trim_end_matches('/');
        let path = match path {
            "v1" | "v2" => "",
            path => path,
        };
        if !same_registry(host, reference.registry()) {
            continue;
        }
        let repository = reference.repository();
        let matches = path.is_empty()
            || repository == path
            || repository
                .strip_prefix(path)
                .is_some_and(|rest| rest.starts_with('/'));
        if matches && best.is_none_or(|(len, _)| path.len() > len) {
            best = Some((path.len(), entry));
        }
    }
    let Some((_, entry)) = best else {
        return Ok(None);
    };
    let Some(auth) = &entry.auth else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| format!("an `auth` entry is not base64: {e}"))?;
    let decoded = String::from_utf8(decoded).map_err(|_| "an `auth` entry is not UTF-8")?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or("an `auth` entry is not USER:PASSWORD")?;
    Ok(Some(Credentials::Basic {
        username: username.to_string(),
        password: password.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(r: &str) -> Reference {
        parse_reference(r).unwrap()
    }

    #[test]
    fn references_as_docker_users_write_them() {
        let r = reference("busybox");
        assert_eq!(r.whole(), "docker.io/library/busybox:latest");
        let r = reference("127.0.0.1:5000/busybox:1.36");
        assert_eq!(
            (r.registry(), r.repository()),
            ("127.0.0.1:5000", "busybox")
        );
        assert_eq!(r.tag(), Some("1.36"));
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = reference(&format!("localhost/x/y@{digest}"));
        assert_eq!(r.digest(), Some(digest.as_str()));
        assert_eq!(r.registry(), "localhost");
        assert!(parse_reference("Busybox").is_err());
        assert!(parse_reference("busybox@sha256:abc").is_err());
        assert_eq!(
            endpoint(&reference("busybox"), false),
            "index.docker.io:443"
        );
        assert_eq!(
            endpoint(&reference("example.com/a"), true),
            "example.com:80"
        );
        assert_eq!(endpoint(&reference("127.0.0.1:5/a"), true), "127.0.0.1:5");
    }

    fn basic(user: &str, password: &str) -> Option<Credentials> {
        Some(Credentials::Basic {
            username: user.into(),
            password: password.into(),
        })
    }

    #[test]
    fn auth_file_entries() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let file = serde_json::json!({
            "auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:one")},
                "127.0.0.1:5000": {"auth": b64("local:two:with:colons")},
                "quay.io/team": {"auth": b64("team:three")},
                "quay.io": {"auth": b64("quay:four")},
            },
            "credsStore": "desktop",
        })
        .to_string();
        let find = |r: &str| credentials_in(file.as_bytes(), &reference(r)).unwrap();
        assert_eq!(find("busybox"), basic("hub", "one"));
        assert_eq!(
            find("127.0.0.1:5000/busybox:1"),
            basic("local", "two:with:colons")
        );
        assert_eq!(find("quay.io/team/app"), basic("team", "three"));
        assert_eq!(find("quay.io/teamx/app"), basic("quay", "four"));
        assert_eq!(find("127.0.0.1:5001/busybox"), None);
        assert!(credentials_in(b"{", &reference("busybox")).is_err());
        let bad = r#"{"auths": {"docker.io": {"auth": "bm9jb2xvbg=="}}}"#;
        assert!(credentials_in(bad.as_bytes(), &reference("busybox")).is_err());
    }

    #[test]
    fn auth_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let first = dir.path().join("first.json");
        fs::write(&first, r#"{"auths": {}}"#).unwrap();
        fs::create_dir_all(dir.path().join(".docker")).unwrap();
        fs::write(
            dir.path().join(".docker/config.json"),
            serde_json::json!({"auths": {"example.com": {"auth": b64("u:p")}}}).to_string(),
        )
        .unwrap();
        let home = dir.path().to_string_lossy().into_owned();
        let env = |name: &str| match name {
            "REGISTRY_AUTH_FILE" => Some(first.to_string_lossy().into_owned()),
            "HOME" => Some(home.clone()),
            _ => None,
        };
        let found = credentials_from_files(&reference("example.com/a"), env).unwrap();
        assert_eq!(found, basic("u", "p"));
        let none = credentials_from_files(&reference("example.org/a"), env).unwrap();
        assert_eq!(none, None);
    }
}
