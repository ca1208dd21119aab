//! `tessera run --isolation sandbox --image busybox -- true` against `crun run` and `runc run`
//! of the same unpacked root (Debian's crun and runc), interleaved, wall time from the spawn to
//! the exit, median of SANDBOX_RUNS (default 20); then the memory of one idle sandbox: the
//! proportional set size (Pss) of the runtime's own processes while the workload sleeps (the
//! workload's own, the same busybox `sleep` everywhere, left out).
//!
//!   cargo build --release --workspace --bins && cargo bench -p benches --bench sandbox_start
//!
//! Needs root (crun and runc here run rootful, as tessera does) and crun/runc installed
//! (scripts/setup installs them); what is missing is reported as SKIPPED.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benches::median;
use tests::images::{busybox_docker_save, busybox_layer, busybox_unavailable, BUSYBOX_IMAGE};

fn tessera() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target/x86_64-unknown-linux-gnu/release/tessera")
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An OCI bundle of the busybox layer running `args`, from the runtime's own `spec` template.
fn bundle(dir: &Path, args: &[&str]) -> PathBuf {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    tar::Archive::new(busybox_layer().as_slice())
        .unpack(&rootfs)
        .unwrap();
    let spec = Command::new("crun")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .unwrap();
    assert!(spec.success(), "crun spec");
    let path = bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(args);
    config["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    std::fs::write(&path, config.to_string()).unwrap();
    bundle
}

fn time(command: &mut Command) -> f64 {
    let started = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    assert!(status.success(), "{command:?}: {status}");
    elapsed
}

/// Pss in KiB of `pid`.
fn pss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The descendants of `pid` (children first), from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
            found.extend(descendants(child));
        }
    }
    found
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The runtime's own Pss while `command` runs `sleep`: every process of its tree but the
/// sleeping workload.
fn idle_pss_kib(command: &mut Command) -> u64 {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let mut total = pss_kib(child.id());
    for pid in descendants(child.id()) {
        if comm(pid) != "sleep" && comm(pid) != "busybox" {
            total += pss_kib(pid);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    total
}

/// crun refuses a hybrid cgroup host (v1 controllers with a v2 hierarchy beside them): this
/// process and every runtime it starts see the host without the v2 hierarchy (a private mount
/// namespace), so all three use the same v1 controllers.
fn hide_hybrid_cgroup2() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let hybrid = mounts.lines().any(|l| l.contains(" cgroup "))
        && mounts.contains(" /sys/fs/cgroup/unified cgroup2 ");
    if !hybrid {
        return;
    }
    // SAFETY: plain syscalls on constant C strings, while this process has one thread.
    let hidden = unsafe {
        libc::unshare(libc::CLONE_NEWNS) == 0
            && libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
            && libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) == 0
    };
    println!(
        "hybrid cgroup host: the v2 hierarchy {} for this run (crun refuses hybrid hosts)",
        if hidden {
            "is hidden"
        } else {
            "could not be hidden"
        }
    );
}

fn main() {
    let runs: usize = std::env::var("SANDBOX_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    if let Some(why) = busybox_unavailable() {
        println!("SKIPPED sandbox_start: {why}");
        return;
    }
    // SAFETY: getuid has no arguments and cannot fail.
    if unsafe { libc::getuid() } != 0 {
        println!("SKIPPED sandbox_start: needs root (crun and runc run rootful here)");
        return;
    }
    hide_hybrid_cgroup2();
    let tessera = tessera();
    if !tessera.exists() {
        println!(
            "SKIPPED sandbox_start: no release tessera (cargo build --release --workspace --bins)"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("tessera-sandbox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("cache");
    let save = busybox_docker_save(&dir);
    let imported = Command::new(&tessera)
        .args(["image", "import"])
        .arg(&save)
        .env("TESSERA_CACHE", &cache)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(imported.success(), "tessera image import");
    let tessera_run = |args: &[&str]| {
        let mut command = Command::new(&tessera);
        command
            .args([
                "run",
                "--isolation",
                "sandbox",
                "--image",
                BUSYBOX_IMAGE,
                "--",
            ])
            .args(args)
            .env("TESSERA_CACHE", &cache);
        command
    };
    let runtimes: Vec<&str> = ["crun", "runc"].into_iter().filter(|r| have(r)).collect();
    for missing in ["crun", "runc"].iter().filter(|r| !runtimes.contains(r)) {
        println!("SKIPPED the {missing} reference: not installed (apt-get install {missing})");
    }
    let true_bundle = bundle(&dir.join("true"), &["true"]);
    let sleep_bundle = bundle(&dir.join("sleep"), &["/bin/busybox", "sleep", "30"]);
    let oci_run = |runtime: &str, bundle: &Path, id: &str| {
        let mut command = Command::new(runtime);
        command.args(["run", "--bundle"]).arg(bundle).arg(id);
        command
    };
    // Warm the caches (and the store's sandbox tree) once.
    time(&mut tessera_run(&["true"]));
    for runtime in &runtimes {
        time(&mut oci_run(runtime, &true_bundle, "tessera-bench-warm"));
    }
    let mut times: Vec<(String, Vec<f64>)> =
        vec![("tessera run --isolation sandbox".into(), vec![])];
    times.extend(runtimes.iter().map(|r| (format!("{r} run"), vec![])));
    for run in 0..runs {
        times[0].1.push(time(&mut tessera_run(&["true"])));
        for (i, runtime) in runtimes.iter().enumerate() {
            let id = format!("tessera-bench-{run}");
            times[i + 1]
                .1
                .push(time(&mut oci_run(runtime, &true_bundle, &id)));
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "sandbox start, `-- true`, median of {runs} interleaved runs (load {}):",
        load.trim()
    );
    for (name, values) in &mut times {
        let min = values.iter().cloned().fold(f64::MAX, f64::min);
        println!(
            "  {name:<34} median {:>7.2} ms  min {:>7.2} ms",
            median(values),
            min
        );
    }
    println!("memory of one idle sandbox (the runtime's processes, Pss):");
    let kib = idle_pss_kib(&mut tessera_run(&["/bin/busybox", "sleep", "30"]));
    println!("  {:<34} {kib} KiB", "tessera run --isolation sandbox");
    for runtime in &runtimes {
        let kib = idle_pss_kib(&mut oci_run(runtime, &sleep_bundle, "tessera-bench-idle"));
        let _ = Command::new(runtime)
            .args(["delete", "-f", "tessera-bench-idle"])
            .stderr(Stdio::null())
            .status();
        println!("  {:<34} {kib} KiB", format!("{runtime} run"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
