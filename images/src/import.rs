//! Reading an image from an OCI image layout (a directory), an OCI archive (a tar of one), or a
//! `docker save` tar (its OCI form and its legacy `manifest.json` form): the image's config and
//! its layers applied in order into a root directory, every blob checked against its digest.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Arch, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::unpack::{self, UnpackError};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ImportError {
    /// {path}: {source}
    Io { path: PathBuf, source: io::Error },
    /// not an image: no `index.json` (OCI layout) and no `manifest.json` (docker save) in it
    NotAnImage,
    /// {what}: {message}
    Format { what: String, message: String },
    /// {what}: digest mismatch: expected {expected}, got {actual} (a corrupt or truncated blob)
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    /// no linux/amd64 image in {what}
    NoPlatform { what: String },
    /// layer {index}: {source}
    Layer { index: usize, source: UnpackError },
}

/// How deep image indexes may nest (one is the usual multi-platform image).
const MAX_NESTED_INDEXES: usize = 4;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An image read from its source, its layers applied into `root`.
#[derive(Debug)]
pub struct Imported {
    /// The store key: the manifest's digest (OCI), or the config's (legacy docker save, which
    /// has no manifest blob), as `sha256:HEX`.
    pub digest: String,
    /// The image config blob, as it was.
    pub config_json: Vec<u8>,
    pub config: ImageConfiguration,
    /// Names the source gave the image (`busybox:latest`).
    pub names: Vec<String>,
}

/// How far an import has got, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Layer `index` (from 0) of `count` is being applied.
    Layer { index: usize, count: usize },
    /// The layers are applied; the root filesystem is being built.
    Filesystem,
    /// Told once, after the layers, when `count` extended attributes were left out because
    /// only root may set them (see [`unpack::LayerStats::xattrs_dropped`]).
    XattrsLeftOut { count: u64 },
}

/// The warning for [`Step::XattrsLeftOut`].
pub fn xattrs_left_out_warning(count: u64) -> String {
    format!(
        "tessera: warning: {count} extended attributes of the image (file capabilities, \
         security labels) need root and were left out; import or pull as root to keep them"
    )
}

/// Reads the image at `source` (a directory or a tar file) and applies its layers into `root`,
/// a fresh directory; `scratch` is a directory for a tar's contents. On an error `root` is
/// part-written and is to be discarded.
pub fn import(source: &Path, root: &Path, scratch: &Path) -> Result<Imported, ImportError> {
    import_reporting(source, root, scratch, &mut |_| {})
}

/// [`import`], telling `report` before each layer is applied.
pub fn import_reporting(
    source: &Path,
    root: &Path,
    scratch: &Path,
    report: &mut dyn FnMut(Step),
) -> Result<Imported, ImportError> {
    let layout = if source.is_dir() {
        source.to_path_buf()
    } else {
        let file = File::open(source).map_err(io_err(source))?;
        // The tar crate refuses entries that would land outside `scratch`.
        tar::Archive::new(file)
            .unpack(scratch)
            .map_err(io_err(source))?;
        scratch.to_path_buf()
    };
    if layout.join("index.json").is_file() {
        oci_layout(&layout, root, report)
    } else if layout.join("manifest.json").is_file() {
        docker_legacy(&layout, root, report)
    } else {
        Err(ImportError::NotAnImage)
    }
}

/// `sha256:HEX` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The blob `digest` (`sha256:HEX`) of an OCI layout.
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, ImportError> {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("", digest));
    if algorithm != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ImportError::Format {
            what: format!("digest {digest:?}"),
            message: "only sha256 digests of 64 hex digits are supported".into(),
        });
    }
    Ok(layout.join("blobs").join(algorithm).join(hex))
}

/// A small blob, read whole and checked against `digest`.
fn read_blob(layout: &Path, digest: &str, what: &str) -> Result<Vec<u8>, ImportError> {
    let path = blob_path(layout, digest)?;
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    check(what, digest, &sha256(&bytes))?;
    Ok(bytes)
}

fn check(what: &str, expected: &str, actual: &str) -> Result<(), ImportError> {
    match expected == actual {
        true => Ok(()),
        false => Err(ImportError::Digest {
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        }),
    }
}

fn format_err(what: &str) -> impl FnOnce(oci_spec::OciSpecError) -> ImportError + '_ {
    move |e| ImportError::Format {
        what: what.to_string(),
        message: e.to_string(),
    }
}

