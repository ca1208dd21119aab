//! Seccomp end to end: every thread of a running VMM is filtered, and a syscall a filter does
//! not allow ends the VMM with exit code 148 and a log line naming the syscall and the thread.
//!
//! The forbidden syscalls are real: each test hands tessera `--seccomp-filter` with the
//! built-in filters minus one syscall that thread is sure to make, so the check runs the
//! shipped filters, handler and exit path without a hidden debug action in the binary. Tests
//! that boot a tiny guest need /dev/kvm and say SKIPPED without it.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tests::api_client::{TempDir, Tessera};
use tests::{skip_without_kvm, thread_filters, tiny_guest};

const WAIT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Firecracker's exit code for a forbidden syscall, and ours.
const EXIT_BAD_SYSCALL: i32 = 148;

fn builtin_filters() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/seccomp/x86_64.json");
    let text = std::fs::read_to_string(&path).expect("read the built-in filters");
    serde_json::from_str(&text).expect("the built-in filters are JSON")
}

/// The built-in filters with every rule for `syscall` taken out of `kind`'s list, written to
/// `dir`.
fn filters_without(dir: &TempDir, kind: &str, syscall: &str) -> PathBuf {
    let mut filters = builtin_filters();
    let rules = filters[kind]["filter"]
        .as_array_mut()
        .expect("a filter list");
    let before = rules.len();
    rules.retain(|rule| rule["syscall"] != syscall);
    assert!(rules.len() < before, "the {kind} filter has no {syscall}");
    let path = dir.join(&format!("without-{syscall}.json"));
    std::fs::write(&path, filters.to_string()).expect("write the filter file");
    path
}

fn configure_tick64(tessera: &mut Tessera, vcpus: u8) {
    let mut api = tessera.client();
    let machine = json!({"vcpu_count": vcpus, "mem_size_mib": 32}).to_string();
    let boot = json!({"kernel_image_path": tiny_guest("tick64")}).to_string();
    for (path, body) in [("/machine-config", machine), ("/boot-source", boot)] {
        let response = api.put(path, &body);
        assert_eq!(response.status, 204, "PUT {path}: {response}");
    }
}

