//! The workload spec: what a Tessera guest (or, later, the host sandbox) runs. One versioned
//! JSON document that the `tessera` CLI, the REST API and the containerd shim all produce, and
//! that every runner reads. The format is documented in `docs/WORKLOAD_SPEC.md`.
//!
//! This module depends on serde and serde_json only, so every crate can speak it.
//!
//! Version 1 holds a process: `args`, `env`, `cwd`, `hostname`. The next issues add, as optional
//! fields so that a spec without them means what it means today: the image or Wasm module
//! reference, `user`, `rlimits`, `mounts`, resource `limits`, network and filesystem policy and
//! the isolation level. A reader refuses fields it does not know (`deny_unknown_fields`), so an
//! older tessera-init never silently ignores a policy it cannot enforce.

use std::fmt;

use serde::{Deserialize, Serialize};

mod policy;
mod wasm;
pub use policy::{
    capability_bit, is_clean_path, Cpus, Filesystem, Isolation, Limits, Network, Policy,
    PolicyError, CAPABILITIES, POLICY_VERSION,
};
pub use wasm::{is_module_file, WasmDir, WasmModule, RUNNER as WASM_RUNNER};

/// The spec version this build reads and writes.
pub const SPEC_VERSION: u32 = 1;

/// Hostname when the spec names none.
pub const DEFAULT_HOSTNAME: &str = "tessera";

/// Working directory when the spec names none.
pub const DEFAULT_CWD: &str = "/";

/// A workload: a process to run, with its environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Always [`SPEC_VERSION`] for specs this build writes.
    pub version: u32,
    /// The program and its arguments (`argv`); the program is looked up in `PATH` when it has
    /// no `/`. With `wasm`, the module's arguments after its name (may be empty).
    pub args: Vec<String>,
    /// Variables added to the runner's base environment, in order; a later one of the same name
    /// wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Working directory [default: `/`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Hostname [default: `tessera`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Who the command runs as: `USER[:GROUP]`, names or numbers, resolved in the command's
    /// root (/etc/passwd, /etc/group) [default: root].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The command's root filesystem, when it is not the initramfs: a container image's
    /// read-only disk, under a writable tmpfs overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<RootFs>,
    /// Disks mounted into the command's root (volumes), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Resource limits of the command (setrlimit), as the OCI runtime spec writes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// Where the command's standard streams go [default: the guest console].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio: Option<Stdio>,
    /// A Wasm module run by the Wasm runner instead of a program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm: Option<WasmModule>,
    /// What the workload may touch and use, and the weakest level it may run at (its own
    /// version; docs/POLICY.md) [default: the default policy].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
}

/// A disk mounted into the command's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// The disk in the guest, e.g. `/dev/vdb`.
    pub device: String,
    /// Its file system, e.g. `ext4`.
    pub fstype: String,
    /// Where it appears in the command's root (absolute; created if missing).
    pub destination: String,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
}

/// One resource limit, as in the OCI runtime spec's `process.rlimits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, `RLIMIT_NPROC`, ... (see [`RLIMITS`]).
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// The resource limits a spec may set, by their setrlimit(2) names.
pub const RLIMITS: [&str; 16] = [
    "RLIMIT_AS",
    "RLIMIT_CORE",
    "RLIMIT_CPU",
    "RLIMIT_DATA",
    "RLIMIT_FSIZE",
    "RLIMIT_LOCKS",
    "RLIMIT_MEMLOCK",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_NOFILE",
    "RLIMIT_NPROC",
    "RLIMIT_RSS",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
    "RLIMIT_SIGPENDING",
    "RLIMIT_STACK",
];

/// The command's standard streams as vsock streams to the host (CID 2): stdout on `vsock_port`,
/// stderr on `vsock_port + 1`, stdin (when `stdin`) on `vsock_port + 2`; with `tty`, one stream
/// on `vsock_port` carries a terminal both ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stdio {
    pub vsock_port: u32,
    /// Whether the host forwards its stdin; without it the command's stdin is /dev/null.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// A terminal for the command (its size, when the host knows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
}

