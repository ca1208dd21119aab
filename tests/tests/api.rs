//! The REST API end to end: a real `tessera --api-sock` process, raw HTTP/1.1 over its unix
//! socket. Tests that boot a tiny guest need /dev/kvm (and say SKIPPED without it); the
//! others talk to a VMM that has not started a VM and always run.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tests::api_client::{request_bytes, ApiClient, ApiResponse, TempDir, Tessera};
use tests::{skip_without_kvm, tiny_guest};

/// Generous: the machine running the tests is shared and slow.
const WAIT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// The scancodes (set 2) the i8042 sends for Ctrl-Alt-Del, as tick64 prints them.
const CTRL_ALT_DEL_KEYS: [&str; 4] = ["key 14", "key 11", "key e0", "key 71"];

const MIB: u64 = 1 << 20;

/// Asserts the status and returns the response for further checks.
#[track_caller]
fn expect(response: ApiResponse, status: u16, what: &str) -> ApiResponse {
    assert_eq!(response.status, status, "{what}: {response}");
    response
}

/// Asserts a Firecracker-shaped fault with this status whose message contains `needle`.
#[track_caller]
fn expect_fault(response: ApiResponse, status: u16, needle: &str, what: &str) {
    assert_eq!(response.status, status, "{what}: {response}");
    assert_eq!(
        response.header("Content-Type"),
        Some("application/json"),
        "{what}: {response}"
    );
    let message = response.fault_message();
    assert!(
        message.contains(needle),
        "{what}: fault_message {message:?} does not contain {needle:?}"
    );
}

/// `value` without object members that are null: Firecracker's API treats a null optional
/// field and an absent one alike.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

#[track_caller]
fn assert_same_config(actual: &Value, expected: &Value, what: &str) {
    assert_eq!(
        without_nulls(actual),
        without_nulls(expected),
        "{what}\nactual:   {actual}\nexpected: {expected}"
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn boot_source(kernel: &Path) -> String {
    json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0"}).to_string()
}

fn action(name: &str) -> String {
    json!({ "action_type": name }).to_string()
}

fn vm_state(name: &str) -> String {
    json!({ "state": name }).to_string()
}

/// Whether `token` is an RFC 3339 UTC or offset timestamp, e.g. 2024-05-01T12:00:00.123456Z.
fn is_rfc3339(token: &str) -> bool {
    let b = token.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let digits =
        |from: usize, to: usize| b.len() >= to && b[from..to].iter().all(u8::is_ascii_digit);
    let date_time = digits(0, 4)
        && b[4] == b'-'
        && digits(5, 7)
        && b[7] == b'-'
        && digits(8, 10)
        && matches!(b[10], b'T' | b't')
        && digits(11, 13)
        && b[13] == b':'
        && digits(14, 16)
        && b[16] == b':'
        && digits(17, 19);
    if !date_time {
        return false;
    }
    let mut rest = &token[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let trimmed = fraction.trim_start_matches(|c: char| c.is_ascii_digit());
        if trimmed.len() == fraction.len() {
            return false;
        }
        rest = trimmed;
    }
    let offset = rest.as_bytes();
    rest == "Z"
        || (offset.len() == 6
            && matches!(offset[0], b'+' | b'-')
            && offset[1..3].iter().all(u8::is_ascii_digit)
            && offset[3] == b':'
            && offset[4..6].iter().all(u8::is_ascii_digit))
}

/// The timestamp check the log assertions rely on.
#[test]
fn rfc3339_check_accepts_timestamps_only() {
    for good in [
        "2026-11-21T12:17:42.556743Z",
        "2026-11-21T12:17:42Z",
        "2026-11-21T12:17:42.5+02:00",
    ] {
        assert!(is_rfc3339(good), "{good}");
    }
    for bad in [
        "",
        "2026",
        "INFO",
        "[main]",
        "2026-11-21 12:17:42Z",
        "2026-11-21T12:17:42",
        "2026-11-21T12:17:42.Z",
        "2026-11-21T12:17:42.1+0200",
    ] {
        assert!(!is_rfc3339(bad), "{bad}");
    }
}

fn key_lines(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("key ")).collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The metrics file's lines, each parsed.
fn metrics_lines(path: &Path) -> Vec<Value> {
    read(path)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("metrics line {l:?}: {e}")))
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

// ---------------------------------------------------------------------------------------
// 1. Lifecycle
// ---------------------------------------------------------------------------------------

#[test]
fn lifecycle_configure_start_pause_resume_flush_and_ctrl_alt_del() {
    if skip_without_kvm("lifecycle_configure_start_pause_resume_flush_and_ctrl_alt_del") {
        return;
    }
    let dir = TempDir::new("life");
    let socket = dir.join("api.sock");
    let log = dir.join("vmm.log");
    let metrics = dir.join("metrics.json");
    let mut vmm = Tessera::spawn_with(Some(&socket), &["--id", "api-lifecycle"]);
    let mut api = vmm.client();

    let logger = json!({"log_path": log, "level": "Debug", "show_level": true});
    expect(api.put("/logger", &logger.to_string()), 204, "PUT /logger");
    // Refused before metrics exist; logged at debug level, counted as a failure.
    expect_fault(
        api.put("/actions", &action("FlushMetrics")),
        400,
        "metrics are not configured",
        "FlushMetrics without metrics",
    );
    let body = json!({ "metrics_path": metrics }).to_string();
    expect(api.put("/metrics", &body), 204, "PUT /metrics");
    assert!(metrics.exists(), "PUT /metrics creates the file");
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 32}"#;
    expect(
        api.put("/machine-config", machine),
        204,
        "PUT /machine-config",
    );
    let boot = boot_source(&tiny_guest("tick64"));
    expect(api.put("/boot-source", &boot), 204, "PUT /boot-source");

    let info = expect(api.get("/"), 200, "GET /").json();
    assert_eq!(info["id"], "api-lifecycle", "{info}");
    assert_eq!(info["state"], "Not started", "{info}");
    assert_eq!(info["app_name"], "tessera", "{info}");
    assert!(
        info["vmm_version"].as_str().is_some_and(|v| !v.is_empty()),
        "{info}"
    );
    assert_eq!(vmm.ticks(), 0, "nothing runs before InstanceStart");

    let started = expect(api.put("/actions", &action("InstanceStart")), 204, "start");
    assert_eq!(started.body, "", "204 has no body");
    // RFC 9110 8.6: a 204 carries no Content-Length (or a zero one).
    assert!(
        started.header("Content-Length").is_none_or(|l| l == "0"),
        "{started}"
    );
    assert_eq!(api.state(), "Running");
    vmm.wait_for_stdout("the guest's banner", WAIT, |out| {
        out.starts_with("tessera-test: ticking\n")
    });
    vmm.wait_for_ticks(3, WAIT);

    // Paused: no tick while paused. A tick already on its way through the pipe may still
    // arrive, so count after a short settle, then watch for half a second.
    expect(api.patch("/vm", &vm_state("Paused")), 204, "pause");
    assert_eq!(api.state(), "Paused");
    thread::sleep(Duration::from_millis(150));
    let paused_at = vmm.ticks();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        vmm.ticks(),
        paused_at,
        "the guest ticked while paused\n{}",
        vmm.output_so_far()
    );
    // The API keeps answering while the vCPUs are parked.
    let machine_now = expect(api.get("/machine-config"), 200, "GET /machine-config").json();
    assert_eq!(machine_now["vcpu_count"], 1, "{machine_now}");

    expect(api.patch("/vm", &vm_state("Resumed")), 204, "resume");
    assert_eq!(api.state(), "Running");
    vmm.wait_for_ticks(paused_at + 3, WAIT);

    let lines_before = metrics_lines(&metrics).len();
    expect(
        api.put("/actions", &action("FlushMetrics")),
        204,
        "FlushMetrics",
    );
    let lines = metrics_lines(&metrics);
    assert_eq!(
        lines.len(),
        lines_before + 1,
        "FlushMetrics writes one line"
    );
    let line = lines.last().unwrap_or_else(|| panic!("no metrics line"));
    let requests = &line["api_requests"];
    let fails = &line["api_fails"];
    assert!(requests["PATCH /vm"].as_u64() >= Some(2), "{line}");
    // FlushMetrics (refused) and InstanceStart; this flush is counted once it is answered.
    assert!(requests["PUT /actions"].as_u64() >= Some(2), "{line}");
    assert!(requests["GET /"].as_u64() >= Some(3), "{line}");
    assert_eq!(requests["PUT /machine-config"], 1, "{line}");
    assert!(fails["PUT /actions"].as_u64() >= Some(1), "{line}");
    assert_eq!(fails["PATCH /vm"], 0, "{line}");
    let stamp = line["utc_timestamp_ms"].as_u64().expect("utc_timestamp_ms");
    let now = now_ms();
    assert!(
        stamp <= now && stamp + 600_000 > now,
        "{stamp} vs now {now}"
    );

    expect(
        api.put("/actions", &action("SendCtrlAltDel")),
        204,
        "Ctrl-Alt-Del",
    );
    let out = vmm.wait(EXIT_TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(key_lines(&out.stdout), CTRL_ALT_DEL_KEYS, "{out}");
    assert!(out.stdout.ends_with("tessera-test: done\n"), "{out}");
    assert!(!socket.exists(), "the socket file is removed on exit");
    // The API connection is closed with the process.
    api.expect_closed();
    // A last line is flushed on exit, with the counts since the previous line: the
    // FlushMetrics request (counted once answered) and SendCtrlAltDel.
    let lines = metrics_lines(&metrics);
    assert_eq!(lines.len(), lines_before + 2, "one more line on exit");
    let last = &lines[lines.len() - 1];
    assert_eq!(last["api_requests"]["PUT /actions"], 2, "{last}");
    assert_eq!(last["api_requests"]["PATCH /vm"], 0, "{last}");

    let log_text = read(&log);
    let paused = log_text
        .lines()
        .find(|l| l.contains("VM paused"))
        .unwrap_or_else(|| panic!("no 'VM paused' line in the log:\n{log_text}"));
    let mut fields = paused.split_whitespace();
    let stamp = fields.next().unwrap_or("");
    assert!(is_rfc3339(stamp), "{paused}");
    assert_eq!(fields.next(), Some("INFO"), "{paused}");
    let thread_name = fields.next().unwrap_or("");
    assert!(
        thread_name.len() > 2 && thread_name.starts_with('[') && thread_name.ends_with(']'),
        "{paused}"
    );
    assert!(log_text.contains("VM resumed"), "{log_text}");
    let refused = log_text
        .lines()
        .find(|l| l.contains("API action refused: metrics are not configured"))
        .unwrap_or_else(|| panic!("level Debug logs refused actions:\n{log_text}"));
    assert!(refused.contains(" DEBUG "), "{refused}");
    for line in log_text.lines() {
        let stamp = line.split_whitespace().next().unwrap_or("");
        assert!(is_rfc3339(stamp), "log line without a timestamp: {line:?}");
    }
}

