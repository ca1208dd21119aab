//! `tessera-wasm`: runs a Wasm module as the Blockless runtime does (its config file, its flag
//! names beside Tessera's, its exit codes). `tessera run app.wasm` starts it, confined, on the
//! host (`--isolation sandbox`) or tessera-init does in a microVM.
//!
//!   tessera-wasm [FLAGS] MODULE|CONFIG [-- ARGS...]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use wasm::config::{LogLevel, Overrides, Plan};
use wasm::engine::ModuleCache;
use wasm::exit;

#[derive(Debug, Parser)]
#[command(
    name = "tessera-wasm",
    version,
    about = "Run a Wasm module (WASI preview 1) with Blockless's config, limits and exit codes"
)]
struct Cli {
    /// A module (.wasm, .wat, .wasi) or a Blockless JSON config file.
    #[arg(value_name = "MODULE|CONFIG")]
    input: PathBuf,

    /// A Blockless JSON config file; INPUT is then the module it runs.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// The exported function to call [default: _start].
    #[arg(long, value_name = "NAME")]
    entry: Option<String>,

    /// Preopen a host directory: HOST[::GUEST][:ro] (GUEST defaults to HOST), repeatable.
    #[arg(long, value_name = "HOST[::GUEST][:ro]")]
    dir: Vec<String>,

    /// Preopen DIR as the module's `/`.
    #[arg(long = "fs-root-path", value_name = "DIR")]
    fs_root_path: Option<PathBuf>,

    /// An environment variable for the module, repeatable (the host's are not passed).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,

    /// Fuel (wasmtime's units): the module stops with exit code 1 when it is spent.
    #[arg(long, alias = "limited-fuel", value_name = "N")]
    fuel: Option<u64>,

    /// Memory limit in bytes: a module asking for more stops with exit code 16.
    #[arg(long = "memory-limit", value_name = "BYTES")]
    memory_limit: Option<u64>,

    /// Memory limit in 64 KiB pages (Blockless's `limited_memory`).
    #[arg(long = "limited-memory", value_name = "PAGES")]
    limited_memory: Option<u64>,

    /// Wall-time limit in milliseconds: the module stops with exit code 15.
    #[arg(long, alias = "run-time", value_name = "MS")]
    timeout: Option<u64>,

    /// The directory of CGI extensions.
    #[arg(long = "ext", alias = "drivers-root-path", value_name = "DIR")]
    extensions: Option<PathBuf>,

    /// `inherit` or the text the module reads on its stdin.
    #[arg(long, value_name = "inherit|TEXT")]
    stdin: Option<String>,

    /// `inherit`, `null` or a file (under the fs root path) for the module's stdout.
    #[arg(long, value_name = "inherit|null|FILE")]
    stdout: Option<String>,

    /// The same for stderr.
    #[arg(long, value_name = "inherit|null|FILE")]
    stderr: Option<String>,

    /// Compiled modules are kept in DIR [default: $TESSERA_CACHE/wasm].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,

    /// Compile for this run only.
    #[arg(long, conflicts_with = "cache")]
    no_cache: bool,

    /// Confine this process first (namespaces, no_new_privs, rlimits, then a seccomp filter
    /// before the module starts): how `tessera run --isolation sandbox` starts it.
    #[arg(long)]
    sandbox: bool,

    /// Compile for x86-64-v2 rather than this CPU's own features, so that the compiled module
    /// loads on another machine (how a microVM gets its host's compile).
    #[arg(long)]
    portable: bool,

    /// Compile the module (through the cache) and copy its compiled form into DIR, which a
    /// later `--cache DIR` loads without compiling; then exit without running it.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["no_cache", "sandbox"])]
    precompile_into: Option<PathBuf>,

    /// Arguments for the module (its argv[1..]).
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

/// Past the wall-time limit, the grace a module stuck in a host call (a read that blocks) gets
/// before the process ends anyway.
const TIMEOUT_GRACE: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(match e.use_stderr() {
                true => exit::CONFIG_ERROR,
                false => exit::OK,
            });
        }
    };
    if cli.sandbox {
        // First, while this process has one thread.
        if let Err(e) = wasm::sandbox::enter() {
            eprintln!("tessera: error: {e}");
            return ExitCode::from(exit::UNKNOWN);
        }
    }
    let flags = Overrides {
        input: Some(cli.input),
        config: cli.config,
        entry: cli.entry,
        args: cli.args,
        env: cli.env,
        dirs: cli.dir,
        fs_root_path: cli.fs_root_path,
        extensions: cli.extensions,
        fuel: cli.fuel,
        memory_bytes: cli.memory_limit,
        memory_pages: cli.limited_memory,
        wall_time_ms: cli.timeout,
        stdin: cli.stdin,
        stdout: cli.stdout,
        stderr: cli.stderr,
        portable: cli.portable,
    };
    let plan = match Plan::new(&flags) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("tessera: error: {e}");
            return ExitCode::from(exit::CONFIG_ERROR);
        }
    };
    let cache = match (cli.no_cache, cli.cache.or_else(ModuleCache::default_dir)) {
        (false, Some(dir)) => Some(ModuleCache::new(dir)),
        _ => None,
    };
    if let Some(dir) = &cli.precompile_into {
        let Some(cache) = &cache else {
            eprintln!("tessera: error: --precompile-into: no cache directory: set HOME or TESSERA_CACHE, or give --cache");
            return ExitCode::from(exit::UNKNOWN);
        };
        return match wasm::engine::export(&plan, cache, dir) {
            Ok(()) => ExitCode::from(exit::OK),
            Err(e) => {
                eprintln!("tessera: error: {e}");
                ExitCode::from(exit::UNKNOWN)
            }
        };
    }
    let wall_time = plan.limits.wall_time;
    let extensions = plan.extensions.is_some();
    let lock = || {
        if let Some(limit) = wall_time {
            // The epoch stops the module's own code; this stops a host call that never returns.
            std::thread::spawn(move || {
                std::thread::sleep(limit + TIMEOUT_GRACE);
                eprintln!("tessera: the module ran past its wall-time limit (exit code 15)");
                std::process::exit(exit::TIMEOUT.into());
            });
        }
        match cli.sandbox {
            true => wasm::sandbox::lock(extensions).map_err(|e| e.to_string()),
            false => Ok(()),
        }
    };
    let outcome = wasm::run::run(&plan, cache.as_ref(), lock);
    if let Some(message) = &outcome.message {
        eprintln!("tessera: {message} (exit code {})", outcome.code);
    }
    if let Some(path) = &plan.log_file {
        log_outcome(path, plan.log_level, &outcome);
    }
    ExitCode::from(outcome.code)
}

/// Appends the run's ending to the config's `runtime_logger` file, as its level allows.
fn log_outcome(path: &std::path::Path, level: LogLevel, outcome: &wasm::run::Outcome) {
    use std::io::Write as _;
    let mut lines = Vec::new();
    if let Some(message) = &outcome.message {
        lines.push(format!("ERROR {message} (exit code {})", outcome.code));
    }
    if level >= LogLevel::Info {
        let fuel = outcome
            .fuel_used
            .map(|f| format!(", fuel used {f}"))
            .unwrap_or_default();
        lines.push(format!("INFO exit code {}{fuel}", outcome.code));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    match file {
        Ok(mut file) => {
            for line in lines {
                let _ = writeln!(file, "{line}");
            }
        }
        Err(e) => eprintln!("tessera: warning: cannot write {}: {e}", path.display()),
    }
}