/// A terminal's size in characters; 0 when unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// A read-only root filesystem on a disk, overlaid with a tmpfs that takes the writes (and is
/// gone when the VM ends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootFs {
    /// The disk in the guest, e.g. `/dev/vda`.
    pub device: String,
    /// Its file system, e.g. `ext4`.
    pub fstype: String,
    /// A writable disk that takes the overlay's writes instead of a tmpfs (`--scratch`),
    /// formatted ext4 by the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<String>,
}

/// One environment variable. In JSON either `"NAME=VALUE"` (written so) or `["NAME", "VALUE"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EnvForm", into = "String")]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// The JSON forms of an [`EnvVar`].
#[derive(Deserialize)]
#[serde(untagged)]
enum EnvForm {
    Joined(String),
    Pair(String, String),
}

/// Why a spec is refused. Each message is one line, naming the field.
#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum SpecError {
    /// not valid JSON for a version-1 workload spec: {0}
    Json(String),
    /// workload spec version {0} is not supported (this build reads version 1)
    Version(u32),
    /// args is empty: it needs at least a program (or a wasm module)
    EmptyArgs,
    /// args[0] is empty: it names no program
    EmptyProgram,
    /// env item {0:?} has no `=` between name and value
    EnvWithoutEquals(String),
    /// env name {0:?} is empty or holds `=` or a NUL byte
    BadEnvName(String),
    /// {0} holds a NUL byte, which exec cannot pass
    NulByte(String),
    /// mounts[{0}].destination {1:?} is not an absolute path without `..`
    BadMountDestination(usize, String),
    /// rlimits[{0}]: {1:?} is not a resource limit (RLIMIT_NOFILE, RLIMIT_NPROC, ...)
    UnknownRlimit(usize, String),
    /// rlimits[{0}] {1}: the soft limit {2} is above the hard limit {3}
    SoftAboveHard(usize, String, u64, u64),
    /// stdio.vsock_port {0} leaves no room for its three ports
    StdioPort(u32),
    /// {0}: not a path the Wasm runner can be given
    Wasm(String),
    /// {0}
    Policy(#[from] PolicyError),
}

impl TryFrom<EnvForm> for EnvVar {
    type Error = SpecError;

    fn try_from(form: EnvForm) -> Result<Self, SpecError> {
        match form {
            EnvForm::Joined(item) => EnvVar::parse(&item),
            EnvForm::Pair(name, value) => Ok(EnvVar { name, value }),
        }
    }
}

impl From<EnvVar> for String {
    fn from(var: EnvVar) -> String {
        var.to_string()
    }
}

impl fmt::Display for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.value)
    }
}

impl EnvVar {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }

    /// Splits `NAME=VALUE` at its first `=`.
    pub fn parse(item: &str) -> Result<Self, SpecError> {
        match item.split_once('=') {
            Some((name, value)) => Ok(Self::new(name, value)),
            None => Err(SpecError::EnvWithoutEquals(item.to_string())),
        }
    }
}

impl WorkloadSpec {
    /// A version-1 spec running `args`, with no extra environment, in `/`.
    pub fn new(args: Vec<String>) -> Self {
        Self {
            version: SPEC_VERSION,
            args,
            env: Vec::new(),
            cwd: None,
            hostname: None,
            user: None,
            root: None,
            mounts: Vec::new(),
            rlimits: Vec::new(),
            stdio: None,
            wasm: None,
            policy: None,
        }
    }

    /// The process that runs this spec: itself, or with `wasm`, the Wasm runner ([`WASM_RUNNER`])
    /// given the module, its arguments and its environment as flags.
    pub fn process(&self) -> WorkloadSpec {
        let Some(wasm) = &self.wasm else {
            return self.clone();
        };
        let mut args = vec![WASM_RUNNER.to_string()];
        args.extend(wasm.runner_args(&self.args, &self.env));
        WorkloadSpec {
            args,
            env: Vec::new(),
            wasm: None,
            ..self.clone()
        }
    }