// ---------------------------------------------------------------------------------------
// 2. Pre-boot vs runtime rules
// ---------------------------------------------------------------------------------------

#[test]
fn runtime_rules_and_drive_backing_file_swap() {
    if skip_without_kvm("runtime_rules_and_drive_backing_file_swap") {
        return;
    }
    let dir = TempDir::new("rt");
    let socket = dir.join("api.sock");
    let disk = dir.file("disk.img", MIB);
    let bigger = dir.file("bigger.img", 4 * MIB);
    let kernel = tiny_guest("tick64");
    let mut vmm = Tessera::spawn_api(&socket);
    let mut api = vmm.client();

    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 32}"#;
    expect(api.put("/machine-config", machine), 204, "machine-config");
    expect(
        api.put("/boot-source", &boot_source(&kernel)),
        204,
        "boot-source",
    );
    let drive = json!({"drive_id": "x", "path_on_host": disk, "is_root_device": false,
                       "is_read_only": false})
    .to_string();
    expect(api.put("/drives/x", &drive), 204, "PUT /drives/x");
    let swap = json!({"drive_id": "x", "path_on_host": bigger}).to_string();

    // Runtime-only actions before the start.
    let preboot_config = api.vm_config();
    let ctrl_alt_del = action("SendCtrlAltDel");
    let runtime_only: [(&str, &str, &str); 5] = [
        ("PATCH", "/vm", &vm_state("Paused")),
        ("PATCH", "/vm", &vm_state("Resumed")),
        ("PUT", "/actions", &ctrl_alt_del),
        ("PATCH", "/drives/x", &swap),
        (
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0"}"#,
        ),
    ];
    for (method, path, body) in runtime_only {
        let what = format!("{method} {path} {body} before start");
        expect_fault(
            api.request(method, path, Some(body)),
            400,
            "not supported before starting",
            &what,
        );
        assert_eq!(api.vm_config(), preboot_config, "{what} changed the config");
    }
    assert_eq!(api.state(), "Not started");

    expect(api.put("/actions", &action("InstanceStart")), 204, "start");
    vmm.wait_for_ticks(2, WAIT);
    let running_config = api.vm_config();
    assert_eq!(running_config, preboot_config);

    // Pre-boot-only actions after the start.
    let metrics = dir.join("late-metrics.json");
    let log = dir.join("late.log");
    let uds = dir.join("vsock.sock");
    let preboot_only: Vec<(&str, &str, String)> = vec![
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 64}"#.into(),
        ),
        ("PATCH", "/machine-config", r#"{"mem_size_mib": 64}"#.into()),
        ("PUT", "/boot-source", boot_source(&kernel)),
        ("PUT", "/drives/x", drive.clone()),
        (
            "PUT",
            "/drives/y",
            json!({"drive_id": "y", "path_on_host": disk, "is_root_device": false}).to_string(),
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tsr-tap0"}"#.into(),
        ),
        (
            "PUT",
            "/vsock",
            json!({"guest_cid": 3, "uds_path": uds}).to_string(),
        ),
        ("PUT", "/entropy", "{}".into()),
        (
            "PUT",
            "/logger",
            json!({"log_path": log, "level": "Info"}).to_string(),
        ),
        (
            "PUT",
            "/metrics",
            json!({ "metrics_path": metrics }).to_string(),
        ),
        ("PUT", "/actions", action("InstanceStart")),
    ];
    for (method, path, body) in &preboot_only {
        let what = format!("{method} {path} {body} after start");
        expect_fault(
            api.request(method, path, Some(body)),
            400,
            "not supported after starting",
            &what,
        );
        assert_eq!(api.vm_config(), running_config, "{what} changed the config");
    }
    assert!(!metrics.exists(), "a refused PUT /metrics opened its file");
    assert!(!log.exists(), "a refused PUT /logger opened its file");
    assert!(!uds.exists(), "a refused PUT /vsock created its socket");
    let machine_now = expect(api.get("/machine-config"), 200, "GET /machine-config").json();
    assert_eq!(machine_now["vcpu_count"], 1, "{machine_now}");
    assert_eq!(machine_now["mem_size_mib"], 32, "{machine_now}");

    // PATCH /drives: a new backing file.
    expect(
        api.patch("/drives/x", &swap),
        204,
        "PATCH /drives/x to a bigger file",
    );
    let swapped = api.vm_config();
    assert_eq!(
        swapped["drives"][0]["path_on_host"],
        path_str(&bigger),
        "{swapped}"
    );
    assert_eq!(
        swapped["drives"].as_array().map(Vec::len),
        Some(1),
        "{swapped}"
    );

    // PATCH /drives: a rate limiter only; the path stays.
    let limiter = json!({"bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 100}});
    let body = json!({"drive_id": "x", "rate_limiter": limiter}).to_string();
    expect(
        api.patch("/drives/x", &body),
        204,
        "PATCH /drives/x rate limiter",
    );
    let swapped = api.vm_config();
    assert_eq!(
        swapped["drives"][0]["path_on_host"],
        path_str(&bigger),
        "{swapped}"
    );
    assert_same_config(
        &swapped["drives"][0]["rate_limiter"],
        &limiter,
        "the patched rate limiter",
    );

    let missing = dir.join("missing.img");
    let body = json!({"drive_id": "x", "path_on_host": missing}).to_string();
    expect_fault(
        api.patch("/drives/x", &body),
        400,
        path_str(&missing),
        "PATCH /drives/x to a missing file",
    );
    assert_eq!(
        api.vm_config(),
        swapped,
        "a refused PATCH changed the config"
    );

    let body = json!({"drive_id": "nope", "path_on_host": disk}).to_string();
    expect_fault(
        api.patch("/drives/nope", &body),
        400,
        "nope",
        "unknown drive",
    );
    let body = json!({"drive_id": "y", "path_on_host": disk}).to_string();
    expect_fault(
        api.patch("/drives/x", &body),
        400,
        "does not match",
        "id mismatch",
    );
    let body = r#"{"drive_id": "x", "path_on_host": "/tmp/a", "is_read_only": true}"#;
    expect_fault(
        api.patch("/drives/x", body),
        400,
        "unknown field",
        "PUT-only field",
    );
    let body = r#"{"iface_id": "eth0"}"#;
    expect_fault(
        api.patch("/network-interfaces/eth0", body),
        400,
        "eth0",
        "unknown interface",
    );
    assert_eq!(
        api.vm_config(),
        swapped,
        "refused PATCHes changed the config"
    );

    // The guest still runs after all that.
    let ticks = vmm.ticks();
    vmm.wait_for_ticks(ticks + 2, WAIT);
    expect(
        api.put("/actions", &action("SendCtrlAltDel")),
        204,
        "Ctrl-Alt-Del",
    );
    let out = vmm.wait(EXIT_TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(key_lines(&out.stdout), CTRL_ALT_DEL_KEYS, "{out}");
    assert!(!socket.exists(), "the socket file is removed on exit");
}

// ---------------------------------------------------------------------------------------
// 3. Pre-boot configuration and refused requests (no KVM needed)
// ---------------------------------------------------------------------------------------

/// A VMM that has not started a VM, and a connection to it.
fn preboot_vmm(tag: &str) -> (TempDir, Tessera, ApiClient) {
    let dir = TempDir::new(tag);
    let mut vmm = Tessera::spawn_api(&dir.join("api.sock"));
    let api = vmm.client();
    (dir, vmm, api)
}

#[test]
fn preboot_every_route_round_trips_through_vm_config() {
    let (dir, vmm, mut api) = preboot_vmm("rt");
    let kernel = tiny_guest("idle64");
    let initrd = dir.file("initrd.img", 4096);
    let root = dir.file("root.img", MIB);
    let data = dir.file("data.img", 2 * MIB);
    let uds = dir.join("v.sock");
    let log = dir.join("vmm.log");
    let metrics = dir.join("metrics.json");

    let version = expect(api.get("/version"), 200, "GET /version").json();
    let fc_version = version["firecracker_version"].as_str().unwrap_or("");
    assert!(!fc_version.is_empty(), "{version}");
    assert_eq!(version["tessera_version"], fc_version, "{version}");

    let defaults = expect(api.get("/machine-config"), 200, "GET /machine-config").json();
    assert_eq!(defaults["vcpu_count"], 1, "{defaults}");
    assert_eq!(defaults["mem_size_mib"], 128, "{defaults}");
    assert_eq!(defaults["smt"], false, "{defaults}");
    let empty = api.vm_config();
    assert_same_config(
        &empty,
        &json!({
            "machine-config": defaults,
            "drives": [],
            "network-interfaces": [],
        }),
        "GET /vm/config of a fresh VMM",
    );

    let machine = json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false,
                         "track_dirty_pages": false, "huge_pages": "None"});
    expect(
        api.put("/machine-config", &machine.to_string()),
        204,
        "PUT /machine-config",
    );
    expect(
        api.patch("/machine-config", r#"{"mem_size_mib": 512}"#),
        204,
        "PATCH /machine-config",
    );
    let machine_now = expect(api.get("/machine-config"), 200, "GET /machine-config").json();
    assert_eq!(
        machine_now["vcpu_count"], 2,
        "PATCH keeps the rest: {machine_now}"
    );
    assert_eq!(machine_now["mem_size_mib"], 512, "{machine_now}");

    let boot = json!({"kernel_image_path": kernel, "initrd_path": initrd,
                      "boot_args": "console=ttyS0 reboot=k"});
    expect(
        api.put("/boot-source", &boot.to_string()),
        204,
        "PUT /boot-source",
    );

    let rootfs = json!({"drive_id": "rootfs", "path_on_host": root, "is_root_device": true,
                        "is_read_only": true, "cache_type": "Unsafe"});
    expect(
        api.put("/drives/rootfs", &rootfs.to_string()),
        204,
        "PUT /drives/rootfs",
    );
    let limiter = json!({"bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 100},
                         "ops": {"size": 100, "one_time_burst": 10, "refill_time": 1000}});
    let data_drive = json!({"drive_id": "data", "path_on_host": data, "is_root_device": false,
                            "is_read_only": false, "cache_type": "Writeback",
                            "rate_limiter": limiter});
    expect(
        api.put("/drives/data", &data_drive.to_string()),
        204,
        "PUT /drives/data",
    );
    // Same id again: replaced in place, so the guest's disk order does not move.
    let rootfs = json!({"drive_id": "rootfs", "path_on_host": root, "is_root_device": true,
                        "is_read_only": false, "cache_type": "Unsafe"});
    expect(
        api.put("/drives/rootfs", &rootfs.to_string()),
        204,
        "PUT /drives/rootfs again",
    );

    let iface = json!({"iface_id": "eth0", "host_dev_name": "tsr-tap0",
                       "guest_mac": "06:00:ac:10:00:02",
                       "rx_rate_limiter": {"bandwidth": {"size": 65536, "one_time_burst": 0,
                                                         "refill_time": 10}}});
    expect(
        api.put("/network-interfaces/eth0", &iface.to_string()),
        204,
        "PUT /network-interfaces/eth0 (the TAP is only opened at start)",
    );
    let vsock = json!({"vsock_id": "vsock0", "guest_cid": 3, "uds_path": uds});
    expect(api.put("/vsock", &vsock.to_string()), 204, "PUT /vsock");
    assert!(!uds.exists(), "the vsock socket is only created at start");
    let entropy = json!({"rate_limiter": {"ops": {"size": 10, "one_time_burst": 0,
                                                  "refill_time": 100}}});
    expect(
        api.put("/entropy", &entropy.to_string()),
        204,
        "PUT /entropy",
    );
    let logger = json!({"log_path": log, "level": "Info", "show_level": true,
                        "show_log_origin": true});
    expect(api.put("/logger", &logger.to_string()), 204, "PUT /logger");
    assert!(log.exists(), "PUT /logger opens the file");
    let metrics_config = json!({ "metrics_path": metrics });
    expect(
        api.put("/metrics", &metrics_config.to_string()),
        204,
        "PUT /metrics",
    );
    assert!(metrics.exists(), "PUT /metrics opens the file");

    let expected = json!({
        "boot-source": boot,
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 512, "smt": false,
                           "track_dirty_pages": false, "huge_pages": "None"},
        "drives": [rootfs, data_drive],
        "network-interfaces": [iface],
        "vsock": vsock,
        "entropy": entropy,
        "logger": logger,
        "metrics": metrics_config,
    });
    let config = api.vm_config();
    assert_same_config(&config, &expected, "GET /vm/config after every PUT");
    // GET /vm/config is the config-file shape: Firecracker's optional sections are null.
    for section in ["balloon", "mmds-config", "cpu-config"] {
        assert!(config.get(section).is_none_or(Value::is_null), "{config}");
    }

    // Metrics count each route by its template.
    let lines_before = metrics_lines(&metrics).len();
    expect(
        api.put("/actions", &action("FlushMetrics")),
        204,
        "FlushMetrics",
    );
    let lines = metrics_lines(&metrics);
    assert_eq!(
        lines.len(),
        lines_before + 1,
        "FlushMetrics writes one line"
    );
    let line = lines.last().unwrap_or_else(|| panic!("no metrics line"));
    assert_eq!(line["api_requests"]["PUT /drives/{drive_id}"], 3, "{line}");
    assert_eq!(
        line["api_requests"]["PUT /network-interfaces/{iface_id}"], 1,
        "{line}"
    );
    assert_eq!(line["api_requests"]["GET /vm/config"], 2, "{line}");
    assert_eq!(line["api_fails"]["PUT /drives/{drive_id}"], 0, "{line}");
    assert!(line["utc_timestamp_ms"].as_u64().is_some(), "{line}");

    // Metrics are set once: a second PUT is refused and the first stays.
    let other = json!({ "metrics_path": dir.join("other.json") }).to_string();
    expect_fault(
        api.put("/metrics", &other),
        400,
        "already configured",
        "PUT /metrics twice",
    );
    assert!(!dir.join("other.json").exists());
    assert_same_config(
        &api.vm_config(),
        &expected,
        "after a refused second PUT /metrics",
    );
    assert_eq!(api.state(), "Not started");
    drop(vmm);
}

