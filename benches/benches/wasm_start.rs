//! Cold start of a hello-world WASI module (wasm/tests/guest/src/bin/hello.rs): `tessera run app.wasm` (the
//! host sandbox, the module compiled and cached by an earlier run) beside `tessera-wasm` without
//! the sandbox, `wasmtime run` of the same .wasm, and `wasmtime run` of its `wasmtime compile`d
//! .cwasm; spawn -> exit, median of WASM_START_RUNS (20) interleaved rounds, each round starting
//! one command later. Then warm: instantiations per second of one module with the pooling
//! allocator and copy-on-write memory (wasm::warm).
//!
//!   cargo build --release --workspace --bins && cargo bench -p benches --bench wasm_start
//!   wasmtime: $WASMTIME, else $TESSERA_CACHE/wasmtime-cli-48.0.8/bin/wasmtime, else PATH's;
//!   install it with
//!   cargo install wasmtime-cli --version 48.0.8 --locked --root ~/.cache/tessera/wasmtime-cli-48.0.8

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use benches::median;

fn wasmtime() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WASMTIME") {
        return Some(PathBuf::from(path));
    }
    let cache = std::env::var_os("TESSERA_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tessera")))?;
    let cached = cache.join("wasmtime-cli-48.0.8/bin/wasmtime");
    if cached.is_file() {
        return Some(cached);
    }
    let found = Command::new("wasmtime").arg("--version").output().ok()?;
    found.status.success().then(|| PathBuf::from("wasmtime"))
}

fn time(program: &Path, args: &[&str]) -> f64 {
    let start = Instant::now();
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout) == "hello from wasm\n",
        "{} {args:?}: {out:?}",
        program.display()
    );
    ms
}

fn main() {
    let runs: usize = std::env::var("WASM_START_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let guest = match tests::wasm_guest::hello() {
        Ok(guest) => guest,
        Err(why) => {
            println!("SKIPPED wasm_start: {why}");
            return;
        }
    };
    let bin = tests::bin_dir();
    let (tessera, runner) = (bin.join("tessera"), bin.join("tessera-wasm"));
    if !runner.is_file() {
        println!(
            "SKIPPED wasm_start: no {} (cargo build --release --workspace --bins)",
            runner.display()
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("tessera-bench-wasm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cache = dir.join("cache");
    let cache_arg = cache.to_str().unwrap().to_string();
    let guest_arg = guest.to_str().unwrap().to_string();
    let wasmtime = wasmtime();
    // tessera's cache is $TESSERA_CACHE/wasm; fill it (and the runner's) once.
    std::env::set_var("TESSERA_CACHE", &dir);
    let tessera_args = vec![
        "run".to_string(),
        "--isolation".into(),
        "sandbox".into(),
        guest_arg.clone(),
    ];
    let runner_args = vec!["--cache".to_string(), cache_arg, guest_arg.clone()];
    let mut commands: Vec<(&str, PathBuf, Vec<String>)> = vec![
        (
            "tessera run app.wasm (sandbox)",
            tessera.clone(),
            tessera_args,
        ),
        (
            "tessera-wasm app.wasm (no sandbox)",
            runner.clone(),
            runner_args,
        ),
    ];
    match &wasmtime {
        Some(wasmtime) => {
            let cwasm = dir.join("hello.cwasm");
            let compiled = Command::new(wasmtime)
                .arg("compile")
                .arg(guest)
                .arg("-o")
                .arg(&cwasm)
                .status()
                .expect("run wasmtime compile");
            assert!(compiled.success(), "wasmtime compile failed");
            let version = Command::new(wasmtime).arg("--version").output().unwrap();
            println!("reference: {}", String::from_utf8_lossy(&version.stdout).trim());
            commands.push((
                "wasmtime run app.wasm",
                wasmtime.clone(),
                vec!["run".into(), guest_arg.clone()],
            ));
            commands.push((
                "wasmtime run --allow-precompiled app.cwasm",
                wasmtime.clone(),
                vec![
                    "run".into(),
                    "--allow-precompiled".into(),
                    cwasm.to_str().unwrap().into(),
                ],
            ));
        }
        None => println!(
            "SKIPPED the wasmtime reference: no wasmtime 48 (cargo install wasmtime-cli --version 48.0.8 --locked --root ~/.cache/tessera/wasmtime-cli-48.0.8)"
        ),
    }
    for (_, program, args) in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        time(program, &args);
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); commands.len()];
    for run in 0..runs {
        for i in (0..commands.len()).map(|k| (k + run) % commands.len()) {
            let (_, program, args) = &commands[i];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            times[i].push(time(program, &args));
        }
    }
    println!("cold start, hello-world module, spawn -> exit, median of {runs}:");
    let mut medians = Vec::new();
    for (i, (name, _, _)) in commands.iter().enumerate() {
        let m = median(&mut times[i]);
        println!("  {name:<44} {m:8.2} ms");
        medians.push(m);
    }
    if medians.len() == 4 {
        println!(
            "  sandbox / wasmtime run app.wasm            {:8.2}",
            medians[0] / medians[2]
        );
        println!(
            "  sandbox / wasmtime run app.cwasm           {:8.2}",
            medians[0] / medians[3]
        );
    }

    let warm = wasm::warm::Warm::new(guest).expect("compile the module for the pool");
    for _ in 0..100 {
        warm.instantiate().expect("instantiate");
    }
    let mut rates = Vec::new();
    for _ in 0..5 {
        let (start, mut count) = (Instant::now(), 0u64);
        while start.elapsed() < Duration::from_millis(500) {
            warm.instantiate().expect("instantiate");
            count += 1;
        }
        rates.push(count as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "warm: {:.0} instantiations/s (pooling allocator, copy-on-write memory, InstancePre; median of 5 x 0.5 s)",
        median(&mut rates)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
