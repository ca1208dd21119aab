//! `tessera run app.wasm`: a Wasm module at the isolation its owner asks for, from one
//! [`WasmModule`] (the workload spec's Wasm part) that both levels turn into the runner's
//! command line.
//!
//! - `sandbox` execs the `tessera-wasm` runner (installed beside `tessera`), which confines
//!   itself (`--sandbox`: namespaces, no_new_privs, rlimits, then seccomp before the module
//!   starts).
//! - `microvm` compiles the module here (through the host's cache), puts it and its compiled
//!   form on a read-only disk, shares each `--dir` as a volume (copied back when read-write),
//!   and boots the Wasm initramfs, whose tessera-init runs the runner on them.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use guest_init::spec::{is_module_file, EnvVar, Filesystem, Network, Policy, WasmDir, WasmModule};

use super::run::{parse_env, Isolation, RunArgs};
use super::run_dir::RunDir;
use super::volumes::VolumeFlag;

/// Where a microVM sees the module and its compiled form.
const GUEST_BUNDLE: &str = "/run/tessera/wasm";
/// Where a microVM mounts the module's directories (`/run/tessera/dirs/N`).
const GUEST_DIRS: &str = "/run/tessera/dirs";

/// A module made ready for a microVM.
pub struct MicrovmModule {
    /// The spec's Wasm part, with the guest's paths.
    pub wasm: WasmModule,
    /// The disks it needs, in order: its bundle (read-only), then each `--dir`.
    pub volumes: Vec<VolumeFlag>,
    /// The bundle's host directory, removed on drop (once its disk is made).
    _bundle: RemovedOnDrop,
}

/// What `tessera run MODULE` goes on with.
pub enum Prepared {
    /// A microVM, to boot as a command's.
    Microvm(Box<MicrovmModule>),
    /// Done before any boot: the runner said why and ended with this code (a module that does
    /// not compile ends as it would in the sandbox).
    Exit(u8),
}

/// Runs `module` in the sandbox (this process becomes the runner, and returns only on failure)
/// or makes it ready for a microVM.
pub fn prepare(
    module: &Path,
    args: &RunArgs,
    level: Isolation,
    policy: Option<&Policy>,
) -> Result<Prepared, String> {
    if !module.exists() {
        return Err(format!(
            "{}: no such module or config file (a command for a microVM goes after `--`: tessera run -- {})",
            module.display(),
            module.display()
        ));
    }
    if let Some(flag) = args.process_only_flag() {
        return Err(format!(
            "{flag} is for a command or an image, not a Wasm module (a module sees host directories through --dir HOST[::GUEST][:ro])"
        ));
    }
    let (mut wasm, env) = host_module(module, args)?;
    if let Some(policy) = policy {
        apply_policy(&mut wasm, policy)?;
    }
    match level {
        Isolation::Sandbox => Err(exec_sandboxed(&wasm, &env, args)),
        Isolation::Microvm => microvm(module, wasm),
    }
}

/// The module as `args` describe it, with this host's paths, and its environment.
fn host_module(module: &Path, args: &RunArgs) -> Result<(WasmModule, Vec<EnvVar>), String> {
    let text = |flag: &str, path: &Path| {
        path.to_str()
            .map(str::to_string)
            .ok_or_else(|| format!("{flag} {}: not a UTF-8 path", path.display()))
    };
    let flags = &args.wasm;
    let wasm = WasmModule {
        module: text("MODULE", module)?,
        dirs: flags
            .dir
            .iter()
            .map(|flag| WasmDir::parse(flag))
            .collect::<Result<_, _>>()?,
        fuel: flags.fuel,
        memory_limit: flags.memory_limit,
        timeout_ms: flags.timeout,
        config: flags
            .config
            .as_deref()
            .map(|p| text("--config", p))
            .transpose()?,
        extensions: flags
            .extensions
            .as_deref()
            .map(|p| text("--ext", p))
            .transpose()?,
        cache: None,
        portable: false,
    };
    Ok((wasm, parse_env(&args.env)?))
}

