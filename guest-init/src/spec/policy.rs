//! The policy part of a workload spec: what the workload may touch (files, network), how much
//! it may use (limits), which privileges it keeps (capabilities, extra syscalls), and the
//! weakest isolation level it may run at. Versioned on its own, because operators write it by
//! hand (`tessera run --policy FILE`, docs/POLICY.md). Every level enforces all of it with its
//! own means or refuses the run before anything starts.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The policy version this build reads and writes.
pub const POLICY_VERSION: u32 = 1;

/// The isolation levels, weakest first (so `<` compares strength).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A confined process tree on the host, sharing its kernel (as runc/crun containers).
    #[default]
    Sandbox,
    /// A microVM with tessera-init as PID 1.
    Microvm,
    /// A full VM with a distribution kernel.
    Vm,
    /// A confidential VM (SEV-SNP or TDX).
    Confidential,
}

impl Isolation {
    pub const ALL: [Isolation; 4] = [
        Isolation::Sandbox,
        Isolation::Microvm,
        Isolation::Vm,
        Isolation::Confidential,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Isolation::Sandbox => "sandbox",
            Isolation::Microvm => "microvm",
            Isolation::Vm => "vm",
            Isolation::Confidential => "confidential",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A workload's policy. Every part defaults to the strictest sensible value: no network, no
/// capabilities, no extra syscalls, the kernel's limits, a writable root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Always [`POLICY_VERSION`].
    pub version: u32,
    /// The weakest level this workload may run at [default: sandbox].
    #[serde(default, skip_serializing_if = "is_default")]
    pub min_isolation: Isolation,
    #[serde(default, skip_serializing_if = "is_default")]
    pub filesystem: Filesystem,
    #[serde(default, skip_serializing_if = "is_default")]
    pub network: Network,
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: Limits,
    /// Capabilities the workload keeps (`CAP_NET_BIND_SERVICE`, ...); every other one is
    /// dropped, from the bounding set too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// System calls allowed on top of the default profile (Docker's default allow-list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            version: POLICY_VERSION,
            min_isolation: Isolation::default(),
            filesystem: Filesystem::default(),
            network: Network::default(),
            limits: Limits::default(),
            capabilities: Vec::new(),
            syscalls: Vec::new(),
        }
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Which paths of the workload's root it may write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    /// The whole root is read-only (as `docker run --read-only`), except `read_write` paths.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root: bool,
    /// Paths (absolute, in the workload's root) made read-only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<String>,
    /// Paths kept writable (made if missing, as directories); with `read_only_root` the only
    /// writable places besides /dev.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_write: Vec<String>,
}

/// What network the workload sees. In JSON `"none"`, `"loopback"` or `{"interface": NAME}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "NetworkForm", into = "NetworkForm")]
pub enum Network {
    /// No interface up at all, not even loopback.
    #[default]
    None,
    /// Only the loopback interface.
    Loopback,
    /// Loopback and the host interface named (a TAP, or a veth end), moved to the workload.
    Interface(String),
}

/// The JSON forms of a [`Network`].
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NetworkForm {
    Named(String),
    Interface { interface: String },
}

impl TryFrom<NetworkForm> for Network {
    type Error = String;

    fn try_from(form: NetworkForm) -> Result<Self, String> {
        match form {
            NetworkForm::Named(name) if name == "none" => Ok(Network::None),
            NetworkForm::Named(name) if name == "loopback" => Ok(Network::Loopback),
            NetworkForm::Named(name) => Err(format!(
                "network {name:?}: expected \"none\", \"loopback\" or {{\"interface\": NAME}}"
            )),
            NetworkForm::Interface { interface } => Ok(Network::Interface(interface)),
        }
    }
}

impl From<Network> for NetworkForm {
    fn from(network: Network) -> Self {
        match network {
            Network::None => NetworkForm::Named("none".into()),
            Network::Loopback => NetworkForm::Named("loopback".into()),
            Network::Interface(interface) => NetworkForm::Interface { interface },
        }
    }
}

