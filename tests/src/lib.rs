//! Harness for Tessera's integration tests and benchmarks: the tiny guests, a builder for
//! `tessera` command lines, and the checks that decide whether a test can run on this host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A tiny guest image built by build.rs: `report64`, `pvh`, `reset64`, `idle64`, `triple64`,
/// `kbd64`, `smp64`, `tick64`, `flood64`, `rereset64` or `bootspam64` (see guests/tiny.S).
pub fn tiny_guest(name: &str) -> PathBuf {
    let path = Path::new(env!("TINY_GUEST_DIR")).join(format!("{name}.elf"));
    assert!(path.exists(), "no tiny guest {name} at {}", path.display());
    path
}

pub mod api_client;
pub mod images;
pub mod registry;
pub mod test_host;
pub mod wasm_guest;

/// The directory holding this build's binaries (`tessera`, `tessera-init`).
pub fn bin_dir() -> PathBuf {
    // Integration tests and benches live in target/<profile>/deps or target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The `tessera` binary of this build.
pub fn tessera_bin() -> PathBuf {
    let bin = bin_dir().join("tessera");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p api`)",
        bin.display()
    );
    bin
}

/// The `tessera-jailer` binary of this build.
pub fn jailer_bin() -> PathBuf {
    let bin = bin_dir().join("tessera-jailer");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p jailer`)",
        bin.display()
    );
    bin
}

/// Why tiny-guest tests cannot run here, if they cannot.
pub fn kvm_unavailable() -> Option<String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => None,
        Err(e) => Some(format!("/dev/kvm cannot be opened ({e})")),
    }
}

/// Prints a skip line and returns true when `/dev/kvm` is unusable.
pub fn skip_without_kvm(test: &str) -> bool {
    match kvm_unavailable() {
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            true
        }
        None => false,
    }
}

/// A `tessera run` invocation.
pub struct Run {
    cmd: Command,
}

impl Run {
    pub fn new(kernel: &Path) -> Self {
        let mut cmd = Command::new(tessera_bin());
        cmd.arg("run").arg("--kernel").arg(kernel);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Self { cmd }
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn spawn(mut self) -> Child {
        self.cmd.spawn().expect("spawn tessera")
    }

    /// Runs to completion; kills the VMM and fails the test after `timeout`.
    pub fn output(self, timeout: Duration) -> Finished {
        wait_with_timeout(self.spawn(), timeout)
    }
}

/// A finished `tessera` process.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    fn from_output(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Waits for `child`, killing it after `timeout`.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Finished {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().expect("wait for tessera") {
            Some(_) => {
                return Finished::from_output(child.wait_with_output().expect("collect output"))
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let out = Finished::from_output(child.wait_with_output().expect("collect output"));
                panic!("tessera did not finish within {timeout:?}\n{out}");
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Debian's stock vmlinuz (a bzImage): `$TESSERA_DEBIAN_VMLINUZ`, else the one
/// `scripts/debian-kernel` cached, else one in /boot.
pub fn debian_vmlinuz() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TESSERA_DEBIAN_VMLINUZ") {
        return Some(PathBuf::from(path));
    }
    let cache = test_host::cache_dir().ok()?;
    let dirs = [cache.join("debian-kernel"), PathBuf::from("/")];
    dirs.iter().find_map(|dir| {
        let candidates = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path().join("boot"));
        candidates
            .chain([dir.join("boot")])
            .filter_map(|boot| std::fs::read_dir(boot).ok())
            .flat_map(|entries| entries.flatten().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
    })
}

/// A thread's seccomp state, from /proc/PID/task/TID/status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSeccomp {
    pub name: String,
    /// "0": no filter, "2": filtered.
    pub mode: String,
    /// How many filters are stacked on the thread.
    pub filters: String,
}

/// Each thread of process `pid`. KVM's own workers (`kvm-nx-lpage-recovery`), which newer
/// kernels put in the VMM's thread group but which never run user code, are left out.
pub fn thread_filters(pid: i32) -> Vec<ThreadSeccomp> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let mut threads = Vec::new();
    for task in std::fs::read_dir(&tasks).expect("list the process's threads") {
        let dir = task.expect("a thread entry").path();
        // A thread that ends while we look is simply left out.
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {key} line in {}", dir.display()))
        };
        let name = name.trim();
        if !name.starts_with("kvm-") {
            threads.push(ThreadSeccomp {
                name: name.to_string(),
                mode: field("Seccomp:"),
                filters: field("Seccomp_filters:"),
            });
        }
    }
    threads
}

/// Asserts that every thread in `threads` runs under exactly one seccomp filter (mode 2, one
/// filter: none inherited another's, which would stack two).
pub fn assert_one_filter_each(threads: &[ThreadSeccomp]) {
    for thread in threads {
        assert_eq!(
            (thread.mode.as_str(), thread.filters.as_str()),
            ("2", "1"),
            "thread {} should run under exactly one filter: {threads:?}",
            thread.name
        );
    }
}
