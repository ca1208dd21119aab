//! Issue 15's store figures: import and pull of a 100 MiB image (MB/s), each beside the same
//! work done by `skopeo copy` + `umoci unpack` on this machine, and the image root built as
//! ext4 (`mkfs.ext4 -d`, what the store does) beside EROFS (`mkfs.erofs`).
//!
//!   cargo build --release --workspace --bins && cargo bench -p benches --bench image_store
//!   IMAGE_STORE_RUNS=5 (default)
//!
//! The image: busybox and 200 files of 512 KiB (4 bits of entropy a byte, so gzip halves it,
//! about as much as it does a distribution's binaries), one gzip layer in an OCI layout made
//! here. Runs are interleaved, with a warm page cache, each into a fresh store or directory
//! on the same file system as the source. Natively: nothing here needs /dev/kvm.
//!
//! What each side does. Import: tessera reads the layout by digest, checks each blob, applies
//! the layer and builds the ext4 root; the reference copies the layout with skopeo (which checks
//! each blob) and applies its layer with umoci (which also records an mtree manifest). Pull:
//! the same, from Debian's docker-registry on 127.0.0.1 over plain HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use benches::median;
use tests::images::BUSYBOX;
use tests::registry::{self, registry_unavailable, runs, Registry};

const FILES: usize = 200;
const FILE_BYTES: usize = 512 * 1024;
const TAG: &str = "bench";

