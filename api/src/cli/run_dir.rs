//! Where one `tessera run` keeps its sockets and disks: `$XDG_RUNTIME_DIR/tessera`, else
//! `$TMPDIR/tessera-UID`, a directory only this user may enter, and in it names starting
//! `run-PID`.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The private directory, made (mode 0700) if missing; refused if someone else owns it or
/// others may enter it.
pub(super) fn private_dir() -> Result<PathBuf, String> {
    // SAFETY: geteuid has no arguments and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(runtime) => PathBuf::from(runtime).join("tessera"),
        None => std::env::temp_dir().join(format!("tessera-{uid}")),
    };
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let meta =
        fs::symlink_metadata(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a private directory of this user (uid {uid}, mode 0700): remove it or set XDG_RUNTIME_DIR",
            dir.display()
        ));
    }
    Ok(dir)
}

/// The names of one run's files.
pub struct RunDir {
    prefix: PathBuf,
}

impl RunDir {
    pub fn new() -> Result<Self, String> {
        let prefix = private_dir()?.join(format!("run-{}", std::process::id()));
        // A unix socket's path has at most 107 bytes; the longest is the last stdio port's.
        let longest = prefix.as_os_str().len() + ".vsock_4294967295".len();
        if longest > 107 {
            return Err(format!(
                "{} is too deep for unix sockets (107 bytes at most): set XDG_RUNTIME_DIR or TMPDIR to a shorter directory",
                prefix.display()
            ));
        }
        Ok(Self { prefix })
    }

    /// The vsock device's socket; the guest's connections to port P reach it + `_P`.
    pub fn vsock(&self) -> PathBuf {
        self.with(".vsock")
    }

    /// The directory for this run's disks.
    pub fn disks(&self) -> PathBuf {
        self.with(".d")
    }

    /// The directory a sandbox mounts its root's tmpfs on.
    pub fn sandbox(&self) -> PathBuf {
        self.with(".sandbox")
    }

    /// The directory a Wasm module's files are gathered in for its disk.
    pub fn wasm_bundle(&self) -> PathBuf {
        self.with(".wasm")
    }

    fn with(&self, suffix: &str) -> PathBuf {
        let mut name = self.prefix.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }
}

/// Removes a stale socket file before binding (a run with the same pid that died).
pub fn remove_stale(path: &Path) {
    let _ = fs::remove_file(path);
}
