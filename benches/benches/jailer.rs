//! `tessera-jailer --daemonize` -> the jailed VMM's API socket accepting, for
//! docs/SPECIFICATION.md (needs root; prints SKIPPED otherwise).
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p benches --bench jailer`
//! (`JAILER_RUNS=N`, default 20). Each run makes a fresh jail (copying the release `tessera`),
//! with and without a cgroup v1 memory limit, then kills the VMM and removes the jail.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benches::median;
use tests::tessera_bin;

fn runs() -> usize {
    std::env::var("JAILER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1)]
}

/// One jailed launch; returns spawn -> socket accepting in ms.
fn launch(jailer: &Path, tessera: &Path, base: &Path, id: &str, cgroup: Option<&str>) -> f64 {
    let jail = base.join("tessera").join(id);
    let socket = jail.join("root/api.sock");
    let mut command = Command::new(jailer);
    command
        .args(["--id", id, "--uid", "123", "--gid", "456", "--daemonize"])
        .arg("--exec-file")
        .arg(tessera)
        .arg("--chroot-base-dir")
        .arg(base)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(setting) = cgroup {
        command.args(["--cgroup-version", "1", "--cgroup", setting]);
    }
    command.args(["--", "--api-sock", "/api.sock"]);
    let start = Instant::now();
    let child = command.spawn().expect("spawn tessera-jailer");
    let deadline = start + Duration::from_secs(5);
    let elapsed = loop {
        if UnixStream::connect(&socket).is_ok() {
            break start.elapsed().as_secs_f64() * 1e3;
        }
        assert!(
            Instant::now() < deadline,
            "no API socket at {}",
            socket.display()
        );
        // Give the CPU away between tries: on a 2-CPU host a poller that keeps it delays the
        // jailer (and the kernel workers it waits on) by 3-7 ms, more than most of its steps.
        std::thread::yield_now();
    };
    let out = child.wait_with_output().expect("wait for the jailer");
    assert!(
        out.status.success(),
        "tessera-jailer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = std::fs::read_to_string(jail.join("root/tessera.pid")).expect("pid file");
    let pid: i32 = pid.trim().parse().expect("a pid");
    // SAFETY: kill(2) on the pid the jailer reported; the result does not matter.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    while Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = std::fs::remove_dir_all(&jail);
    if cgroup.is_some() {
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/memory/tessera/{id}"));
    }
    elapsed
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED jailer benchmark: needs root");
        return;
    }
    let tessera = tessera_bin();
    let jailer = tessera.with_file_name("tessera-jailer");
    assert!(
        jailer.exists(),
        "{} is missing: build the workspace's binaries",
        jailer.display()
    );
    let base: PathBuf =
        std::env::temp_dir().join(format!("tessera-bench-jailer-{}", std::process::id()));
    let has_v1_memory = Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists();
    let n = runs();
    let (mut plain, mut limited) = (Vec::new(), Vec::new());
    for run in 0..n {
        plain.push(launch(
            &jailer,
            &tessera,
            &base,
            &format!("plain-{run}"),
            None,
        ));
        if has_v1_memory {
            let setting = Some("memory.limit_in_bytes=536870912");
            limited.push(launch(
                &jailer,
                &tessera,
                &base,
                &format!("mem-{run}"),
                setting,
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir("/sys/fs/cgroup/memory/tessera");

    println!("| figure | median | p90 | runs |");
    println!("|---|---|---|---|");
    let row = |name: &str, v: &mut Vec<f64>| {
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {} |",
            median(v),
            percentile(v, 0.9),
            v.len()
        );
    };
    row(
        "tessera-jailer --daemonize -> API socket accepting",
        &mut plain,
    );
    if has_v1_memory {
        row("the same with a cgroup v1 memory limit", &mut limited);
    } else {
        println!("SKIPPED the cgroup variant: no cgroup v1 memory hierarchy");
    }
}
