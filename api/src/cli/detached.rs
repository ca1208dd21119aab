//! Detached runs (`tessera run -d`) and what an operator does with them: `tessera ps`, `tessera
//! logs ID`, `tessera stop ID`, `tessera rm ID`, at every level. A detached run is the same
//! `tessera run` process, forked into a session of its own with its stdout and stderr in files;
//! its record (`runs/ID/state.json` in the run directory, beside the runs' sockets) says which
//! process it is, and `exit` holds its exit code once it ends (written by a small recorder
//! process that waits for it).

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::run_dir;

const STATE: &str = "state.json";
const EXIT: &str = "exit";
const STDOUT: &str = "stdout.log";
const STDERR: &str = "stderr.log";

/// One detached run's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: Option<String>,
    pub pid: i32,
    /// The process's start time (clock ticks since boot, /proc/PID/stat), so that a reused pid
    /// is never taken for the run.
    pub start_ticks: u64,
    pub level: String,
    pub what: String,
    pub created: u64,
}

fn runs_dir() -> Result<PathBuf, String> {
    let dir = run_dir::private_dir()?.join("runs");
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at "state": start time is the
    // 22nd field, the 20th after it.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_id() -> String {
    let mut bytes = [0u8; 6];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        let seed = now() ^ u64::from(std::process::id()) << 20;
        bytes.copy_from_slice(&seed.to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How `tessera run` goes on.
pub enum Start {
    /// In the foreground, as always.
    Foreground,
    /// This is the caller's process: the run is detached and its id printed.
    Parent,
    /// This is the detached run (its exit code is recorded by the process that forked it).
    Child,
}

/// Forks the run into the background when `-d` asks: the parent prints the run's id; a child
/// in a session of its own (stdin /dev/null, stdout and stderr in the run's files) forks the
/// run and stays to record its exit code (with `remove`, `--rm`: to forget it instead).
pub fn start(
    detach: bool,
    remove: bool,
    name: Option<&str>,
    level: &str,
    what: String,
) -> Result<Start, String> {
    if !detach {
        return Ok(Start::Foreground);
    }
    let runs = runs_dir()?;
    if let Some(name) = name {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Err(format!(
                "--name {name:?}: letters, digits, `_`, `.` and `-` only"
            ));
        }
        if list()?.iter().any(|r| r.name.as_deref() == Some(name)) {
            return Err(format!(
                "--name {name}: a run has that name (`tessera rm {name}` removes it)"
            ));
        }
    }
    let id = new_id();
    let dir = runs.join(&id);
    fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let open = |file: &str| {
        fs::File::create(dir.join(file)).map_err(|e| format!("{}: {e}", dir.join(file).display()))
    };
    let (stdout, stderr) = (open(STDOUT)?, open(STDERR)?);
    let null = fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    let _ = std::io::stdout().flush();
    // SAFETY: tessera has one thread here (nothing has started yet), so the child may go on.
    match unsafe { libc::fork() } {
        -1 => Err(format!(
            "cannot detach the run: {}",
            std::io::Error::last_os_error()
        )),
        0 => {
            // SAFETY: setsid and dup2 take integers; the descriptors are open.
            unsafe {
                libc::setsid();
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(stdout.as_raw_fd(), 1);
                libc::dup2(stderr.as_raw_fd(), 2);
            }
            // SAFETY: still one thread.
            let run = unsafe { libc::fork() };
            if run == 0 {
                return Ok(Start::Child);
            }
            // This process stays to record how the run ends (the run's own seccomp filter
            // would not let it write a file once its VM runs, and a killed run says nothing).
            let record = Record {
                id,
                name: name.map(str::to_string),
                pid: run,
                start_ticks: start_ticks(run).unwrap_or(0),
                level: level.to_string(),
                what,
                created: now(),
            };
            let json = serde_json::to_vec_pretty(&record).expect("a record serializes");
            let tmp = dir.join(".state.json");
            let _ = fs::write(&tmp, json).and_then(|()| fs::rename(&tmp, dir.join(STATE)));
            let mut wstatus = 0;
            // SAFETY: waitpid writes one int through a valid pointer.
            while unsafe { libc::waitpid(run, &mut wstatus, 0) } == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            let code = match (libc::WIFEXITED(wstatus), libc::WIFSIGNALED(wstatus)) {
                (true, _) => libc::WEXITSTATUS(wstatus),
                (_, true) => 128 + libc::WTERMSIG(wstatus),
                _ => 255,
            };
            match remove {
                true => {
                    let _ = fs::remove_dir_all(&dir);
                }
                false => {
                    let _ = fs::write(dir.join(EXIT), code.to_string());
                }
            }
            // SAFETY: _exit ends this recorder without running the run's exit handlers.
            unsafe { libc::_exit(0) }
        }
        child => {
            // Printed once the record exists, so that `tessera ps` right after shows it.
            let state = dir.join(STATE);
            for _ in 0..500 {
                if state.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = child;
            println!("{}", dir.file_name().unwrap_or_default().to_string_lossy());
            Ok(Start::Parent)
        }
    }
}

fn list() -> Result<Vec<Record>, String> {
    let runs = runs_dir()?;
    let mut records = Vec::new();
    for entry in fs::read_dir(&runs).map_err(|e| format!("{}: {e}", runs.display()))? {
        let Ok(entry) = entry else { continue };
        let Ok(bytes) = fs::read(entry.path().join(STATE)) else {
            continue;
        };
        if let Ok(record) = serde_json::from_slice::<Record>(&bytes) {
            records.push(record);
        }
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.created));
    Ok(records)
}

/// Running, or its exit code (None: ended without one, killed).
enum Status {
    Running,
    Exited(Option<u8>),
}

fn status(record: &Record) -> Status {
    let dir = runs_dir().map(|d| d.join(&record.id)).unwrap_or_default();
    if let Ok(code) = fs::read_to_string(dir.join(EXIT)) {
        return Status::Exited(code.trim().parse().ok());
    }
    match start_ticks(record.pid) == Some(record.start_ticks) {
        true => Status::Running,
        false => Status::Exited(None),
    }
}

/// The run `reference` names: its id, an id prefix, or its name.
fn find(reference: &str) -> Result<Record, String> {
    let records = list()?;
    if let Some(record) = records
        .iter()
        .find(|r| r.id == reference || r.name.as_deref() == Some(reference))
    {
        return Ok(record.clone());
    }
    let matches: Vec<&Record> = records
        .iter()
        .filter(|r| r.id.starts_with(reference))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!("no run {reference:?} (`tessera ps -a` lists them)")),
        _ => Err(format!(
            "{reference:?} matches more than one run: give more of its id"
        )),
    }
}

