//! `tessera run --image busybox --isolation sandbox` on this host: the container sandbox, its
//! policy, and every confinement the issue lists, each stopped and reported.

use std::path::{Path, PathBuf};
use std::process::Command;

use tests::images::{busybox_docker_save, busybox_unavailable, BUSYBOX_IMAGE};
use tests::tessera_bin;

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<std::process::Output> for Out {
    fn from(out: std::process::Output) -> Self {
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A store with the busybox image, made once per test process.
fn cache() -> &'static Path {
    static CACHE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tessera-sandbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let save = busybox_docker_save(&dir);
        let out = Command::new(tessera_bin())
            .args(["image", "import"])
            .arg(&save)
            .env("TESSERA_CACHE", dir.join("cache"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        dir.join("cache")
    })
}

fn sandbox(args: &[&str], cmd: &str) -> Out {
    Command::new(tessera_bin())
        .args(["run", "--isolation", "sandbox", "--image", BUSYBOX_IMAGE])
        .args(args)
        .args(["--", "/bin/sh", "-c", cmd])
        .env("TESSERA_CACHE", cache())
        .output()
        .expect("run tessera")
        .into()
}

fn skip(test: &str) -> bool {
    if let Some(why) = busybox_unavailable() {
        println!("SKIPPED {test}: {why}");
        return true;
    }
    false
}

/// A policy file with `json` in it.
fn policy(name: &str, json: &str) -> String {
    let path = cache().with_file_name(format!("{name}.policy.json"));
    std::fs::write(&path, json).unwrap();
    path.to_str().unwrap().to_string()
}

/// The probe binary as a read-only volume at /probe.
fn probe_volume() -> String {
    let dir = cache().with_file_name("probe");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_sandbox-probe"),
        dir.join("sandbox-probe"),
    )
    .unwrap();
    format!("{}:/probe:ro", dir.display())
}

#[test]
fn runs_the_image_command_as_a_container() {
    if skip("runs_the_image_command_as_a_container") {
        return;
    }
    let out = sandbox(
        &[
            "-e",
            "GREETING=hi there",
            "-w",
            "/bin",
            "--hostname",
            "box1",
        ],
        r#"echo "$GREETING"; id; hostname; pwd; cat /etc/motd; echo "pid $$"; echo oops >&2; exit 3"#,
    );
    assert_eq!(out.code, Some(3), "{out}");
    assert_eq!(
        out.stdout, "hi there\nuid=0(root) gid=0(root)\nbox1\n/bin\nfrom the image\npid 2\n",
        "{out}"
    );
    assert_eq!(out.stderr, "oops\n", "{out}");
    let out = sandbox(&["-u", "app"], "id; echo $HOME");
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        out.stdout, "uid=1000(app) gid=1000(app) groups=10(wheel),1000(app)\n/home/app\n",
        "{out}"
    );
    let out = sandbox(&[], "kill -USR1 $$; sleep 5");
    assert_eq!(out.code, Some(138), "killed by SIGUSR1: {out}");
    // stdin: /dev/null without -i, the caller's with it.
    for (flags, expected) in [(&[][..], ""), (&["-i"][..], "piped\n")] {
        let mut child = Command::new(tessera_bin())
            .args(["run", "--isolation", "sandbox", "--image", BUSYBOX_IMAGE])
            .args(flags)
            .args(["--", "/bin/busybox", "cat"])
            .env("TESSERA_CACHE", cache())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        // Without -i nothing reads it: a closed pipe is no failure.
        let _ = child.stdin.take().unwrap().write_all(b"piped\n");
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "{flags:?}");
    }
    // The root's writes stay in the run.
    let out = sandbox(&[], "echo changed > /etc/motd && cat /etc/motd");
    assert_eq!(out.stdout, "changed\n", "{out}");
    let out = sandbox(&[], "cat /etc/motd");
    assert_eq!(out.stdout, "from the image\n", "{out}");
}