/// Resource limits; absent means the level's default (the kernel's, or the VM's size).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU time as a number of CPUs (`0.5` is half of one), as `docker run --cpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    /// Memory in MiB; past it the kernel kills the workload (exit 137).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Processes and threads at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Seconds the workload may run; then it is killed (exit 137).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_s: Option<u64>,
    /// Largest file the workload may write, in MiB (RLIMIT_FSIZE: SIGXFSZ past it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size_mib: Option<u64>,
    /// Open files per process (RLIMIT_NOFILE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
}

/// A CPU quota in thousandths of a CPU, written in JSON as a number of CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Cpus {
    pub millis: u32,
}

impl TryFrom<f64> for Cpus {
    type Error = String;

    fn try_from(cpus: f64) -> Result<Self, String> {
        let millis = (cpus * 1000.0).round();
        match (1.0..=1_024_000.0).contains(&millis) {
            true => Ok(Cpus {
                millis: millis as u32,
            }),
            false => Err(format!("limits.cpus {cpus}: expected 0.001 to 1024 (CPUs)")),
        }
    }
}

impl From<Cpus> for f64 {
    fn from(cpus: Cpus) -> f64 {
        f64::from(cpus.millis) / 1000.0
    }
}

/// Capabilities by name, bit numbers as capabilities(7) gives them.
pub const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The bit of capability `name` (`CAP_X` or `X`, any case).
pub fn capability_bit(name: &str) -> Option<u8> {
    let upper = name.to_ascii_uppercase();
    let full = match upper.starts_with("CAP_") {
        true => upper,
        false => format!("CAP_{upper}"),
    };
    CAPABILITIES
        .iter()
        .position(|c| *c == full)
        .map(|bit| bit as u8)
}