fn ago(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds} s ago"),
        60..=3599 => format!("{} min ago", seconds / 60),
        3600..=86399 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86400),
    }
}

/// `tessera ps [-a]`: the detached runs (running ones; with `all`, every one kept).
pub fn ps(all: bool) -> Result<u8, String> {
    println!(
        "{:<12}  {:<16}  {:<8}  {:<14}  {:<12}  COMMAND",
        "ID", "NAME", "LEVEL", "STATUS", "CREATED"
    );
    for record in list()? {
        let status = match status(&record) {
            Status::Running => "running".to_string(),
            Status::Exited(Some(code)) => format!("exited ({code})"),
            Status::Exited(None) => "exited (killed)".to_string(),
        };
        if !all && status != "running" {
            continue;
        }
        println!(
            "{:<12}  {:<16}  {:<8}  {:<14}  {:<12}  {}",
            record.id,
            record.name.as_deref().unwrap_or("-"),
            record.level,
            status,
            ago(now().saturating_sub(record.created)),
            record.what
        );
    }
    Ok(0)
}

/// `tessera logs [-f] ID`: the run's stdout on stdout, its stderr on stderr; with `follow`,
/// until it ends.
pub fn logs(reference: &str, follow: bool) -> Result<u8, String> {
    let record = find(reference)?;
    let dir = runs_dir()?.join(&record.id);
    let open = |name: &str| fs::File::open(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let (mut out, mut err) = (open(STDOUT)?, open(STDERR)?);
    let copy = |from: &mut fs::File, to: &mut dyn Write| {
        let mut buf = Vec::new();
        let _ = from.read_to_end(&mut buf);
        let _ = to.write_all(&buf);
        let _ = to.flush();
    };
    loop {
        let running = matches!(status(&record), Status::Running);
        copy(&mut out, &mut std::io::stdout());
        copy(&mut err, &mut std::io::stderr());
        if !follow || !running {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `tessera stop [-t SECONDS] ID`: SIGTERM (a microVM's command gets it through Ctrl-Alt-Del,
/// a sandbox's from its init), then SIGKILL after the grace time, as `docker stop`.
pub fn stop(reference: &str, grace: u64) -> Result<u8, String> {
    let record = find(reference)?;
    if !matches!(status(&record), Status::Running) {
        println!("{}", record.id);
        return Ok(0);
    }
    // SAFETY: kill takes integers; the pid is the run's (its start time was checked).
    unsafe { libc::kill(record.pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(grace);
    while std::time::Instant::now() < deadline {
        if start_ticks(record.pid) != Some(record.start_ticks) {
            wait_recorded(&record);
            println!("{}", record.id);
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if start_ticks(record.pid) == Some(record.start_ticks) {
        // SAFETY: as above.
        unsafe { libc::kill(record.pid, libc::SIGKILL) };
    }
    wait_recorded(&record);
    println!("{}", record.id);
    Ok(0)
}

/// Waits (a second at most) for the recorder to write an ended run's exit code, so that `ps`
/// right after `stop` shows it.
fn wait_recorded(record: &Record) {
    let Ok(dir) = runs_dir().map(|d| d.join(&record.id)) else {
        return;
    };
    for _ in 0..100 {
        if dir.join(EXIT).exists() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `tessera rm [-f] ID`: forgets an ended run (with `force`, stops a running one first).
pub fn rm(reference: &str, force: bool) -> Result<u8, String> {
    let record = find(reference)?;
    if matches!(status(&record), Status::Running) {
        if !force {
            return Err(format!(
                "run {} is running: `tessera stop {}` first, or rm -f",
                record.id, record.id
            ));
        }
        stop(&record.id, 0)?;
    }
    let dir = runs_dir()?.join(&record.id);
    fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    println!("{}", record.id);
    Ok(0)
}
