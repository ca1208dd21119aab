//! The wasmtime engine a plan asks for, and the compiled-module cache: a module is compiled
//! once per (module bytes, wasmtime version, engine settings) to a `.cwasm` file, and later
//! runs only deserialize (map) it.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, Module};

use crate::config::{OptLevel, Plan};

/// The engine settings a compiled module depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EngineSettings {
    /// Fuel metering (compiled into the code).
    pub fuel: bool,
    pub opt_level: OptLevel,
    pub debug_info: bool,
    /// Code for x86-64-v2 (SSE4.2, POPCNT, CMPXCHG16B) instead of the features this CPU has,
    /// so that a module compiled on one machine loads on another: a microVM's CPU may lack
    /// the host's AVX (wasmtime refuses code that needs a feature the CPU lacks).
    pub portable: bool,
}

impl EngineSettings {
    pub fn of(plan: &Plan) -> EngineSettings {
        EngineSettings {
            fuel: plan.limits.fuel.is_some(),
            opt_level: plan.opt_level,
            debug_info: plan.debug_info,
            portable: plan.portable,
        }
    }

    /// The wasmtime configuration: epoch interruption always (the wall-time limit uses it, and
    /// a cached module must not depend on whether this run has one).
    pub fn config(&self) -> Config {
        let mut config = Config::new();
        config
            .consume_fuel(self.fuel)
            .epoch_interruption(true)
            .debug_info(self.debug_info)
            .cranelift_opt_level(match self.opt_level {
                OptLevel::None => wasmtime::OptLevel::None,
                OptLevel::Speed => wasmtime::OptLevel::Speed,
                OptLevel::SpeedAndSize => wasmtime::OptLevel::SpeedAndSize,
            });
        if self.portable {
            portable(&mut config);
        }
        config
    }

    pub fn engine(&self) -> wasmtime::Result<Engine> {
        Engine::new(&self.config())
    }
}

/// Cranelift's flags for x86-64-v2, with the target named so that nothing is inferred from
/// this CPU.
fn portable(config: &mut Config) {
    if cfg!(target_arch = "x86_64") {
        // The host's own triple: this build runs on it, so the call cannot fail.
        let _ = config.target(&target_lexicon_host());
        for flag in BASELINE_X86_64 {
            // SAFETY: these are Cranelift's documented x86 ISA flags; enabling them only lets
            // the compiler use instructions that every x86-64-v2 CPU has, and wasmtime still
            // checks at load time that the running CPU has each of them.
            unsafe {
                config.cranelift_flag_enable(flag);
            }
        }
    }
}

/// x86-64-v2, as Cranelift names its features.
const BASELINE_X86_64: [&str; 6] = [
    "has_sse3",
    "has_ssse3",
    "has_sse41",
    "has_sse42",
    "has_popcnt",
    "has_cmpxchg16b",
];

/// This build's target triple.
fn target_lexicon_host() -> String {
    format!(
        "{}-unknown-{}-{}",
        std::env::consts::ARCH,
        std::env::consts::OS,
        if cfg!(target_env = "musl") {
            "musl"
        } else {
            "gnu"
        }
    )
}

/// Compiled code: a core module (WASI preview 1) or a component (WASI preview 2
/// `wasi:cli/command`).
pub enum Code {
    Module(Module),
    Component(Component),
}

/// Whether `bytes` are a binary component rather than a core module (or module text): the
/// header's version 0x0d and layer 1.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm\x0d\0\x01\0")
}

impl Code {
    /// Compiles `bytes` (a module, its text, or a component).
    fn precompile(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        match is_component(bytes) {
            true => engine.precompile_component(bytes),
            false => engine.precompile_module(bytes),
        }
    }

    /// # Safety
    /// `bytes` must come from [`Code::precompile`] for an engine with `engine`'s settings.
    unsafe fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Code> {
        // SAFETY: as the caller promises.
        unsafe {
            match Engine::detect_precompiled(bytes) {
                Some(wasmtime::Precompiled::Component) => {
                    Component::deserialize(engine, bytes).map(Code::Component)
                }
                _ => Module::deserialize(engine, bytes).map(Code::Module),
            }
        }
    }

    /// # Safety
    /// As [`Code::deserialize`], for the file at `path`.
    unsafe fn deserialize_file(
        engine: &Engine,
        path: &Path,
        component: bool,
    ) -> wasmtime::Result<Code> {
        // SAFETY: as the caller promises.
        unsafe {
            match component {
                true => Component::deserialize_file(engine, path).map(Code::Component),
                false => Module::deserialize_file(engine, path).map(Code::Module),
            }
        }
    }
}