fn start(tessera: &mut Tessera) {
    let response = tessera
        .client()
        .put("/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(response.status, 204, "InstanceStart: {response}");
}

#[test]
fn every_thread_of_a_running_vmm_has_its_filter() {
    if skip_without_kvm("every_thread_of_a_running_vmm_has_its_filter") {
        return;
    }
    let dir = TempDir::new("seccomp-all");
    let socket = dir.join("api.sock");
    let uds = dir.join("v.sock");
    let metrics = dir.join("metrics.json");
    let (disk, bigger) = (
        dir.file("disk.img", 1 << 20),
        dir.file("bigger.img", 2 << 20),
    );
    let mut tessera = Tessera::spawn_with(Some(&socket), &[]);
    configure_tick64(&mut tessera, 2);
    // Devices and metrics, so that their runtime paths run under the VMM thread's filter.
    let mut api = tessera.client();
    let drive = json!({"drive_id": "scratch", "path_on_host": disk, "is_root_device": false,
                       "is_read_only": false});
    for (path, body) in [
        ("/drives/scratch", drive),
        ("/vsock", json!({"guest_cid": 3, "uds_path": uds})),
        ("/metrics", json!({"metrics_path": metrics})),
    ] {
        let response = api.put(path, &body.to_string());
        assert_eq!(response.status, 204, "PUT {path}: {response}");
    }
    // Before the boot only the API thread, which parses what clients send, is filtered.
    let before = thread_filters(tessera.pid());
    assert!(
        before.iter().any(|t| t.name == "api" && t.mode == "2"),
        "{before:?}"
    );
    start(&mut tessera);
    tessera.wait_for_ticks(2, WAIT);

    let threads = thread_filters(tessera.pid());
    let mut names: Vec<&str> = threads.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    // `console` writes the guest's console output (under the vCPU filter).
    assert_eq!(
        names,
        ["api", "console", "tessera", "vcpu0", "vcpu1"],
        "{threads:?}"
    );
    tests::assert_one_filter_each(&threads);

    // Runtime paths pass their filters: a drive's new file and rate limiter, a host vsock
    // connection, metrics, pause and resume, then Ctrl-Alt-Del to a clean exit.
    let mut api = tessera.client();
    let limiter = json!({"bandwidth": {"size": 1048576, "refill_time": 100}});
    let patches = [
        json!({"drive_id": "scratch", "path_on_host": bigger}),
        json!({"drive_id": "scratch", "rate_limiter": limiter}),
    ];
    for body in patches {
        let response = api.patch("/drives/scratch", &body.to_string());
        assert_eq!(response.status, 204, "PATCH {body}: {response}");
    }
    let missing = json!({"drive_id": "scratch", "path_on_host": dir.join("missing.img")});
    let response = api.patch("/drives/scratch", &missing.to_string());
    assert_eq!(response.status, 400, "PATCH to a missing file: {response}");
    let mut host = UnixStream::connect(&uds).expect("connect to the vsock socket");
    host.write_all(b"CONNECT 1234\n").expect("send CONNECT");
    let response = api.put("/actions", r#"{"action_type": "FlushMetrics"}"#);
    assert_eq!(response.status, 204, "FlushMetrics: {response}");
    drop(host);
    for state in ["Paused", "Resumed"] {
        let response = api.patch("/vm", &json!({ "state": state }).to_string());
        assert_eq!(response.status, 204, "{state}: {response}");
    }
    let response = api.put("/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    assert_eq!(response.status, 204, "SendCtrlAltDel: {response}");
    let finished = tessera.wait(EXIT_TIMEOUT);
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert!(!finished.stderr.contains("seccomp:"), "{}", finished.stderr);
    assert!(
        !uds.exists(),
        "the vsock socket is removed under the filter"
    );
    let flushed = std::fs::read_to_string(&metrics).expect("read the metrics file");
    assert!(
        flushed.lines().count() >= 2,
        "FlushMetrics and the exit flush: {flushed}"
    );
}

#[test]
fn no_seccomp_leaves_every_thread_unfiltered() {
    if skip_without_kvm("no_seccomp_leaves_every_thread_unfiltered") {
        return;
    }
    let dir = TempDir::new("seccomp-none");
    let socket = dir.join("api.sock");
    let mut tessera = Tessera::spawn_with(Some(&socket), &["--no-seccomp"]);
    configure_tick64(&mut tessera, 1);
    start(&mut tessera);
    tessera.wait_for_ticks(1, WAIT);
    let threads = thread_filters(tessera.pid());
    assert_eq!(threads.len(), 4, "{threads:?}");
    for thread in &threads {
        assert_eq!(thread.mode, "0", "{thread:?} under --no-seccomp");
    }
}

/// Asserts that the VMM exited with 148 and named `syscall` and `kind` in `log`.
#[track_caller]
fn assert_killed_for(code: Option<i32>, log: &str, syscall: &str, number: u32, kind: &str) {
    assert_eq!(code, Some(EXIT_BAD_SYSCALL), "exit code; log:\n{log}");
    let line = format!("seccomp: syscall {syscall} ({number}) is not allowed on the {kind} thread");
    let found: Vec<&str> = log.lines().filter(|l| l.contains(&line)).collect();
    assert_eq!(found.len(), 1, "one line with {line:?} in:\n{log}");
    assert!(found[0].contains(" ERROR "), "{}", found[0]);
}

#[test]
fn a_forbidden_syscall_on_the_api_thread_ends_the_vmm_and_is_named() {
    let dir = TempDir::new("seccomp-api");
    let socket = dir.join("api.sock");
    let filters = filters_without(&dir, "api", "accept4");
    let filter_arg = filters.to_str().expect("utf-8 path");
    let mut tessera = Tessera::spawn_with(Some(&socket), &["--seccomp-filter", filter_arg]);
    // The socket listens from the start; the API thread's accept4 is what the filter refuses.
    let _ = tessera.client();
    let finished = tessera.wait(EXIT_TIMEOUT);
    assert_killed_for(finished.code, &finished.stderr, "accept4", 288, "api");
}

#[test]
fn a_forbidden_syscall_on_a_vcpu_thread_ends_the_vmm_and_is_named_in_the_log_file() {
    if skip_without_kvm(
        "a_forbidden_syscall_on_a_vcpu_thread_ends_the_vmm_and_is_named_in_the_log_file",
    ) {
        return;
    }
    let dir = TempDir::new("seccomp-vcpu");
    let socket = dir.join("api.sock");
    let log = dir.join("vmm.log");
    // Without KVM_RUN the vCPU thread is stopped at its first entry into the guest.
    let filters = filters_without(&dir, "vcpu", "ioctl");
    let filter_arg = filters.to_str().expect("utf-8 path");
    let mut tessera = Tessera::spawn_with(Some(&socket), &["--seccomp-filter", filter_arg]);
    let logger = json!({"log_path": log, "level": "Info"}).to_string();
    let response = tessera.client().put("/logger", &logger);
    assert_eq!(response.status, 204, "PUT /logger: {response}");
    configure_tick64(&mut tessera, 1);
    let mut api = tessera.client();
    // The start is answered or the process is gone before the answer: either way it ends.
    let _ = api.try_send_raw(&tests::api_client::request_bytes(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    ));
    let finished = tessera.wait(EXIT_TIMEOUT);
    let log_text = std::fs::read_to_string(&log).expect("read the log file");
    assert_killed_for(finished.code, &log_text, "ioctl", 16, "vcpu");
    // Also on stderr, for whoever watches the console.
    assert_killed_for(finished.code, &finished.stderr, "ioctl", 16, "vcpu");
    assert_eq!(finished.stdout, "", "the guest never ran");
}

#[test]
fn a_forbidden_syscall_on_the_vmm_thread_ends_the_vmm_and_is_named() {
    if skip_without_kvm("a_forbidden_syscall_on_the_vmm_thread_ends_the_vmm_and_is_named") {
        return;
    }
    let dir = TempDir::new("seccomp-vmm");
    // The VMM thread's first act under its filter is to wait in its event loop.
    let filters = filters_without(&dir, "vmm", "epoll_wait");
    let kernel = tiny_guest("tick64");
    let args = [
        "--seccomp-filter",
        filters.to_str().expect("utf-8 path"),
        "run",
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
    ];
    let finished = Tessera::spawn_with(None, &args).wait(EXIT_TIMEOUT);
    assert_killed_for(finished.code, &finished.stderr, "epoll_wait", 232, "vmm");
}

#[test]
fn filter_flags_are_checked_before_anything_starts() {
    let dir = TempDir::new("seccomp-flags");
    let socket = dir.join("api.sock");
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &["--no-seccomp", "--seccomp-filter", "/x.json"],
            2,
            "cannot be used with",
        ),
        (
            &["--seccomp-filter", "/nonexistent/filters.json"],
            1,
            "cannot read --seccomp-filter /nonexistent/filters.json:",
        ),
        (&["--seccomp-filter", "{bad}"], 1, "--seccomp-filter {bad}"),
        (
            &["--seccomp-filter", "{partial}"],
            1,
            "no filter for the \"vcpu\" thread",
        ),
    ];
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"vmm\": [").expect("write");
    let partial = dir.join("partial.json");
    let mut filters = builtin_filters();
    filters.as_object_mut().expect("an object").remove("vcpu");
    std::fs::write(&partial, filters.to_string()).expect("write");
    for (args, code, needle) in cases {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("{bad}", bad.to_str().expect("utf-8"))
                    .replace("{partial}", partial.to_str().expect("utf-8"))
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let finished = Tessera::spawn_with(Some(&socket), &args).wait(EXIT_TIMEOUT);
        assert_eq!(finished.code, Some(code), "{args:?}: {}", finished.stderr);
        assert_eq!(
            finished.stderr.lines().count(),
            1,
            "{args:?}: {}",
            finished.stderr
        );
        let needle = needle
            .replace("{bad}", bad.to_str().expect("utf-8"))
            .replace("{partial}", partial.to_str().expect("utf-8"));
        assert!(
            finished.stderr.contains(&needle),
            "{args:?}: {}",
            finished.stderr
        );
        assert!(!socket.exists(), "{args:?} left a socket behind");
    }
}