#[test]
fn preboot_bad_requests_are_refused_and_change_nothing() {
    let (dir, _vmm, mut api) = preboot_vmm("bad");
    let kernel = tiny_guest("idle64");
    let root = dir.file("root.img", MIB);
    let data = dir.file("data.img", MIB);
    let uds = dir.join("v.sock");
    // A FIFO with no writer: a plain read-only open of it would block the VMM for good.
    let fifo = dir.join("fifo");
    let c_fifo = std::ffi::CString::new(path_str(&fifo)).expect("no NUL in the path");
    // SAFETY: mkfifo on a NUL-terminated path; the result is checked.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0, "mkfifo");

    expect(
        api.put(
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
        ),
        204,
        "PUT /machine-config",
    );
    expect(
        api.put("/boot-source", &boot_source(&kernel)),
        204,
        "PUT /boot-source",
    );
    let rootfs = json!({"drive_id": "rootfs", "path_on_host": root, "is_root_device": true});
    expect(
        api.put("/drives/rootfs", &rootfs.to_string()),
        204,
        "PUT /drives/rootfs",
    );
    let baseline = api.vm_config();
    assert_eq!(
        baseline["drives"].as_array().map(Vec::len),
        Some(1),
        "{baseline}"
    );

    let data_drive = |id: &str, extra: Value| {
        let mut drive = json!({"drive_id": id, "path_on_host": data, "is_root_device": false});
        if let (Some(drive), Value::Object(extra)) = (drive.as_object_mut(), extra) {
            drive.extend(extra);
        }
        drive.to_string()
    };
    let long_id = "d".repeat(21);
    let long_args = "x".repeat(2048);
    let cases: Vec<(&str, String, String, &str)> = vec![
        // Bad JSON, unknown fields, wrong types, missing fields.
        (
            "PUT",
            "/machine-config".into(),
            r#"{"vcpu_count": "#.into(),
            "invalid request body",
        ),
        (
            "PUT",
            "/machine-config".into(),
            "not json".into(),
            "invalid request body",
        ),
        ("PUT", "/machine-config".into(), "2".into(), "invalid type"),
        (
            "PUT",
            "/machine-config".into(),
            "[2, 64]".into(),
            "must be a JSON object, not an array",
        ),
        ("PUT", "/machine-config".into(), "".into(), "no body"),
        (
            "PUT",
            "/machine-config".into(),
            r#"{"vcpu_count": 4, "mem_size_mib": 64, "vcpus": 4}"#.into(),
            "unknown field `vcpus`",
        ),
        (
            "PUT",
            "/machine-config".into(),
            r#"{"vcpu_count": "four", "mem_size_mib": 64}"#.into(),
            "invalid type: string",
        ),
        (
            "PUT",
            "/machine-config".into(),
            r#"{"vcpu_count": -1, "mem_size_mib": 64}"#.into(),
            "invalid value",
        ),
        (
            "PUT",
            "/machine-config".into(),
            r#"{"vcpu_count": 4}"#.into(),
            "mem_size_mib is required",
        ),
        // Out of range, in full and in part; every field is checked before any applies.
        (
            "PUT",
            "/machine-config".into(),
            r#"{"vcpu_count": 0, "mem_size_mib": 64}"#.into(),
            "vCPU count 0 is out of range",
        ),
        (
            "PUT",
            "/machine-config".into(),
            r#"{"vcpu_count": 33, "mem_size_mib": 64}"#.into(),
            "vCPU count 33 is out of range",
        ),
        (
            "PUT",
            "/machine-config".into(),
            r#"{"vcpu_count": 4, "mem_size_mib": 1}"#.into(),
            "memory size 1 MiB is out of range",
        ),
        (
            "PATCH",
            "/machine-config".into(),
            r#"{"vcpu_count": 0}"#.into(),
            "out of range",
        ),
        (
            "PATCH",
            "/machine-config".into(),
            r#"{"vcpu_count": 4, "smt": true}"#.into(),
            "smt",
        ),
        (
            "PATCH",
            "/machine-config".into(),
            r#"{"mem_size_mib": 256, "huge_pages": "2M"}"#.into(),
            "huge_pages",
        ),
        // Boot source.
        (
            "PUT",
            "/boot-source".into(),
            "{}".into(),
            "missing field `kernel_image_path`",
        ),
        (
            "PUT",
            "/boot-source".into(),
            r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#.into(),
            "/nonexistent/vmlinux",
        ),
        (
            "PUT",
            "/boot-source".into(),
            json!({"kernel_image_path": kernel, "initrd_path": "/nonexistent/initrd.img"})
                .to_string(),
            "/nonexistent/initrd.img",
        ),
        (
            "PUT",
            "/boot-source".into(),
            json!({"kernel_image_path": kernel, "boot_args": long_args}).to_string(),
            "2048 bytes",
        ),
        // Drives: body, id, file and whole-configuration checks.
        (
            "PUT",
            "/drives/data".into(),
            r#"{"drive_id": "data"}"#.into(),
            "missing field `path_on_host`",
        ),
        (
            "PUT",
            "/drives/data".into(),
            data_drive("other", json!({})),
            "does not match",
        ),
        (
            "PUT",
            "/drives/bad.id".into(),
            data_drive("bad.id", json!({})),
            "\"bad.id\"",
        ),
        (
            "PUT",
            format!("/drives/{long_id}"),
            data_drive(&long_id, json!({})),
            "1 to 20 characters",
        ),
        (
            "PUT",
            "/drives/root2".into(),
            data_drive("root2", json!({"is_root_device": true})),
            "more than one drive is marked as the root device",
        ),
        (
            "PUT",
            "/drives/rootfs".into(),
            json!({"drive_id": "rootfs", "path_on_host": "/nonexistent/root.img",
                   "is_root_device": true})
            .to_string(),
            "/nonexistent/root.img",
        ),
        (
            "PUT",
            "/drives/data".into(),
            data_drive("data", json!({"cache_type": "Sometimes"})),
            "unknown variant `Sometimes`",
        ),
        (
            "PUT",
            "/drives/data".into(),
            data_drive("data", json!({"rate_limiter": {"bandwidth": {"size": 1}}})),
            "missing field `refill_time`",
        ),
        // Network interfaces.
        (
            "PUT",
            "/network-interfaces/eth0".into(),
            r#"{"iface_id": "eth1", "host_dev_name": "tap0"}"#.into(),
            "does not match",
        ),
        (
            "PUT",
            "/network-interfaces/eth0".into(),
            r#"{"iface_id": "eth0"}"#.into(),
            "missing field `host_dev_name`",
        ),
        (
            "PUT",
            "/network-interfaces/eth0".into(),
            r#"{"iface_id": "eth0", "host_dev_name": "a-much-too-long-name"}"#.into(),
            "host_dev_name",
        ),
        (
            "PUT",
            "/network-interfaces/eth0".into(),
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00"}"#
                .into(),
            "guest_mac",
        ),
        (
            "PUT",
            "/network-interfaces/eth0".into(),
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "01:00:5e:00:00:01"}"#
                .into(),
            "multicast",
        ),
        // VsockBody and entropy.
        (
            "PUT",
            "/vsock".into(),
            json!({"guest_cid": 2, "uds_path": uds}).to_string(),
            "reserved",
        ),
        (
            "PUT",
            "/vsock".into(),
            r#"{"guest_cid": 3, "uds_path": ""}"#.into(),
            "empty",
        ),
        (
            "PUT",
            "/vsock".into(),
            r#"{"guest_cid": 3}"#.into(),
            "missing field `uds_path`",
        ),
        (
            "PUT",
            "/entropy".into(),
            r#"{"rate_limiter": {"ops": {"size": 1}}}"#.into(),
            "missing field `refill_time`",
        ),
        // Logger and metrics: nothing is opened or switched when refused.
        (
            "PUT",
            "/logger".into(),
            r#"{"level": "Loud"}"#.into(),
            "\"Loud\"",
        ),
        (
            "PUT",
            "/logger".into(),
            r#"{"log_path": "/nonexistent/dir/vmm.log"}"#.into(),
            "/nonexistent/dir/vmm.log",
        ),
        (
            "PUT",
            "/logger".into(),
            r#"{"colour": true}"#.into(),
            "unknown field `colour`",
        ),
        (
            "PUT",
            "/metrics".into(),
            r#"{"metrics_path": "/nonexistent/dir/m.json"}"#.into(),
            "/nonexistent/dir/m.json",
        ),
        (
            "PUT",
            "/metrics".into(),
            "{}".into(),
            "missing field `metrics_path`",
        ),
        // Special files are refused without blocking on them.
        (
            "PUT",
            "/drives/fifo".into(),
            json!({"drive_id": "fifo", "path_on_host": fifo, "is_read_only": true}).to_string(),
            "is not a regular file or block device",
        ),
        (
            "PUT",
            "/boot-source".into(),
            json!({"kernel_image_path": fifo}).to_string(),
            "is not a regular file",
        ),
        // Actions and states.
        (
            "PUT",
            "/actions".into(),
            action("Explode"),
            "unknown variant `Explode`",
        ),
        (
            "PUT",
            "/actions".into(),
            "{}".into(),
            "missing field `action_type`",
        ),
        (
            "PUT",
            "/actions".into(),
            action("FlushMetrics"),
            "metrics are not configured",
        ),
        (
            "PATCH",
            "/vm".into(),
            vm_state("Sleeping"),
            "unknown variant `Sleeping`",
        ),
        (
            "PATCH",
            "/vm".into(),
            vm_state("Paused"),
            "not supported before starting",
        ),
        (
            "PUT",
            "/actions".into(),
            action("SendCtrlAltDel"),
            "not supported before starting",
        ),
    ];
    for (method, path, body, needle) in &cases {
        let what = format!("{method} {path} {body}");
        expect_fault(api.request(method, path, Some(body)), 400, needle, &what);
        assert_eq!(
            api.vm_config(),
            baseline,
            "{what} changed the configuration"
        );
    }
    assert!(!uds.exists());
    assert_eq!(api.state(), "Not started");
    // The same connection served every request.
    expect(api.get("/version"), 200, "GET /version at the end");
}