fn oci_layout(
    layout: &Path,
    root: &Path,
    report: &mut dyn FnMut(Step),
) -> Result<Imported, ImportError> {
    let index =
        ImageIndex::from_file(layout.join("index.json")).map_err(format_err("index.json"))?;
    let mut names = Vec::new();
    let mut chosen = None;
    for descriptor in index.manifests() {
        if let Some(name) = descriptor
            .annotations()
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name"))
        {
            names.push(name.clone());
        }
        chosen.get_or_insert(descriptor.clone());
    }
    let mut descriptor = chosen.ok_or_else(|| ImportError::Format {
        what: "index.json".into(),
        message: "no manifests".into(),
    })?;
    // A multi-platform image: its index, resolved to linux/amd64 (indexes of indexes at most
    // MAX_NESTED_INDEXES deep: every level is one more blob to read).
    let mut depth = 0;
    while *descriptor.media_type() == MediaType::ImageIndex {
        depth += 1;
        if depth > MAX_NESTED_INDEXES {
            return Err(ImportError::Format {
                what: "index.json".into(),
                message: format!("image indexes nested more than {MAX_NESTED_INDEXES} deep"),
            });
        }
        let digest = descriptor.digest().to_string();
        let bytes = read_blob(layout, &digest, "image index")?;
        let nested = ImageIndex::from_reader(&bytes[..]).map_err(format_err("image index"))?;
        descriptor = nested
            .manifests()
            .iter()
            .find(|d| {
                d.platform()
                    .as_ref()
                    .is_some_and(|p| *p.architecture() == Arch::Amd64 && *p.os() == Os::Linux)
            })
            .cloned()
            .ok_or(ImportError::NoPlatform {
                what: format!("image index {digest}"),
            })?;
    }
    let digest = descriptor.digest().to_string();
    let manifest_bytes = read_blob(layout, &digest, "manifest")?;
    let manifest =
        ImageManifest::from_reader(&manifest_bytes[..]).map_err(format_err("manifest"))?;
    let config_digest = manifest.config().digest().to_string();
    let config_json = read_blob(layout, &config_digest, "image config")?;
    let config =
        ImageConfiguration::from_reader(&config_json[..]).map_err(format_err("image config"))?;
    let diff_ids = config.rootfs().diff_ids().clone();
    let count = manifest.layers().len();
    let mut dropped = 0;
    for (index, layer) in manifest.layers().iter().enumerate() {
        report(Step::Layer { index, count });
        let layer_digest = layer.digest().to_string();
        let path = blob_path(layout, &layer_digest)?;
        dropped +=
            apply(&path, root, index, Some(&layer_digest), diff_ids.get(index))?.xattrs_dropped;
    }
    if dropped > 0 {
        report(Step::XattrsLeftOut { count: dropped });
    }
    Ok(Imported {
        digest,
        config_json,
        config,
        names,
    })
}

/// One image of a legacy `docker save` manifest.json.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn docker_legacy(
    layout: &Path,
    root: &Path,
    report: &mut dyn FnMut(Step),
) -> Result<Imported, ImportError> {
    let manifest_path = layout.join("manifest.json");
    let text = fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
    let images: Vec<DockerImage> =
        serde_json::from_slice(&text).map_err(|e| ImportError::Format {
            what: "manifest.json".into(),
            message: e.to_string(),
        })?;
    let image = images
        .into_iter()
        .next()
        .ok_or_else(|| ImportError::Format {
            what: "manifest.json".into(),
            message: "no images".into(),
        })?;
    let config_path = inside(layout, &image.config)?;
    let config_json = fs::read(&config_path).map_err(io_err(&config_path))?;
    let config =
        ImageConfiguration::from_reader(&config_json[..]).map_err(format_err("image config"))?;
    let diff_ids = config.rootfs().diff_ids().clone();
    if diff_ids.len() != image.layers.len() {
        return Err(ImportError::Format {
            what: "manifest.json".into(),
            message: format!(
                "{} layers, but the config lists {} diff_ids",
                image.layers.len(),
                diff_ids.len()
            ),
        });
    }
    let count = image.layers.len();
    let mut dropped = 0;
    for (index, layer) in image.layers.iter().enumerate() {
        report(Step::Layer { index, count });
        let path = inside(layout, layer)?;
        dropped += apply(&path, root, index, None, diff_ids.get(index))?.xattrs_dropped;
    }
    if dropped > 0 {
        report(Step::XattrsLeftOut { count: dropped });
    }
    Ok(Imported {
        digest: sha256(&config_json),
        config_json,
        config,
        names: image.repo_tags.unwrap_or_default(),
    })
}

/// A path named by a manifest.json, which must stay inside the archive.
fn inside(layout: &Path, name: &str) -> Result<PathBuf, ImportError> {
    let relative = Path::new(name);
    if relative.is_absolute()
        || relative
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(ImportError::Format {
            what: "manifest.json".into(),
            message: format!("{name:?} is outside the archive"),
        });
    }
    Ok(layout.join(relative))
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads what is left (the tar's end padding) and returns `sha256:HEX` of everything.
    fn finish(mut self) -> io::Result<String> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(format!("sha256:{}", hex::encode(self.hasher.finalize())))
    }
}

/// Applies the layer at `path` onto `root`, checking its blob digest (compressed bytes) and its
/// diff_id (uncompressed tar) where known.
fn apply(
    path: &Path,
    root: &Path,
    index: usize,
    blob_digest: Option<&str>,
    diff_id: Option<&String>,
) -> Result<unpack::LayerStats, ImportError> {
    let what = format!("layer {index} ({})", path.display());
    let file = File::open(path).map_err(io_err(path))?;
    let mut blob = Hashing::new(file);
    let layer = {
        let tar = unpack::decompress(&mut blob).map_err(io_err(path))?;
        let mut tar = Hashing::new(tar);
        let result = unpack::apply_layer(root, &mut tar);
        // A digest mismatch explains a corrupt layer better than the unpacker's error would.
        let diff = tar.finish();
        (result, diff)
    };
    let blob_actual = blob.finish().map_err(io_err(path))?;
    if let Some(expected) = blob_digest {
        check(&what, expected, &blob_actual)?;
    }
    let (result, diff) = layer;
    if let (Some(expected), Ok(actual)) = (diff_id, &diff) {
        check(&format!("{what} uncompressed"), expected, actual)?;
    }
    let stats = result.map_err(|source| ImportError::Layer { index, source })?;
    diff.map_err(io_err(path))?;
    Ok(stats)
}
