//! `tessera run app.wasm`: a Wasm module at the isolation its owner asks for. `sandbox` execs
//! the `tessera-wasm` runner (installed beside `tessera`), which confines itself
//! (`--sandbox`: namespaces, no_new_privs, rlimits, then seccomp before the module starts);
//! `microvm` is refused until it is built, never lowered to the sandbox.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use super::run::{Isolation, RunArgs};

/// Runs `module` as `args` say (this process becomes the runner); returns only on failure.
pub fn run(module: &Path, args: &RunArgs) -> Result<u8, String> {
    match args.isolation.unwrap_or(Isolation::Sandbox) {
        Isolation::Sandbox => {}
        Isolation::Microvm => {
            return Err(
                "--isolation microvm: Wasm modules in a microVM are not built yet; run with --isolation sandbox (this level is not chosen for you)".into(),
            )
        }
    }
    if !module.exists() {
        return Err(format!(
            "{}: no such module or config file (a command for a microVM goes after `--`: tessera run -- {})",
            module.display(),
            module.display()
        ));
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find tessera's own path: {e}"))?;
    let mut command = Command::new(exe.with_file_name("tessera-wasm"));
    command.arg("--sandbox");
    let wasm = &args.wasm;
    for dir in &wasm.dir {
        command.arg("--dir").arg(dir);
    }
    for env in &args.env {
        command.arg("--env").arg(env);
    }
    let numbers = [
        ("--fuel", wasm.fuel),
        ("--memory-limit", wasm.memory_limit),
        ("--timeout", wasm.timeout),
    ];
    for (flag, value) in numbers {
        if let Some(value) = value {
            command.arg(flag).arg(value.to_string());
        }
    }
    if let Some(config) = &wasm.config {
        command.arg("--config").arg(config);
    }
    if let Some(dir) = &wasm.extensions {
        command.arg("--ext").arg(dir);
    }
    // As `docker run`: the module's stdin is the terminal's only with -i.
    command.arg("--stdin").arg("inherit");
    if !args.interactive {
        command.stdin(Stdio::null());
    }
    command.arg(module).arg("--").args(&args.command);
    // Replaced by the runner, as `tessera image` is by its helper: one process less to start
    // and to wait for, and the module's exit code is this process's.
    let error = command.exec();
    Err(format!("cannot start tessera-wasm: {error}"))
}
