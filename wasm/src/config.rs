//! Blockless's JSON config file, as bls-runtime users write it, and the [`Plan`] a run follows
//! (a config file, the command line, or both: flags given on the command line win).
//!
//! Deliberate differences from bls-runtime 0.6.3, each where its code and its README disagree:
//! an unknown key is an error (128) instead of ignored; a flag overrides a key only when given
//! (bls-runtime resets unset ones); `run_time` is a deadline from the module's start (bls-runtime
//! sleeps it out before starting); `limited_memory` counts 64 KiB pages as its README says;
//! a fixed `stdin` text is the module's fd 0.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A Wasm page: the unit of `limited_memory`.
pub const WASM_PAGE: u64 = 64 * 1024;

/// Why a config or a flag cannot be run; the run's exit status is then 128.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ConfigError {
    /// {path}: {message}
    File { path: PathBuf, message: String },
    /// {0}
    Invalid(String),
}

/// The config file's keys (bls-runtime's names and meanings; docs/WASM.md lists them).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlocklessConfig {
    /// 0: `entry` is the module's file; 1: `entry` is the function, the file is in `modules`.
    #[serde(default)]
    pub version: u32,
    pub entry: Option<String>,
    /// Preopened as the module's `/`; also where `runtime_logger` and stdout/stderr files go.
    pub fs_root_path: Option<PathBuf>,
    /// The directory of CGI extensions (when `extensions_path` is not given).
    pub drivers_root_path: Option<PathBuf>,
    /// The directory of CGI extensions.
    pub extensions_path: Option<PathBuf>,
    /// A log file, relative to `fs_root_path`.
    pub runtime_logger: Option<String>,
    pub runtime_logger_level: Option<String>,
    /// wasmtime fuel.
    pub limited_fuel: Option<u64>,
    /// The module's memory, in 64 KiB pages.
    pub limited_memory: Option<u64>,
    /// The module's memory, in bytes.
    pub max_memory_size: Option<u64>,
    /// Wall time, in milliseconds.
    pub run_time: Option<u64>,
    #[serde(default)]
    pub modules: Vec<ModuleEntry>,
    /// URL prefixes the module may reach (kept for Blockless's network drivers; no driver here
    /// opens a connection, so nothing more is allowed by them).
    #[serde(default)]
    pub permissions: Vec<String>,
    /// `inherit`, or the text the module reads on fd 0.
    pub stdin: Option<String>,
    /// `inherit`, `null`, or a file name under `fs_root_path`.
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    #[serde(default)]
    pub map_dirs: Vec<MapDir>,
    pub optimize: Option<Optimize>,
    pub debug_info: Option<bool>,
}

/// One of a version-1 config's modules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleEntry {
    pub file: PathBuf,
    #[serde(default)]
    pub name: String,
    /// `entry` for the one that runs; anything else is a module the entry may import from.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The file's MD5 (lower-case hex), checked before anything runs.
    pub md5: Option<String>,
}

/// A host directory the module sees at `guest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapDir {
    pub host: PathBuf,
    pub guest: String,
}

/// Compiler settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Optimize {
    /// `none`, `speed` or `speed_and_size` (bls-runtime's `n`, `s`, `ss` too).
    pub opt_level: Option<String>,
}

/// Where one of the module's output streams goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Inherit,
    Null,
    File(PathBuf),
}

/// What the module reads on fd 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Inherit,
    Text(String),
}

/// A preopened directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// The limits a run is held to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub fuel: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub wall_time: Option<Duration>,
}

/// The compiler's optimization level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OptLevel {
    None,
    #[default]
    Speed,
    SpeedAndSize,
}

/// How much the runner logs to `runtime_logger` (or stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Everything a run needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The module that runs.
    pub module: PathBuf,
    /// Its exported function that is called (`_start` for a WASI command).
    pub function: String,
    /// Modules instantiated first and importable by their names.
    pub libraries: Vec<(String, PathBuf)>,
    /// Files whose MD5 must match before anything runs.
    pub md5: Vec<(PathBuf, String)>,
    /// The module's argv, its own name first.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    pub stdin: Input,
    pub stdout: Output,
    pub stderr: Output,
    pub limits: Limits,
    /// Where CGI extensions are looked for; none: the module gets no `blockless_cgi`.
    pub extensions: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub log_level: LogLevel,
    pub opt_level: OptLevel,
    pub debug_info: bool,
    /// Compile for a baseline CPU rather than this one (see `EngineSettings::portable`).
    pub portable: bool,
}

