//! `tessera image ...`: runs `tessera-image` (installed beside `tessera`) with the store's
//! directory, `$TESSERA_CACHE/images`. The image code lives in its own binary so that the VMM's
//! binary, whose resident pages are its memory figures, carries none of it.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::guest_image;

#[derive(clap::Args)]
pub struct ImageArgs {
    /// The `tessera image` command and its arguments (pull, import, ls, inspect, rm; --help).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

/// Replaces this process with `tessera-image --store DIR ARGS...`; returns only on failure.
pub fn run(args: ImageArgs) -> Result<u8, String> {
    let store = guest_image::cache_dir()?.join("images");
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find tessera's own path: {e}"))?;
    let helper = exe.with_file_name("tessera-image");
    let error = Command::new(&helper)
        .arg("--store")
        .arg(&store)
        .args(&args.args)
        .exec();
    Err(format!(
        "cannot run {}: {error} (it is built and installed beside tessera)",
        helper.display()
    ))
}