fn main() {
    let runs_wanted: usize = std::env::var("IMAGE_STORE_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    if let Some(why) = missing_tools() {
        println!("SKIPPED image_store: {why}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tessera-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tree = dir.join("tree");
    make_tree(&tree);
    let layout = dir.join("layout");
    let layer = layer_of(&tree);
    let built = registry::image(&layout, "amd64", &layer);
    registry::tag(&layout, TAG, built.descriptor.clone());
    let gz_bytes = std::fs::metadata(layout.join("blobs/sha256").join(&built.layer_digest[7..]))
        .unwrap()
        .len();
    let content = (FILES * FILE_BYTES) as f64 + std::fs::metadata(BUSYBOX).unwrap().len() as f64;
    let mb = content / 1e6;
    println!(
        "image: {:.1} MB of files, layer tar {:.1} MB, gzip {:.1} MB",
        mb,
        layer.len() as f64 / 1e6,
        gz_bytes as f64 / 1e6
    );
    drop(layer);

    let registry = Registry::start(&dir.join("registry"), false);
    registry.push(&layout, TAG, "big", &[]);
    let remote = format!("{}/big:{TAG}", registry.host());

    let oci_source = format!("oci:{}:{TAG}", layout.display());
    let docker_source = format!("docker://{remote}");
    let mut figures: Vec<(&str, Vec<f64>)> = [
        "import: tessera image import",
        "import: skopeo copy + umoci unpack",
        "pull: tessera image pull",
        "pull: skopeo copy + umoci unpack",
        "root: mkfs.ext4 -d (the store's)",
        "root: mkfs.erofs",
    ]
    .into_iter()
    .map(|name| (name, Vec::new()))
    .collect();
    let work = dir.join("work");
    for run in 0..runs_wanted {
        let times = [
            timed(&work, |w| {
                tessera_image(w, &["import", &layout.to_string_lossy()])
            }),
            timed(&work, |w| skopeo_umoci(w, &oci_source, &[])),
            timed(&work, |w| {
                tessera_image(w, &["pull", "--insecure", &remote]);
            }),
            timed(&work, |w| {
                skopeo_umoci(w, &docker_source, &["--src-tls-verify=false"])
            }),
            timed(&work, |w| {
                images::store::make_ext4(&tree, &w.join("root.ext4")).unwrap()
            }),
            timed(&work, |w| {
                check(
                    Command::new("mkfs.erofs")
                        .arg("--quiet")
                        .arg(w.join("root.erofs"))
                        .arg(&tree),
                )
            }),
        ];
        for ((name, all), seconds) in figures.iter_mut().zip(times) {
            eprintln!("run {run}: {name} {:.0} ms", seconds * 1e3);
            all.push(seconds);
        }
    }
    println!("median of {runs_wanted} runs (warm page cache):");
    for (name, all) in &mut figures {
        let seconds = median(all);
        println!(
            "  {name:<36} {:8.0} ms {:7.1} MB/s",
            seconds * 1e3,
            mb / seconds
        );
    }
    for (fs, file) in [("ext4", "root.ext4"), ("erofs", "root.erofs")] {
        let _ = std::fs::create_dir_all(&work);
        if fs == "ext4" {
            images::store::make_ext4(&tree, &work.join(file)).unwrap();
        } else {
            check(
                Command::new("mkfs.erofs")
                    .arg("--quiet")
                    .arg(work.join(file))
                    .arg(&tree),
            );
        }
        let meta = std::fs::metadata(work.join(file)).unwrap();
        println!(
            "  {fs} image: {:.1} MB apparent, {:.1} MB allocated",
            meta.len() as f64 / 1e6,
            std::os::unix::fs::MetadataExt::blocks(&meta) as f64 * 512.0 / 1e6
        );
    }
    drop(registry);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Why the bench cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    if let Some(why) = tests::images::busybox_unavailable() {
        return Some(why);
    }
    if let Some(why) = registry_unavailable() {
        return Some(why);
    }
    for (program, package) in [("umoci", "umoci"), ("mkfs.erofs", "erofs-utils")] {
        if !runs(program, "--help") {
            return Some(format!("{program} missing (apt-get install {package})"));
        }
    }
    let tessera_image = tests::bin_dir().join("tessera-image");
    if !tessera_image.is_file() {
        return Some(format!(
            "{} missing (cargo build --release --workspace --bins)",
            tessera_image.display()
        ));
    }
    None
}

/// busybox at bin/busybox and [`FILES`] files of [`FILE_BYTES`] under data/.
fn make_tree(tree: &Path) {
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("data")).unwrap();
    std::fs::copy(BUSYBOX, tree.join("bin/busybox")).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes = vec![0u8; FILE_BYTES];
    for i in 0..FILES {
        for chunk in bytes.chunks_mut(16) {
            // xorshift64: 4 bits of each step's output make each byte.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = b'a' + ((state >> (j * 4)) & 0xf) as u8;
            }
        }
        std::fs::write(tree.join(format!("data/file-{i:03}")), &bytes).unwrap();
    }
}

/// A tar of `tree`'s contents, as one image layer.
fn layer_of(tree: &Path) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", tree).unwrap();
    builder.into_inner().unwrap()
}

/// Seconds `f` takes, given a fresh empty directory that is removed afterwards.
fn timed(work: &Path, f: impl FnOnce(&Path)) -> f64 {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).unwrap();
    let started = Instant::now();
    f(work);
    let seconds = started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(work).unwrap();
    seconds
}

fn check(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tessera image ARGS` (the tessera-image helper tessera runs) with its store in `work`.
fn tessera_image(work: &Path, args: &[&str]) {
    let store: PathBuf = work.join("store");
    check(
        Command::new(tests::bin_dir().join("tessera-image"))
            .arg("--store")
            .arg(&store)
            .args(args),
    );
}

/// `skopeo copy SOURCE oci:work/layout:bench` then `umoci unpack` of it into work/bundle.
fn skopeo_umoci(work: &Path, source: &str, skopeo_options: &[&str]) {
    let copy = format!("oci:{}:{TAG}", work.join("layout").display());
    check(
        Command::new(registry::SKOPEO)
            .args(["--insecure-policy", "copy", "--quiet"])
            .args(skopeo_options)
            .arg(source)
            .arg(&copy),
    );
    check(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:{TAG}", work.join("layout").display()))
            .arg(work.join("bundle")),
    );
}
