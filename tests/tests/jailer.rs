//! `tessera-jailer` end to end: a real jailer builds a jail (chroot, cgroup, device nodes,
//! mount namespace, dropped privileges) and execs the real `tessera` in it, which serves its
//! API socket inside the jail.
//!
//! Every test needs root (the jailer makes device nodes, mounts and cgroups) and says SKIPPED
//! without it; the tests that boot a tiny guest also need /dev/kvm, and the cgroup tests a
//! memory controller (cgroup v2 when its root offers one, else v1). Each test has its own
//! chroot base dir under the temp dir, its own jail id and its own parent cgroup, and a
//! [`Jail`] guard kills whatever runs in the jail and removes the jail and its cgroups, even
//! when the test fails.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::api_client::{ApiClient, ApiResponse, CONNECT_TIMEOUT};
use tests::{jailer_bin, skip_without_kvm, tessera_bin, tiny_guest};

/// The exec file's name: the jail is `<base>/tessera/<id>/root`, the VMM runs as `/tessera`.
const EXEC_NAME: &str = "tessera";
/// Ids the VMM runs as; they need not exist in /etc/passwd.
const UID: u32 = 123;
const GID: u32 = 456;

/// Generous: the machine running the tests is shared and slow, and every jail copies the
/// (debug, static) VMM binary.
const WAIT: Duration = Duration::from_secs(15);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a jailer that is expected to return (an error, `--daemonize`) may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// The scancodes (set 2) the i8042 sends for Ctrl-Alt-Del, as tick64 prints them.
const CTRL_ALT_DEL_KEYS: [&str; 4] = ["key 14", "key 11", "key e0", "key 71"];

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// What this host offers
// ---------------------------------------------------------------------------------------

/// Prints a skip line and returns true unless the tests run as root.
fn skip_unless_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!("SKIPPED {test}: the jailer needs root (running as uid {euid})");
        return true;
    }
    false
}

/// One cgroup hierarchy from /proc/self/mounts.
#[derive(Debug, Clone)]
struct CgroupMount {
    path: PathBuf,
    v2: bool,
    /// v1: the mount options (which name the controllers); v2: the root's cgroup.controllers.
    controllers: Vec<String>,
}

fn cgroup_mounts() -> Vec<CgroupMount> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (path, fstype, options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            let path = PathBuf::from(path);
            match *fstype {
                "cgroup" => Some(CgroupMount {
                    controllers: options.split(',').map(str::to_owned).collect(),
                    path,
                    v2: false,
                }),
                "cgroup2" => Some(CgroupMount {
                    controllers: fs::read_to_string(path.join("cgroup.controllers"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect(),
                    path,
                    v2: true,
                }),
                _ => None,
            }
        })
        .collect()
}

/// A controller the jailer can be asked to use: where its hierarchy is and which
/// `--cgroup-version` selects it.
#[derive(Debug, Clone)]
struct Controller {
    version: u8,
    mount: PathBuf,
}

impl Controller {
    /// `--cgroup-version N`.
    fn version_arg(&self) -> String {
        self.version.to_string()
    }

    /// The cgroup the jailer makes for a jail.
    fn dir(&self, parent: &str, id: &str) -> PathBuf {
        self.mount.join(parent).join(id)
    }
}

/// The hierarchy holding `controller`: cgroup v2 when its root offers it, else v1.
fn find_controller(controller: &str) -> Result<Controller, String> {
    let mounts = cgroup_mounts();
    let v2 = mounts.iter().find(|m| m.v2);
    if let Some(m) = v2.filter(|m| m.controllers.iter().any(|c| c == controller)) {
        return Ok(Controller {
            version: 2,
            mount: m.path.clone(),
        });
    }
    if let Some(m) = mounts
        .iter()
        .find(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))
    {
        return Ok(Controller {
            version: 1,
            mount: m.path.clone(),
        });
    }
    let v2_state = match v2 {
        Some(m) => format!(
            "the cgroup2 mount at {} offers [{}]",
            m.path.display(),
            m.controllers.join(" ")
        ),
        None => "no cgroup2 mount".to_owned(),
    };
    Err(format!(
        "no cgroup v2 {controller} controller ({v2_state}) and no cgroup v1 {controller} hierarchy"
    ))
}

/// The memory controller, or prints a skip line.
fn memory_controller_or_skip(test: &str) -> Option<Controller> {
    match find_controller("memory") {
        Ok(controller) => Some(controller),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// `--cgroup` for a memory limit of `bytes` in `controller`'s version.
fn memory_limit_arg(controller: &Controller, bytes: u64) -> String {
    let file = if controller.version == 2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    format!("{file}={bytes}")
}

/// The file holding the memory limit in `controller`'s version.
fn memory_limit_file(controller: &Controller) -> &'static str {
    if controller.version == 2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    }
}

/// How many times the OOM killer fired in the cgroup `dir`.
fn oom_kills(controller: &Controller, dir: &Path) -> u64 {
    let file = if controller.version == 2 {
        dir.join("memory.events")
    } else {
        dir.join("memory.oom_control")
    };
    let text = read(&file);
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no oom_kill count in {}:\n{text}", file.display()))
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// (device, inode) of what `path` resolves to.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn dev_major(rdev: u64) -> u64 {
    ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)
}

fn dev_minor(rdev: u64) -> u64 {
    (rdev & 0xff) | ((rdev >> 12) & !0xff)
}

/// The processes whose root directory is `root` (the jail's VMM, whatever its pid).
fn jailed_pids(root: &Path) -> Vec<i32> {
    let Some(want) = file_id(root) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| file_id(&PathBuf::from(format!("/proc/{pid}/root"))) == Some(want))
        .collect()
}

/// The fields of a `/proc/<pid>/status` line, e.g. `Uid:` -> ["123", "123", "123", "123"].
fn status_field(pid: i32, name: &str) -> Vec<String> {
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in /proc/{pid}/status:\n{status}"));
    line[name.len() + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `/proc/<pid>/limits`'s soft and hard values for `resource`, e.g. "Max open files".
fn limit_of(pid: i32, resource: &str) -> (String, String) {
    let limits = read(Path::new(&format!("/proc/{pid}/limits")));
    let line = limits
        .lines()
        .find(|l| l.starts_with(resource))
        .unwrap_or_else(|| panic!("no {resource:?} in /proc/{pid}/limits:\n{limits}"));
    let mut values = line[resource.len()..].split_whitespace();
    let soft = values.next().unwrap_or_default().to_owned();
    let hard = values.next().unwrap_or_default().to_owned();
    (soft, hard)
}

/// `/proc/<pid>/stat`'s fields after the command name (field 3, the state, is index 0).
fn stat_fields(pid: i32) -> Vec<String> {
    let stat = read(Path::new(&format!("/proc/{pid}/stat")));
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("odd /proc/{pid}/stat: {stat}"));
    after_comm.split_whitespace().map(str::to_owned).collect()
}

fn cmdline(pid: i32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/cmdline: {e}"));
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The pids listed in a cgroup's `cgroup.procs` or `tasks`.
fn pids_in(file: &Path) -> Vec<i32> {
    read(file)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Removes the (empty) cgroup directory `dir`, retrying while its last process is being
/// torn down.
fn remove_cgroup(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.exists() {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!("cleanup: cannot remove cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn action(name: &str) -> String {
    json!({ "action_type": name }).to_string()
}

#[track_caller]
fn expect(response: ApiResponse, status: u16, what: &str) -> ApiResponse {
    assert_eq!(response.status, status, "{what}: {response}");
    response
}

/// One request on a fresh connection, tolerating a VMM that dies meanwhile: the status and
/// body, or the I/O error.
fn raw_request(socket: &Path, method: &str, path: &str, body: &str) -> io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&tests::api_client::request_bytes(method, path, Some(body)))?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, format!("{text:?}")))?;
    Ok((status, text))
}

// ---------------------------------------------------------------------------------------
// A jail under test
// ---------------------------------------------------------------------------------------

/// Output collected from a pipe by a background thread.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    fn spawn(mut pipe: impl Read + Send + 'static) -> Collected {
        let collected = Collected::default();
        let sink = collected.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => sink
                        .0
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
        collected
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// A jailer that ran to completion.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Asserts a failed jailer run that reported one line `tessera-jailer: error: ...` holding
/// every needle, exited non-zero (not by a signal), and printed nothing on stdout.
#[track_caller]
fn assert_one_line_error(out: &Outcome, needles: &[&str], what: &str) {
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "{what}: expected a non-zero exit code\n{out}"
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: expected one line on stderr\n{out}");
    assert!(
        lines[0].starts_with("tessera-jailer: error: "),
        "{what}: {:?} is not a `tessera-jailer: error: ...` line",
        lines[0]
    );
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{what}: {:?} does not name {needle:?}",
            lines[0]
        );
    }
    assert_eq!(out.stdout, "", "{what}: nothing on stdout\n{out}");
}

