//! A hello-world Wasm module in a microVM, in the nested test host (issue 16's "in-microVM
//! run's total time"): `tessera run --isolation microvm hello.wasm` against `tessera run --
//! true` (the same microVM running a program, from the plain initramfs) and against
//! `tessera run --isolation sandbox hello.wasm` in the same host, interleaved.
//!
//!   cargo build --release --workspace --bins && cargo bench -p benches --bench wasm_microvm
//!   WASM_MICROVM_RUNS=10 (default)
//!
//! Each run is timed inside the host by `boot-time`, from the spawn: to tessera's `microVM
//! started` log line (the vCPUs run: before it is the VMM's part, and for the module the
//! host-side compile lookup and its disk), to the module's output, and to `VM stopped` (the
//! whole run; the sandbox has no VM, so its total is to its output, its last act). Timings in
//! the TCG-emulated host are not real-hardware timings: only the ratios carry over.

use std::time::Duration;

use benches::median;
use tests::test_host::{HostFiles, HostOptions, TestHost};
use tests::wasm_guest::{host_files, HOST_HELLO};

const BOOT_TIME: &str = "/opt/tessera/bin/boot-time";
const STARTED: &str = "microVM started";
const OUTPUT: &str = "hello from wasm";
const STOPPED: &str = "VM stopped: guest command exited with status 0";

/// The `mark_ms=` figures of `boot-time --mark ...`, in order.
fn marks(output: &str) -> Vec<Option<f64>> {
    output
        .split("mark_ms=")
        .skip(1)
        .map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

fn main() {
    let runs: usize = std::env::var("WASM_MICROVM_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let bin_dir = tests::bin_dir();
    let dir = std::env::temp_dir().join(format!("tessera-bench-wasm-{}", std::process::id()));
    let found =
        HostFiles::find(&bin_dir).and_then(|files| Ok((files, host_files(&bin_dir, &dir)?)));
    let (files, mut extra_files) = match found {
        Ok(found) => found,
        Err(why) => {
            println!("SKIPPED wasm_microvm: {why}");
            return;
        }
    };
    extra_files.push((bin_dir.join("boot-time"), BOOT_TIME.into()));
    let options = HostOptions {
        // The host the other nested figures were measured on.
        cpus: 2,
        extra_files,
        ..HostOptions::default()
    };
    let mut host = TestHost::boot(&files, &options).unwrap_or_else(|e| panic!("test host: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let vm = |marks: &str, run: &str| {
        format!("{BOOT_TIME} {marks} '{STOPPED}' -- tessera --log-level info {run}")
    };
    let commands = [
        (
            "tessera run -- true (plain initramfs)",
            vm(&format!("--mark '{STARTED}'"), "run -- true"),
        ),
        (
            "tessera run --isolation microvm hello.wasm",
            vm(
                &format!("--mark '{STARTED}' --mark '{OUTPUT}'"),
                &format!("run --isolation microvm {HOST_HELLO}"),
            ),
        ),
        (
            "tessera run --isolation sandbox hello.wasm",
            format!("{BOOT_TIME} '{OUTPUT}' -- tessera run --isolation sandbox {HOST_HELLO}"),
        ),
    ];
    // The host's cache gets the module's compiled forms before the timed runs.
    for (_, command) in &commands {
        let out = host
            .run(command, Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out.output.contains("boot_ms="), "warm-up: {out}");
    }
    // Per command: to the vCPUs, to the output, to the end.
    let mut times: Vec<[Vec<f64>; 3]> = vec![Default::default(); commands.len()];
    for run in 0..runs {
        for i in (0..commands.len()).map(|k| (k + run) % commands.len()) {
            let (name, command) = &commands[i];
            let out = host
                .run(command, Duration::from_secs(300))
                .unwrap_or_else(|e| panic!("{e}"));
            let total = benches::boot_ms(&out.output);
            let marks = marks(&out.output);
            let (started, output) = match marks.as_slice() {
                [started, output] => (*started, *output),
                [started] => (*started, None),
                _ => (None, total),
            };
            let Some(total) = total else {
                panic!("no time from `{command}`\n{out}");
            };
            for (k, value) in [started, output, Some(total)].into_iter().enumerate() {
                if let Some(value) = value {
                    times[i][k].push(value);
                }
            }
            eprintln!("run {run}: {name} {total:.1} ms");
        }
    }
    println!("spawn -> ..., nested test host, median of {runs} (ms):");
    println!(
        "  {:<46} {:>10} {:>10} {:>10}",
        "", "vCPUs run", "output", "exit"
    );
    let cell = |values: &mut Vec<f64>| match values.is_empty() {
        true => format!("{:>10}", "-"),
        false => format!("{:10.1}", median(values)),
    };
    let mut totals = Vec::new();
    for (i, (name, _)) in commands.iter().enumerate() {
        let [started, output, total] = &mut times[i];
        totals.push(median(total));
        println!(
            "  {name:<46} {} {} {}",
            cell(started),
            cell(output),
            cell(total)
        );
    }
    println!(
        "  module in a microVM / program in a microVM     {:10.2}",
        totals[1] / totals[0]
    );
    println!(
        "  module in a microVM / module in the sandbox    {:10.2}",
        totals[1] / totals[2]
    );
}
