//! Where `tessera run -- CMD` finds its default guest: the microvm kernel that
//! `kernel-configs/build` caches and the tessera-init initramfs that `scripts/setup` packs.

use std::path::PathBuf;

/// `$TESSERA_CACHE`, else `$HOME/.cache/tessera`: the cache the set-up scripts fill.
pub fn cache_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("TESSERA_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or("neither TESSERA_CACHE nor HOME is set, so the guest cache cannot be found")?;
    Ok(PathBuf::from(home).join(".cache/tessera"))
}

/// The cached microvm kernel (an ELF vmlinux with a PVH entry).
pub fn default_kernel() -> Result<PathBuf, String> {
    let path = cache_dir()?.join("kernel/microvm/vmlinux");
    if !path.is_file() {
        return Err(format!(
            "no guest kernel at {}: build it with `kernel-configs/build` (or `scripts/setup`), or pass --kernel",
            path.display()
        ));
    }
    Ok(path)
}

/// The cached initramfs holding tessera-init.
pub fn default_initrd() -> Result<PathBuf, String> {
    cached_initrd("tessera-init.cpio", "tessera-init")
}

/// The cached initramfs holding tessera-init and the Wasm runner (`tessera-wasm`), booted only
/// to run a Wasm module, so that other boots do not load wasmtime.
pub fn default_wasm_initrd() -> Result<PathBuf, String> {
    cached_initrd(
        "tessera-init-wasm.cpio",
        "Wasm (tessera-init + tessera-wasm)",
    )
}

fn cached_initrd(name: &str, what: &str) -> Result<PathBuf, String> {
    let path = cache_dir()?.join("initramfs").join(name);
    if !path.is_file() {
        return Err(format!(
            "no {what} initramfs at {}: build it with `scripts/setup`, or pass --initrd",
            path.display()
        ));
    }
    Ok(path)
}
