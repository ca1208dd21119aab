//! `tessera run app.wasm`: the module runs in the host sandbox (tessera-wasm --sandbox, a child
//! in its own network, IPC and UTS namespaces, no_new_privs, a seccomp filter), its output,
//! stdin and exit code through tessera; a level that cannot run is refused, never lowered.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tessera() -> Option<Command> {
    let dir = tests::bin_dir();
    if !dir.join("tessera-wasm").is_file() {
        println!(
            "SKIPPED: no tessera-wasm beside tessera in {} (cargo build --workspace --bins)",
            dir.display()
        );
        return None;
    }
    Some(Command::new(dir.join("tessera")))
}

fn guest() -> Option<&'static Path> {
    match tests::wasm_guest::guest() {
        Ok(path) => Some(path),
        Err(why) => {
            println!("SKIPPED: {why}");
            None
        }
    }
}

/// The first child of `pid`, waited for.
fn child_of(pid: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "tessera started no runner");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_string()
}

fn namespace(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

#[test]
fn a_module_runs_confined_on_the_host_with_its_stdin_output_and_exit_code() {
    let (Some(mut tessera), Some(guest)) = (tessera(), guest()) else {
        return;
    };
    let mut child = tessera
        .args(["run", "-i"])
        .arg(guest)
        .args(["--", "stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let runner = child_of(child.id());
    // Confined before the module starts: wait for the filter (set after the module loads).
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_field(runner, "Seccomp:") != "2" {
        assert!(Instant::now() < deadline, "no seccomp filter on the runner");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status_field(runner, "NoNewPrivs:"), "1");
    for kind in ["net", "ipc", "uts"] {
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
    command
        .arg("run")
        .arg(guest)
        .args(flags)
        .arg("--")
        .args(args);
    command.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn a_level_that_cannot_run_is_refused_not_lowered() {
    let (Some(_), Some(guest)) = (tessera(), guest()) else {
        return;
    };
    let out = tessera_run(guest, &["--isolation", "microvm"], &["hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--isolation microvm"), "{stderr}");
    let out = tessera()
        .unwrap()
        .args(["run", "--isolation", "sandbox", "--", "true"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Wasm modules only"),
        "{out:?}"
    );
}
