//! Start-up figures for docs/SPECIFICATION.md (1 vCPU, 128 MiB, tiny guest):
//!
//! - spawn -> first guest instruction, for `tessera run` and for the bare-KVM floor program;
//! - guest reset -> process exit (what a caller's `wait` sees; the next run starts once the
//!   VM's teardown has finished, tessera's teardown keeper included);
//! - VMM RSS beyond guest memory.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p benches --bench startup`
//! (`STARTUP_RUNS=N` changes the number of runs; default 30). Prints medians and p90s.
//! `BENCH_BASELINE_TESSERA=PATH` also measures another tessera binary (an earlier build),
//! interleaved run by run with this one, and prints its rows and the ratios of medians.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use benches::{adopt_orphans, field_u64, median, monotonic_us, reap_children};
use tests::{kvm_unavailable, tessera_bin, tiny_guest};

fn runs() -> usize {
    std::env::var("STARTUP_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

fn p90(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * 0.9).ceil() as usize).saturating_sub(1)]
}

/// Spawns the floor program; returns spawn -> first exit in ms.
fn floor_once(floor: &Path) -> f64 {
    let start = monotonic_us();
    let out = Command::new(floor).output().expect("run kvm_floor");
    assert!(
        out.status.success(),
        "kvm_floor failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = field_u64(&stdout, "first_exit_monotonic_us=").expect("first exit time");
    (first - start) as f64 / 1e3
}

/// `tessera run` with 1 vCPU and 128 MiB, its log on a pipe.
fn spawn_tessera(tessera: &Path, guest: &Path) -> Child {
    Command::new(tessera)
        .args(["run", "--vcpus", "1", "--memory", "128", "--kernel"])
        .arg(guest)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera")
}

/// Spawns `tessera run` on the reset64 guest; returns (spawn -> first instruction,
/// reset -> process exit) in ms.
fn tessera_once(tessera: &Path, guest: &Path) -> (f64, f64) {
    let start = monotonic_us();
    let mut child = spawn_tessera(tessera, guest);
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .expect("read log");
    let status = child.wait().expect("wait for tessera");
    let exited = monotonic_us();
    assert!(status.success(), "tessera failed: {log}");
    let stamp = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .and_then(|l| field_u64(l, "monotonic_us="))
            .unwrap_or_else(|| panic!("no {needle:?} line in\n{log}"))
    };
    let first = stamp("guest boot-done");
    let reset = stamp("requested a reset");
    ((first - start) as f64 / 1e3, (exited - reset) as f64 / 1e3)
}

/// RSS of a running `tessera` minus the resident part of its guest memory, in MiB.
fn rss_overhead_once(tessera: &Path, guest: &Path) -> f64 {
    const GUEST_KIB: u64 = 128 * 1024;
    let mut child = spawn_tessera(tessera, guest);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.contains("guest boot-done") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id())).expect("read smaps");
    let _ = child.kill();
    let _ = child.wait();

    // Sum Rss over mappings, leaving out the guest memory mapping (the one of exactly its size).
    let (mut total, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Size:"), Some(kib)) => in_guest = kib.parse::<u64>() == Ok(GUEST_KIB),
            (Some("Rss:"), Some(kib)) => {
                let kib: u64 = kib.parse().unwrap_or(0);
                total += kib;
                if in_guest {
                    guest += kib;
                }
            }
            _ => {}
        }
    }
    (total - guest) as f64 / 1024.0
}

fn main() {
    if let Some(why) = kvm_unavailable() {
        println!("SKIPPED startup benchmark: {why}");
        return;
    }
    let tessera = tessera_bin();
    let floor = tessera.with_file_name("kvm_floor");
    assert!(
        floor.exists(),
        "{} is missing: run `cargo build --release --workspace --bins`",
        floor.display()
    );
    let reset_guest = tiny_guest("reset64");
    let idle_guest = tiny_guest("idle64");
    let n = runs();
    let baseline = std::env::var_os("BENCH_BASELINE_TESSERA").map(PathBuf::from);

    // Each run starts once the previous one has freed everything, its teardown keeper too.
    adopt_orphans();
    // Interleave the programs so host noise hits them alike.
    let (mut floor_ms, mut first_ms, mut exit_ms, mut rss_mib) = (vec![], vec![], vec![], vec![]);
    let (mut base_first_ms, mut base_exit_ms, mut base_rss_mib) = (vec![], vec![], vec![]);
    for _ in 0..n {
        floor_ms.push(floor_once(&floor));
        let (first, exit) = tessera_once(&tessera, &reset_guest);
        reap_children();
        first_ms.push(first);
        exit_ms.push(exit);
        if let Some(baseline) = &baseline {
            let (first, exit) = tessera_once(baseline, &reset_guest);
            reap_children();
            base_first_ms.push(first);
            base_exit_ms.push(exit);
        }
    }
    for _ in 0..n.min(10) {
        rss_mib.push(rss_overhead_once(&tessera, &idle_guest));
        if let Some(baseline) = &baseline {
            base_rss_mib.push(rss_overhead_once(baseline, &idle_guest));
        }
    }

    let row = |name: &str, v: &mut Vec<f64>, unit: &str| {
        let p = p90(v);
        println!(
            "| {name} | {:.2} {unit} | {:.2} {unit} | {} |",
            median(v),
            p,
            v.len()
        );
    };
    println!("| figure | median | p90 | runs |");
    println!("|---|---|---|---|");
    row(
        "bare-KVM floor: spawn -> first guest exit",
        &mut floor_ms,
        "ms",
    );
    row(
        "tessera: spawn -> first guest instruction",
        &mut first_ms,
        "ms",
    );
    row("tessera: guest reset -> process exit", &mut exit_ms, "ms");
    row("tessera: VMM RSS beyond guest memory", &mut rss_mib, "MiB");
    if let Some(baseline) = &baseline {
        println!("\nbaseline: {}", baseline.display());
        row(
            "baseline: spawn -> first guest instruction",
            &mut base_first_ms,
            "ms",
        );
        row(
            "baseline: guest reset -> process exit",
            &mut base_exit_ms,
            "ms",
        );
        row(
            "baseline: VMM RSS beyond guest memory",
            &mut base_rss_mib,
            "MiB",
        );
        for (name, new, old) in [
            (
                "spawn -> first guest instruction",
                &mut first_ms,
                &mut base_first_ms,
            ),
            (
                "guest reset -> process exit",
                &mut exit_ms,
                &mut base_exit_ms,
            ),
            (
                "VMM RSS beyond guest memory",
                &mut rss_mib,
                &mut base_rss_mib,
            ),
        ] {
            println!(
                "ratio this build / baseline (medians), {name}: {:.3}",
                median(new) / median(old)
            );
        }
    }
    println!(
        "\nratio first instruction / floor (medians): {:.2}",
        median(&mut first_ms) / median(&mut floor_ms)
    );
}