/// What the command line says; a field left `None` (or empty) keeps the config's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// A module file, or (not `.wasm`, `.wat`, `.wasi`, `.cwasm`) a config file.
    pub input: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub entry: Option<String>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// `HOST[::GUEST][:ro]` (bls-runtime's `--dir`, with `:ro` added).
    pub dirs: Vec<String>,
    pub fs_root_path: Option<PathBuf>,
    pub extensions: Option<PathBuf>,
    pub fuel: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub memory_pages: Option<u64>,
    pub wall_time_ms: Option<u64>,
    pub stdin: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    /// `--portable`.
    pub portable: bool,
}

pub use guest_init::spec::is_module_file;

impl BlocklessConfig {
    /// Parses a config file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<BlocklessConfig, ConfigError> {
        serde_json::from_str(text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Reads and parses the config file at `path`.
    pub fn read(path: &Path) -> Result<BlocklessConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        BlocklessConfig::parse(&text, path)
    }
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// `inherit`, `null` or a file under `root`.
fn output(value: &str, root: Option<&Path>, key: &str) -> Result<Output, ConfigError> {
    match value {
        "inherit" | "Inherit" => Ok(Output::Inherit),
        "null" | "Null" => Ok(Output::Null),
        "" => Err(invalid(format!(
            "{key}: empty (inherit, null or a file name)"
        ))),
        file => match root {
            Some(root) => Ok(Output::File(root.join(file))),
            None => Ok(Output::File(PathBuf::from(file))),
        },
    }
}

/// Parses `HOST[::GUEST][:ro|:rw]`, as the workload spec's Wasm part does.
fn parse_dir(flag: &str) -> Result<Preopen, ConfigError> {
    let dir = guest_init::spec::WasmDir::parse(flag).map_err(invalid)?;
    Ok(Preopen {
        host: PathBuf::from(dir.path),
        guest: dir.guest,
        read_only: dir.read_only,
    })
}

fn parse_env(pair: &str) -> Result<(String, String), ConfigError> {
    match pair.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.into(), value.into())),
        _ => Err(invalid(format!("--env {pair:?}: expected NAME=VALUE"))),
    }
}

fn log_level(value: Option<&str>) -> Result<LogLevel, ConfigError> {
    Ok(match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("warn") => LogLevel::Warn,
        Some("error") => LogLevel::Error,
        Some("info") => LogLevel::Info,
        Some("debug") => LogLevel::Debug,
        Some("trace") => LogLevel::Trace,
        Some(other) => {
            return Err(invalid(format!(
                "runtime_logger_level {other:?}: expected error, warn, info, debug or trace"
            )))
        }
    })
}

fn opt_level(optimize: Option<&Optimize>) -> Result<OptLevel, ConfigError> {
    Ok(
        match optimize
            .and_then(|o| o.opt_level.as_deref())
            .unwrap_or("speed")
        {
            "none" | "n" => OptLevel::None,
            "speed" | "s" => OptLevel::Speed,
            "speed_and_size" | "ss" => OptLevel::SpeedAndSize,
            other => {
                return Err(invalid(format!(
                    "optimize.opt_level {other:?}: expected none, speed or speed_and_size"
                )))
            }
        },
    )
}

