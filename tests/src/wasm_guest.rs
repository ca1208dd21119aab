//! The Rust WASI program the Wasm tests and benches run (wasm/tests/guest), built from source
//! for wasm32-wasip1 once per process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use guest_init::initramfs::Initramfs;

/// Where [`host_files`] puts the guest module in a test host.
pub const HOST_GUEST: &str = "/root/wasm-test-guest.wasm";
/// Where [`host_files`] puts the hello-world module in a test host.
pub const HOST_HELLO: &str = "/root/hello.wasm";
/// Where a test host's `tessera run --isolation microvm` finds the Wasm initramfs.
pub const HOST_WASM_INITRAMFS: &str = "/root/.cache/tessera/initramfs/tessera-init-wasm.cpio";

/// What a nested test host needs to run Wasm modules at both levels, as (file here, path in
/// the host): the release runner beside `tessera` (a debug wasmtime is too big and too slow
/// for an emulated host), `tessera-volume` of `bin_dir`, the Wasm initramfs (the
/// release tessera-init and the runner, packed into `dir` as scripts/setup packs it) and the two
/// modules. Err says what is missing.
pub fn host_files(bin_dir: &Path, dir: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let guest = guest().map_err(str::to_string)?;
    let hello = hello().map_err(str::to_string)?;
    let runner = release_runner()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let initramfs = dir.join("tessera-init-wasm.cpio");
    let mut archive = Initramfs::with_base_layout();
    let e = |e: guest_init::initramfs::InitramfsError| e.to_string();
    let init = release_binary("tessera-init", &["guest-init/src"])?;
    archive.add_from_host(&init, "init").map_err(e)?;
    archive
        .add_from_host(&runner, guest_init::spec::WASM_RUNNER)
        .map_err(e)?;
    let mut file = std::fs::File::create(&initramfs)
        .map_err(|err| format!("{}: {err}", initramfs.display()))?;
    archive
        .write_cpio(&mut file)
        .map_err(|err| format!("{}: {err}", initramfs.display()))?;
    Ok(vec![
        (initramfs, HOST_WASM_INITRAMFS.into()),
        (runner, "/opt/tessera/bin/tessera-wasm".into()),
        (
            bin_dir.join("tessera-volume"),
            "/opt/tessera/bin/tessera-volume".into(),
        ),
        (guest.to_path_buf(), HOST_GUEST.into()),
        (hello.to_path_buf(), HOST_HELLO.into()),
    ])
}

/// The release runner; one older than a source file it is built from is an error (a panic),
/// not a test of old code.
fn release_runner() -> Result<PathBuf, String> {
    release_binary("tessera-wasm", &["wasm/src", "guest-init/src"])
}

/// The release build of `name`, which must not be older than `sources`: the debug builds of
/// the runner and of tessera-init together are too large for a 128 MiB guest's initramfs.
fn release_binary(name: &str, sources: &[&str]) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let runner = root
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(name);
    let built = std::fs::metadata(&runner)
        .and_then(|m| m.modified())
        .map_err(|_| {
            format!(
                "{} is not built (cargo build --release --workspace --bins)",
                runner.display()
            )
        })?;
    let newest = sources
        .iter()
        .filter_map(|dir| newest_file(&root.join(dir)))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    assert!(
        built >= newest,
        "{} is older than its sources: rebuild it (cargo build --release --workspace --bins)",
        runner.display()
    );
    Ok(runner)
}

fn newest_file(dir: &Path) -> Option<SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            match meta.is_dir() {
                true => newest_file(&entry.path()),
                false => meta.modified().ok(),
            }
        })
        .max()
}

/// The built guest module (`guest COMMAND ARGS`, importing blockless_cgi too), or why it cannot
/// be built (the wasm32-wasip1 target missing).
pub fn guest() -> Result<&'static Path, &'static str> {
    built().map(|dir| -> &'static Path {
        GUEST_MODULE.get_or_init(|| dir.join("wasm-test-guest.wasm"))
    })
}

/// A hello-world module that imports WASI only (the benchmarks run it in wasmtime too).
pub fn hello() -> Result<&'static Path, &'static str> {
    built().map(|dir| -> &'static Path { HELLO_MODULE.get_or_init(|| dir.join("hello.wasm")) })
}

static GUEST_MODULE: OnceLock<PathBuf> = OnceLock::new();
static HELLO_MODULE: OnceLock<PathBuf> = OnceLock::new();

/// The guest program as a WASI preview 2 component (`wasi:cli/command`, built for
/// wasm32-wasip2), or why it cannot be built.
pub fn component_guest() -> Result<&'static Path, &'static str> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| Ok(build_for("wasm32-wasip2")?.join("wasm-test-guest.wasm")))
        .as_deref()
        .map_err(String::as_str)
}

/// The directory of the built modules.
fn built() -> Result<&'static Path, &'static str> {
    static GUEST: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    GUEST
        .get_or_init(|| build_for("wasm32-wasip1"))
        .as_deref()
        .map_err(String::as_str)
}

/// Builds wasm/tests/guest for `target` (in its own target directory: the workspace's is
/// locked while its tests run); the directory of the built files.
fn build_for(target: &str) -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/wasm-guest");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--target", target, "--manifest-path"])
        .arg(root.join("wasm/tests/guest/Cargo.toml"))
        .arg("--target-dir")
        .arg(&dir)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot build the Wasm test guest for {target} (rustup target add {target}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(dir.join(target).join("release"))
}

/// [`guest`] for a test: none, with the reason printed as a skip, when it cannot be built.
pub fn guest_or_skip() -> Option<&'static Path> {
    match guest() {
        Ok(path) => Some(path),
        Err(why) => {
            println!("SKIPPED wasm guest tests: {why}");
            None
        }
    }
}
