//! The jailer's one error shape: the step that failed, the path it worked on, and why.

use std::io;
use std::path::Path;

use crate::args::ArgsError;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum JailError {
    /// {0}
    Args(#[from] ArgsError),
    /// {step}: {path}: {source}
    Step {
        step: &'static str,
        path: String,
        source: io::Error,
    },
    /// {step}: {reason}
    Refused { step: &'static str, reason: String },
}

/// Wraps an I/O or errno failure of `step` on `path`.
pub fn at<E: Into<io::Error>>(step: &'static str, path: &Path) -> impl FnOnce(E) -> JailError {
    let path = path.display().to_string();
    move |e| JailError::Step {
        step,
        path,
        source: e.into(),
    }
}
