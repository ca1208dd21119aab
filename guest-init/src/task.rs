//! The task `tessera-init` runs, encoded in the kernel command line.
//!
//! ```text
//! tessera.argv=ARG,ARG,...   the command and its arguments (required)
//! tessera.env=K=V,K=V,...    extra environment variables (optional)
//! tessera.cwd=DIR            working directory (optional, default /)
//! tessera.hostname=NAME      hostname (optional, default "tessera")
//! ```
//!
//! Each ARG, `K=V`, DIR and NAME is percent-encoded: every byte except ASCII letters, digits and
//! `- . _ ~ / : @ + =` becomes `%XX`, so a value never holds a space, a quote or the `,` that
//! separates list items, and the kernel passes it through untouched. Parameters with a dot are
//! module parameters to the kernel: it neither interprets them nor hands them to init as
//! arguments or environment, so tessera-init reads them from `/proc/cmdline`.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

const ARGV: &str = "tessera.argv=";
const ENV: &str = "tessera.env=";
const CWD: &str = "tessera.cwd=";
const HOSTNAME: &str = "tessera.hostname=";

/// Bytes left as they are: nothing the kernel's command-line parser or our `,` treats specially.
const KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/')
    .remove(b':')
    .remove(b'@')
    .remove(b'+')
    .remove(b'=');

/// Hostname when the task names none.
pub const DEFAULT_HOSTNAME: &str = "tessera";