#[test]
fn volumes_read_only_and_read_write() {
    if skip("volumes_read_only_and_read_write") {
        return;
    }
    let dir = cache().with_file_name("volume");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("in.txt"), "from the host\n").unwrap();
    // The sandbox's root is a mapped uid: a host root-owned volume is writable to it only as
    // to any other user (as with Docker's userns-remap).
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let ro = format!("{}:/data:ro", dir.display());
    let out = sandbox(&["-v", &ro], "cat /data/in.txt; echo x > /data/new.txt");
    assert_eq!(out.stdout, "from the host\n", "{out}");
    assert_ne!(out.code, Some(0), "{out}");
    assert!(out.stderr.contains("Read-only file system"), "{out}");
    let rw = format!("{}:/data", dir.display());
    let out = sandbox(&["-v", &rw], "echo written > /data/new.txt");
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        std::fs::read_to_string(dir.join("new.txt")).unwrap(),
        "written\n"
    );
}

#[test]
fn the_policy_confines_the_workload() {
    if skip("the_policy_confines_the_workload") {
        return;
    }
    // A write outside the allowed paths.
    let fs = policy(
        "fs",
        r#"{"version": 1, "filesystem": {"read_only_root": true, "read_write": ["/scratch"]}}"#,
    );
    let out = sandbox(
        &["--policy", &fs],
        "echo ok > /scratch/a && cat /scratch/a; echo no > /etc/b",
    );
    assert_eq!(out.stdout, "ok\n", "{out}");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("/etc/b"), "{out}");
    // No network at all by default; loopback when the policy says so.
    let out = sandbox(&[], "nc 127.0.0.1 9 < /dev/null");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("Network is unreachable"),
        "network none: {out}"
    );
    let lo = policy("lo", r#"{"version": 1, "network": "loopback"}"#);
    let out = sandbox(&["--policy", &lo], "nc 127.0.0.1 9 < /dev/null");
    assert!(out.stderr.contains("Connection refused"), "loopback: {out}");
    // A fork bomb meets the pids limit.
    let pids = policy("pids", r#"{"version": 1, "limits": {"pids": 8}}"#);
    let out = sandbox(
        &["--policy", &pids],
        "for i in $(seq 20); do sleep 3 & done; wait; echo done",
    );
    assert!(
        out.stderr.contains("fork") || out.stderr.contains("Resource temporarily unavailable"),
        "pids: {out}"
    );
    // A memory hog is killed at the memory limit.
    let memory = policy("memory", r#"{"version": 1, "limits": {"memory_mib": 16}}"#);
    let out = sandbox(
        &["--policy", &memory],
        "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
    );
    assert_eq!(out.code, Some(137), "memory: {out}");
    // A runaway loop is stopped at the wall time.
    let wall = policy("wall", r#"{"version": 1, "limits": {"wall_time_s": 1}}"#);
    let started = std::time::Instant::now();
    let out = sandbox(&["--policy", &wall], "while :; do :; done");
    assert_eq!(out.code, Some(137), "wall time: {out}");
    assert!(out.stderr.contains("wall-time limit (1 s)"), "{out}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // Files past the size limit.
    let fsize = policy("fsize", r#"{"version": 1, "limits": {"file_size_mib": 1}}"#);
    let out = sandbox(&["--policy", &fsize], "head -c 2000000 /dev/zero > /big");
    assert_eq!(out.code, Some(153), "SIGXFSZ: {out}");
}

#[test]
fn privileged_operations_are_refused() {
    if skip("privileged_operations_are_refused") {
        return;
    }
    let probe = probe_volume();
    for (cmd, says) in [
        ("mount -t tmpfs none /mnt", "permission denied"),
        ("/probe/sandbox-probe mount", "refused"),
        ("/probe/sandbox-probe ptrace 1", "refused"),
        ("/probe/sandbox-probe init-module", "refused"),
        ("/probe/sandbox-probe unshare", "refused"),
        ("unshare -r id", "Operation not permitted"),
        ("/probe/sandbox-probe bpf", "refused"),
        ("head -c 1 /proc/kcore | wc -c", ""),
        ("cat /etc/shadow", "No such file"),
        ("cat /proc/1/root/etc/hostname", "Permission denied"),
    ] {
        let out = sandbox(&["-v", &probe], cmd);
        assert!(
            out.stdout.trim() == "0" || out.code != Some(0),
            "{cmd}: {out}"
        );
        assert!(
            out.stderr.contains(says) || out.stdout.contains(says),
            "{cmd}: {out}"
        );
        assert!(!out.stdout.contains("allowed"), "{cmd}: {out}");
    }
    // What the policy grants comes back: here ptrace of a sibling.
    let grant = policy(
        "ptrace",
        r#"{"version": 1, "capabilities": ["CAP_SYS_PTRACE"]}"#,
    );
    let out = sandbox(
        &["-v", &probe, "--policy", &grant],
        "sleep 5 & /probe/sandbox-probe ptrace $!",
    );
    assert_eq!(out.stdout, "allowed\n", "{out}");
}

#[test]
fn a_policy_a_level_cannot_enforce_is_refused_before_anything_starts() {
    if skip("a_policy_a_level_cannot_enforce_is_refused_before_anything_starts") {
        return;
    }
    let min = policy("min", r#"{"version": 1, "min_isolation": "microvm"}"#);
    let out = sandbox(&["--policy", &min], "echo ran");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert!(
        out.stderr
            .contains("min_isolation is microvm: --isolation sandbox is weaker"),
        "{out}"
    );
    // The sandbox cannot give an interface the host lacks; nothing starts.
    let tap = policy(
        "tap",
        r#"{"version": 1, "network": {"interface": "nosuch0"}}"#,
    );
    let out = sandbox(&["--policy", &tap], "echo ran");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    assert!(out.stderr.contains("network interface nosuch0"), "{out}");
    // A Wasm module has no process limits to give.
    if let Some(module) = tests::wasm_guest::guest_or_skip() {
        let pids = policy("wasm-pids", r#"{"version": 1, "limits": {"pids": 5}}"#);
        let out = Command::new(tessera_bin())
            .args(["run", "--isolation", "sandbox", "--policy", &pids])
            .arg(module)
            .args(["--", "hello"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(out.stdout.is_empty(), "{stderr}");
        assert!(
            stderr.contains("the policy's limits.cpus and limits.pids"),
            "{stderr}"
        );
    }
    let bad = policy("bad", r#"{"version": 1, "capabilities": ["CAP_FLY"]}"#);
    let out = sandbox(&["--policy", &bad], "echo ran");
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("\"CAP_FLY\" is not a capability"),
        "{out}"
    );
}

/// `tessera` with the test's store and a run directory of its own.
fn tessera_cli(runtime: &Path, args: &[&str]) -> Out {
    Command::new(tessera_bin())
        .args(args)
        .env("TESSERA_CACHE", cache())
        .env("XDG_RUNTIME_DIR", runtime)
        .output()
        .expect("run tessera")
        .into()
}

#[test]
fn detached_runs_are_listed_logged_stopped_and_removed() {
    if skip("detached_runs_are_listed_logged_stopped_and_removed") {
        return;
    }
    let runtime = cache().with_file_name("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let run = |name: &str, cmd: &str| {
        tessera_cli(
            &runtime,
            &[
                "run",
                "-d",
                "--name",
                name,
                "--isolation",
                "sandbox",
                "--image",
                BUSYBOX_IMAGE,
                "--",
                "/bin/sh",
                "-c",
                cmd,
            ],
        )
    };
    let out = run("web", "echo started; echo oops >&2; sleep 30");
    assert_eq!(out.code, Some(0), "{out}");
    let id = out.stdout.trim().to_string();
    assert_eq!(id.len(), 12, "{out}");
    let done = run("quick", "echo quick; exit 4");
    assert_eq!(done.code, Some(0), "{done}");
    // Its output arrives while it runs.
    let mut logs = tessera_cli(&runtime, &["logs", "web"]);
    for _ in 0..100 {
        if logs.stdout.contains("started") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        logs = tessera_cli(&runtime, &["logs", &id[..6]]);
    }
    assert_eq!(logs.stdout, "started\n", "{logs}");
    assert!(logs.stderr.contains("oops\n"), "{logs}");
    let ps = tessera_cli(&runtime, &["ps"]);
    let line = ps
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(
        line.contains("web") && line.contains("sandbox") && line.contains("running"),
        "{ps}"
    );
    assert!(line.contains("--image busybox:test -- /bin/sh -c"), "{ps}");
    let out = tessera_cli(&runtime, &["rm", "web"]);
    assert_eq!(out.code, Some(1), "a running run is kept: {out}");
    let out = tessera_cli(&runtime, &["stop", "web"]);
    assert_eq!(out.stdout.trim(), id, "{out}");
    let ps = tessera_cli(&runtime, &["ps", "-a"]);
    let web = ps
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(web.contains("exited (143)"), "SIGTERM: {ps}");
    let quick = ps
        .stdout
        .lines()
        .find(|l| l.contains("quick"))
        .unwrap_or_else(|| panic!("{ps}"));
    assert!(quick.contains("exited (4)"), "{ps}");
    assert!(!tessera_cli(&runtime, &["ps"]).stdout.contains(&id));
    for name in ["web", "quick"] {
        let out = tessera_cli(&runtime, &["rm", name]);
        assert_eq!(out.code, Some(0), "{out}");
    }
    let out = tessera_cli(&runtime, &["logs", "web"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("no run \"web\""), "{out}");
}

#[test]
fn runs_rootless_as_the_callers_own_user() {
    let test = "runs_rootless_as_the_callers_own_user";
    if skip(test) {
        return;
    }
    // SAFETY: getuid has no arguments and cannot fail.
    if unsafe { libc::getuid() } != 0 {
        // Then every other test here is the rootless one.
        println!("SKIPPED {test}: not root, so there is no other user to become");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("SKIPPED {test}: no setpriv (util-linux) to run as another user");
        return;
    }
    let home = cache().with_file_name("rootless");
    std::fs::create_dir_all(&home).unwrap();
    let save = busybox_docker_save(&home);
    for path in [&home, &save] {
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    }
    let as_nobody = |args: &[&str]| -> Out {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(tessera_bin())
            .args(args)
            .env("HOME", &home)
            .env("TESSERA_CACHE", home.join("cache"))
            .env("XDG_RUNTIME_DIR", &home)
            .output()
            .unwrap()
            .into()
    };
    let out = as_nobody(&["image", "import", save.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out}");
    let fs = home.join("fs.json");
    std::fs::write(
        &fs,
        r#"{"version": 1, "filesystem": {"read_only_root": true}}"#,
    )
    .unwrap();
    let out = as_nobody(&[
        "run",
        "--isolation",
        "sandbox",
        "--image",
        BUSYBOX_IMAGE,
        "--",
        "/bin/sh",
        "-c",
        "id; cat /proc/self/uid_map; echo hi > /x && cat /x",
    ]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.starts_with("uid=0(root) gid=0(root)\n"), "{out}");
    assert!(
        out.stdout.contains("65534"),
        "the caller is root inside: {out}"
    );
    assert!(out.stdout.ends_with("hi\n"), "{out}");
    let out = as_nobody(&[
        "run",
        "--isolation",
        "sandbox",
        "--policy",
        fs.to_str().unwrap(),
        "--image",
        BUSYBOX_IMAGE,
        "--",
        "/bin/sh",
        "-c",
        "echo no > /x",
    ]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("Read-only file system"), "{out}");
}

#[test]
fn without_isolation_the_strongest_level_this_host_runs_is_chosen_and_said() {
    let test = "without_isolation_the_strongest_level_this_host_runs_is_chosen_and_said";
    if skip(test) {
        return;
    }
    if !vmm::hypervisor::kvm::is_pvm_host() && std::path::Path::new("/dev/kvm").exists() {
        // Then it is microvm, which tests/tests/levels.rs checks in the test host.
        println!("SKIPPED {test}: this host may run microVMs (the microvm choice is tested in the test host)");
        return;
    }
    let out: Out = Command::new(tessera_bin())
        .args([
            "run",
            "--image",
            BUSYBOX_IMAGE,
            "--",
            "/bin/sh",
            "-c",
            "echo hi",
        ])
        .env("TESSERA_CACHE", cache())
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stdout, "hi\n", "{out}");
    assert_eq!(
        out.stderr,
        "tessera: isolation sandbox (the strongest this host runs; --isolation chooses)\n",
        "{out}"
    );
}
