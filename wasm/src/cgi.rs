//! Blockless's CGI extensions: the host module `blockless_cgi`, through which a module lists
//! the extensions of its extensions directory and runs one as a child process, writing its stdin
//! and reading its stdout and stderr. The ABI (bls-runtime's witx): every function returns an
//! error code (0 ok, 1 invalid handle, 2 runtime error, 3 invalid parameter, 4 invalid
//! extension) and writes its result through a trailing `u32` out-pointer; handles count from 1.
//!
//! An extension is an executable file of the directory that answers `--ext_verify` with
//! `{"alias", "description", "is_cgi": true[, "md5"]}`; only those run, by alias, with the
//! module's wall-time and memory limits as rlimits, and are killed at `cgi_close` or when the
//! run ends. Unlike bls-runtime, a file that does not verify is left out of the listing rather
//! than failing it, a given md5 must match the file, and the child gets only `PATH` and the
//! variables the module passes (not the host's environment).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use md5::{Digest as _, Md5};
use serde::Deserialize;
use wasmtime::{Caller, Extern, Linker};

use crate::config::Limits;
use crate::run::State;

pub const SUCCESS: i32 = 0;
pub const INVALID_HANDLE: i32 = 1;
pub const RUNTIME_ERROR: i32 = 2;
pub const INVALID_PARAMETER: i32 = 3;
pub const INVALID_EXTENSION: i32 = 4;

/// The PATH an extension gets.
const EXTENSION_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How long `--ext_verify` may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// A verified extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    pub file_name: String,
    pub alias: String,
    pub md5: String,
    pub description: String,
}

enum Handle {
    Listing { json: Vec<u8>, read: usize },
    Process(Process),
}

struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A run's CGI state: the directory, the aliases its last listing verified, open handles.
pub struct Cgi {
    dir: PathBuf,
    limits: Limits,
    aliases: BTreeMap<String, Extension>,
    handles: BTreeMap<u32, Handle>,
    next: u32,
}

#[derive(Deserialize)]
struct Verified {
    alias: String,
    description: String,
    is_cgi: bool,
    md5: Option<String>,
}

#[derive(Deserialize)]
struct OpenRequest {
    command: String,
    #[serde(default)]
    args: Vec<serde_json::Value>,
    #[serde(default)]
    envs: Vec<serde_json::Value>,
}

fn file_md5(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| hex::encode(Md5::digest(&b)))
}

/// Runs `path --ext_verify`, at most [`VERIFY_TIMEOUT`].
fn verify(path: &Path) -> Option<Verified> {
    let mut child = Command::new(path)
        .arg("--ext_verify")
        .env_clear()
        .env("PATH", EXTENSION_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.by_ref().take(64 * 1024).read_to_end(&mut out);
        out
    });
    let deadline = std::time::Instant::now() + VERIFY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let out = reader.join().ok()?;
    serde_json::from_slice::<Verified>(String::from_utf8(out).ok()?.trim().as_bytes())
        .ok()
        .filter(|v| v.is_cgi)
}

/// The verified extensions of `dir`, in file-name order.
pub fn list_extensions(dir: &Path) -> std::io::Result<Vec<Extension>> {
    let mut found = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let (Some(actual), Some(verified)) = (file_md5(&path), verify(&path)) else {
            continue;
        };
        if verified
            .md5
            .as_deref()
            .is_some_and(|m| !m.eq_ignore_ascii_case(&actual))
        {
            continue;
        }
        found.push(Extension {
            file_name: entry.file_name().to_string_lossy().into_owned(),
            alias: verified.alias,
            md5: actual,
            description: verified.description,
        });
    }
    Ok(found)
}

impl Cgi {
    pub fn new(dir: PathBuf, limits: Limits) -> Cgi {
        Cgi {
            dir,
            limits,
            aliases: BTreeMap::new(),
            handles: BTreeMap::new(),
            next: 1,
        }
    }