/// Why a policy is refused; one line naming the field.
#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum PolicyError {
    /// policy version {0} is not supported (this build reads version 1)
    Version(u32),
    /// policy filesystem.{0} {1:?}: expected an absolute path without `..`
    BadPath(&'static str, String),
    /// policy capabilities: {0:?} is not a capability (CAP_NET_BIND_SERVICE, CAP_CHOWN, ...)
    UnknownCapability(String),
    /// policy syscalls: {0:?} is not a system call name
    BadSyscall(String),
    /// policy network.interface {0:?}: not an interface name (1 to 15 characters, no `/`, space or `:`)
    BadInterface(String),
    /// policy limits.{0}: 0 leaves the workload nothing; leave the limit out for none
    ZeroLimit(&'static str),
}

/// An absolute path without `..` or NUL, as policy paths must be.
pub fn is_clean_path(path: &str) -> bool {
    path.starts_with('/') && !path.contains('\0') && !path.split('/').any(|part| part == "..")
}

impl Policy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks what JSON's types cannot.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.version != POLICY_VERSION {
            return Err(PolicyError::Version(self.version));
        }
        for (field, paths) in [
            ("read_only", &self.filesystem.read_only),
            ("read_write", &self.filesystem.read_write),
        ] {
            if let Some(bad) = paths.iter().find(|p| !is_clean_path(p)) {
                return Err(PolicyError::BadPath(field, bad.clone()));
            }
        }
        if let Some(bad) = self
            .capabilities
            .iter()
            .find(|c| capability_bit(c).is_none())
        {
            return Err(PolicyError::UnknownCapability(bad.clone()));
        }
        let syscall_name = |s: &String| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if let Some(bad) = self.syscalls.iter().find(|s| !syscall_name(s)) {
            return Err(PolicyError::BadSyscall(bad.clone()));
        }
        if let Network::Interface(interface) = &self.network {
            let ok = (1..16).contains(&interface.len())
                && !interface.contains(['/', ' ', ':', '\0'])
                && interface != "."
                && interface != "..";
            if !ok {
                return Err(PolicyError::BadInterface(interface.clone()));
            }
        }
        let limits = &self.limits;
        for (name, value) in [
            ("memory_mib", limits.memory_mib),
            ("pids", limits.pids),
            ("wall_time_s", limits.wall_time_s),
            ("open_files", limits.open_files),
        ] {
            if value == Some(0) {
                return Err(PolicyError::ZeroLimit(name));
            }
        }
        Ok(())
    }

    /// Reads and validates a policy file's JSON; the message names the file.
    pub fn from_json(json: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let Versioned { version } = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if version != POLICY_VERSION {
            return Err(PolicyError::Version(version).to_string());
        }
        let policy: Policy = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        policy.validate().map_err(|e| e.to_string())?;
        Ok(policy)
    }

    /// The capability bits the workload keeps.
    pub fn capability_bits(&self) -> Vec<u8> {
        let mut bits: Vec<u8> = self
            .capabilities
            .iter()
            .filter_map(|c| capability_bit(c))
            .collect();
        bits.sort_unstable();
        bits.dedup();
        bits
    }

    /// Whether capability `name` is granted.
    pub fn grants(&self, name: &str) -> bool {
        capability_bit(name).is_some_and(|bit| self.capability_bits().contains(&bit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_example() {
        let json = br#"{
            "version": 1,
            "min_isolation": "microvm",
            "filesystem": {"read_only_root": true, "read_write": ["/tmp", "/data"]},
            "network": "loopback",
            "limits": {"cpus": 0.5, "memory_mib": 256, "pids": 64, "wall_time_s": 30,
                       "file_size_mib": 100, "open_files": 1024},
            "capabilities": ["CAP_NET_BIND_SERVICE"],
            "syscalls": ["ptrace"]
        }"#;
        let policy = Policy::from_json(json).unwrap();
        assert_eq!(policy.min_isolation, Isolation::Microvm);
        assert_eq!(policy.limits.cpus, Some(Cpus { millis: 500 }));
        assert_eq!(policy.network, Network::Loopback);
        assert_eq!(policy.capability_bits(), vec![10]);
        let again = serde_json::to_vec(&policy).unwrap();
        assert_eq!(Policy::from_json(&again).unwrap(), policy);
        let tap = Policy::from_json(br#"{"version":1,"network":{"interface":"tap0"}}"#).unwrap();
        assert_eq!(tap.network, Network::Interface("tap0".into()));
        assert_eq!(
            serde_json::to_string(&Policy::new()).unwrap(),
            r#"{"version":1}"#
        );
    }

    #[test]
    fn refuses_what_it_cannot_mean() {
        for (json, says) in [
            (r#"{"version":2}"#, "policy version 2 is not supported"),
            (
                r#"{"version":1,"filesystem":{"read_only":["etc"]}}"#,
                "filesystem.read_only \"etc\"",
            ),
            (
                r#"{"version":1,"filesystem":{"read_write":["/a/../b"]}}"#,
                "filesystem.read_write",
            ),
            (
                r#"{"version":1,"capabilities":["CAP_FLY"]}"#,
                "\"CAP_FLY\" is not a capability",
            ),
            (
                r#"{"version":1,"syscalls":["Mount!"]}"#,
                "\"Mount!\" is not a system call",
            ),
            (
                r#"{"version":1,"network":"wifi"}"#,
                "network \"wifi\": expected",
            ),
            (
                r#"{"version":1,"network":{"interface":"a/b"}}"#,
                "network.interface",
            ),
            (r#"{"version":1,"limits":{"pids":0}}"#, "limits.pids: 0"),
            (r#"{"version":1,"limits":{"cpus":0}}"#, "limits.cpus 0"),
            (
                r#"{"version":1,"limits":{"swap":1}}"#,
                "unknown field `swap`",
            ),
            (r#"{"version":1,"min_isolation":"vm2"}"#, "unknown variant"),
        ] {
            let err = Policy::from_json(json.as_bytes()).unwrap_err();
            assert!(err.contains(says), "{json}: {err}");
        }
    }

    #[test]
    fn capabilities_read_with_or_without_their_prefix() {
        assert_eq!(capability_bit("CAP_CHOWN"), Some(0));
        assert_eq!(capability_bit("net_bind_service"), Some(10));
        assert_eq!(capability_bit("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_bit("CAP_NOPE"), None);
        assert!(Isolation::Sandbox < Isolation::Microvm && Isolation::Vm < Isolation::Confidential);
    }
}
