//! The Wasm part of a workload spec: a module for the Wasm runner (`tessera-wasm`) instead of a
//! program, and the one translation of it into the runner's command line, which every level
//! uses (the host sandbox execs the runner beside `tessera`; tessera-init execs [`RUNNER`]).

use serde::{Deserialize, Serialize};

use super::{EnvVar, SpecError};

/// Where the Wasm initramfs holds the runner. Plain initramfs images do not carry it, so
/// microVM boots that run no Wasm do not pay for wasmtime.
pub const RUNNER: &str = "/usr/bin/tessera-wasm";

/// Whether `path` names a module rather than a Blockless config file (bls-runtime's rule: by
/// extension).
pub fn is_module_file(path: &std::path::Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    matches!(ext.as_deref(), Some("wasm" | "wat" | "wasi" | "cwasm"))
}

/// A Wasm module to run; the spec's `args` are then the module's arguments after its name and
/// `env` its WASI environment (the runner passes nothing of its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmModule {
    /// The module (.wasm, .wat, .wasi), or a Blockless JSON config, where the runner runs.
    pub module: String,
    /// Directories the module sees (WASI preopens), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<WasmDir>,
    /// Fuel (wasmtime's units); spent: exit code 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Memory limit in bytes; asked for more: exit code 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
    /// Wall-time limit in milliseconds; past it: exit code 15.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// A Blockless JSON config whose module is `module`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The directory of the module's CGI extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<String>,
    /// A directory of compiled modules (`.cwasm`, named as the runner's cache names them) to
    /// load instead of compiling: how a microVM gets the host's compile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// Compiled for a baseline CPU (x86-64-v2) rather than the runner's, as `cache` must be
    /// when it was compiled on another machine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub portable: bool,
}

/// A directory the module sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmDir {
    /// The directory where the runner runs.
    pub path: String,
    /// Its path as the module sees it.
    pub guest: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

impl WasmDir {
    /// Parses `HOST[::GUEST][:ro|:rw]` as `--dir` writes it (GUEST defaults to HOST).
    pub fn parse(flag: &str) -> Result<WasmDir, String> {
        let (rest, read_only) = match flag.rsplit_once(':') {
            Some((rest, "ro")) if !rest.ends_with(':') => (rest, true),
            Some((rest, "rw")) if !rest.ends_with(':') => (rest, false),
            _ => (flag, false),
        };
        let (path, guest) = rest.split_once("::").unwrap_or((rest, rest));
        if path.is_empty() || guest.is_empty() {
            return Err(format!("--dir {flag:?}: expected HOST[::GUEST][:ro]"));
        }
        Ok(WasmDir {
            path: path.to_string(),
            guest: guest.to_string(),
            read_only,
        })
    }

    /// The `--dir` value that [`WasmDir::parse`] reads back.
    pub fn to_flag(&self) -> String {
        let mode = if self.read_only { ":ro" } else { "" };
        format!("{}::{}{mode}", self.path, self.guest)
    }
}

impl WasmModule {
    /// What JSON's types cannot say: paths a flag can carry.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field: &str, value: &str| SpecError::Wasm(format!("{field} {value:?}"));
        if self.module.is_empty() || self.module.contains('\0') {
            return Err(bad("wasm.module", &self.module));
        }
        for (i, dir) in self.dirs.iter().enumerate() {
            // Written back as PATH::GUEST[:ro], so neither may hold `::` or end in `:`.
            for value in [&dir.path, &dir.guest] {
                if value.is_empty()
                    || value.contains("::")
                    || value.ends_with(':')
                    || value.contains('\0')
                {
                    return Err(bad(&format!("wasm.dirs[{i}]"), value));
                }
            }
        }
        for (field, value) in [
            ("wasm.config", &self.config),
            ("wasm.extensions", &self.extensions),
            ("wasm.cache", &self.cache),
        ] {
            if let Some(value) = value
                .as_deref()
                .filter(|v| v.is_empty() || v.contains('\0'))
            {
                return Err(bad(field, value));
            }
        }
        Ok(())
    }

    /// The runner's arguments (after its own name) that run this module with `args` and `env`.
    /// Its stdin is the runner's: whoever starts it decides what that is.
    pub fn runner_args(&self, args: &[String], env: &[EnvVar]) -> Vec<String> {
        let mut out = vec!["--stdin".to_string(), "inherit".to_string()];
        for dir in &self.dirs {
            out.extend(["--dir".to_string(), dir.to_flag()]);
        }
        for var in env {
            out.extend(["--env".to_string(), var.to_string()]);
        }
        let numbers = [
            ("--fuel", self.fuel),
            ("--memory-limit", self.memory_limit),
            ("--timeout", self.timeout_ms),
        ];
        for (flag, value) in numbers {
            if let Some(value) = value {
                out.extend([flag.to_string(), value.to_string()]);
            }
        }
        let paths = [
            ("--config", &self.config),
            ("--ext", &self.extensions),
            ("--cache", &self.cache),
        ];
        for (flag, value) in paths {
            if let Some(value) = value {
                out.extend([flag.to_string(), value.clone()]);
            }
        }
        if self.portable {
            out.push("--portable".to_string());
        }
        out.push(self.module.clone());
        out.push("--".to_string());
        out.extend(args.iter().cloned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_read_as_the_runner_reads_them_and_write_back_the_same() {
        let dir = WasmDir::parse("/srv/data::/data:ro").unwrap();
        assert_eq!(
            (dir.path.as_str(), dir.guest.as_str(), dir.read_only),
            ("/srv/data", "/data", true)
        );
        let same = WasmDir::parse("/tmp:rw").unwrap();
        assert_eq!((same.path.as_str(), same.guest.as_str()), ("/tmp", "/tmp"));
        assert!(!same.read_only);
        for flag in ["/a::/b", "/a::/b:ro", "/a"] {
            let dir = WasmDir::parse(flag).unwrap();
            assert_eq!(WasmDir::parse(&dir.to_flag()).unwrap(), dir);
        }
        for bad in ["", "::/b", "/a::", ":ro"] {
            assert!(WasmDir::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_runner_gets_every_setting_and_the_modules_args_last() {
        let module = WasmModule {
            module: "/m/app.wasm".into(),
            dirs: vec![WasmDir::parse("/h::/g:ro").unwrap()],
            fuel: Some(10),
            timeout_ms: Some(500),
            cache: Some("/m/cache".into()),
            ..WasmModule::default()
        };
        let args = module.runner_args(&["--x".into()], &[EnvVar::new("A", "1")]);
        assert_eq!(
            args.join(" "),
            "--stdin inherit --dir /h::/g:ro --env A=1 --fuel 10 --timeout 500 --cache /m/cache /m/app.wasm -- --x"
        );
    }

    #[test]
    fn paths_a_flag_cannot_carry_are_refused() {
        let mut module = WasmModule {
            module: "a.wasm".into(),
            ..WasmModule::default()
        };
        assert_eq!(module.validate(), Ok(()));
        module.dirs = vec![WasmDir {
            path: "/a::b".into(),
            guest: "/g".into(),
            read_only: false,
        }];
        assert!(matches!(module.validate(), Err(SpecError::Wasm(m)) if m.contains("wasm.dirs[0]")));
        module.dirs.clear();
        module.cache = Some(String::new());
        assert!(module.validate().is_err());
        module.cache = None;
        module.module.clear();
        assert!(module.validate().is_err());
    }
}
