//! The jail's one error shape: the step that failed, the path it worked on, and why.

use std::io;
use std::path::Path;

use crate::config::ConfigError;
use crate::nofollow::ResolveError;

/// Why a jail could not be made or entered, or its VMM not started.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum JailError {
    /// {0}
    Config(#[from] ConfigError),
    /// {step}: {path}: {source}
    Step {
        step: &'static str,
        path: String,
        source: io::Error,
    },
    /// {step}: {path}: is a symbolic link (refused: the jail is built only through real directories)
    Symlink { step: &'static str, path: String },
    /// {step}: {reason}
    Refused { step: &'static str, reason: String },
}

/// Wraps an I/O or errno failure of `step` on `path`.
pub(crate) fn at<E: Into<io::Error>>(
    step: &'static str,
    path: &Path,
) -> impl FnOnce(E) -> JailError {
    let path = path.display().to_string();
    move |e| JailError::Step {
        step,
        path,
        source: e.into(),
    }
}

/// Wraps a failure to open `path` for `step`: a refused link is named, any other failure is
/// reported on `path`.
pub(crate) fn resolving(step: &'static str, path: &Path) -> impl FnOnce(ResolveError) -> JailError {
    let path = path.display().to_string();
    move |e| match e {
        ResolveError::Symlink(link) => JailError::Symlink { step, path: link },
        ResolveError::Io(source) => JailError::Step { step, path, source },
    }
}
