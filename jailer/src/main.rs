//! `tessera-jailer`: runs the Tessera VMM in a jail, with Firecracker's jailer flags.
//!
//! Must run as root (it makes cgroups, device nodes and mounts, then drops to `--uid`/`--gid`).
//! Exit codes: 0 when daemonizing and the VMM started (else the jailer becomes the VMM), 1 when a
//! step failed (the message names the step and the path), 2 for a usage error.

use std::process::ExitCode;

use clap::Parser;

mod args;
mod cgroup;
mod chroot;
mod error;
mod jail;

fn main() -> ExitCode {
    let args = match args::Args::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("tessera-jailer: {}", message.join(" "));
            return ExitCode::from(2);
        }
    };
    let result = args
        .check()
        .map_err(error::JailError::from)
        .and_then(|spec| jail::run(&spec));
    match result {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("tessera-jailer: error: {e}");
            // A bad argument is a usage error; a failed step is not.
            ExitCode::from(if matches!(e, error::JailError::Args(_)) {
                2
            } else {
                1
            })
        }
    }
}
