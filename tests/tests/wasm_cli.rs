//! `tessera run app.wasm`: the module runs in the host sandbox (tessera-wasm --sandbox, a child
//! in its own network, IPC, UTS and PID namespaces, no_new_privs, a seccomp filter), its output,
//! stdin and exit code through tessera; a level that cannot run is refused, never lowered.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tessera() -> Option<Command> {
    let dir = tests::bin_dir();
    if !dir.join("tessera-wasm").is_file() {
        println!(
            "SKIPPED wasm_cli: no tessera-wasm beside tessera in {} (cargo build --workspace --bins)",
            dir.display()
        );
        return None;
    }
    Some(Command::new(dir.join("tessera")))
}

/// The processes below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let children: Vec<u32> = children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    let mut all = children.clone();
    for child in children {
        all.extend(descendants(child));
    }
    all
}

/// The process below `pid` running the module: the one that gets the seccomp filter (set once
/// the module is loaded), waited for.
fn runner_below(pid: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let filtered = descendants(pid)
            .into_iter()
            .find(|&p| status_field(p, "Seccomp:").as_deref() == Some("2"));
        if let Some(runner) = filtered {
            return runner;
        }
        assert!(
            Instant::now() < deadline,
            "no seccomp-filtered runner below tessera"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    Some(value.trim().to_string())
}

fn namespace(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

#[test]
fn a_module_runs_confined_on_the_host_with_its_stdin_output_and_exit_code() {
    let (Some(mut tessera), Some(guest)) = (tessera(), tests::wasm_guest::guest_or_skip()) else {
        return;
    };
    let mut child = tessera
        .args(["run", "--isolation", "sandbox", "-i"])
        .arg(guest)
        .args(["--", "stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let runner = runner_below(child.id());
    assert_eq!(status_field(runner, "NoNewPrivs:").as_deref(), Some("1"));
    // The first process of its own PID namespace.
    assert_eq!(
        status_field(runner, "NSpid:")
            .unwrap()
            .split_whitespace()
            .last(),
        Some("1")
    );
    for kind in ["net", "ipc", "uts", "pid"] {
        assert_ne!(
            namespace(&runner.to_string(), kind),
            namespace("self", kind),
            "the runner has a {kind} namespace of its own"
        );
    }
    let limits = std::fs::read_to_string(format!("/proc/{runner}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max core file size") && l.contains(" 0 ")),
        "{limits}"
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through the sandbox\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "THROUGH THE SANDBOX\n"
    );
    assert_eq!(out.status.code(), Some(0));

    let out = tessera_run(guest, &[], &["exit", "7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "the module's exit code is tessera's"
    );
    let out = tessera_run(guest, &["--fuel", "100000"], &["spin"]);
    assert_eq!(out.status.code(), Some(1), "out of fuel");
    let out = tessera_run(guest, &[], &["hello"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from wasm\n");
}

fn tessera_run(guest: &Path, flags: &[&str], args: &[&str]) -> std::process::Output {
    let mut command = tessera().unwrap();
    command.arg("run");
    if !flags.contains(&"--isolation") {
        command.args(["--isolation", "sandbox"]);
    }
    command.arg(guest).args(flags).arg("--").args(args);
    command.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn a_level_that_cannot_run_is_refused_not_lowered() {
    let (Some(_), Some(guest)) = (tessera(), tests::wasm_guest::guest_or_skip()) else {
        return;
    };
    // What a microVM does not get yet (host paths in a config, extensions) is refused there,
    // not run in the sandbox instead; so are a command's flags (-v, -u).
    let ext = std::env::temp_dir();
    let ext = ext.to_str().unwrap();
    for (flags, says) in [
        (
            &["--isolation", "microvm", "--ext", ext][..],
            "--isolation microvm",
        ),
        (
            &["--isolation", "microvm", "-v", &format!("{ext}:/x")][..],
            "--dir",
        ),
        (&["-u", "1000"][..], "--user is for a command"),
    ] {
        let out = tessera_run(guest, flags, &["hello"]);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {out:?}");
        assert!(out.stdout.is_empty(), "nothing ran: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
    let out = tessera().unwrap().args(["run", "ls"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tessera run -- ls"),
        "a forgotten `--` gets a hint: {out:?}"
    );
    let out = tessera()
        .unwrap()
        .args(["run", "--isolation", "sandbox", "--", "true"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a bare command needs the microVM's root"),
        "{out:?}"
    );
}