    /// The policy, defaulted.
    pub fn policy(&self) -> Policy {
        self.policy.clone().unwrap_or_default()
    }

    /// The working directory, defaulted.
    pub fn cwd(&self) -> &str {
        self.cwd.as_deref().unwrap_or(DEFAULT_CWD)
    }

    /// The hostname, defaulted.
    pub fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME)
    }

    /// Checks what JSON's types cannot: a program to run, usable env names, no NUL bytes.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.version != SPEC_VERSION {
            return Err(SpecError::Version(self.version));
        }
        match (&self.wasm, self.args.first()) {
            (Some(wasm), _) => wasm.validate()?,
            (None, None) => return Err(SpecError::EmptyArgs),
            (None, Some(program)) if program.is_empty() => return Err(SpecError::EmptyProgram),
            (None, Some(_)) => {}
        }
        let nul = |field: String, value: &str| match value.contains('\0') {
            true => Err(SpecError::NulByte(field)),
            false => Ok(()),
        };
        for (i, arg) in self.args.iter().enumerate() {
            nul(format!("args[{i}]"), arg)?;
        }
        for var in &self.env {
            if var.name.is_empty() || var.name.contains(['=', '\0']) {
                return Err(SpecError::BadEnvName(var.name.clone()));
            }
            nul(format!("env {:?}", var.name), &var.value)?;
        }
        if let Some(cwd) = &self.cwd {
            nul("cwd".into(), cwd)?;
        }
        if let Some(user) = &self.user {
            nul("user".into(), user)?;
        }
        if let Some(hostname) = &self.hostname {
            nul("hostname".into(), hostname)?;
        }
        for (i, mount) in self.mounts.iter().enumerate() {
            let dest = &mount.destination;
            if !dest.starts_with('/') || dest.split('/').any(|part| part == "..") {
                return Err(SpecError::BadMountDestination(i, dest.clone()));
            }
            nul(
                format!("mounts[{i}]"),
                &format!("{dest}{}{}", mount.device, mount.fstype),
            )?;
        }
        for (i, limit) in self.rlimits.iter().enumerate() {
            if !RLIMITS.contains(&limit.kind.as_str()) {
                return Err(SpecError::UnknownRlimit(i, limit.kind.clone()));
            }
            if limit.soft > limit.hard {
                let kind = limit.kind.clone();
                return Err(SpecError::SoftAboveHard(i, kind, limit.soft, limit.hard));
            }
        }
        if let Some(stdio) = &self.stdio {
            if stdio.vsock_port > u32::MAX - 2 {
                return Err(SpecError::StdioPort(stdio.vsock_port));
            }
        }
        if let Some(policy) = &self.policy {
            policy.validate()?;
        }
        Ok(())
    }

    /// Reads and validates a spec in its JSON wire form. The version is read first, so a spec
    /// from a newer writer is refused by its version rather than by a field this build lacks.
    pub fn from_json(json: &[u8]) -> Result<Self, SpecError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let json_err = |e: serde_json::Error| SpecError::Json(e.to_string());
        let Versioned { version } = serde_json::from_slice(json).map_err(json_err)?;
        if version != SPEC_VERSION {
            return Err(SpecError::Version(version));
        }
        let spec: Self = serde_json::from_slice(json).map_err(json_err)?;
        spec.validate()?;
        Ok(spec)
    }

    /// The validated spec in its JSON wire form (compact).
    pub fn to_json(&self) -> Result<Vec<u8>, SpecError> {
        self.validate()?;
        serde_json::to_vec(self).map_err(|e| SpecError::Json(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn round_trips_awkward_values_through_json() {
        let spec = WorkloadSpec {
            env: vec![
                EnvVar::new("A", "1=2, 3"),
                EnvVar::new("EMPTY", ""),
                EnvVar::new("A", "later wins"),
            ],
            cwd: Some("/tmp/a dir".into()),
            hostname: Some("box-1".into()),
            ..WorkloadSpec::new(s(&["sh", "-c", "echo \"a, b\" 100% 'x'\ty\n", "", "é"]))
        };
        let json = spec.to_json().unwrap();
        assert_eq!(WorkloadSpec::from_json(&json).unwrap(), spec);
    }

    #[test]
    fn wire_form_is_the_documented_one() {
        let mut spec = WorkloadSpec::new(s(&["echo", "hello world"]));
        spec.env.push(EnvVar::new("GREETING", "hi=there"));
        assert_eq!(
            String::from_utf8(spec.to_json().unwrap()).unwrap(),
            r#"{"version":1,"args":["echo","hello world"],"env":["GREETING=hi=there"]}"#
        );
        let pairs = br#"{"version":1,"args":["env"],"env":[["A","1"],"B=2=3"],"cwd":"/tmp","hostname":"h"}"#;
        let spec = WorkloadSpec::from_json(pairs).unwrap();
        assert_eq!(spec.env, [EnvVar::new("A", "1"), EnvVar::new("B", "2=3")]);
        assert_eq!((spec.cwd(), spec.hostname()), ("/tmp", "h"));
        let bare = WorkloadSpec::from_json(br#"{"version":1,"args":["true"]}"#).unwrap();
        assert_eq!((bare.cwd(), bare.hostname()), ("/", "tessera"));
    }

    #[test]
    fn refuses_what_cannot_be_run() {
        let check = |json: &str| WorkloadSpec::from_json(json.as_bytes()).unwrap_err();
        assert_eq!(check(r#"{"version":1,"args":[]}"#), SpecError::EmptyArgs);
        assert_eq!(
            check(r#"{"version":1,"args":[""]}"#),
            SpecError::EmptyProgram
        );
        assert_eq!(
            check(r#"{"version":1,"args":["a\u0000b"]}"#),
            SpecError::NulByte("args[0]".into())
        );
        assert_eq!(
            check(r#"{"version":1,"args":["a"],"cwd":"/\u0000"}"#),
            SpecError::NulByte("cwd".into())
        );
        assert_eq!(
            check(r#"{"version":1,"args":["a"],"env":[["A=B","c"]]}"#),
            SpecError::BadEnvName("A=B".into())
        );
        assert_eq!(
            check(r#"{"version":1,"args":["a"],"env":["=v"]}"#),
            SpecError::BadEnvName(String::new())
        );
        assert_eq!(
            check(r#"{"version":1,"args":["a"],"env":[["A","\u0000"]]}"#),
            SpecError::NulByte("env \"A\"".into())
        );
        assert!(matches!(
            check(r#"{"version":1,"args":["a"],"env":["NOEQUALS"]}"#),
            SpecError::Json(m) if m.contains("NOEQUALS")
        ));
        assert_eq!(
            check(r#"{"version":2,"args":["a"],"image":"x"}"#),
            SpecError::Version(2)
        );
        assert!(matches!(check(r#"{"args":["a"]}"#), SpecError::Json(m) if m.contains("version")));
        // (`user` was the unknown field here until the spec gained it, issue 15.)
        assert!(matches!(
            check(r#"{"version":1,"args":["a"],"ulimits":[]}"#),
            SpecError::Json(m) if m.contains("unknown field `ulimits`")
        ));
        let mut spec = WorkloadSpec::new(s(&["a"]));
        spec.version = 7;
        assert_eq!(spec.to_json(), Err(SpecError::Version(7)));
    }

    #[test]
    fn mounts_rlimits_and_stdio_round_trip_and_are_checked() {
        let json = br#"{"version":1,"args":["sh"],"root":{"device":"/dev/vda","fstype":"ext4","scratch":"/dev/vdc"},"mounts":[{"device":"/dev/vdb","fstype":"ext4","destination":"/data","read_only":true}],"rlimits":[{"type":"RLIMIT_NOFILE","soft":100,"hard":200}],"stdio":{"vsock_port":1413808128,"stdin":true,"tty":{"rows":24,"cols":80}}}"#;
        let spec = WorkloadSpec::from_json(json).unwrap();
        assert_eq!(spec.to_json().unwrap(), json.to_vec());
        assert_eq!(spec.mounts[0].destination, "/data");
        assert_eq!(
            spec.stdio.as_ref().unwrap().tty,
            Some(TtySize { rows: 24, cols: 80 })
        );
        let check = |json: &str| WorkloadSpec::from_json(json.as_bytes()).unwrap_err();
        let mount = |dest: &str| {
            format!(
                r#"{{"version":1,"args":["a"],"mounts":[{{"device":"/dev/vdb","fstype":"ext4","destination":"{dest}"}}]}}"#
            )
        };
        assert_eq!(
            check(&mount("data")),
            SpecError::BadMountDestination(0, "data".into())
        );
        assert_eq!(
            check(&mount("/a/../etc")),
            SpecError::BadMountDestination(0, "/a/../etc".into())
        );
        assert_eq!(
            check(
                r#"{"version":1,"args":["a"],"rlimits":[{"type":"RLIMIT_FOO","soft":1,"hard":1}]}"#
            ),
            SpecError::UnknownRlimit(0, "RLIMIT_FOO".into())
        );
        assert_eq!(
            check(
                r#"{"version":1,"args":["a"],"rlimits":[{"type":"RLIMIT_NPROC","soft":2,"hard":1}]}"#
            ),
            SpecError::SoftAboveHard(0, "RLIMIT_NPROC".into(), 2, 1)
        );
        assert_eq!(
            check(r#"{"version":1,"args":["a"],"stdio":{"vsock_port":4294967295}}"#),
            SpecError::StdioPort(u32::MAX)
        );
    }

    #[test]
    fn messages_name_the_version_this_build_reads() {
        let want = format!("version {SPEC_VERSION}");
        assert!(SpecError::Version(9)
            .to_string()
            .ends_with(&format!("reads {want})")));
        let json = SpecError::Json(String::new()).to_string();
        assert!(json.contains(&format!("version-{SPEC_VERSION} ")), "{json}");
    }

    #[test]
    fn errors_are_one_line() {
        let err = WorkloadSpec::from_json(b"{\n\"version\": 1,\n\"args\": [1]\n}").unwrap_err();
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[test]
    fn a_wasm_spec_runs_the_wasm_runner_with_the_modules_args_and_env() {
        let json = br#"{"version":1,"args":[],"env":["A=1"],"wasm":{"module":"/m/app.wasm","dirs":[{"path":"/run/d0","guest":"/data","read_only":true}],"fuel":5}}"#;
        let spec = WorkloadSpec::from_json(json).unwrap();
        assert_eq!(
            WorkloadSpec::from_json(&spec.to_json().unwrap()).unwrap(),
            spec
        );
        let process = spec.process();
        assert_eq!(
            process.args.join(" "),
            format!("{WASM_RUNNER} --stdin inherit --dir /run/d0::/data:ro --env A=1 --fuel 5 /m/app.wasm --")
        );
        assert!(process.env.is_empty() && process.wasm.is_none());
        let unknown = br#"{"version":1,"args":[],"wasm":{"module":"a.wasm","threads":true}}"#;
        assert!(
            matches!(WorkloadSpec::from_json(unknown), Err(SpecError::Json(m)) if m.contains("threads"))
        );
        // Without wasm, a program is still needed.
        assert_eq!(
            WorkloadSpec::from_json(br#"{"version":1,"args":[]}"#),
            Err(SpecError::EmptyArgs)
        );
    }
}
