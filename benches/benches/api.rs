//! REST API figures for docs/SPECIFICATION.md:
//!
//! - spawn `tessera --api-sock` -> the API socket accepts a connection, and the same for
//!   `socket_floor` (a program that only binds and listens: the process-creation floor);
//! - `PUT /machine-config` round trip on one kept-alive connection (2000 requests), with the
//!   seccomp filters and with `--no-seccomp`;
//! - `PUT /actions InstanceStart` sent -> the tiny guest's first instruction (tiny guest on
//!   /dev/kvm; the KVM VM was prebuilt when the machine config arrived), with and without the
//!   seccomp filters, interleaved.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p benches --bench api`
//! (`API_SPAWN_RUNS=N`, default 100; `API_PUT_REQUESTS=N`, default 2000; `API_START_RUNS=N`,
//! default 30). Prints medians, p90s and p99s. `BENCH_BASELINE_TESSERA=PATH` also measures
//! another tessera binary (an earlier build), interleaved run by run (the round trips in
//! alternating halves), and prints its rows and the ratios of medians.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use benches::http::{connect, request};
use benches::{field_u64, median, monotonic_us};
use tests::{kvm_unavailable, tessera_bin, tiny_guest};

/// The comparison runs: everything as usual but without the seccomp filters.
const NO_SECCOMP: &str = "--no-seccomp";

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1)]
}

fn socket_path(tag: &str, run: usize) -> PathBuf {
    std::env::temp_dir().join(format!(
        "tessera-bench-api-{}-{tag}-{run}.sock",
        std::process::id()
    ))
}

fn spawn(tessera: &Path, socket: &Path, stderr: Stdio, args: &[&str]) -> Child {
    let _ = std::fs::remove_file(socket);
    let mut command = Command::new(tessera);
    command.args(args);
    if tessera.ends_with("tessera") {
        command.arg("--api-sock");
    }
    command
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn tessera")
}

fn stop(mut child: Child, socket: &Path) {
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(socket);
}

/// Spawn `program` (`tessera` or `socket_floor`) -> connect accepted, in ms.
fn spawn_to_accept(program: &Path, run: usize) -> f64 {
    let socket = socket_path("spawn", run);
    let start = Instant::now();
    let child = spawn(program, &socket, Stdio::null(), &[]);
    let stream = connect(&socket);
    let elapsed = start.elapsed().as_secs_f64() * 1e3;
    drop(stream);
    stop(child, &socket);
    elapsed
}

/// Round trips of `method path body` on one kept-alive connection, in µs.
fn round_trips(
    tessera: &Path,
    args: &[&str],
    requests: usize,
    (method, path, body): (&str, &str, &str),
) -> Vec<f64> {
    let socket = socket_path("requests", 0);
    let child = spawn(tessera, &socket, Stdio::null(), args);
    let mut stream = connect(&socket);
    let expected = if method == "GET" { 200 } else { 204 };
    // Warm up: the first PUT /machine-config also starts the VM prebuild on its helper thread.
    for _ in 0..200 {
        assert_eq!(request(&mut stream, method, path, body), expected);
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut us = Vec::with_capacity(requests);
    for _ in 0..requests {
        let start = Instant::now();
        let status = request(&mut stream, method, path, body);
        us.push(start.elapsed().as_secs_f64() * 1e6);
        assert_eq!(status, expected);
    }
    stop(child, &socket);
    us
}

/// `InstanceStart` sent -> the guest's boot-done write, in ms.
fn start_to_first_instruction(tessera: &Path, args: &[&str], guest: &Path, run: usize) -> f64 {
    let socket = socket_path("start", run);
    let mut child = spawn(tessera, &socket, Stdio::piped(), args);
    let mut stream = connect(&socket);
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, guest.display());
    assert_eq!(
        request(
            &mut stream,
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#
        ),
        204
    );
    assert_eq!(request(&mut stream, "PUT", "/boot-source", &boot), 204);
    // What a client does between configuring and starting (drives, network...).
    std::thread::sleep(Duration::from_millis(50));
    let sent = monotonic_us();
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(request(&mut stream, "PUT", "/actions", start), 204);
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let first = loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("guest boot-done") => {
                break field_u64(&line, "monotonic_us=").expect("monotonic_us in the line")
            }
            Some(Ok(_)) => {}
            _ => panic!("tessera ended before the guest started"),
        }
    };
    stop(child, &socket);
    (first.saturating_sub(sent)) as f64 / 1e3
}