/// Compiled modules under a directory (`$TESSERA_CACHE/wasm`).
#[derive(Debug, Clone)]
pub struct ModuleCache {
    dir: PathBuf,
}

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum LoadError {
    /// cannot read {path}: {source}
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// {path} is a precompiled module (native code): give its .wasm, which is compiled and cached here
    Precompiled { path: PathBuf },
    /// {path} is not a valid Wasm module: {message}
    Invalid { path: PathBuf, message: String },
    /// compiled-module cache {path}: {source}
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ModuleCache {
    pub fn new(dir: PathBuf) -> ModuleCache {
        ModuleCache { dir }
    }

    /// The default cache: `$TESSERA_CACHE/wasm`, else `$HOME/.cache/tessera/wasm`.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("TESSERA_CACHE").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("wasm"));
        }
        let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
        Some(PathBuf::from(home).join(".cache/tessera/wasm"))
    }

    /// Where the compiled form of `bytes` for `engine` lives.
    pub fn path_for(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        let mut settings = std::collections::hash_map::DefaultHasher::new();
        env!("CARGO_PKG_VERSION").hash(&mut settings);
        WASMTIME_VERSION.hash(&mut settings);
        engine.precompile_compatibility_hash().hash(&mut settings);
        let module = hex::encode(Sha256::digest(bytes));
        self.dir
            .join(format!("{module}-{:016x}.cwasm", settings.finish()))
    }

    /// The module at `path`, compiled for `engine`: from the cache, else compiled and stored.
    pub fn load(&self, engine: &Engine, path: &Path) -> Result<Code, LoadError> {
        let bytes = read_module(path)?;
        let cached = self.path_for(engine, &bytes);
        if cached.is_file() {
            // SAFETY: the file is in this user's own cache, written by `store` below from
            // `Code::precompile` under a name that binds it to these module bytes and these
            // engine settings; wasmtime still checks its header and settings.
            let code = unsafe { Code::deserialize_file(engine, &cached, is_component(&bytes)) };
            if let Ok(code) = code {
                return Ok(code);
            }
        }
        let compiled = Code::precompile(engine, &bytes).map_err(|e| LoadError::Invalid {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })?;
        match self.store(&cached, &compiled) {
            // A cache carried in read-only (a microVM's, from the host) that lacks this engine's
            // form: this run uses its own compile.
            Err(LoadError::Cache { source, .. })
                if source.kind() == std::io::ErrorKind::ReadOnlyFilesystem =>
            {
                eprintln!(
                    "tessera: warning: {} has no compiled form of {} for this CPU and these settings: compiled it for this run only",
                    self.dir.display(),
                    path.display()
                );
            }
            stored => stored?,
        }
        // SAFETY: as above: the bytes were just made by `Code::precompile` for this engine.
        unsafe { Code::deserialize(engine, &compiled) }.map_err(|e| LoadError::Invalid {
            path: path.to_path_buf(),
            message: format!("{e:#}"),
        })
    }

    /// Compiles `path` through this cache (once) and copies its compiled form into `dir`, where
    /// a cache over `dir` finds it: how a microVM gets a module it then only deserializes.
    pub fn export(&self, engine: &Engine, path: &Path, dir: &Path) -> Result<(), LoadError> {
        self.load(engine, path)?;
        let cached = self.path_for(engine, &read_module(path)?);
        let name = cached.file_name().unwrap_or_default();
        let err = |source| LoadError::Cache {
            path: dir.join(name),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::copy(&cached, dir.join(name)).map_err(err)?;
        Ok(())
    }

    /// Writes beside and renames over, so that a reader never maps half a file.
    fn store(&self, path: &Path, compiled: &[u8]) -> Result<(), LoadError> {
        let err = |source| LoadError::Cache {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, compiled).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }
}

/// wasmtime's version, part of every cache key.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// A module's bytes (binary or text), refusing precompiled native code.
pub fn read_module(path: &Path) -> Result<Vec<u8>, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if Engine::detect_precompiled(&bytes).is_some() {
        return Err(LoadError::Precompiled {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Compiles `path` without a cache.
pub fn compile(engine: &Engine, path: &Path) -> Result<Code, LoadError> {
    let bytes = read_module(path)?;
    let code = match is_component(&bytes) {
        true => Component::new(engine, &bytes).map(Code::Component),
        false => Module::new(engine, &bytes).map(Code::Module),
    };
    code.map_err(|e| LoadError::Invalid {
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    })
}

/// Compiles `plan`'s modules for its engine settings through `cache` and copies their compiled
/// forms into `dir` (`tessera-wasm --precompile-into`).
pub fn export(plan: &Plan, cache: &ModuleCache, dir: &Path) -> Result<(), String> {
    let engine = EngineSettings::of(plan)
        .engine()
        .map_err(|e| format!("cannot start wasmtime: {e:#}"))?;
    let libraries = plan.libraries.iter().map(|(_, path)| path);
    for path in std::iter::once(&plan.module).chain(libraries) {
        cache
            .export(&engine, path, dir)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