/// A command to run, with its environment and working directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Task {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum TaskError {
    /// the kernel command line has no tessera.argv= (no command to run)
    NoCommand,
    /// tessera.argv= is empty: the command needs at least a program name
    EmptyCommand,
    /// {param}: item {index} is not valid percent-encoded UTF-8
    BadEncoding { param: &'static str, index: usize },
    /// tessera.env=: item {0} has no `=` between name and value
    EnvWithoutEquals(usize),
    /// tessera.env=: variable name {0:?} is empty or holds a NUL byte
    BadEnvName(String),
    /// {0} appears twice on the kernel command line
    Repeated(&'static str),
    /// an argument, variable or directory holds a NUL byte, which exec cannot pass
    NulByte,
}

impl Task {
    /// A task running `argv` with no extra environment, in `/`.
    pub fn new(argv: Vec<String>) -> Self {
        Self {
            argv,
            ..Self::default()
        }
    }

    /// The kernel command-line parameters that carry this task, with a leading space.
    pub fn to_cmdline(&self) -> Result<String, TaskError> {
        if self.argv.first().is_none_or(String::is_empty) {
            return Err(TaskError::EmptyCommand);
        }
        let all = self
            .argv
            .iter()
            .chain(self.cwd.iter())
            .chain(self.hostname.iter());
        let env = self.env.iter().flat_map(|(k, v)| [k, v]);
        if all.chain(env).any(|s| s.contains('\0')) {
            return Err(TaskError::NulByte);
        }
        if let Some((name, _)) = self
            .env
            .iter()
            .find(|(k, _)| k.is_empty() || k.contains('='))
        {
            return Err(TaskError::BadEnvName(name.clone()));
        }
        let list = |items: &mut dyn Iterator<Item = String>| {
            items
                .map(|s| utf8_percent_encode(&s, KEEP).to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut out = format!(" {ARGV}{}", list(&mut self.argv.iter().cloned()));
        if !self.env.is_empty() {
            let env = list(&mut self.env.iter().map(|(k, v)| format!("{k}={v}")));
            out.push_str(&format!(" {ENV}{env}"));
        }
        if let Some(cwd) = &self.cwd {
            out.push_str(&format!(" {CWD}{}", utf8_percent_encode(cwd, KEEP)));
        }
        if let Some(name) = &self.hostname {
            out.push_str(&format!(" {HOSTNAME}{}", utf8_percent_encode(name, KEEP)));
        }
        Ok(out)
    }

    /// Reads the task from a kernel command line (the contents of `/proc/cmdline`).
    pub fn from_cmdline(cmdline: &str) -> Result<Self, TaskError> {
        let mut argv = None;
        let mut env = None;
        let mut cwd = None;
        let mut hostname = None;
        for word in cmdline.split_ascii_whitespace() {
            let (slot, param, value) = if let Some(v) = word.strip_prefix(ARGV) {
                (&mut argv, ARGV, v)
            } else if let Some(v) = word.strip_prefix(ENV) {
                (&mut env, ENV, v)
            } else if let Some(v) = word.strip_prefix(CWD) {
                (&mut cwd, CWD, v)
            } else if let Some(v) = word.strip_prefix(HOSTNAME) {
                (&mut hostname, HOSTNAME, v)
            } else {
                continue;
            };
            if slot.replace(value).is_some() {
                return Err(TaskError::Repeated(param.trim_end_matches('=')));
            }
        }
        let argv = decode_list(ARGV, argv.ok_or(TaskError::NoCommand)?)?;
        if argv.first().is_none_or(String::is_empty) {
            return Err(TaskError::EmptyCommand);
        }
        let env = match env {
            None => Vec::new(),
            Some(list) => decode_list(ENV, list)?
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item.split_once('=') {
                    Some((k, _)) if k.is_empty() => Err(TaskError::BadEnvName(k.to_string())),
                    Some((k, v)) => Ok((k.to_string(), v.to_string())),
                    None => Err(TaskError::EnvWithoutEquals(i)),
                })
                .collect::<Result<_, _>>()?,
        };
        let single = |param, value: Option<&str>| -> Result<Option<String>, TaskError> {
            value.map(|v| decode(param, 0, v)).transpose()
        };
        let task = Task {
            argv,
            env,
            cwd: single(CWD, cwd)?,
            hostname: single(HOSTNAME, hostname)?,
        };
        let all = task
            .argv
            .iter()
            .chain(task.cwd.iter())
            .chain(task.hostname.iter());
        if all
            .chain(task.env.iter().flat_map(|(k, v)| [k, v]))
            .any(|s| s.contains('\0'))
        {
            return Err(TaskError::NulByte);
        }
        Ok(task)
    }
}

fn decode_list(param: &'static str, list: &str) -> Result<Vec<String>, TaskError> {
    list.split(',')
        .enumerate()
        .map(|(i, item)| decode(param, i, item))
        .collect()
}

fn decode(param: &'static str, index: usize, item: &str) -> Result<String, TaskError> {
    let bad = || TaskError::BadEncoding {
        param: param.trim_end_matches('='),
        index,
    };
    // A `%` must start a full escape; percent_decode passes a stray one through silently.
    let bytes = item.as_bytes();
    for (i, _) in item.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad());
        }
    }
    percent_decode_str(item)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn round_trips_awkward_values() {
        let task = Task {
            argv: s(&["sh", "-c", "echo \"a, b\" 100% 'x'\ty\n", "", "é"]),
            env: vec![
                ("A".into(), "1=2, 3".into()),
                ("EMPTY".into(), String::new()),
            ],
            cwd: Some("/tmp/a dir".into()),
            hostname: Some("box-1".into()),
        };
        let line = task.to_cmdline().unwrap();
        assert!(
            !line.trim().contains('"') && line.split(' ').count() == 5,
            "{line}"
        );
        let full = format!("console=ttyS0 quiet{line} -- init-arg");
        assert_eq!(Task::from_cmdline(&full).unwrap(), task);
    }

    #[test]
    fn encoding_is_the_documented_one() {
        let task = Task::new(s(&["echo", "hello world", "a,b", "k=v"]));
        assert_eq!(
            task.to_cmdline().unwrap(),
            " tessera.argv=echo,hello%20world,a%2Cb,k=v"
        );
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert_eq!(Task::from_cmdline("quiet"), Err(TaskError::NoCommand));
        assert_eq!(
            Task::from_cmdline("tessera.argv="),
            Err(TaskError::EmptyCommand)
        );
        assert_eq!(
            Task::from_cmdline("tessera.argv=a tessera.argv=b"),
            Err(TaskError::Repeated("tessera.argv"))
        );
        for bad in ["tessera.argv=a%", "tessera.argv=a%zz", "tessera.argv=%ff"] {
            assert!(
                matches!(Task::from_cmdline(bad), Err(TaskError::BadEncoding { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            Task::from_cmdline("tessera.argv=a tessera.env=NOEQUALS"),
            Err(TaskError::EnvWithoutEquals(0))
        );
        assert!(matches!(
            Task::from_cmdline("tessera.argv=a tessera.env==v"),
            Err(TaskError::BadEnvName(_))
        ));
        assert_eq!(
            Task::from_cmdline("tessera.argv=a%00"),
            Err(TaskError::NulByte)
        );
    }

    #[test]
    fn refuses_to_encode_what_cannot_be_run() {
        assert_eq!(Task::new(vec![]).to_cmdline(), Err(TaskError::EmptyCommand));
        assert_eq!(
            Task::new(s(&["a\0b"])).to_cmdline(),
            Err(TaskError::NulByte)
        );
        let mut task = Task::new(s(&["env"]));
        task.env.push(("A=B".into(), "c".into()));
        assert!(matches!(task.to_cmdline(), Err(TaskError::BadEnvName(_))));
    }
}