fn main() {
    let tessera = tessera_bin();
    let spawn_runs = env_count("API_SPAWN_RUNS", 100);
    let put_requests = env_count("API_PUT_REQUESTS", 2000);
    let start_runs = env_count("API_START_RUNS", 30);

    let floor = tessera.with_file_name("socket_floor");
    assert!(
        floor.exists(),
        "{} is missing: run `cargo build --release --workspace --bins`",
        floor.display()
    );
    // Interleaved so that host noise hits both alike.
    let (mut accept_ms, mut floor_ms): (Vec<f64>, Vec<f64>) = (0..spawn_runs)
        .map(|run| (spawn_to_accept(&tessera, run), spawn_to_accept(&floor, run)))
        .unzip();
    let machine = r#"{"vcpu_count": 1, "mem_size_mib": 128}"#;
    let put = ("PUT", "/machine-config", machine);
    let mut put_us = round_trips(&tessera, &[], put_requests, put);
    let mut put_unfiltered_us = round_trips(&tessera, &[NO_SECCOMP], put_requests, put);
    // The floor: a request the API thread answers without the VMM thread.
    let version = ("GET", "/version", "");
    let mut version_us = round_trips(&tessera, &[], put_requests, version);

    println!("| figure | median | p90 | p99 | samples |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, v: &mut Vec<f64>, unit: &str| {
        let (p90, p99) = (percentile(v, 0.90), percentile(v, 0.99));
        println!(
            "| {name} | {:.3} {unit} | {p90:.3} {unit} | {p99:.3} {unit} | {} |",
            median(v),
            v.len()
        );
    };
    row("spawn -> API socket accepting", &mut accept_ms, "ms");
    row(
        "floor: spawn -> socket_floor accepting",
        &mut floor_ms,
        "ms",
    );
    row(
        "PUT /machine-config, kept-alive connection",
        &mut put_us,
        "us",
    );
    row("the same with --no-seccomp", &mut put_unfiltered_us, "us");
    row(
        "GET /version (API thread only), kept-alive connection",
        &mut version_us,
        "us",
    );
    if let Some(baseline) = std::env::var_os("BENCH_BASELINE_TESSERA").map(PathBuf::from) {
        compare_with_baseline(&tessera, &baseline, spawn_runs, put_requests, start_runs);
    }
    match kvm_unavailable() {
        Some(why) => println!("SKIPPED InstanceStart -> first guest instruction: {why}"),
        None => {
            let guest = tiny_guest("reset64");
            // Interleaved so that host noise hits both alike.
            let (mut start_ms, mut unfiltered_ms): (Vec<f64>, Vec<f64>) = (0..start_runs)
                .map(|run| {
                    (
                        start_to_first_instruction(&tessera, &[], &guest, run),
                        start_to_first_instruction(&tessera, &[NO_SECCOMP], &guest, run),
                    )
                })
                .unzip();
            row(
                "PUT /actions InstanceStart -> first guest instruction",
                &mut start_ms,
                "ms",
            );
            row("the same with --no-seccomp", &mut unfiltered_ms, "ms");
        }
    }
}

/// This build and `baseline` side by side: spawn -> accepting, the kept-alive PUT, and
/// InstanceStart -> first instruction, interleaved so that host noise hits both alike.
fn compare_with_baseline(
    tessera: &Path,
    baseline: &Path,
    spawn_runs: usize,
    put_requests: usize,
    start_runs: usize,
) {
    let (mut accept, mut base_accept): (Vec<f64>, Vec<f64>) = (0..spawn_runs)
        .map(|run| {
            (
                spawn_to_accept(tessera, run),
                spawn_to_accept(baseline, run),
            )
        })
        .unzip();
    let put = (
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
    let half = put_requests.div_ceil(2);
    let (mut puts, mut base_puts) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        puts.extend(round_trips(tessera, &[], half, put));
        base_puts.extend(round_trips(baseline, &[], half, put));
    }
    let mut rows = vec![
        (
            "spawn -> API socket accepting",
            "ms",
            accept.as_mut_slice(),
            base_accept.as_mut_slice(),
        ),
        (
            "PUT /machine-config, kept-alive",
            "us",
            puts.as_mut_slice(),
            base_puts.as_mut_slice(),
        ),
    ];
    let (mut start, mut base_start);
    if kvm_unavailable().is_none() {
        let guest = tiny_guest("reset64");
        (start, base_start) = (0..start_runs)
            .map(|run| {
                (
                    start_to_first_instruction(tessera, &[], &guest, run),
                    start_to_first_instruction(baseline, &[], &guest, run),
                )
            })
            .unzip::<f64, f64, Vec<f64>, Vec<f64>>();
        rows.push((
            "InstanceStart -> first guest instruction",
            "ms",
            start.as_mut_slice(),
            base_start.as_mut_slice(),
        ));
    }
    println!("\nbaseline: {}", baseline.display());
    println!("| figure | this build (median) | baseline (median) | ratio | samples |");
    println!("|---|---|---|---|---|");
    for (name, unit, new, old) in rows {
        let (new_m, old_m) = (median(new), median(old));
        println!(
            "| {name} | {new_m:.3} {unit} | {old_m:.3} {unit} | {:.3} | {} |",
            new_m / old_m,
            new.len()
        );
    }
}
