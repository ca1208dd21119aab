//! The Rust WASI program the Wasm tests and benches run (wasm/tests/guest), built from source
//! for wasm32-wasip1 once per process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// The directory of the built modules.
fn built() -> Result<&'static Path, &'static str> {
    static GUEST: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = GUEST.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = root.join("target/wasm-guest");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
            .arg(root.join("wasm/tests/guest/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot build the Wasm test guest for wasm32-wasip1 (rustup target add wasm32-wasip1): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(target.join("wasm32-wasip1/release"))
    });
    built.as_deref().map_err(String::as_str)
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