/// The VM boots with the machine config as it stands at `InstanceStart`: built at the start when
/// the client sends it at once, taken from the prebuild (started once the API is quiet) when it
/// matches, and built afresh when the config changed after the prebuild.
#[test]
fn instance_start_uses_the_machine_config_as_it_stands() {
    if skip_without_kvm("instance_start_uses_the_machine_config_as_it_stands") {
        return;
    }
    let smp = tiny_guest("smp64");
    // (vCPUs first put, a pause for the prebuild, vCPUs at the start)
    for (first, pause, at_start) in [(2, 0, 2), (2, 100, 2), (2, 100, 3)] {
        let (_dir, vmm, mut api) = preboot_vmm("machine");
        let machine = format!(r#"{{"vcpu_count": {first}, "mem_size_mib": 32}}"#);
        expect(
            api.put("/machine-config", &machine),
            204,
            "PUT /machine-config",
        );
        expect(
            api.put("/boot-source", &boot_source(&smp)),
            204,
            "PUT /boot-source",
        );
        thread::sleep(Duration::from_millis(pause));
        if at_start != first {
            let patch = format!(r#"{{"vcpu_count": {at_start}}}"#);
            expect(
                api.patch("/machine-config", &patch),
                204,
                "PATCH /machine-config",
            );
        }
        expect(
            api.put("/actions", &action("InstanceStart")),
            204,
            "InstanceStart",
        );
        let out = vmm.wait(Duration::from_secs(30));
        assert_eq!(
            out.code,
            Some(0),
            "{first} -> {at_start} vCPUs after {pause} ms\n{}",
            out.stdout
        );
        let want = format!("mptable cpus={at_start:02}\n");
        assert!(
            out.stdout.contains(&want),
            "{first} -> {at_start} vCPUs after {pause} ms\n{}",
            out.stdout
        );
    }
}

#[test]
fn instance_start_without_boot_source_is_refused() {
    let (_dir, _vmm, mut api) = preboot_vmm("nokern");
    expect(
        api.put(
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
        ),
        204,
        "PUT /machine-config",
    );
    let baseline = api.vm_config();
    let response = api.put("/actions", &action("InstanceStart"));
    expect_fault(
        response.clone(),
        400,
        "Cannot start microvm without kernel configuration",
        "InstanceStart without boot-source",
    );
    assert!(
        response.fault_message().starts_with("Cannot start microvm"),
        "{response}"
    );
    assert_eq!(api.state(), "Not started");
    assert_eq!(api.vm_config(), baseline);
    // Still configurable afterwards.
    expect(
        api.patch("/machine-config", r#"{"vcpu_count": 2}"#),
        204,
        "PATCH after a refused start",
    );
}

#[test]
fn unknown_paths_wrong_methods_and_firecracker_only_paths() {
    let (_dir, _vmm, mut api) = preboot_vmm("paths");
    let baseline = api.vm_config();

    for path in [
        "/nope",
        "/drives",
        "/drives/a/b",
        "/vm/config/x",
        "/machine-config/x",
    ] {
        let response = api.get(path);
        expect_fault(response, 404, &format!("no such endpoint: {path}"), path);
    }
    let allowed: [(&str, &str, &str); 7] = [
        ("DELETE", "/drives/a", "PUT, PATCH"),
        ("GET", "/drives/a", "PUT, PATCH"),
        ("POST", "/actions", "PUT"),
        ("GET", "/actions", "PUT"),
        ("PUT", "/", "GET"),
        ("DELETE", "/machine-config", "GET, PUT, PATCH"),
        ("PATCH", "/boot-source", "PUT"),
    ];
    for (method, path, allow) in allowed {
        let what = format!("{method} {path}");
        let response = api.request(method, path, Some("{}"));
        assert_eq!(response.header("Allow"), Some(allow), "{what}: {response}");
        expect_fault(response, 405, "not allowed", &what);
        assert_eq!(api.vm_config(), baseline, "{what} changed the config");
    }
    let firecracker_only: [(&str, &str, &str); 7] = [
        (
            "PUT",
            "/balloon",
            r#"{"amount_mib": 16, "deflate_on_oom": false}"#,
        ),
        ("GET", "/balloon/statistics", ""),
        ("PUT", "/mmds", r#"{"latest": {}}"#),
        ("PUT", "/mmds/config", r#"{"network_interfaces": ["eth0"]}"#),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"}"#,
        ),
        ("PUT", "/cpu-config", "{}"),
        ("PUT", "/serial", r#"{"serial_out_path": "/tmp/s"}"#),
    ];
    for (method, path, body) in firecracker_only {
        let body = (!body.is_empty()).then_some(body);
        expect_fault(
            api.request(method, path, body),
            400,
            "is not supported by Tessera yet",
            &format!("{method} {path}"),
        );
        assert_eq!(
            api.vm_config(),
            baseline,
            "{method} {path} changed the config"
        );
    }
    // A trailing slash and a query string do not change the route.
    let machine = expect(api.get("/machine-config/"), 200, "trailing slash").json();
    assert_eq!(machine["vcpu_count"], 1, "{machine}");
    expect(api.get("/machine-config?verbose=1"), 200, "query string");

    // Every answer came on one kept-alive connection, and nothing changed.
    assert_eq!(api.vm_config(), baseline);
}

#[test]
fn http_limits_framing_and_connection_handling() {
    let (_dir, mut vmm, mut api) = preboot_vmm("http");

    // A body exactly at the limit is read and applied.
    let json_body = r#"{"vcpu_count": 3, "mem_size_mib": 96}"#;
    let padded = format!("{json_body:<51200}");
    assert_eq!(padded.len(), 51_200);
    expect(
        api.put("/machine-config", &padded),
        204,
        "a body of 51200 bytes",
    );
    let baseline = api.vm_config();
    assert_eq!(baseline["machine-config"]["vcpu_count"], 3, "{baseline}");

    // One byte more is refused from Content-Length alone, and the connection closed.
    for length in [51_201, 60_000] {
        let mut big = vmm.client();
        big.send_raw(
            format!(
                "PUT /machine-config HTTP/1.1\r\nContent-Type: application/json\r\n\
                 Content-Length: {length}\r\n\r\n{json_body}"
            )
            .as_bytes(),
        );
        let response = big.read_response();
        assert_eq!(response.header("Connection"), Some("close"), "{response}");
        expect_fault(response, 413, &length.to_string(), "oversized body");
        big.expect_closed();
        assert_eq!(
            api.vm_config(),
            baseline,
            "an oversized request changed the config"
        );
    }

    // Transfer-Encoding: refused (the server chose 501), connection closed.
    let mut chunked = vmm.client();
    chunked.send_raw(
        format!(
            "PUT /machine-config HTTP/1.1\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{json_body}\r\n0\r\n\r\n",
            json_body.len()
        )
        .as_bytes(),
    );
    let response = chunked.read_response();
    assert!((400..600).contains(&response.status), "{response}");
    expect_fault(response, 501, "Transfer-Encoding", "chunked body");
    chunked.expect_closed();
    assert_eq!(
        api.vm_config(),
        baseline,
        "a chunked request changed the config"
    );

    // HTTP/1.0 closes after one response unless it asks for keep-alive.
    let mut old = vmm.client();
    old.send_raw(b"GET /machine-config HTTP/1.0\r\n\r\n");
    let response = expect(old.read_response(), 200, "HTTP/1.0 GET");
    assert_eq!(response.header("Connection"), Some("close"), "{response}");
    assert_eq!(response.json()["vcpu_count"], 3, "{response}");
    old.expect_closed();
    let mut old_kept = vmm.client();
    for _ in 0..2 {
        old_kept.send_raw(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let response = expect(old_kept.read_response(), 200, "HTTP/1.0 keep-alive");
        assert_eq!(
            response.header("Connection"),
            Some("keep-alive"),
            "{response}"
        );
    }
    // HTTP/1.1 with Connection: close.
    let mut closing = vmm.client();
    closing.send_raw(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    let response = expect(closing.read_response(), 200, "Connection: close");
    assert_eq!(response.header("Connection"), Some("close"), "{response}");
    closing.expect_closed();

    // Pipelined requests on one connection are answered in order.
    let mut pipelined = Vec::new();
    pipelined.extend(request_bytes("GET", "/machine-config", None));
    pipelined.extend(request_bytes(
        "PATCH",
        "/machine-config",
        Some(r#"{"vcpu_count": 5}"#),
    ));
    pipelined.extend(request_bytes("GET", "/machine-config", None));
    pipelined.extend(request_bytes("GET", "/nope", None));
    pipelined.extend(request_bytes(
        "PATCH",
        "/machine-config",
        Some(r#"{"vcpu_count": 3}"#),
    ));
    api.send_raw(&pipelined);
    let first = expect(api.read_response(), 200, "pipelined 1");
    assert_eq!(first.json()["vcpu_count"], 3, "{first}");
    expect(api.read_response(), 204, "pipelined 2");
    let third = expect(api.read_response(), 200, "pipelined 3");
    assert_eq!(third.json()["vcpu_count"], 5, "{third}");
    expect_fault(api.read_response(), 404, "/nope", "pipelined 4");
    expect(api.read_response(), 204, "pipelined 5");
    assert_eq!(
        api.vm_config(),
        baseline,
        "the pipeline restored vcpu_count 3"
    );

    // Nothing is answered after a request that asked to close.
    let mut then_close = vmm.client();
    let mut bytes = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec();
    bytes.extend(request_bytes(
        "PATCH",
        "/machine-config",
        Some(r#"{"vcpu_count": 9}"#),
    ));
    then_close.send_raw(&bytes);
    expect(
        then_close.read_response(),
        200,
        "the request that asked to close",
    );
    then_close.expect_closed();
    // A malformed request after good ones: the good ones are answered, then the fault.
    let mut then_garbage = vmm.client();
    let mut bytes = request_bytes("GET", "/", None);
    bytes.extend(b"\x01\x02 garbage\r\n\r\n");
    bytes.extend(request_bytes(
        "PATCH",
        "/machine-config",
        Some(r#"{"vcpu_count": 9}"#),
    ));
    then_garbage.send_raw(&bytes);
    expect(
        then_garbage.read_response(),
        200,
        "the request before the garbage",
    );
    expect_fault(then_garbage.read_response(), 400, "malformed", "garbage");
    then_garbage.expect_closed();
    assert_eq!(
        api.vm_config(),
        baseline,
        "a request after a close or an error was applied"
    );
    // HEAD gets the headers of the answer without its body; the connection stays usable.
    let head = api.request("HEAD", "/", None);
    assert_eq!(head.status, 405, "{head}");
    assert_eq!(head.header("Allow"), Some("GET"), "{head}");
    assert_eq!(head.body, "", "{head}");
    expect(api.get("/"), 200, "GET after HEAD");

    // Malformed requests: one fault, then the connection closes.
    let malformed: [(&[u8], u16, &str); 6] = [
        (b"GET\r\n\r\n", 400, "malformed"),
        (b"GET /machine-config HTTP/2.0\r\n\r\n", 505, "HTTP/2.0"),
        (
            b"GET machine-config HTTP/1.1\r\n\r\n",
            400,
            "machine-config",
        ),
        (
            b"PUT /machine-config HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n",
            400,
            "Content-Length",
        ),
        (
            b"PUT /machine-config HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            400,
            "Content-Length",
        ),
        (
            b"PUT /machine-config HTTP/1.1\r\nExpect: something-else\r\n\r\n",
            417,
            "something-else",
        ),
    ];
    for (bytes, status, needle) in malformed {
        let what = String::from_utf8_lossy(bytes).into_owned();
        let mut bad = vmm.client();
        bad.send_raw(bytes);
        expect_fault(bad.read_response(), status, needle, &what);
        bad.expect_closed();
    }
    let mut huge_headers = vmm.client();
    let mut request = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..10 {
        request.extend(format!("X-Filler-{i}: {}\r\n", "f".repeat(1000)).as_bytes());
    }
    request.extend(b"\r\n");
    huge_headers.send_raw(&request);
    expect_fault(
        huge_headers.read_response(),
        431,
        "exceeds",
        "a header section over 8 KiB",
    );
    huge_headers.expect_closed();

    // Expect: 100-continue: the interim answer comes before the body is sent.
    let mut careful = vmm.client();
    let body = r#"{"vcpu_count": 4}"#;
    careful.send_raw(
        format!(
            "PATCH /machine-config HTTP/1.1\r\nContent-Type: application/json\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    expect(careful.read_response(), 100, "100 Continue");
    careful.send_raw(body.as_bytes());
    expect(careful.read_response(), 204, "the body after 100 Continue");
    let machine = expect(careful.get("/machine-config"), 200, "GET").json();
    assert_eq!(machine["vcpu_count"], 4, "{machine}");
    expect(
        careful.patch("/machine-config", r#"{"vcpu_count": 3}"#),
        204,
        "restore",
    );

    // Nothing a refused request sent was applied, and the first connection still works.
    assert_eq!(api.vm_config(), baseline);
    drop(vmm);
}

#[test]
fn slowloris_gets_408_while_other_connections_are_served() {
    let (_dir, mut vmm, mut api) = preboot_vmm("slow");
    let baseline = api.vm_config();
    let mut slow_head = vmm.client();
    let mut slow_body = vmm.client();
    let mut idle = vmm.client();

    let started = Instant::now();
    slow_head.send_raw(b"PUT /machine-config HTTP/1.1\r\nHost: localhost\r\n");
    slow_body.send_raw(
        b"PUT /machine-config HTTP/1.1\r\nContent-Type: application/json\r\n\
          Content-Length: 40\r\n\r\n{\"vcpu_count\": 2,",
    );
    // The header section keeps growing, a byte every 200 ms, but never ends: progress does
    // not extend the deadline, which runs from the request's first byte.
    let mut trickle = slow_head.writer();
    let trickler = thread::spawn(move || {
        let line = b"X-Slow: y\r\n";
        for byte in line.iter().cycle().take(60) {
            thread::sleep(Duration::from_millis(200));
            if std::io::Write::write_all(&mut trickle, &[*byte]).is_err() {
                return true;
            }
        }
        false
    });
    // Meanwhile other requests, spread over a second, are each answered.
    let mut served = 0;
    for _ in 0..10 {
        expect(
            api.get("/"),
            200,
            "GET / while slow clients hold connections",
        );
        served += 1;
        thread::sleep(Duration::from_millis(100));
    }
    let others_done = started.elapsed();

    let head_reply = slow_head.read_response();
    let waited = started.elapsed();
    assert_eq!(
        head_reply.header("Connection"),
        Some("close"),
        "{head_reply}"
    );
    expect_fault(
        head_reply,
        408,
        "not complete within 5000 ms",
        "trickled header section",
    );
    slow_head.expect_closed();
    assert!(
        trickler.join().expect("trickler thread"),
        "the server kept reading the trickled request after its 408"
    );
    expect_fault(
        slow_body.read_response(),
        408,
        "not complete within 5000 ms",
        "partial body",
    );
    slow_body.expect_closed();

    assert_eq!(served, 10);
    assert!(
        others_done < waited,
        "the other connection was served only after the 408 ({others_done:?} vs {waited:?})"
    );
    // The deadline runs from the request's first byte; generous upper bound for a busy host.
    assert!(
        waited >= Duration::from_millis(4900),
        "408 after {waited:?}"
    );
    assert!(waited < Duration::from_secs(9), "408 after {waited:?}");
    // A connection with no request in progress is under no request deadline.
    expect(
        idle.get("/"),
        200,
        "an idle connection after the slow ones' 408",
    );
    assert_eq!(
        api.vm_config(),
        baseline,
        "a timed-out request changed the config"
    );
    drop(vmm);
}

#[test]
fn connection_limit_answers_503_and_frees_slots() {
    let (_dir, mut vmm, mut api) = preboot_vmm("limit");
    // 64 connections at most (this one included).
    let mut held: Vec<ApiClient> = (1..64).map(|_| vmm.client()).collect();
    let mut last = held.pop().expect("63 more connections");
    expect(last.get("/"), 200, "the 64th connection");
    let mut extra = vmm.client();
    let refused = extra.read_response();
    assert_eq!(refused.header("Connection"), Some("close"), "{refused}");
    expect_fault(refused, 503, "at most 64", "the 65th connection");
    extra.expect_closed();
    // Closing one makes room (once the server has seen the close).
    drop(last);
    let deadline = Instant::now() + WAIT;
    let response = loop {
        let mut next = vmm.client();
        next.send_raw(&request_bytes("GET", "/", None));
        let response = next.read_response();
        if response.status == 200 || Instant::now() > deadline {
            break response;
        }
        thread::sleep(Duration::from_millis(20));
    };
    expect(response, 200, "a connection after one closed");
    expect(api.get("/"), 200, "the first connection");
    drop(held);
}

// ---------------------------------------------------------------------------------------
// 4. Config file
// ---------------------------------------------------------------------------------------

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, value.to_string())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

#[test]
fn config_file_boots_without_the_api() {
    if skip_without_kvm("config_file_boots_without_the_api") {
        return;
    }
    let dir = TempDir::new("cfg");
    let log = dir.join("vmm.log");
    let config = dir.join("vm.json");
    write_json(
        &config,
        &json!({
            "boot-source": {"kernel_image_path": tiny_guest("tick64"), "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
            "logger": {"log_path": log, "level": "Info"},
        }),
    );
    let mut vmm = Tessera::spawn_with(None, &["--config-file", path_str(&config), "--no-api"]);
    vmm.wait_for_ticks(3, WAIT);
    // SIGTERM presses Ctrl-Alt-Del; tick64 resets after the four scancodes.
    vmm.signal(libc::SIGTERM);
    let out = vmm.wait(EXIT_TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(key_lines(&out.stdout), CTRL_ALT_DEL_KEYS, "{out}");
    assert!(out.stdout.starts_with("tessera-test: ticking\n"), "{out}");
    let log_text = read(&log);
    assert!(log_text.contains("sent Ctrl-Alt-Del"), "{log_text}");
    assert!(log_text.contains("VM stopped"), "{log_text}");
    assert!(
        !log_text.contains("API listening"),
        "--no-api served the API:\n{log_text}"
    );
}

#[test]
fn config_file_with_api_serves_its_values() {
    if skip_without_kvm("config_file_with_api_serves_its_values") {
        return;
    }
    let dir = TempDir::new("cfgapi");
    let socket = dir.join("api.sock");
    let disk = dir.file("disk.img", MIB);
    let log = dir.join("vmm.log");
    let config = dir.join("vm.json");
    let file = json!({
        "boot-source": {"kernel_image_path": tiny_guest("tick64"), "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 48},
        "drives": [{"drive_id": "scratch", "path_on_host": disk, "is_root_device": false,
                    "is_read_only": true}],
        "entropy": {},
        "logger": {"log_path": log, "level": "Info"},
    });
    write_json(&config, &file);
    let mut vmm = Tessera::spawn_with(Some(&socket), &["--config-file", path_str(&config)]);
    let mut api = vmm.client();
    assert_eq!(api.state(), "Running");
    let served = api.vm_config();
    assert_same_config(&served["boot-source"], &file["boot-source"], "boot-source");
    assert_eq!(served["machine-config"]["vcpu_count"], 2, "{served}");
    assert_eq!(served["machine-config"]["mem_size_mib"], 48, "{served}");
    assert_eq!(served["drives"][0]["drive_id"], "scratch", "{served}");
    assert_eq!(
        served["drives"][0]["path_on_host"],
        path_str(&disk),
        "{served}"
    );
    assert_eq!(served["drives"][0]["is_read_only"], true, "{served}");
    assert_same_config(&served["logger"], &file["logger"], "logger");
    assert!(served["entropy"].is_object(), "{served}");
    assert!(served["metrics"].is_null(), "{served}");
    // The VM started from the file: pre-boot changes are refused.
    expect_fault(
        api.put(
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
        ),
        400,
        "not supported after starting",
        "PUT /machine-config with a config file",
    );
    vmm.wait_for_ticks(2, WAIT);

    expect(
        api.put("/actions", &action("SendCtrlAltDel")),
        204,
        "Ctrl-Alt-Del",
    );
    let out = vmm.wait(EXIT_TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(key_lines(&out.stdout), CTRL_ALT_DEL_KEYS, "{out}");
    assert!(!socket.exists(), "the socket file is removed on exit");
}

#[test]
fn bad_config_files_exit_1_with_one_line() {
    let dir = TempDir::new("badcfg");
    let socket = dir.join("api.sock");
    let kernel = tiny_guest("tick64");
    let boot = json!({"kernel_image_path": kernel});
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        (
            "unknown field",
            Some(json!({"boot-source": boot, "frobnicate": 1}).to_string()),
            "unknown field `frobnicate`",
        ),
        (
            "missing kernel",
            Some(json!({"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}).to_string()),
            "/nonexistent/vmlinux",
        ),
        (
            "balloon",
            Some(
                json!({"boot-source": boot, "balloon": {"amount_mib": 16, "deflate_on_oom": false}})
                    .to_string(),
            ),
            "balloon is not supported",
        ),
        (
            "vcpu count out of range",
            Some(
                json!({"boot-source": boot, "machine-config": {"vcpu_count": 0, "mem_size_mib": 32}})
                    .to_string(),
            ),
            "vCPU count 0 is out of range",
        ),
        (
            "two root drives",
            Some(
                json!({"boot-source": boot, "drives": [
                    {"drive_id": "a", "path_on_host": kernel, "is_root_device": true, "is_read_only": true},
                    {"drive_id": "b", "path_on_host": kernel, "is_root_device": true, "is_read_only": true}]})
                .to_string(),
            ),
            "more than one drive",
        ),
        ("truncated JSON", Some(r#"{"boot-source": "#.into()), "EOF"),
        ("missing file", None, "cannot read --config-file"),
    ];
    for (what, contents, needle) in cases {
        let config = dir.join(&format!("{}.json", what.replace(' ', "-")));
        if let Some(contents) = &contents {
            std::fs::write(&config, contents).expect("write the config file");
        }
        let vmm = Tessera::spawn_with(Some(&socket), &["--config-file", path_str(&config)]);
        let out = vmm.wait(EXIT_TIMEOUT);
        assert_eq!(out.code, Some(1), "{what}: {out}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: expected one line\n{out}");
        let line = lines[0];
        assert!(line.starts_with("tessera: error: "), "{what}: {line}");
        assert!(
            line.contains(&format!("--config-file {}", config.display())),
            "{what}: {line}"
        );
        if contents.is_some() {
            assert!(
                line.starts_with("tessera: error: --config-file "),
                "{what}: {line}"
            );
        }
        assert!(line.contains(needle), "{what}: {line} lacks {needle:?}");
        assert_eq!(out.stdout, "", "{what}: {out}");
        assert!(!socket.exists(), "{what}: a socket file was left behind");
    }
}

#[test]
fn no_api_without_config_file_is_a_usage_error() {
    let dir = TempDir::new("noapi");
    let socket = dir.join("api.sock");
    let out = Tessera::spawn_with(Some(&socket), &["--no-api"]).wait(EXIT_TIMEOUT);
    assert_eq!(out.code, Some(2), "{out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].starts_with("tessera: "), "{out}");
    assert!(
        lines[0].contains("--config-file"),
        "names what is missing: {out}"
    );
    assert!(!socket.exists(), "a usage error bound the socket");
}

// ---------------------------------------------------------------------------------------
// 5. The socket file
// ---------------------------------------------------------------------------------------

#[test]
fn stale_socket_file_is_replaced() {
    let dir = TempDir::new("stale");
    let socket = dir.join("api.sock");
    drop(UnixListener::bind(&socket).expect("bind a socket nobody will listen on"));
    assert!(socket.exists(), "a dropped listener leaves its file");
    let mut vmm = Tessera::spawn_api(&socket);
    let mut api = vmm.client();
    let info = expect(api.get("/"), 200, "GET / on the replaced socket").json();
    assert_eq!(info["state"], "Not started", "{info}");
    assert_eq!(vmm.exit_code(), None, "tessera keeps running");
}

#[test]
fn regular_file_at_the_socket_path_is_left_alone() {
    let dir = TempDir::new("notsock");
    let path = dir.join("api.sock");
    std::fs::write(&path, "precious\n").expect("write a regular file");
    let out = Tessera::spawn_with(Some(&path), &[]).wait(EXIT_TIMEOUT);
    assert_eq!(out.code, Some(1), "{out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].starts_with("tessera: error: "), "{out}");
    assert!(lines[0].contains("is not a unix socket"), "{out}");
    assert!(lines[0].contains(path_str(&path)), "{out}");
    assert_eq!(read(&path), "precious\n", "the file was changed");

    let missing_dir = dir.join("no-such-dir").join("api.sock");
    let out = Tessera::spawn_with(Some(&missing_dir), &[]).wait(EXIT_TIMEOUT);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains(path_str(&missing_dir)), "{out}");
}

#[test]
fn second_tessera_on_a_live_socket_is_refused() {
    let dir = TempDir::new("live");
    let socket = dir.join("api.sock");
    let mut first = Tessera::spawn_api(&socket);
    let mut api = first.client();
    expect(
        api.patch("/machine-config", r#"{"vcpu_count": 7}"#),
        204,
        "PATCH",
    );

    let out = Tessera::spawn_with(Some(&socket), &[]).wait(EXIT_TIMEOUT);
    assert_eq!(out.code, Some(1), "{out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].contains("in use"), "{out}");
    assert!(lines[0].contains(path_str(&socket)), "{out}");

    // The first one still owns the path: a new connection reaches it.
    assert!(
        socket.exists(),
        "the second tessera removed the first's socket"
    );
    let mut again = first.client();
    let machine = expect(again.get("/machine-config"), 200, "GET on the first").json();
    assert_eq!(machine["vcpu_count"], 7, "{machine}");
    expect(api.get("/"), 200, "the old connection too");
}

// ---------------------------------------------------------------------------------------
// A failed start; signals and refused config files
// ---------------------------------------------------------------------------------------

#[test]
fn failed_start_changes_nothing_and_can_be_retried() {
    if skip_without_kvm("failed_start_changes_nothing_and_can_be_retried") {
        return;
    }
    let dir = TempDir::new("retry");
    let socket = dir.join("api.sock");
    let disk = dir.file("disk.img", MIB);
    let uds = dir.join("v.sock");
    let mut vmm = Tessera::spawn_api(&socket);
    let mut api = vmm.client();
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 32}"#;
    expect(api.put("/machine-config", machine), 204, "machine-config");
    let boot = boot_source(&tiny_guest("tick64"));
    expect(api.put("/boot-source", &boot), 204, "boot-source");
    let drive = json!({"drive_id": "d", "path_on_host": disk, "is_root_device": false});
    expect(
        api.put("/drives/d", &drive.to_string()),
        204,
        "PUT /drives/d",
    );
    let vsock = json!({"guest_cid": 3, "uds_path": uds});
    expect(api.put("/vsock", &vsock.to_string()), 204, "PUT /vsock");
    let config = api.vm_config();

    // The drive's file disappears between its PUT and the start.
    std::fs::remove_file(&disk).expect("remove the disk");
    expect_fault(
        api.put("/actions", &action("InstanceStart")),
        400,
        path_str(&disk),
        "InstanceStart with a missing disk",
    );
    assert_eq!(api.state(), "Not started");
    assert_eq!(api.vm_config(), config);
    // Something else is at the vsock path: not ours to delete.
    dir.file("disk.img", MIB);
    std::fs::write(&uds, "not ours\n").expect("write at the vsock path");
    expect_fault(
        api.put("/actions", &action("InstanceStart")),
        400,
        path_str(&uds),
        "InstanceStart with the vsock path taken",
    );
    assert_eq!(
        read(&uds),
        "not ours\n",
        "the file at the vsock path was changed"
    );
    assert_eq!(api.state(), "Not started");
    assert_eq!(vmm.ticks(), 0, "a failed start ran the guest");

    std::fs::remove_file(&uds).expect("free the vsock path");
    expect(
        api.put("/actions", &action("InstanceStart")),
        204,
        "the retried start",
    );
    assert_eq!(api.state(), "Running");
    vmm.wait_for_ticks(2, WAIT);
    assert!(uds.exists(), "the vsock socket exists while the VM runs");
    expect(
        api.put("/actions", &action("SendCtrlAltDel")),
        204,
        "Ctrl-Alt-Del",
    );
    let out = vmm.wait(EXIT_TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        !uds.exists(),
        "the vsock socket is removed when the VM ends"
    );
    assert!(
        !socket.exists(),
        "the API socket is removed when the VM ends"
    );
}

/// Before InstanceStart too, SIGTERM and SIGINT end the process cleanly: 128+N, and the
/// socket file is removed.
#[test]
fn signals_before_start_exit_128_plus_n_and_remove_the_socket() {
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let dir = TempDir::new("sig");
        let socket = dir.join("api.sock");
        let mut vmm = Tessera::spawn_api(&socket);
        expect(vmm.client().get("/"), 200, "GET /");
        vmm.signal(signal);
        let out = vmm.wait(EXIT_TIMEOUT);
        assert_eq!(out.code, Some(code), "signal {signal}: {out}");
        assert!(
            !socket.exists(),
            "signal {signal}: socket left behind\n{out}"
        );
    }
}

/// A refused config file changes nothing: neither its metrics file nor its log file is
/// created when the other one cannot be opened.
#[test]
fn refused_config_file_creates_no_log_or_metrics_file() {
    let dir = TempDir::new("cfgfiles");
    let metrics = dir.join("metrics.json");
    let log = dir.join("vmm.log");
    let config = dir.join("vm.json");
    let kernel = tiny_guest("tick64");
    let cases = [
        (
            json!({"boot-source": {"kernel_image_path": kernel},
                   "metrics": {"metrics_path": metrics},
                   "logger": {"log_path": "/nonexistent/dir/vmm.log"}}),
            "/nonexistent/dir/vmm.log",
        ),
        (
            json!({"boot-source": {"kernel_image_path": kernel},
                   "metrics": {"metrics_path": "/nonexistent/dir/m.json"},
                   "logger": {"log_path": log}}),
            "/nonexistent/dir/m.json",
        ),
        (
            json!({"boot-source": {"kernel_image_path": kernel},
                   "metrics": {"metrics_path": metrics},
                   "logger": {"log_path": log, "level": "Loud"}}),
            "Loud",
        ),
    ];
    for (contents, needle) in cases {
        write_json(&config, &contents);
        let args = ["--config-file", path_str(&config), "--no-api"];
        let out = Tessera::spawn_with(None, &args).wait(EXIT_TIMEOUT);
        assert_eq!(out.code, Some(1), "{contents}: {out}");
        assert!(out.stderr.contains(needle), "{contents}: {out}");
        assert!(
            !metrics.exists(),
            "{contents} created {}",
            metrics.display()
        );
        assert!(!log.exists(), "{contents} created {}", log.display());
    }
}
