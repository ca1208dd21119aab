//! One run of a [`Plan`]: checks, the engine, WASI preview 1 (args, env, preopens, stdio), the
//! limits, the entry function, and the exit code it all ends with. Nothing here panics on a
//! module, a config or a file: every failure is an [`Outcome`] with its code and one line.

use std::io::Write as _;
use std::path::Path;

use md5::{Digest as _, Md5};
use wasmtime::component::{self, Component};
use wasmtime::{Linker, Module, Store};
use wasmtime_wasi::cli::{OutputFile, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, SinkOutputStream};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wasmtime_wasi::{WasiCtxView, WasiView};

use crate::cgi::{self, Cgi};
use crate::config::{Input, Output, Plan};
use crate::engine::{self, Code, EngineSettings, ModuleCache};
use crate::exit::{self, Ending};
use crate::limits::{Deadline, MemoryLimiter};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub code: u8,
    /// One line for the user, when the module did not end on its own.
    pub message: Option<String>,
    /// Fuel the module burnt, with a fuel limit.
    pub fuel_used: Option<u64>,
}

impl Outcome {
    fn failed(code: u8, message: impl Into<String>) -> Outcome {
        Outcome {
            code,
            message: Some(message.into()),
            fuel_used: None,
        }
    }
}

/// What a store carries.
pub struct State {
    pub wasi: WasiP1Ctx,
    pub limiter: MemoryLimiter,
    /// With an extensions directory: `blockless_cgi`'s state.
    pub cgi: Option<Cgi>,
}

/// Runs `plan`, compiling through `cache` (none: compiled for this run only). `lock` runs once
/// the modules are loaded and the module's files are open, just before its code starts (the
/// sandbox's seccomp filter goes on there).
pub fn run(
    plan: &Plan,
    cache: Option<&ModuleCache>,
    lock: impl FnOnce() -> Result<(), String>,
) -> Outcome {
    if let Err(message) = check_md5(plan) {
        return Outcome::failed(exit::CONFIG_ERROR, message);
    }
    let settings = EngineSettings::of(plan);
    let engine = match settings.engine() {
        Ok(engine) => engine,
        Err(e) => return Outcome::failed(exit::UNKNOWN, format!("cannot start wasmtime: {e:#}")),
    };
    let load = |path: &Path| match cache {
        Some(cache) => cache.load(&engine, path),
        None => engine::compile(&engine, path),
    };
    let code = match load(&plan.module) {
        Ok(code) => code,
        Err(e) => return Outcome::failed(exit::UNKNOWN, e.to_string()),
    };
    if let (Code::Component(_), true) = (
        &code,
        !plan.libraries.is_empty() || plan.function != "_start",
    ) {
        return Outcome::failed(
            exit::CONFIG_ERROR,
            format!(
                "{} is a component (wasi:cli/command): it runs its own `run` export, without library modules or another entry",
                plan.module.display()
            ),
        );
    }
    let mut libraries = Vec::new();
    for (name, path) in &plan.libraries {
        match load(path) {
            Ok(Code::Module(library)) => libraries.push((name.as_str(), library)),
            Ok(Code::Component(_)) => {
                return Outcome::failed(
                    exit::CONFIG_ERROR,
                    format!(
                        "{}: a library must be a core module, not a component",
                        path.display()
                    ),
                )
            }
            Err(e) => return Outcome::failed(exit::UNKNOWN, e.to_string()),
        }
    }
    let wasi = match wasi_context(plan) {
        Ok(wasi) => wasi,
        Err(message) => return Outcome::failed(exit::CONFIG_ERROR, message),
    };
    let mut store = Store::new(
        &engine,
        State {
            wasi,
            limiter: MemoryLimiter {
                limit: plan.limits.memory_bytes,
            },
            cgi: plan
                .extensions
                .clone()
                .map(|dir| Cgi::new(dir, plan.limits)),
        },
    );
    store.limiter(|state| &mut state.limiter);
    if let Some(fuel) = plan.limits.fuel {
        if let Err(e) = store.set_fuel(fuel) {
            return Outcome::failed(exit::UNKNOWN, format!("cannot set the fuel: {e:#}"));
        }
    }
    store.set_epoch_deadline(1);
    if let Err(message) = lock() {
        return Outcome::failed(exit::UNKNOWN, message);
    }
    let deadline = Deadline::start(&engine, plan.limits.wall_time);
    let result = match &code {
        Code::Module(module) => {
            instantiate_and_call(&mut store, module, &libraries, &plan.function)
        }
        Code::Component(component) => run_command(&mut store, component),
    };
    let fuel_used = plan
        .limits
        .fuel
        .and_then(|fuel| Some(fuel - store.get_fuel().ok()?.min(fuel)));
    flush_stdio();
    match result {
        Ok(()) => Outcome {
            code: exit::OK,
            message: None,
            fuel_used,
        },
        Err(error) => {
            let Ending { code, message } = exit::of_error(&error, deadline.passed());
            Outcome {
                code,
                message,
                fuel_used,
            }
        }
    }
}