/// A policy as a module's own limits (WASI gives a module nothing else: no process, no
/// network, no files but its --dir preopens); a part the runner cannot enforce is refused.
fn apply_policy(wasm: &mut WasmModule, policy: &Policy) -> Result<(), String> {
    let limits = &policy.limits;
    let refused = [
        (
            policy.filesystem != Filesystem::default(),
            "filesystem: a module sees only its --dir preopens (add :ro for read-only)",
        ),
        (
            matches!(policy.network, Network::Interface(_)),
            "network.interface: a module has no network interfaces",
        ),
        (
            limits.cpus.is_some() || limits.pids.is_some(),
            "limits.cpus and limits.pids: a module is one thread; bound it with fuel (--fuel)",
        ),
        (
            limits.file_size_mib.is_some() || limits.open_files.is_some(),
            "limits.file_size_mib and limits.open_files are not enforced for a module",
        ),
        (
            !policy.capabilities.is_empty() || !policy.syscalls.is_empty(),
            "capabilities and syscalls: a module makes no system calls of its own",
        ),
    ];
    if let Some((_, why)) = refused.iter().find(|(given, _)| *given) {
        return Err(format!("the policy's {why}"));
    }
    if let Some(mib) = limits.memory_mib {
        let bytes = mib.saturating_mul(1 << 20);
        wasm.memory_limit = Some(wasm.memory_limit.map_or(bytes, |flag| flag.min(bytes)));
    }
    if let Some(seconds) = limits.wall_time_s {
        let ms = seconds.saturating_mul(1000);
        wasm.timeout_ms = Some(wasm.timeout_ms.map_or(ms, |flag| flag.min(ms)));
    }
    Ok(())
}

/// The runner beside this binary.
fn runner() -> Result<Command, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find tessera's own path: {e}"))?;
    Ok(Command::new(exe.with_file_name("tessera-wasm")))
}

/// Replaces this process by the sandboxed runner, as `tessera image` is by its helper: one
/// process less to start and to wait for, and the module's exit code is this process's.
/// Returns why that failed.
fn exec_sandboxed(wasm: &WasmModule, env: &[EnvVar], args: &RunArgs) -> String {
    let mut command = match runner() {
        Ok(command) => command,
        Err(e) => return e,
    };
    command
        .arg("--sandbox")
        .args(wasm.runner_args(&args.command, env));
    // As `docker run`: the module's stdin is the terminal's only with -i.
    if !args.interactive {
        command.stdin(Stdio::null());
    }
    let error = command.exec();
    format!("cannot start tessera-wasm: {error}")
}

/// The module's bundle (the module and its compiled form) and its directories as disks, and the
/// spec's Wasm part that finds them in the guest.
fn microvm(module: &Path, host: WasmModule) -> Result<Prepared, String> {
    let host_only = |what: &str| {
        Err(format!(
            "--isolation microvm: {what} names files on this host that a microVM does not get yet: run it with --isolation sandbox (this level is not chosen for you)"
        ))
    };
    if host.config.is_some() || !is_module_file(module) {
        return host_only("a Blockless config");
    }
    if host.extensions.is_some() {
        return host_only("--ext (CGI extensions)");
    }
    let bundle = RemovedOnDrop(RunDir::new()?.wasm_bundle());
    let _ = std::fs::remove_dir_all(&bundle.0);
    let cache = bundle.0.join("cache");
    let name = module.file_name().ok_or("MODULE: not a file name")?;
    std::fs::create_dir_all(&cache)
        .and_then(|()| std::fs::copy(module, bundle.0.join(name)))
        .map_err(|e| format!("cannot copy {} for the microVM: {e}", module.display()))?;
    // Compiled with the settings the guest's run uses (fuel metering is compiled in), for a
    // baseline CPU: the guest's may lack features of this one.
    let mut precompile = runner()?;
    precompile
        .arg("--precompile-into")
        .arg(&cache)
        .arg("--portable");
    if let Some(fuel) = host.fuel {
        precompile.arg("--fuel").arg(fuel.to_string());
    }
    let status = precompile
        .arg(module)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run tessera-wasm: {e}"))?;
    if !status.success() {
        return Ok(Prepared::Exit(status.code().map_or(255, |c| c as u8)));
    }

    let mut volumes = vec![VolumeFlag {
        host: bundle.0.clone(),
        guest: GUEST_BUNDLE.into(),
        read_only: true,
    }];
    let mut dirs = Vec::new();
    for (i, dir) in host.dirs.iter().enumerate() {
        let path =
            std::path::absolute(&dir.path).map_err(|e| format!("--dir {}: {e}", dir.path))?;
        if !path.is_dir() {
            return Err(format!("--dir {}: not a directory", dir.path));
        }
        let mount = format!("{GUEST_DIRS}/{i}");
        volumes.push(VolumeFlag {
            host: path,
            guest: mount.clone(),
            read_only: dir.read_only,
        });
        dirs.push(WasmDir {
            path: mount,
            ..dir.clone()
        });
    }
    let name = name.to_string_lossy();
    Ok(Prepared::Microvm(Box::new(MicrovmModule {
        wasm: WasmModule {
            module: format!("{GUEST_BUNDLE}/{name}"),
            dirs,
            cache: Some(format!("{GUEST_BUNDLE}/cache")),
            portable: true,
            ..host
        },
        volumes,
        _bundle: bundle,
    })))
}

/// A directory removed with everything in it when dropped.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
