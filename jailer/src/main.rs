//! `tessera-jailer`: runs the Tessera VMM in a jail, with Firecracker's jailer flags.
//!
//! Must run as root (it makes cgroups, device nodes and mounts, then drops to `--uid`/`--gid`).
//! Exit codes: 0 when daemonizing and the VMM started (else the jailer becomes the VMM), 1 when a
//! step failed (the message names the step and the path), 2 for a usage error.
//!
//! The jail itself is the `jailer` library's [`jailer::Jail`]; this parses the command line
//! into its config and reports the outcome.

use std::process::ExitCode;

use jailer::JailError;

mod args;

fn main() -> ExitCode {
    let args: args::Args = match jailer::usage::parse("tessera-jailer") {
        Ok(args) => args,
        Err(code) => return ExitCode::from(code),
    };
    let result = args
        .check()
        .map_err(JailError::from)
        .and_then(|jail| jail.run());
    match result {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("tessera-jailer: error: {e}");
            // A bad argument is a usage error; a failed step is not.
            ExitCode::from(if matches!(e, JailError::Config(_)) {
                2
            } else {
                1
            })
        }
    }
}