fn instantiate_and_call(
    store: &mut Store<State>,
    module: &Module,
    libraries: &[(&str, Module)],
    function: &str,
) -> wasmtime::Result<()> {
    let mut linker = linker(store.engine())?;
    for (name, library) in libraries {
        let instance = linker.instantiate(&mut *store, library)?;
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut *store, "_initialize") {
            init.call(&mut *store, ())?;
        }
        linker.instance(&mut *store, name, instance)?;
    }
    let instance = linker.instantiate(&mut *store, module)?;
    if function != "_start" {
        // A reactor (a library with an entry point of its own) initializes first.
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut *store, "_initialize") {
            init.call(&mut *store, ())?;
        }
    }
    let entry = instance
        .get_typed_func::<(), ()>(&mut *store, function)
        .map_err(|e| wasmtime::Error::msg(format!("the module has no entry {function:?}: {e}")))?;
    entry.call(&mut *store, ())
}

/// Runs a component's `wasi:cli/run`; its `Err` is exit code 1, as wasmtime's CLI has it.
fn run_command(store: &mut Store<State>, component: &Component) -> wasmtime::Result<()> {
    let mut linker = component::Linker::new(store.engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    let command = Command::instantiate(&mut *store, component, &linker)?;
    match command.wasi_cli_run().call_run(&mut *store)? {
        Ok(()) => Ok(()),
        Err(()) => Err(wasmtime_wasi::I32Exit(1).into()),
    }
}

/// A component's WASI preview 2 host functions use the same context as preview 1's.
impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

/// The host functions a module may import: WASI preview 1 and `blockless_cgi`.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state: &mut State| &mut state.wasi)?;
    cgi::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// The files whose MD5 the config gives, checked before anything is compiled.
fn check_md5(plan: &Plan) -> Result<(), String> {
    for (path, expected) in &plan.md5 {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("module {}: cannot read it: {e}", path.display()))?;
        let actual = hex::encode(Md5::digest(&bytes));
        if actual != *expected {
            return Err(format!(
                "module {}: its md5 is {actual}, the config says {expected}",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Where one of the module's output streams goes; `inherited` is this process's own.
fn output_stream(
    output: &Output,
    inherited: impl StdoutStream + Sync + 'static,
) -> Result<Box<dyn StdoutStream + Sync>, String> {
    let file = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                format!(
                    "cannot open {} for the module's output: {e}",
                    path.display()
                )
            })
    };
    Ok(match output {
        Output::Inherit => Box::new(inherited),
        Output::Null => Box::new(SinkOutputStream),
        Output::File(path) => Box::new(OutputFile::new(file(path)?)),
    })
}

/// The module's WASI preview 1 context: argv, env (nothing of the host's), preopens, stdio.
fn wasi_context(plan: &Plan) -> Result<WasiP1Ctx, String> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.args(&plan.args).envs(&plan.env);
    for dir in &plan.preopens {
        let perms = match dir.read_only {
            true => FsPerms::ReadOnly,
            false => FsPerms::ReadWrite,
        };
        wasi.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| format!("--dir {}: cannot open it: {e:#}", dir.host.display()))?;
    }
    match &plan.stdin {
        Input::Inherit => {
            wasi.inherit_stdin();
        }
        Input::Text(text) => {
            wasi.stdin(MemoryInputPipe::new(text.clone().into_bytes()));
        }
    }
    wasi.stdout(output_stream(&plan.stdout, wasmtime_wasi::cli::stdout())?);
    wasi.stderr(output_stream(&plan.stderr, wasmtime_wasi::cli::stderr())?);
    Ok(wasi.build_p1())
}

fn flush_stdio() {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}