    fn handle(&mut self, handle: Handle) -> u32 {
        let id = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        self.handles.insert(id, handle);
        id
    }

    fn list(&mut self) -> Result<u32, i32> {
        let extensions = list_extensions(&self.dir).map_err(|_| INVALID_EXTENSION)?;
        let json: Vec<serde_json::Value> = extensions
            .iter()
            .map(|e| {
                serde_json::json!({
                    "fileName": e.file_name, "alias": e.alias,
                    "md5": e.md5, "description": e.description,
                })
            })
            .collect();
        self.aliases = extensions
            .into_iter()
            .map(|e| (e.alias.clone(), e))
            .collect();
        let json = serde_json::to_vec(&json).map_err(|_| RUNTIME_ERROR)?;
        Ok(self.handle(Handle::Listing { json, read: 0 }))
    }

    fn open(&mut self, request: &[u8]) -> Result<u32, i32> {
        let request: OpenRequest =
            serde_json::from_slice(request).map_err(|_| INVALID_PARAMETER)?;
        if self.aliases.is_empty() {
            // bls-runtime's modules list first; one that does not still finds its extension.
            self.list().map(|h| self.handles.remove(&h))?;
        }
        let extension = self
            .aliases
            .get(&request.command)
            .ok_or(INVALID_EXTENSION)?;
        let path = self.dir.join(&extension.file_name);
        if file_md5(&path).as_deref() != Some(extension.md5.as_str()) {
            // Changed since it was verified.
            return Err(INVALID_EXTENSION);
        }
        let args = request.args.iter().filter_map(|a| a.as_str());
        let envs = request.envs.iter().filter_map(|e| {
            let name = e.get("env_name").or(e.get("name"))?.as_str()?;
            let value = e.get("env_val").or(e.get("value"))?.as_str()?;
            Some((name.to_string(), value.to_string()))
        });
        let mut command = Command::new(&path);
        command
            .args(args)
            .env_clear()
            .env("PATH", EXTENSION_PATH)
            .envs(envs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let limits = self.limits;
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // setrlimit, which is async-signal-safe, on a stack value.
        unsafe {
            command.pre_exec(move || {
                let set = |resource, value: u64| {
                    let limit = libc::rlimit {
                        rlim_cur: value,
                        rlim_max: value,
                    };
                    libc::setrlimit(resource, &limit);
                };
                if let Some(time) = limits.wall_time {
                    set(libc::RLIMIT_CPU, time.as_secs().max(1));
                }
                if let Some(bytes) = limits.memory_bytes {
                    set(libc::RLIMIT_DATA, bytes);
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|_| RUNTIME_ERROR)?;
        let process = Process {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
        };
        Ok(self.handle(Handle::Process(process)))
    }

    /// Reads into `buf` from the handle's listing, stdout (`err` false) or stderr.
    fn read(&mut self, id: u32, buf: &mut [u8], err: bool) -> Result<usize, i32> {
        match self.handles.get_mut(&id).ok_or(INVALID_HANDLE)? {
            Handle::Listing { json, read } if !err => {
                let n = (json.len() - *read).min(buf.len());
                buf[..n].copy_from_slice(&json[*read..*read + n]);
                *read += n;
                Ok(n)
            }
            Handle::Listing { .. } => Err(INVALID_HANDLE),
            Handle::Process(p) => {
                let stream: Option<&mut dyn Read> = match err {
                    false => p.stdout.as_mut().map(|s| s as &mut dyn Read),
                    true => p.stderr.as_mut().map(|s| s as &mut dyn Read),
                };
                match stream {
                    Some(stream) => stream.read(buf).map_err(|_| RUNTIME_ERROR),
                    None => Ok(0),
                }
            }
        }
    }

    fn write(&mut self, id: u32, data: &[u8]) -> Result<usize, i32> {
        match self.handles.get_mut(&id).ok_or(INVALID_HANDLE)? {
            Handle::Process(Process {
                stdin: Some(stdin), ..
            }) => stdin.write(data).map_err(|_| RUNTIME_ERROR),
            Handle::Process(_) => Ok(0),
            Handle::Listing { .. } => Err(INVALID_HANDLE),
        }
    }

    fn close(&mut self, id: u32) -> Result<(), i32> {
        self.handles.remove(&id).map(drop).ok_or(INVALID_HANDLE)
    }
}

/// The module's memory, as bytes.
fn memory<'a>(caller: &'a mut Caller<'_, State>) -> Option<(&'a mut [u8], &'a mut Cgi)> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return None;
    };
    let (bytes, state) = memory.data_and_store_mut(caller);
    Some((bytes, state.cgi.as_mut()?))
}

fn range(bytes: &[u8], ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(ptr as u32).ok()?;
    let end = start.checked_add(usize::try_from(len as u32).ok()?)?;
    (end <= bytes.len()).then_some(start..end)
}

fn put_u32(bytes: &mut [u8], ptr: i32, value: u32) -> Result<(), i32> {
    let at = range(bytes, ptr, 4).ok_or(RUNTIME_ERROR)?;
    bytes[at].copy_from_slice(&value.to_le_bytes());
    Ok(())
}

fn code(result: Result<(), i32>) -> i32 {
    result.err().unwrap_or(SUCCESS)
}

/// Adds `blockless_cgi` to `linker`.
pub fn add_to_linker(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    const MODULE: &str = "blockless_cgi";
    linker.func_wrap(
        MODULE,
        "cgi_list_exec",
        |mut c: Caller<'_, State>, out: i32| {
            let Some((bytes, cgi)) = memory(&mut c) else {
                return RUNTIME_ERROR;
            };
            code(cgi.list().and_then(|h| put_u32(bytes, out, h)))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "cgi_open",
        |mut c: Caller<'_, State>, ptr: i32, len: i32, out: i32| {
            let Some((bytes, cgi)) = memory(&mut c) else {
                return RUNTIME_ERROR;
            };
            let Some(at) = range(bytes, ptr, len) else {
                return INVALID_PARAMETER;
            };
            let request = bytes[at].to_vec();
            code(cgi.open(&request).and_then(|h| put_u32(bytes, out, h)))
        },
    )?;
    for (name, err) in [
        ("cgi_list_read", false),
        ("cgi_stdout_read", false),
        ("cgi_stderr_read", true),
    ] {
        linker.func_wrap(
            MODULE,
            name,
            move |mut c: Caller<'_, State>, h: i32, ptr: i32, len: i32, out: i32| {
                let Some((bytes, cgi)) = memory(&mut c) else {
                    return RUNTIME_ERROR;
                };
                let Some(at) = range(bytes, ptr, len) else {
                    return RUNTIME_ERROR;
                };
                let result = cgi.read(h as u32, &mut bytes[at], err);
                code(result.and_then(|n| put_u32(bytes, out, n as u32)))
            },
        )?;
    }
    linker.func_wrap(
        MODULE,
        "cgi_stdin_write",
        |mut c: Caller<'_, State>, h: i32, ptr: i32, len: i32, out: i32| {
            let Some((bytes, cgi)) = memory(&mut c) else {
                return RUNTIME_ERROR;
            };
            let Some(at) = range(bytes, ptr, len) else {
                return RUNTIME_ERROR;
            };
            let data = bytes[at].to_vec();
            code(
                cgi.write(h as u32, &data)
                    .and_then(|n| put_u32(bytes, out, n as u32)),
            )
        },
    )?;
    linker.func_wrap(
        MODULE,
        "cgi_close",
        |mut c: Caller<'_, State>, h: i32| match c.data_mut().cgi.as_mut() {
            Some(cgi) => code(cgi.close(h as u32)),
            None => RUNTIME_ERROR,
        },
    )?;
    Ok(())
}