/// The smaller of two optional limits.
fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Plan {
    /// Resolves the command line and the config file (`--config`, or an input that is not a
    /// module) into a plan.
    pub fn new(flags: &Overrides) -> Result<Plan, ConfigError> {
        let (config_path, module_input) = match (&flags.config, &flags.input) {
            (Some(config), Some(input)) => (Some(config.clone()), Some(input.clone())),
            (Some(config), None) => (Some(config.clone()), None),
            (None, Some(input)) if is_module_file(input) => (None, Some(input.clone())),
            (None, Some(input)) => (Some(input.clone()), None),
            (None, None) => return Err(invalid("no module and no config file given")),
        };
        let config = match &config_path {
            Some(path) => BlocklessConfig::read(path)?,
            None => BlocklessConfig::default(),
        };
        Plan::resolve(config, module_input, flags)
    }

    fn resolve(
        config: BlocklessConfig,
        module_input: Option<PathBuf>,
        flags: &Overrides,
    ) -> Result<Plan, ConfigError> {
        let mut md5 = Vec::new();
        let mut libraries = Vec::new();
        let mut entry_file = None;
        let mut names = BTreeMap::new();
        for module in &config.modules {
            if let Some(sum) = &module.md5 {
                md5.push((module.file.clone(), sum.to_ascii_lowercase()));
            }
            if module.kind.eq_ignore_ascii_case("entry") {
                if entry_file.replace(module.file.clone()).is_some() {
                    return Err(invalid("modules: more than one has type \"entry\""));
                }
            } else {
                if module.name.is_empty() {
                    return Err(invalid(format!(
                        "modules: {} has no name to be imported by",
                        module.file.display()
                    )));
                }
                if names.insert(module.name.clone(), ()).is_some() {
                    return Err(invalid(format!("modules: two are named {:?}", module.name)));
                }
                libraries.push((module.name.clone(), module.file.clone()));
            }
        }
        let entry = flags.entry.clone().or(config.entry.clone());
        let (module, function) = match (module_input, config.version) {
            (Some(input), _) => (input, entry.unwrap_or_else(|| "_start".into())),
            (None, 0) => {
                let file = entry.ok_or_else(|| invalid("entry: missing (the module's file)"))?;
                (PathBuf::from(file), "_start".to_string())
            }
            (None, 1) => {
                let file = entry_file.ok_or_else(|| {
                    invalid("modules: none has type \"entry\" (version 1 needs one)")
                })?;
                let function = entry.filter(|e| !e.is_empty()).unwrap_or("_start".into());
                (file, function)
            }
            (None, version) => {
                return Err(invalid(format!("version {version}: expected 0 or 1")));
            }
        };
        let root = flags.fs_root_path.clone().or(config.fs_root_path.clone());
        let mut preopens = Vec::new();
        for dir in &config.map_dirs {
            preopens.push(Preopen {
                host: dir.host.clone(),
                guest: dir.guest.clone(),
                read_only: false,
            });
        }
        for flag in &flags.dirs {
            preopens.push(parse_dir(flag)?);
        }
        if let Some(root) = &root {
            preopens.push(Preopen {
                host: root.clone(),
                guest: "/".into(),
                read_only: false,
            });
        }
        let mut env = Vec::new();
        for pair in &flags.env {
            env.push(parse_env(pair)?);
        }
        let stdin = match flags.stdin.as_deref().or(config.stdin.as_deref()) {
            None | Some("inherit") | Some("Inherit") => Input::Inherit,
            Some(text) => Input::Text(text.to_string()),
        };
        let stream = |flag: &Option<String>, key: &Option<String>, name| match flag
            .as_deref()
            .or(key.as_deref())
        {
            None => Ok(Output::Inherit),
            Some(value) => output(value, root.as_deref(), name),
        };
        let stdout = stream(&flags.stdout, &config.stdout, "stdout")?;
        let stderr = stream(&flags.stderr, &config.stderr, "stderr")?;
        let pages = flags.memory_pages.or(config.limited_memory);
        let page_bytes = pages
            .map(|p| {
                p.checked_mul(WASM_PAGE)
                    .ok_or_else(|| invalid(format!("limited_memory {p}: too many pages")))
            })
            .transpose()?;
        let memory_bytes = match flags.memory_bytes {
            Some(bytes) => Some(bytes),
            None => min_some(page_bytes, config.max_memory_size),
        };
        let limits = Limits {
            fuel: flags.fuel.or(config.limited_fuel),
            memory_bytes,
            wall_time: flags
                .wall_time_ms
                .or(config.run_time)
                .map(Duration::from_millis),
        };
        let extensions = flags
            .extensions
            .clone()
            .or(config.extensions_path.clone())
            .or(config.drivers_root_path.clone());
        let log_file = match (&config.runtime_logger, &root) {
            (Some(file), Some(root)) => Some(root.join(file)),
            (Some(file), None) => Some(PathBuf::from(file)),
            _ => None,
        };
        let name = module
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| module.display().to_string());
        let mut args = vec![name];
        args.extend(flags.args.iter().cloned());
        Ok(Plan {
            module,
            function,
            libraries,
            md5,
            args,
            env,
            preopens,
            stdin,
            stdout,
            stderr,
            limits,
            extensions,
            log_file,
            log_level: log_level(config.runtime_logger_level.as_deref())?,
            opt_level: opt_level(config.optimize.as_ref())?,
            debug_info: config.debug_info.unwrap_or(false),
            portable: flags.portable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(json: &str, flags: Overrides) -> Result<Plan, ConfigError> {
        let config = BlocklessConfig::parse(json, Path::new("bls.json"))?;
        Plan::resolve(config, None, &flags)
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let e = BlocklessConfig::parse(r#"{"entry": "a.wasm", "fuel": 3}"#, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.json: unknown field `fuel`"), "{e}");
    }

    #[test]
    fn version_0_runs_the_entry_file_and_version_1_the_entry_function() {
        let p = plan(
            r#"{"entry": "app.wasm", "limited_fuel": 5}"#,
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(p.module, PathBuf::from("app.wasm"));
        assert_eq!(p.function, "_start");
        assert_eq!(p.limits.fuel, Some(5));
        assert_eq!(p.args, ["app.wasm"]);
        let p = plan(
            r#"{"version": 1, "entry": "run", "modules": [
                {"file": "lib.wasm", "name": "lib", "type": "module", "md5": "ABC"},
                {"file": "main.wasm", "name": "main", "type": "entry"}]}"#,
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(p.module, PathBuf::from("main.wasm"));
        assert_eq!(p.function, "run");
        assert_eq!(
            p.libraries,
            [("lib".to_string(), PathBuf::from("lib.wasm"))]
        );
        assert_eq!(p.md5, [(PathBuf::from("lib.wasm"), "abc".to_string())]);
        let e = plan(r#"{"version": 1, "entry": "run"}"#, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("type \"entry\""), "{e}");
        let e = plan(r#"{"version": 2, "entry": "x"}"#, Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
    }

    #[test]
    fn flags_win_over_keys_only_when_given() {
        let json = r#"{"entry": "a.wasm", "limited_fuel": 5, "run_time": 100,
            "limited_memory": 2, "fs_root_path": "/srv", "stdout": "out.txt"}"#;
        let p = plan(json, Overrides::default()).unwrap();
        assert_eq!(p.limits.memory_bytes, Some(2 * WASM_PAGE));
        assert_eq!(p.limits.wall_time, Some(Duration::from_millis(100)));
        assert_eq!(p.stdout, Output::File(PathBuf::from("/srv/out.txt")));
        assert_eq!(p.preopens[0].guest, "/");
        let flags = Overrides {
            fuel: Some(9),
            memory_bytes: Some(1000),
            ..Default::default()
        };
        let p = plan(json, flags).unwrap();
        assert_eq!(p.limits.fuel, Some(9));
        assert_eq!(p.limits.memory_bytes, Some(1000));
        assert_eq!(p.limits.wall_time, Some(Duration::from_millis(100)));
    }

    #[test]
    fn dirs_take_guest_paths_and_read_only() {
        assert_eq!(
            parse_dir("/data::/in:ro").unwrap(),
            Preopen {
                host: "/data".into(),
                guest: "/in".into(),
                read_only: true
            }
        );
        assert_eq!(parse_dir("data").unwrap().guest, "data");
        assert!(!parse_dir("/a::/b").unwrap().read_only);
        assert!(parse_dir("::/b").is_err());
    }

    #[test]
    fn stdin_text_and_streams() {
        let p = plan(
            r#"{"entry": "a.wasm", "stdin": "hello", "stderr": "null"}"#,
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(p.stdin, Input::Text("hello".into()));
        assert_eq!(p.stderr, Output::Null);
        assert_eq!(p.stdout, Output::Inherit);
    }
}