/// One jail: its base dir, id and parent cgroup, and the jailer (then VMM) process if one was
/// spawned. Dropping it kills every process in the jail and removes the jail and its cgroups.
struct Jail {
    /// `--chroot-base-dir`, created (empty) by the test.
    base: PathBuf,
    /// Where [`Jail::run`] puts the output of jailers that run to completion (outside the
    /// base, which tests check for leftovers).
    logs: PathBuf,
    id: String,
    /// `--parent-cgroup`, or None for the default (the exec file's name).
    parent: Option<String>,
    exec_file: PathBuf,
    child: Option<Child>,
    stdout: Collected,
    stderr: Collected,
    runs: usize,
}

impl Jail {
    /// A fresh base dir, id and parent cgroup of this test's own.
    fn new(tag: &str) -> Jail {
        Jail::with_parent(tag, true)
    }

    /// As [`Jail::new`]; with `own_parent` false the jailer's default parent cgroup
    /// (`tessera`) is used.
    fn with_parent(tag: &str, own_parent: bool) -> Jail {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Short: the API socket's host path must fit a sockaddr_un (107 bytes).
        let base = std::env::temp_dir().join(format!("tsr-jt{tag}-{pid}-{n}"));
        let logs = std::env::temp_dir().join(format!("tsr-jtlog{tag}-{pid}-{n}"));
        for dir in [&base, &logs] {
            let _ = fs::remove_dir_all(dir);
            fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        Jail {
            base,
            logs,
            id: format!("jt{pid}-{n}"),
            parent: own_parent.then(|| format!("tsr-jt-{pid}-{n}")),
            exec_file: tessera_bin(),
            child: None,
            stdout: Collected::default(),
            stderr: Collected::default(),
            runs: 0,
        }
    }

    /// `<base>/tessera/<id>`: what the jailer makes (and refuses when it exists).
    fn jail_dir(&self) -> PathBuf {
        self.base.join(EXEC_NAME).join(&self.id)
    }

    /// The jail's root: the VMM's `/`, a plain directory on the host.
    fn root(&self) -> PathBuf {
        self.jail_dir().join("root")
    }

    /// The host path of a path inside the jail (`/api.sock`).
    fn host_path(&self, inside: &str) -> PathBuf {
        self.root().join(inside.trim_start_matches('/'))
    }

    fn socket(&self) -> PathBuf {
        self.host_path("/api.sock")
    }

    /// The parent cgroup the jailer uses for this jail.
    fn parent_cgroup(&self) -> &str {
        self.parent.as_deref().unwrap_or(EXEC_NAME)
    }

    /// The jailer command line with this jail's id.
    fn command(&self, flags: &[&str], vmm_args: &[&str]) -> Command {
        self.command_with(OsStr::new(&self.id), &self.exec_file, flags, vmm_args)
    }

    /// The jailer command line: `--id ID --exec-file EXEC --uid --gid --chroot-base-dir
    /// [--parent-cgroup] FLAGS -- VMM_ARGS`; a flag in FLAGS replaces the default one (so a
    /// test can pass e.g. a bad `--uid`). It runs in the logs dir, so a relative path the
    /// jailer wrongly used would show up there.
    fn command_with(&self, id: &OsStr, exec: &Path, flags: &[&str], vmm_args: &[&str]) -> Command {
        let mut defaults: Vec<(&str, OsString)> = vec![
            ("--id", id.into()),
            ("--exec-file", exec.into()),
            ("--uid", UID.to_string().into()),
            ("--gid", GID.to_string().into()),
            ("--chroot-base-dir", self.base.clone().into()),
        ];
        if let Some(parent) = &self.parent {
            defaults.push(("--parent-cgroup", parent.into()));
        }
        let mut args: Vec<OsString> = Vec::new();
        for (flag, value) in defaults {
            if !flags.contains(&flag) {
                args.extend([flag.into(), value]);
            }
        }
        args.extend(flags.iter().map(OsString::from));
        if !vmm_args.is_empty() {
            args.push("--".into());
            args.extend(vmm_args.iter().map(OsString::from));
        }
        let mut cmd = Command::new(jailer_bin());
        cmd.args(args).stdin(Stdio::null()).current_dir(&self.logs);
        cmd
    }

    /// Starts the jailer (which becomes the VMM), stdout (the guest console) and stderr
    /// collected.
    fn spawn(&mut self, flags: &[&str], vmm_args: &[&str]) {
        assert!(self.child.is_none(), "one spawned jailer per Jail");
        let mut cmd = self.command(flags, vmm_args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tessera-jailer");
        self.stdout = Collected::spawn(child.stdout.take().expect("piped stdout"));
        self.stderr = Collected::spawn(child.stderr.take().expect("piped stderr"));
        self.child = Some(child);
    }

    /// Runs a jailer to completion (killing it and failing the test after RUN_TIMEOUT). Its
    /// output goes to files, so a daemon that kept the pipes could not hang the test.
    fn run(&mut self, mut cmd: Command) -> Outcome {
        self.runs += 1;
        let out_path = self.logs.join(format!("out-{}", self.runs));
        let err_path = self.logs.join(format!("err-{}", self.runs));
        let create = |p: &Path| {
            fs::File::create(p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()))
        };
        cmd.stdout(create(&out_path)).stderr(create(&err_path));
        let mut child = cmd.spawn().expect("spawn tessera-jailer");
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for tessera-jailer") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tessera-jailer did not return within {RUN_TIMEOUT:?}\n--- stderr\n{}",
                    fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        Outcome {
            status,
            stdout: fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// The spawned jailer's pid: without --daemonize and --new-pid-ns, the VMM's.
    fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("a spawned jailer");
        i32::try_from(child.id()).expect("pid fits an i32")
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("wait for the jailer"))
    }

    fn output_so_far(&self) -> String {
        format!(
            "--- stdout\n{}--- stderr\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }

    /// Waits until the VMM accepts connections on `<root>/api.sock`; fails the test when
    /// the spawned jailer exits first or after WAIT.
    fn wait_for_socket(&mut self) -> PathBuf {
        let socket = self.socket();
        let deadline = Instant::now() + WAIT;
        loop {
            let err = match UnixStream::connect(&socket) {
                Ok(_) => return socket,
                Err(e) => e,
            };
            if let Some(status) = self.exited() {
                panic!(
                    "the jailer exited ({status}) before {} answered: {err}\n{}",
                    socket.display(),
                    self.output_so_far()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not answer within {WAIT:?}: {err}\n{}",
                    socket.display(),
                    self.output_so_far()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&mut self) -> ApiClient {
        let socket = self.wait_for_socket();
        ApiClient::connect(&socket, CONNECT_TIMEOUT)
    }

    /// Waits until the guest printed `n` ticks.
    fn wait_for_ticks(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ticks() >= n {
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "the VMM exited ({status}) before {n} ticks\n{}",
                    self.output_so_far()
                );
            }
            if Instant::now() > deadline {
                panic!("no {n} ticks within {timeout:?}\n{}", self.output_so_far());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn ticks(&self) -> usize {
        self.stdout.text().lines().filter(|l| *l == "tick").count()
    }

    /// Waits for the spawned jailer/VMM to exit and lets its pipes drain; kills it and fails
    /// the test after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                // The console's last lines may still be in the pipe.
                thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "the VMM did not exit within {timeout:?}\n{}",
                    self.output_so_far()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Copies tiny guest `name` into the jail as `/<name>.elf`, owned by the VMM's ids; the
    /// in-jail path.
    fn install_guest(&self, name: &str) -> String {
        let inside = format!("/{name}.elf");
        let dest = self.host_path(&inside);
        fs::copy(tiny_guest(name), &dest)
            .unwrap_or_else(|e| panic!("cannot copy {name} to {}: {e}", dest.display()));
        std::os::unix::fs::chown(&dest, Some(UID), Some(GID))
            .unwrap_or_else(|e| panic!("cannot chown {}: {e}", dest.display()));
        inside
    }

    /// The cgroup directories this jail may have (one per hierarchy) that exist.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_mounts()
            .iter()
            .map(|m| m.path.join(self.parent_cgroup()).join(&self.id))
            .filter(|d| d.exists())
            .collect()
    }

    /// The parent cgroup directories that exist for this jail, in any hierarchy.
    fn parent_cgroup_dirs(&self) -> Vec<PathBuf> {
        cgroup_mounts()
            .iter()
            .map(|m| m.path.join(self.parent_cgroup()))
            .filter(|d| d.exists())
            .collect()
    }

    /// What a failed jailer left of this jail (the jail dir, its cgroups), removed so that the
    /// next attempt with the same id starts afresh.
    fn take_leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let jail_dir = self.jail_dir();
        if jail_dir.exists() {
            left.push(format!(
                "the jail dir {} (root: {:?})",
                jail_dir.display(),
                fs::read_dir(self.root()).map(|_| names_in(&self.root()))
            ));
            let _ = fs::remove_dir_all(&jail_dir);
        }
        for dir in self.cgroup_dirs() {
            left.push(format!("the cgroup {}", dir.display()));
            remove_cgroup(&dir);
        }
        left
    }

    /// Asserts that the jailer left nothing behind: no jail dir and no cgroup for the jail in
    /// any hierarchy. With `nothing_at_all` (for command lines refused before anything is
    /// made), not even the parent directories: the base stays empty and no parent cgroup
    /// appears; else `<base>/tessera`, shared by all jails of that exec file, may stay, empty.
    #[track_caller]
    fn assert_nothing_made(&self, nothing_at_all: bool, what: &str) {
        let jail_dir = self.jail_dir();
        assert!(
            !jail_dir.exists(),
            "{what}: the jailer left the jail dir {} (root: {:?})",
            jail_dir.display(),
            fs::read_dir(self.root()).map(|_| names_in(&self.root()))
        );
        assert_eq!(
            self.cgroup_dirs(),
            Vec::<PathBuf>::new(),
            "{what}: the jailer left the jail's cgroup"
        );
        if nothing_at_all {
            assert_eq!(
                names_in(&self.base),
                Vec::<String>::new(),
                "{what}: the jailer made something in its base dir {}",
                self.base.display()
            );
            let parents = self.parent_cgroup_dirs();
            assert_eq!(
                parents,
                Vec::<PathBuf>::new(),
                "{what}: a parent cgroup was made for a command line that was refused"
            );
        } else {
            let exec_dir = self.base.join(EXEC_NAME);
            let left: Vec<String> = names_in(&self.base)
                .into_iter()
                .filter(|n| n != EXEC_NAME)
                .collect();
            assert_eq!(left, Vec::<String>::new(), "{what}: left in the base dir");
            if exec_dir.exists() {
                assert_eq!(
                    names_in(&exec_dir),
                    Vec::<String>::new(),
                    "{what}: left in {}",
                    exec_dir.display()
                );
            }
        }
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        let root = self.root();
        // Whatever runs in the jail (the VMM, daemonized or in its own PID namespace).
        for pid in jailed_pids(&root) {
            // SAFETY: signalling a process whose root is this test's jail.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !jailed_pids(&root).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        for mount in cgroup_mounts() {
            remove_cgroup(&mount.path.join(self.parent_cgroup()).join(&self.id));
            // Our own parent goes too; the shared default one only when empty.
            let _ = fs::remove_dir(mount.path.join(self.parent_cgroup()));
        }
        let _ = fs::remove_dir_all(&self.base);
        let _ = fs::remove_dir_all(&self.logs);
    }
}

// ---------------------------------------------------------------------------------------
// 1. A jailed VMM boots a guest
// ---------------------------------------------------------------------------------------

#[test]
fn jailed_tessera_boots_a_tiny_guest_through_its_api_socket() {
    let test = "jailed_tessera_boots_a_tiny_guest_through_its_api_socket";
    if skip_unless_root(test) || skip_without_kvm(test) {
        return;
    }
    let mut jail = Jail::new("boot");
    jail.spawn(&[], &["--api-sock", "/api.sock"]);
    let mut api = jail.client();

    let info = expect(api.get("/"), 200, "GET /").json();
    assert_eq!(
        info["id"],
        jail.id.as_str(),
        "the jailer passes --id: {info}"
    );
    assert_eq!(info["state"], "Not started", "{info}");

    let machine = json!({"vcpu_count": 1, "mem_size_mib": 32}).to_string();
    expect(
        api.put("/machine-config", &machine),
        204,
        "PUT /machine-config",
    );

    // The host's copy of the guest is not visible inside the jail, nor (yet) the in-jail one.
    let host_guest = tiny_guest("tick64");
    let outside = json!({"kernel_image_path": host_guest, "boot_args": "console=ttyS0"});
    let refused = expect(
        api.put("/boot-source", &outside.to_string()),
        400,
        "PUT /boot-source with the host path",
    );
    assert!(
        refused
            .fault_message()
            .contains(&host_guest.display().to_string()),
        "{refused}"
    );
    let inside = json!({"kernel_image_path": "/tick64.elf", "boot_args": "console=ttyS0"});
    expect(
        api.put("/boot-source", &inside.to_string()),
        400,
        "PUT /boot-source before the guest is in the jail",
    );

    assert_eq!(jail.install_guest("tick64"), "/tick64.elf");
    expect(
        api.put("/boot-source", &inside.to_string()),
        204,
        "PUT /boot-source with the in-jail path",
    );
    expect(
        api.put("/actions", &action("InstanceStart")),
        204,
        "InstanceStart",
    );
    assert_eq!(api.state(), "Running");
    jail.wait_for_ticks(3, WAIT);
    assert!(
        jail.stdout.text().starts_with("tessera-test: ticking\n"),
        "{}",
        jail.output_so_far()
    );
    // The jailed VMM (the jailer's own process, exec'd) runs every thread under its filter.
    let threads = tests::thread_filters(jail.pid());
    assert_eq!(
        threads.len(),
        4,
        "tessera, api, vcpu0, console: {threads:?}"
    );
    tests::assert_one_filter_each(&threads);

    expect(
        api.put("/actions", &action("SendCtrlAltDel")),
        204,
        "SendCtrlAltDel",
    );
    let status = jail.wait_exit(EXIT_TIMEOUT);
    let stdout = jail.stdout.text();
    assert_eq!(status.code(), Some(0), "{status}\n{}", jail.output_so_far());
    let keys: Vec<&str> = stdout.lines().filter(|l| l.starts_with("key ")).collect();
    assert_eq!(keys, CTRL_ALT_DEL_KEYS, "{}", jail.output_so_far());
    assert!(
        stdout.ends_with("tessera-test: done\n"),
        "{}",
        jail.output_so_far()
    );
    assert!(
        !jail.socket().exists(),
        "the VMM removes its socket (inside the jail) on exit"
    );
    api.expect_closed();
}

// ---------------------------------------------------------------------------------------
// 2. The view from inside
// ---------------------------------------------------------------------------------------

#[test]
fn jailed_vmm_sees_only_the_jail_and_runs_unprivileged() {
    let test = "jailed_vmm_sees_only_the_jail_and_runs_unprivileged";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("view");
    jail.spawn(&[], &["--api-sock", "/api.sock"]);
    let mut api = jail.client();
    // Without --daemonize and --new-pid-ns the jailer execs the VMM in place.
    let pid = jail.pid();
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));

    assert_eq!(
        cmdline(pid),
        [
            format!("/{EXEC_NAME}"),
            "--id".into(),
            jail.id.clone(),
            "--api-sock".into(),
            "/api.sock".into()
        ],
        "the VMM runs as /<exec-file name> --id <id> <args after -->"
    );

    // Its root is the jail root, in a mount namespace of its own whose mounts do not leak
    // back to the host.
    assert_eq!(
        file_id(&proc_dir.join("root")),
        file_id(&jail.root()),
        "/proc/{pid}/root is the jail root"
    );
    assert_ne!(
        fs::read_link(proc_dir.join("ns/mnt")).expect("the VMM's mount namespace"),
        fs::read_link("/proc/self/ns/mnt").expect("our mount namespace"),
        "the VMM has a mount namespace of its own"
    );
    let host_mounts = read(Path::new("/proc/self/mountinfo"));
    let base = jail.base.display().to_string();
    assert!(
        !host_mounts.lines().any(|l| l.contains(&base)),
        "a jail mount leaked into the host's namespace:\n{host_mounts}"
    );

    // What it sees: the jail's files, none of the host's.
    let inside = names_in(&proc_dir.join("root"));
    for expected in [EXEC_NAME, "dev", "api.sock"] {
        assert!(
            inside.iter().any(|n| n == expected),
            "no {expected} in the jail: {inside:?}"
        );
    }
    // The jail may make directories named like the host's (`/run` for the VMM's default
    // socket path), but none of them may be the host's.
    let leaked: Vec<&String> = inside
        .iter()
        .filter(|n| {
            let host = Path::new("/").join(n);
            host.exists() && file_id(&host) == file_id(&proc_dir.join("root").join(n))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "host entries {leaked:?} are visible in the jail: {inside:?}"
    );
    for host_dir in ["usr", "work", "proc", "etc", "tmp", "old_root"] {
        assert!(
            !inside.iter().any(|n| n == host_dir),
            "/{host_dir} in the jail: {inside:?}"
        );
    }
    // The exec file is a copy, not the host's file.
    let exec_inside = fs::metadata(proc_dir.join("root").join(EXEC_NAME)).expect("/tessera");
    let exec_host = fs::metadata(tessera_bin()).expect("the exec file");
    assert!(exec_inside.is_file());
    assert_eq!(exec_inside.len(), exec_host.len(), "a full copy");
    assert_ne!(
        (exec_inside.dev(), exec_inside.ino()),
        (exec_host.dev(), exec_host.ino()),
        "the exec file is copied into the jail, not linked"
    );

    // The device nodes it needs, owned by the VMM's ids.
    for (node, major, minor) in [
        ("dev/kvm", 10, 232),
        ("dev/net/tun", 10, 200),
        ("dev/urandom", 1, 9),
    ] {
        let path = proc_dir.join("root").join(node);
        let meta = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("no /{node} in the jail ({}): {e}", path.display()));
        assert!(meta.file_type().is_char_device(), "/{node}: {meta:?}");
        assert_eq!(
            (dev_major(meta.rdev()), dev_minor(meta.rdev())),
            (major, minor),
            "/{node}'s device number"
        );
        assert_eq!((meta.uid(), meta.gid()), (UID, GID), "/{node}'s owner");
    }

    // Who it runs as: UID/GID everywhere, no supplementary groups, no way back up.
    let uid = UID.to_string();
    let gid = GID.to_string();
    assert_eq!(status_field(pid, "Uid"), [uid.as_str(); 4]);
    assert_eq!(status_field(pid, "Gid"), [gid.as_str(); 4]);
    assert_eq!(status_field(pid, "Groups"), Vec::<String>::new());
    assert_eq!(status_field(pid, "NoNewPrivs"), ["1"]);
    assert_eq!(
        status_field(pid, "CapEff"),
        ["0000000000000000"],
        "no capabilities left"
    );
    // Firecracker's default open-file limit when --resource-limit no-file= is not given.
    assert_eq!(
        limit_of(pid, "Max open files"),
        ("2048".into(), "2048".into())
    );

    // And it cannot read what only root may: a root-owned 0600 guest is refused, the same
    // guest readable by all is accepted.
    let inside_path = jail.install_guest("idle64");
    let host_copy = jail.host_path(&inside_path);
    std::os::unix::fs::chown(&host_copy, Some(0), Some(0)).expect("chown to root");
    fs::set_permissions(&host_copy, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let boot = json!({ "kernel_image_path": inside_path }).to_string();
    let refused = expect(
        api.put("/boot-source", &boot),
        400,
        "a root-only guest as uid 123",
    );
    assert!(refused.fault_message().contains(&inside_path), "{refused}");
    fs::set_permissions(&host_copy, fs::Permissions::from_mode(0o644)).expect("chmod 644");
    expect(
        api.put("/boot-source", &boot),
        204,
        "a world-readable guest",
    );
    assert!(jail.exited().is_none(), "{}", jail.output_so_far());

    // Nothing in the jail is writable by other host users: not the directories the jailer
    // made (it makes them as root, so its umask decides), not the API socket the VMM made
    // (connecting to a unix socket needs write permission on it). The VMM's umask masks
    // group and other writes (Firecracker's jailer leaves the caller's), checked when ours
    // does.
    let our_umask = u32::from_str_radix(&status_field(std::process::id() as i32, "Umask")[0], 8)
        .expect("our umask");
    let vmm_umask =
        u32::from_str_radix(&status_field(pid, "Umask")[0], 8).expect("the VMM's umask");
    let writable: Vec<String> = [
        jail.base.join(EXEC_NAME),
        jail.jail_dir(),
        jail.root(),
        jail.host_path("/dev"),
        jail.host_path("/dev/net"),
        jail.host_path("/run"),
        jail.socket(),
    ]
    .iter()
    .filter_map(|p| {
        let mode = fs::symlink_metadata(p).ok()?.permissions().mode();
        (mode & 0o002 != 0).then(|| format!("{} ({:o})", p.display(), mode & 0o7777))
    })
    .collect();
    if our_umask & 0o022 != 0o022 {
        eprintln!("{test}: umask {our_umask:04o}: the jail's modes are not checked");
        return;
    }
    assert!(
        vmm_umask & 0o022 == 0o022 && writable.is_empty(),
        "the VMM runs with umask {vmm_umask:04o} (ours: {our_umask:04o}); writable by any \
         host user: {writable:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 3. cgroups
// ---------------------------------------------------------------------------------------

#[test]
fn cgroup_settings_are_written_and_the_vmm_runs_in_its_cgroup() {
    let test = "cgroup_settings_are_written_and_the_vmm_runs_in_its_cgroup";
    if skip_unless_root(test) || skip_without_kvm(test) {
        return;
    }
    let Some(memory) = memory_controller_or_skip(test) else {
        return;
    };
    // The default parent cgroup: the exec file's name.
    let mut jail = Jail::with_parent("cg", false);
    let limit = 256 * MIB;
    let mut flags = vec![
        "--cgroup-version".to_owned(),
        memory.version_arg(),
        "--cgroup".to_owned(),
        memory_limit_arg(&memory, limit),
    ];
    // A second controller when this host has it in the same version: pids.max.
    let pids = find_controller("pids")
        .ok()
        .filter(|p| p.version == memory.version);
    if pids.is_some() {
        flags.extend(["--cgroup".to_owned(), "pids.max=200".to_owned()]);
    } else {
        eprintln!("{test}: no pids controller in cgroup v{}", memory.version);
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    jail.spawn(&flags, &["--api-sock", "/api.sock"]);
    let mut api = jail.client();
    let pid = jail.pid();

    let dir = memory.dir(EXEC_NAME, &jail.id);
    assert!(dir.is_dir(), "no cgroup {}", dir.display());
    assert_eq!(
        read(&dir.join(memory_limit_file(&memory))).trim(),
        limit.to_string(),
        "the memory limit in {}",
        dir.display()
    );
    assert!(
        pids_in(&dir.join("cgroup.procs")).contains(&pid),
        "the VMM ({pid}) is in {}/cgroup.procs",
        dir.display()
    );
    if memory.version == 1 {
        assert!(
            pids_in(&dir.join("tasks")).contains(&pid),
            "the VMM ({pid}) is in {}/tasks",
            dir.display()
        );
    }
    let membership = read(&PathBuf::from(format!("/proc/{pid}/cgroup")));
    let wanted = format!("/{EXEC_NAME}/{}", jail.id);
    let in_memory_cgroup = membership.lines().any(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let controllers_match = if memory.version == 2 {
            controllers == Some("")
        } else {
            controllers.is_some_and(|c| c.split(',').any(|c| c == "memory"))
        };
        controllers_match && path == Some(wanted.as_str())
    });
    assert!(
        in_memory_cgroup,
        "/proc/{pid}/cgroup does not show {wanted}:\n{membership}"
    );
    if let Some(pids) = &pids {
        let dir = pids.dir(EXEC_NAME, &jail.id);
        assert_eq!(read(&dir.join("pids.max")).trim(), "200");
        assert!(pids_in(&dir.join("cgroup.procs")).contains(&pid));
    }

    // The guest runs under the limit, and its memory is charged to the jail's cgroup.
    let machine = json!({"vcpu_count": 1, "mem_size_mib": 64}).to_string();
    expect(api.put("/machine-config", &machine), 204, "machine-config");
    let kernel = jail.install_guest("tick64");
    let boot = json!({ "kernel_image_path": kernel }).to_string();
    expect(api.put("/boot-source", &boot), 204, "boot-source");
    expect(api.put("/actions", &action("InstanceStart")), 204, "start");
    jail.wait_for_ticks(2, WAIT);
    let usage_file = if memory.version == 2 {
        "memory.current"
    } else {
        "memory.usage_in_bytes"
    };
    let usage: u64 = read(&dir.join(usage_file))
        .trim()
        .parse()
        .expect("a byte count");
    assert!(
        usage > 0 && usage <= limit,
        "{usage_file} = {usage} with a limit of {limit}"
    );
    expect(
        api.put("/actions", &action("SendCtrlAltDel")),
        204,
        "Ctrl-Alt-Del",
    );
    let status = jail.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{status}\n{}", jail.output_so_far());
}

/// A memory limit the VMM cannot live with. The tiny guests touch almost none of their
/// memory and the VMM's peak here is ~2.6 MiB (measured with `memory.max_usage_in_bytes`: a
/// tick64 boot with mem_size_mib 256 in a v1 cgroup), so a limit "below the guest's size"
/// does not fail: guest memory is only charged when touched. At 2 MiB the VMM still boots
/// (reclaiming its file pages); at 1 MiB the kernel's OOM killer kills it every time, here
/// while it answers InstanceStart (machine-config and boot-source still succeed), on a
/// leaner build perhaps earlier. So: 1 MiB, and the launch must end in SIGKILL with the kill
/// counted by the jail's cgroup and no guest output, wherever in the launch it happens.
#[test]
fn a_memory_limit_too_small_for_the_vmm_stops_the_launch() {
    let test = "a_memory_limit_too_small_for_the_vmm_stops_the_launch";
    if skip_unless_root(test) || skip_without_kvm(test) {
        return;
    }
    let Some(memory) = memory_controller_or_skip(test) else {
        return;
    };
    let mut jail = Jail::new("oom");
    let limit = memory_limit_arg(&memory, MIB);
    jail.spawn(
        &[
            "--cgroup-version",
            &memory.version_arg(),
            "--cgroup",
            &limit,
        ],
        &["--api-sock", "/api.sock"],
    );
    let socket = jail.socket();
    let deadline = Instant::now() + WAIT;
    let mut answers = Vec::new();
    // Either it dies before serving the API, or it tries to boot the guest and dies then.
    while jail.exited().is_none() && Instant::now() < deadline {
        if UnixStream::connect(&socket).is_ok() {
            let kernel = jail.install_guest("tick64");
            let machine = json!({"vcpu_count": 1, "mem_size_mib": 256}).to_string();
            let boot = json!({ "kernel_image_path": kernel }).to_string();
            for (path, body) in [
                ("/machine-config", machine),
                ("/boot-source", boot),
                ("/actions", action("InstanceStart")),
            ] {
                answers.push((path, raw_request(&socket, "PUT", path, &body)));
            }
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = jail.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the VMM still runs in a 1 MiB cgroup after {EXIT_TIMEOUT:?} ({} ticks); API \
             answers: {answers:?}\n{}",
            jail.ticks(),
            jail.output_so_far()
        );
        thread::sleep(Duration::from_millis(20));
    };
    thread::sleep(Duration::from_millis(100));
    eprintln!("{test}: the VMM ended with {status}; API answers before that: {answers:?}");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the VMM in a 1 MiB cgroup should be OOM-killed, got {status}; API answers: \
         {answers:?}\n{}",
        jail.output_so_far()
    );
    let dir = memory.dir(jail.parent_cgroup(), &jail.id);
    assert!(
        oom_kills(&memory, &dir) >= 1,
        "the OOM kill is recorded in {}",
        dir.display()
    );
    assert_eq!(
        jail.ticks(),
        0,
        "the guest never ran\n{}",
        jail.output_so_far()
    );
}

// ---------------------------------------------------------------------------------------
// 4. One jail per id
// ---------------------------------------------------------------------------------------

#[test]
fn a_second_jail_with_the_same_id_is_refused() {
    let test = "a_second_jail_with_the_same_id_is_refused";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("dup");
    jail.spawn(&[], &["--api-sock", "/api.sock"]);
    let mut api = jail.client();
    let snapshot = |jail: &Jail| -> Vec<(String, Option<(u64, u64)>)> {
        let mut entries = Vec::new();
        for dir in [jail.jail_dir(), jail.root(), jail.root().join("dev")] {
            for name in names_in(&dir) {
                let path = dir.join(&name);
                entries.push((path.display().to_string(), file_id(&path)));
            }
        }
        entries
    };
    let before = snapshot(&jail);

    let second = jail.command(&[], &["--api-sock", "/api.sock"]);
    let out = jail.run(second);
    let jail_dir = jail.jail_dir().display().to_string();
    assert_one_line_error(&out, &[&jail.id], "a second jail with the same id");
    assert!(
        out.stderr.contains(&jail_dir),
        "the error names the jail dir {jail_dir}: {out}"
    );
    assert!(
        out.stderr
            .contains(&format!("a jail with id {} exists", jail.id)),
        "{out}"
    );

    // The first one is untouched and still serving.
    assert!(jail.exited().is_none(), "{}", jail.output_so_far());
    assert_eq!(snapshot(&jail), before, "the first jail changed");
    let info = expect(api.get("/"), 200, "GET / after the refusal").json();
    assert_eq!(info["id"], jail.id.as_str(), "{info}");
    assert_eq!(jailed_pids(&jail.root()), [jail.pid()]);
}

// ---------------------------------------------------------------------------------------
// 5. Bad inputs
// ---------------------------------------------------------------------------------------

#[test]
fn bad_ids_are_refused_before_anything_is_made() {
    let test = "bad_ids_are_refused_before_anything_is_made";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("id");
    let long = "x".repeat(65);
    for (id, needle) in [
        ("a/b", "a/b"),
        ("..", "\"..\""),
        ("../escape", "../escape"),
        (long.as_str(), long.as_str()),
        ("", "--id"),
        ("a b", "a b"),
        ("vm_1", "vm_1"),
    ] {
        let exec = jail.exec_file.clone();
        let cmd = jail.command_with(OsStr::new(id), &exec, &[], &["--api-sock", "/api.sock"]);
        let out = jail.run(cmd);
        let what = format!("--id {id:?}");
        assert_one_line_error(&out, &[needle], &what);
        jail.assert_nothing_made(true, &what);
    }

    // 64 characters is the longest id accepted.
    jail.id = "y".repeat(64);
    // The socket's host path would be too long for a sockaddr_un: a short in-jail name.
    jail.spawn(&[], &["--api-sock", "/a"]);
    let socket = jail.host_path("/a");
    let deadline = Instant::now() + WAIT;
    while UnixStream::connect(&socket).is_err() {
        if let Some(status) = jail.exited() {
            panic!("a 64-character id: {status}\n{}", jail.output_so_far());
        }
        assert!(
            Instant::now() < deadline,
            "a 64-character id: no socket\n{}",
            jail.output_so_far()
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(jail.root().join(EXEC_NAME).is_file());
}

#[test]
fn bad_flags_are_refused_with_one_line_and_nothing_made() {
    let test = "bad_flags_are_refused_with_one_line_and_nothing_made";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("flags");
    let vmm = ["--api-sock", "/api.sock"];

    let missing = jail.base.join("no-such-dir").join("tessera");
    let missing_str = missing.display().to_string();
    let cmd = jail.command_with(OsStr::new(&jail.id), &missing, &[], &vmm);
    let out = jail.run(cmd);
    assert_one_line_error(&out, &[&missing_str], "a missing exec file");
    jail.assert_nothing_made(true, "a missing exec file");

    let dir_exec = jail.logs.clone();
    let dir_str = dir_exec.display().to_string();
    let cmd = jail.command_with(OsStr::new(&jail.id), &dir_exec, &[], &vmm);
    let out = jail.run(cmd);
    assert_one_line_error(&out, &[&dir_str], "a directory as exec file");
    jail.assert_nothing_made(true, "a directory as exec file");

    let refused: [(&[&str], &str); 9] = [
        (
            &["--cgroup", "memory.limit_in_bytes"],
            "memory.limit_in_bytes",
        ),
        (&["--cgroup", "=1"], "=1"),
        (&["--resource-limit", "bogus=1"], "bogus=1"),
        (&["--resource-limit", "no-file=many"], "no-file=many"),
        (&["--resource-limit", "fsize"], "fsize"),
        (&["--cgroup-version", "3"], "3"),
        (&["--chroot-base-dir", "relative/dir"], "relative/dir"),
        (&["--parent-cgroup", "../up"], "../up"),
        (&["--uid", "abc"], "abc"),
    ];
    for (flags, needle) in refused {
        let cmd = jail.command(flags, &vmm);
        let out = jail.run(cmd);
        let what = flags.join(" ");
        assert_one_line_error(&out, &[needle], &what);
        jail.assert_nothing_made(true, &what);
    }
    assert!(
        !jail.logs.join("relative").exists(),
        "a relative --chroot-base-dir was used"
    );
}

/// Failures found late, after the jail dir (and the cgroup) were made: the network namespace
/// is missing or is not a network namespace, or the exec file cannot be executed. The jailer
/// must name what failed and undo what it made.
#[test]
fn late_failures_are_named_and_leave_nothing_half_made() {
    let test = "late_failures_are_named_and_leave_nothing_half_made";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("late");
    let memory = find_controller("memory").ok();
    let mut flags: Vec<String> = Vec::new();
    match &memory {
        Some(memory) => flags.extend([
            "--cgroup-version".to_owned(),
            memory.version_arg(),
            "--cgroup".to_owned(),
            memory_limit_arg(memory, 256 * MIB),
        ]),
        None => eprintln!("{test}: no memory controller, the cgroup cleanup is not checked"),
    }
    let missing = format!("/var/run/netns/tsr-none-{}", std::process::id());
    assert!(!Path::new(&missing).exists());
    let not_a_netns = jail.logs.join("plain-file");
    fs::write(&not_a_netns, b"not a namespace").expect("a plain file");
    let not_a_netns = not_a_netns.display().to_string();

    // Every case runs; what each one left is reported together at the end.
    let mut leftovers: Vec<String> = Vec::new();
    for netns in [&missing, &not_a_netns] {
        let mut all = flags.clone();
        all.extend(["--netns".to_owned(), netns.clone()]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let cmd = jail.command(&all, &["--api-sock", "/api.sock"]);
        let out = jail.run(cmd);
        let what = format!("--netns {netns}");
        assert_one_line_error(&out, &[netns], &what);
        assert!(jailed_pids(&jail.root()).is_empty(), "{what}");
        leftovers.extend(
            jail.take_leftovers()
                .into_iter()
                .map(|l| format!("{what}: {l}")),
        );
    }

    // An exec file that is a regular file but no program: copied into the jail, then the
    // exec fails.
    let bogus_dir = jail.logs.join("bogus");
    fs::create_dir(&bogus_dir).expect("a dir for the bogus exec file");
    let bogus = bogus_dir.join(EXEC_NAME);
    fs::write(&bogus, b"not a program\n").expect("the bogus exec file");
    fs::set_permissions(&bogus, fs::Permissions::from_mode(0o755)).expect("chmod 755");
    let all: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cmd = jail.command_with(OsStr::new(&jail.id), &bogus, &all, &[]);
    let out = jail.run(cmd);
    let what = "an exec file that cannot be executed";
    assert_one_line_error(&out, &[&format!("/{EXEC_NAME}")], what);
    leftovers.extend(
        jail.take_leftovers()
            .into_iter()
            .map(|l| format!("{what}: {l}")),
    );

    assert!(
        leftovers.is_empty(),
        "failed jailers left half-made jails:\n{}",
        leftovers.join("\n")
    );
    jail.assert_nothing_made(false, "after the late failures");
}

/// cgroup steps that fail before the jail is entered: a setting file the controller does not
/// have, a second controller's bad file after the first controller's cgroup was made, and
/// (where cgroup v2 lacks the memory controller, as here) a v2 memory limit. Each is named
/// and undone: no jail dir, no cgroup, not even the parent cgroup made for it.
#[test]
fn a_cgroup_that_cannot_be_made_leaves_nothing_half_made() {
    let test = "a_cgroup_that_cannot_be_made_leaves_nothing_half_made";
    if skip_unless_root(test) {
        return;
    }
    let mut cases: Vec<(Vec<String>, String)> = Vec::new();
    let memory = find_controller("memory").ok();
    let pids = find_controller("pids").ok();
    if let Some(memory) = &memory {
        cases.push((
            vec![
                "--cgroup-version".into(),
                memory.version_arg(),
                "--cgroup".into(),
                "memory.no_such_setting=1".into(),
            ],
            "memory.no_such_setting".into(),
        ));
        if pids.as_ref().is_some_and(|p| p.version == memory.version) {
            cases.push((
                vec![
                    "--cgroup-version".into(),
                    memory.version_arg(),
                    "--cgroup".into(),
                    memory_limit_arg(memory, 256 * MIB),
                    "--cgroup".into(),
                    "pids.no_such_setting=1".into(),
                ],
                "pids.no_such_setting".into(),
            ));
        }
    }
    let v2 = cgroup_mounts().into_iter().find(|m| m.v2);
    if let Some(v2) = v2.filter(|m| !m.controllers.iter().any(|c| c == "memory")) {
        cases.push((
            vec![
                "--cgroup-version".into(),
                "2".into(),
                "--cgroup".into(),
                "memory.max=67108864".into(),
            ],
            v2.path.display().to_string(),
        ));
    }
    if cases.is_empty() {
        eprintln!("SKIPPED {test}: no memory controller in either cgroup version");
        return;
    }
    for (flags, needle) in cases {
        let mut jail = Jail::new("cgfail");
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let cmd = jail.command(&flags, &["--api-sock", "/api.sock"]);
        let out = jail.run(cmd);
        let what = flags.join(" ");
        assert_one_line_error(&out, &[&needle], &what);
        jail.assert_nothing_made(false, &what);
        let parents = jail.parent_cgroup_dirs();
        assert_eq!(
            parents,
            Vec::<PathBuf>::new(),
            "{what}: the parent cgroup made for the jail is left"
        );
    }
}

/// With --daemonize the jailer returns before the VMM is exec'd; a VMM that cannot start must
/// still be reported (one line, non-zero exit), not answered with exit 0.
#[test]
fn daemonize_reports_a_vmm_that_cannot_be_started() {
    let test = "daemonize_reports_a_vmm_that_cannot_be_started";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("dfail");
    let bogus_dir = jail.logs.join("bogus");
    fs::create_dir(&bogus_dir).expect("a dir for the bogus exec file");
    let bogus = bogus_dir.join(EXEC_NAME);
    fs::write(&bogus, b"not a program\n").expect("the bogus exec file");
    fs::set_permissions(&bogus, fs::Permissions::from_mode(0o755)).expect("chmod 755");
    let cmd = jail.command_with(
        OsStr::new(&jail.id),
        &bogus,
        &["--daemonize"],
        &["--api-sock", "/api.sock"],
    );
    let out = jail.run(cmd);
    // Whatever the jailer said, nothing may run in the jail.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !jailed_pids(&jail.root()).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(jailed_pids(&jail.root()), Vec::<i32>::new());
    assert_one_line_error(
        &out,
        &[&format!("/{EXEC_NAME}")],
        "--daemonize with an exec file that cannot be executed",
    );
}

// ---------------------------------------------------------------------------------------
// 6. --daemonize, --new-pid-ns, --resource-limit
// ---------------------------------------------------------------------------------------

/// Waits for `<root>/tessera.pid` and returns the pid in it.
fn read_pid_file(jail: &Jail) -> i32 {
    let path = jail.host_path(&format!("/{EXEC_NAME}.pid"));
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(text) = fs::read_to_string(&path) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no pid in {} within {WAIT:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn daemonize_returns_at_once_and_the_vmm_runs_detached() {
    let test = "daemonize_returns_at_once_and_the_vmm_runs_detached";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("daemon");
    let cmd = jail.command(
        &[
            "--daemonize",
            "--resource-limit",
            "no-file=128",
            "--resource-limit",
            "fsize=1048576",
        ],
        &["--api-sock", "/api.sock"],
    );
    let out = jail.run(cmd);
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert_eq!(out.stdout, "", "{out}");
    assert_eq!(out.stderr, "", "{out}");

    let mut api = jail.client();
    let info = expect(api.get("/"), 200, "GET / of the daemon").json();
    assert_eq!(info["id"], jail.id.as_str(), "{info}");

    let pid = read_pid_file(&jail);
    assert_eq!(
        jailed_pids(&jail.root()),
        [pid],
        "the pid file names the one process in the jail"
    );
    assert_eq!(cmdline(pid)[0], format!("/{EXEC_NAME}"));
    let uid = UID.to_string();
    assert_eq!(status_field(pid, "Uid"), [uid.as_str(); 4]);

    // Detached: stdio on /dev/null (char device 1:3), its own session, no terminal.
    for fd in 0..3 {
        let path = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
        let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let link = fs::read_link(&path).unwrap_or_default();
        assert!(
            meta.file_type().is_char_device()
                && (dev_major(meta.rdev()), dev_minor(meta.rdev())) == (1, 3),
            "fd {fd} of the daemon is {} (not /dev/null)",
            link.display()
        );
    }
    let stat = stat_fields(pid);
    // SAFETY: getsid(0) has no preconditions.
    let our_session = unsafe { libc::getsid(0) };
    let (session, tty) = (&stat[3], &stat[4]);
    assert_ne!(
        session,
        &our_session.to_string(),
        "the daemon has a session of its own"
    );
    assert_eq!(tty, "0", "the daemon has no controlling terminal");

    assert_eq!(
        limit_of(pid, "Max open files"),
        ("128".into(), "128".into())
    );
    assert_eq!(
        limit_of(pid, "Max file size"),
        ("1048576".into(), "1048576".into())
    );
    // Still serving after all this.
    assert_eq!(api.state(), "Not started");
}

#[test]
fn new_pid_ns_runs_the_vmm_as_pid_1_and_writes_its_host_pid() {
    let test = "new_pid_ns_runs_the_vmm_as_pid_1_and_writes_its_host_pid";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("pidns");
    jail.spawn(&["--new-pid-ns"], &["--api-sock", "/api.sock"]);
    let mut api = jail.client();
    let info = expect(api.get("/"), 200, "GET /").json();
    assert_eq!(info["id"], jail.id.as_str(), "{info}");

    let pid = read_pid_file(&jail);
    let jailer = jail.pid();
    assert_ne!(pid, jailer, "the VMM is a new process");
    // Not daemonized, the jailer stays (in the jail, outside the new PID namespace) and
    // waits for the VMM.
    let mut in_jail = jailed_pids(&jail.root());
    in_jail.sort_unstable();
    let mut expected = vec![jailer, pid];
    expected.sort_unstable();
    assert_eq!(
        in_jail, expected,
        "the jailer ({jailer}) and the VMM ({pid})"
    );
    assert_eq!(
        stat_fields(pid)[1],
        jailer.to_string(),
        "the VMM's parent is the jailer"
    );
    let nspid = status_field(pid, "NSpid");
    assert_eq!(
        nspid,
        [pid.to_string(), "1".into()],
        "host pid, then pid 1 in its own namespace"
    );
    assert_ne!(
        fs::read_link(format!("/proc/{pid}/ns/pid")).expect("its pid namespace"),
        fs::read_link("/proc/self/ns/pid").expect("ours"),
    );
    let uid = UID.to_string();
    assert_eq!(status_field(pid, "Uid"), [uid.as_str(); 4]);
    assert_eq!(status_field(pid, "NoNewPrivs"), ["1"]);

    // The jailer exits with the VMM's status: 128 + 9 for a SIGKILL.
    // SAFETY: signalling the VMM of this test's jail.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let status = jail.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(128 + libc::SIGKILL), "{status}");
}

/// A jailer waiting for a VMM in a new PID namespace passes SIGTERM on (the VMM, PID 1 there,
/// gets only what is sent to it): the VMM ends cleanly, removing its socket, and the jailer exits
/// with its status. The VMM also carries no capabilities.
#[test]
fn waiting_jailer_forwards_sigterm_to_the_vmm() {
    let test = "waiting_jailer_forwards_sigterm_to_the_vmm";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("fwd");
    jail.spawn(&["--new-pid-ns"], &["--api-sock", "/api.sock"]);
    let mut api = jail.client();
    expect(api.get("/"), 200, "GET /");
    let pid = read_pid_file(&jail);
    assert_eq!(status_field(pid, "CapEff"), ["0000000000000000"]);
    assert_eq!(status_field(pid, "CapAmb"), ["0000000000000000"]);
    // SAFETY: signalling the jailer of this test's jail.
    assert_eq!(unsafe { libc::kill(jail.pid(), libc::SIGTERM) }, 0);
    let status = jail.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status}");
    assert!(
        !jail.root().join("api.sock").exists(),
        "the VMM ended cleanly and removed its socket"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the VMM is gone"
    );
}

// ---------------------------------------------------------------------------------------
// 7. Symbolic links and cgroup escapes
// ---------------------------------------------------------------------------------------

/// `--cgroup-version N --cgroup <memory limit>` where this host has a memory controller, so
/// that a test of a refused jail also shows that no cgroup was made for it.
fn memory_flags(test: &str) -> Vec<String> {
    match find_controller("memory") {
        Ok(memory) => vec![
            "--cgroup-version".to_owned(),
            memory.version_arg(),
            "--cgroup".to_owned(),
            memory_limit_arg(&memory, 256 * MIB),
        ],
        Err(why) => {
            eprintln!("{test}: {why}; the cgroup cleanup is not checked");
            Vec::new()
        }
    }
}

/// An empty directory outside the jail's base for a planted link to point at.
fn link_target(jail: &Jail, name: &str) -> PathBuf {
    let target = jail.logs.join(name);
    fs::create_dir(&target).unwrap_or_else(|e| panic!("cannot create {}: {e}", target.display()));
    target
}

/// Asserts a refusal by the jailer itself: exit code `code`, one line naming every needle.
#[track_caller]
fn assert_refused(out: &Outcome, code: i32, needles: &[&str], what: &str) {
    assert_one_line_error(out, needles, what);
    assert_eq!(out.status.code(), Some(code), "{what}: exit code\n{out}");
}

/// Asserts that no cgroup (not even a parent) was made for `jail` in any hierarchy.
#[track_caller]
fn assert_no_cgroup(jail: &Jail, what: &str) {
    assert_eq!(
        jail.cgroup_dirs(),
        Vec::<PathBuf>::new(),
        "{what}: the jailer left the jail's cgroup"
    );
    let parents = jail.parent_cgroup_dirs();
    assert_eq!(
        parents,
        Vec::<PathBuf>::new(),
        "{what}: a parent cgroup was made"
    );
}

/// A `--chroot-base-dir` that is a symbolic link, or passes through one, is refused (exit 1,
/// as for a base that cannot be made), naming the link; nothing is made where it points.
#[test]
fn a_symlinked_chroot_base_dir_is_refused() {
    let test = "a_symlinked_chroot_base_dir_is_refused";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("lbase");
    let flags = memory_flags(test);
    let target = link_target(&jail, "elsewhere");
    let link = jail.base.join("link");
    std::os::unix::fs::symlink(&target, &link).expect("plant the link");
    let link_str = link.display().to_string();
    for base in [link.clone(), link.join("sub")] {
        let base_str = base.display().to_string();
        let mut all: Vec<&str> = vec!["--chroot-base-dir", &base_str];
        all.extend(flags.iter().map(String::as_str));
        let cmd = jail.command(&all, &["--api-sock", "/api.sock"]);
        let out = jail.run(cmd);
        let what = format!("--chroot-base-dir {base_str}");
        assert_refused(&out, 1, &[&link_str, "symbolic link"], &what);
        assert_eq!(
            names_in(&target),
            Vec::<String>::new(),
            "{what}: made through the link"
        );
        assert_eq!(
            names_in(&jail.base),
            ["link"],
            "{what}: left in the base's parent"
        );
        assert!(
            fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()),
            "{what}: the link itself is left as it was"
        );
        assert_no_cgroup(&jail, &what);
        assert!(jailed_pids(&target).is_empty(), "{what}");
    }
}

/// A link planted at `<base>/<exec name>` is refused (exit 1), naming it; no jail is made
/// where it points, and no cgroup.
#[test]
fn a_symlink_planted_at_base_exec_name_is_refused() {
    let test = "a_symlink_planted_at_base_exec_name_is_refused";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("lexec");
    let flags = memory_flags(test);
    let target = link_target(&jail, "elsewhere");
    let planted = jail.base.join(EXEC_NAME);
    std::os::unix::fs::symlink(&target, &planted).expect("plant the link");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cmd = jail.command(&flags, &["--api-sock", "/api.sock"]);
    let out = jail.run(cmd);
    let what = format!("a link at {}", planted.display());
    let planted_str = planted.display().to_string();
    assert_refused(&out, 1, &[&planted_str, "symbolic link"], &what);
    assert_eq!(
        names_in(&target),
        Vec::<String>::new(),
        "{what}: a jail made through it"
    );
    assert_eq!(
        names_in(&jail.base),
        [EXEC_NAME],
        "{what}: left in the base"
    );
    assert!(
        fs::symlink_metadata(&planted).is_ok_and(|m| m.file_type().is_symlink()),
        "{what}: the link itself is left as it was"
    );
    assert_no_cgroup(&jail, &what);
}

/// An `--exec-file` that is a symbolic link, or is reached through one, is refused as an
/// argument (exit 2, as an exec file that is no regular file), naming the link; nothing is
/// made.
#[test]
fn a_symlinked_exec_file_is_refused() {
    let test = "a_symlinked_exec_file_is_refused";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("lvmm");
    let flags = memory_flags(test);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let real = jail.exec_file.clone();
    let links = link_target(&jail, "links");
    let to_file = links.join(EXEC_NAME);
    std::os::unix::fs::symlink(&real, &to_file).expect("a link to the VMM");
    let to_dir = links.join("bin");
    std::os::unix::fs::symlink(real.parent().expect("the VMM's dir"), &to_dir)
        .expect("a link to the VMM's dir");
    for (exec, link) in [(to_file.clone(), to_file), (to_dir.join(EXEC_NAME), to_dir)] {
        let (exec_str, link_str) = (exec.display().to_string(), link.display().to_string());
        let cmd = jail.command_with(OsStr::new(&jail.id), &exec, &flags, &["--api-sock", "/a"]);
        let out = jail.run(cmd);
        let what = format!("--exec-file {exec_str}");
        assert_refused(
            &out,
            2,
            &[
                &format!("--exec-file {exec_str}: {link_str}"),
                "symbolic link",
            ],
            &what,
        );
        jail.assert_nothing_made(true, &what);
    }
}

/// `--parent-cgroup` names and `--cgroup` values that would leave their cgroup or forge more
/// than one line (newlines, `..`, absolute paths, empty or `.` parts) are argument errors
/// (exit 2), and nothing is made: no jail, no cgroup anywhere.
#[test]
fn cgroup_escapes_are_refused_as_argument_errors() {
    let test = "cgroup_escapes_are_refused_as_argument_errors";
    if skip_unless_root(test) {
        return;
    }
    let mut jail = Jail::new("cgesc");
    let tag = format!("tsr-jt-esc-{}", std::process::id());
    // The cgroups each name would make or reach, relative to a hierarchy's root.
    let parents: Vec<(String, Vec<String>)> = vec![
        (
            format!("{tag}\nforged"),
            vec![format!("{tag}\nforged"), tag.clone()],
        ),
        (
            format!("{tag}/../{tag}-up"),
            vec![tag.clone(), format!("{tag}-up")],
        ),
        (format!("../{tag}"), vec![tag.clone()]),
        (format!("/{tag}"), vec![tag.clone()]),
        (format!("{tag}//x"), vec![tag.clone()]),
        (format!("{tag}/./x"), vec![tag.clone()]),
        (format!("{tag}/"), vec![tag.clone()]),
        ("..".to_owned(), vec![]),
        ("".to_owned(), vec![]),
    ];
    // With a memory limit, a name that was let through would have its cgroups made.
    let memory = find_controller("memory").ok();
    let version = memory
        .as_ref()
        .map_or("2".to_owned(), Controller::version_arg);
    let limit_file = memory.as_ref().map_or("memory.max", memory_limit_file);
    let limit = format!("{limit_file}={}", 256 * MIB);
    for (parent, reached) in &parents {
        let mut flags = vec![
            "--parent-cgroup",
            parent.as_str(),
            "--cgroup-version",
            &version,
        ];
        if memory.is_some() {
            flags.extend(["--cgroup", &limit]);
        }
        let cmd = jail.command(&flags, &["--api-sock", "/api.sock"]);
        let out = jail.run(cmd);
        let what = format!("--parent-cgroup {parent:?}");
        assert_refused(&out, 2, &["--parent-cgroup", &format!("{parent:?}")], &what);
        jail.assert_nothing_made(true, &what);
        for mount in cgroup_mounts() {
            for name in reached {
                let dir = mount.path.join(name);
                assert!(!dir.exists(), "{what}: made {}", dir.display());
            }
        }
    }
    for value in ["1\n2", "268435456\n", "\n268435456"] {
        let setting = format!("{limit_file}={value}");
        let flags = ["--cgroup-version", &version, "--cgroup", &setting];
        let cmd = jail.command(&flags, &["--api-sock", "/api.sock"]);
        let out = jail.run(cmd);
        let what = format!("--cgroup {setting:?}");
        assert_refused(&out, 2, &["--cgroup", &format!("{setting:?}")], &what);
        jail.assert_nothing_made(true, &what);
    }
}
