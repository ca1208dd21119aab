//! Tessera and Firecracker side by side on the same tiny guests, interleaved run by run
//! (docs/SPECIFICATION.md, "Side by side with Firecracker"):
//!
//! - spawn -> API socket accepting;
//! - the two configuration PUTs (`/machine-config`, `/boot-source`) on a fresh process;
//! - `PUT /machine-config` sent -> the guest's first instruction, `InstanceStart` sent at once
//!   after the configuration; and `InstanceStart` -> first instruction after a 50 ms pause (what
//!   a client does between configuring and starting);
//! - `PUT /machine-config` round trip on a kept-alive connection;
//! - guest reset -> the caller's `wait` returns (the `reset64` guest, from its config file);
//! - microVMs created and finished per second with 4 and 8 in flight (config file, `reset64`);
//! - memory per instance with 10 `idle64` guests running: PSS, and RSS beyond guest memory.
//!
//! Both VMMs read the same Firecracker-format config file and the same guest ELF. The first
//! instruction is each VMM's own stamp of the guest's first exit, a write to port 0x3f0:
//! tessera's `guest boot-done (monotonic_us=N)` log line, Firecracker's `IO write @ 0x3f0`
//! error line (its timestamp on the realtime clock, read with `TZ=UTC`).
//!
//! Run: `cargo build --release --workspace --bins && FIRECRACKER=PATH cargo bench -p benches
//! --bench firecracker` (`FC_RUNS=N`, default 20; `FC_PUTS=N` round trips, default 1000;
//! `FC_LAUNCHES=N` per creation-rate figure, default 48; `FC_TESSERA_ARGS="--no-seccomp"` gives
//! tessera options). Without `FIRECRACKER` it prints `SKIPPED` and why.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use benches::http::{connect, request};
use benches::{adopt_orphans, field_u64, median, monotonic_us, parse_utc_us, reap_children};
use tests::{kvm_unavailable, tessera_bin, tiny_guest};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tessera,
    Firecracker,
}

/// One VMM under test.
struct Vmm {
    kind: Kind,
    bin: PathBuf,
}

impl Vmm {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Tessera => "tessera",
            Kind::Firecracker => "firecracker",
        }
    }

    /// Now, on the clock this VMM stamps its log lines with, in µs.
    fn now_us(&self) -> u64 {
        match self.kind {
            Kind::Tessera => monotonic_us(),
            Kind::Firecracker => realtime_us(),
        }
    }

    /// The guest's first instruction, if `line` is this VMM's stamp of it.
    fn first_instruction(&self, line: &str) -> Option<u64> {
        match self.kind {
            Kind::Tessera if line.contains("guest boot-done") => field_u64(line, "monotonic_us="),
            Kind::Firecracker if line.contains("IO write @ 0x3f0") => {
                parse_utc_us(line.split_whitespace().next()?)
            }
            _ => None,
        }
    }

    /// The command with its log on a pipe (tessera logs to stderr, Firecracker to stdout),
    /// the rest on /dev/null.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        match self.kind {
            Kind::Tessera => command.args(tessera_args()),
            // Its log's timestamps are local time: UTC, for `parse_utc_us`.
            Kind::Firecracker => command.env("TZ", "UTC"),
        };
        command.args(args).stdin(Stdio::null());
        match self.kind {
            Kind::Tessera => command.stdout(Stdio::null()).stderr(Stdio::piped()),
            Kind::Firecracker => command.stdout(Stdio::piped()).stderr(Stdio::null()),
        };
        command
    }

    fn spawn_api(&self, socket: &Path) -> Child {
        let _ = std::fs::remove_file(socket);
        let socket = socket.to_str().expect("a UTF-8 socket path");
        self.command(&["--api-sock", socket])
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()))
    }

    fn spawn_config(&self, config: &Path) -> Child {
        let config = config.to_str().expect("a UTF-8 config path");
        self.command(&["--no-api", "--config-file", config])
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()))
    }
}

/// `FC_TESSERA_ARGS`: options given to every tessera run (e.g. `--no-seccomp`, as this
/// machine's Firecracker build runs).
fn tessera_args() -> Vec<String> {
    std::env::var("FC_TESSERA_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// The log pipe of a child from [`Vmm::command`].
enum Log {
    Stderr(BufReader<std::process::ChildStderr>),
    Stdout(BufReader<ChildStdout>),
}

impl Log {
    fn of(child: &mut Child) -> Log {
        match (child.stderr.take(), child.stdout.take()) {
            (Some(stderr), _) => Log::Stderr(BufReader::new(stderr)),
            (None, Some(stdout)) => Log::Stdout(BufReader::new(stdout)),
            _ => panic!("the child has no log pipe"),
        }
    }

    fn reader(&mut self) -> &mut dyn BufRead {
        match self {
            Log::Stderr(r) => r,
            Log::Stdout(r) => r,
        }
    }

    /// Reads lines until `vmm` stamps the guest's first instruction; returns the stamp.
    fn first_instruction(&mut self, vmm: &Vmm) -> u64 {
        let mut seen = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            match self.reader().read_line(&mut line) {
                Ok(n) if n > 0 => {}
                _ => panic!("{} ended before the guest started:\n{seen}", vmm.name()),
            }
            if let Some(stamp) = vmm.first_instruction(&line) {
                return stamp;
            }
            seen.push_str(&line);
        }
    }

    fn drain(&mut self) {
        let mut rest = Vec::new();
        let _ = self.reader().read_to_end(&mut rest);
    }
}

fn realtime_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_micros() as u64
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "tessera-bench-fc-{}-{tag}.sock",
        std::process::id()
    ))
}

/// The Firecracker-format config file both VMMs boot `guest` from.
fn config_file(guest: &Path) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "tessera-bench-fc-{}-{}.json",
        std::process::id(),
        guest
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("guest")
    ));
    let config = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}, "drives": [], "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}}}"#,
        guest.display()
    );
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

fn stop(mut child: Child, socket: &Path) {
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(socket);
    reap_children();
}

/// A pause after each VM's end, for the host's deferred teardown work to finish before the
/// next measurement.
const SETTLE: Duration = Duration::from_millis(20);

const MACHINE: &str = r#"{"vcpu_count": 1, "mem_size_mib": 128}"#;
const START: &str = r#"{"action_type": "InstanceStart"}"#;

fn spawn_to_accept(vmm: &Vmm) -> f64 {
    let socket = socket_path("spawn");
    let start = Instant::now();
    let child = vmm.spawn_api(&socket);
    let stream = connect(&socket);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    drop(stream);
    stop(child, &socket);
    ms
}

/// One launch over the API: (the two configuration PUTs in ms, machine-config sent -> first
/// instruction in ms). With `pause`, waits that long before `InstanceStart` and the second
/// figure is `InstanceStart` sent -> first instruction instead.
fn api_launch(vmm: &Vmm, guest: &Path, pause: Option<Duration>) -> (f64, f64) {
    let socket = socket_path("launch");
    let mut child = vmm.spawn_api(&socket);
    let mut log = Log::of(&mut child);
    let mut stream = connect(&socket);
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, guest.display());
    let started = Instant::now();
    let mut sent = vmm.now_us();
    assert_eq!(request(&mut stream, "PUT", "/machine-config", MACHINE), 204);
    assert_eq!(request(&mut stream, "PUT", "/boot-source", &boot), 204);
    let puts_ms = started.elapsed().as_secs_f64() * 1e3;
    if let Some(pause) = pause {
        std::thread::sleep(pause);
        sent = vmm.now_us();
    }
    assert_eq!(request(&mut stream, "PUT", "/actions", START), 204);
    let first = log.first_instruction(vmm);
    drop(stream);
    log.drain();
    stop(child, &socket);
    std::thread::sleep(SETTLE);
    (puts_ms, first.saturating_sub(sent) as f64 / 1e3)
}

/// Round trips of `PUT /machine-config` on one kept-alive connection, in µs.
fn kept_alive_puts(vmm: &Vmm, requests: usize) -> Vec<f64> {
    let socket = socket_path("puts");
    let mut child = vmm.spawn_api(&socket);
    // Firecracker logs every request: its log must be read for it to go on.
    let mut log = Log::of(&mut child);
    let drain = std::thread::spawn(move || log.drain());
    let mut stream = connect(&socket);
    for _ in 0..100 {
        assert_eq!(request(&mut stream, "PUT", "/machine-config", MACHINE), 204);
    }
    std::thread::sleep(Duration::from_millis(100));
    let us = (0..requests)
        .map(|_| {
            let start = Instant::now();
            assert_eq!(request(&mut stream, "PUT", "/machine-config", MACHINE), 204);
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    stop(child, &socket);
    let _ = drain.join();
    us
}

/// Guest reset -> `wait` returns, in ms (`reset64` resets right after its first instruction).
fn reset_to_wait(vmm: &Vmm, config: &Path) -> f64 {
    let mut child = vmm.spawn_config(config);
    let mut log = Log::of(&mut child);
    let reset = log.first_instruction(vmm);
    log.drain();
    let status = child.wait().expect("wait for the VMM");
    let seen = vmm.now_us();
    assert!(status.success(), "{} failed: {status}", vmm.name());
    // The next run starts once everything is freed (tessera's teardown keeper included).
    reap_children();
    std::thread::sleep(SETTLE);
    seen.saturating_sub(reset) as f64 / 1e3
}

/// The host's floor for building a VM after a request: `kvm_floor --irqchip` from its `main`
/// to the first guest exit, in ms.
fn floor_vm_to_first_exit(floor: &Path) -> f64 {
    let out = Command::new(floor)
        .arg("--irqchip")
        .output()
        .expect("run kvm_floor");
    assert!(out.status.success(), "kvm_floor failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = field_u64(&stdout, "first_exit_monotonic_us=").expect("first exit time");
    let main = field_u64(&stdout, "main_monotonic_us=").expect("main time");
    reap_children();
    std::thread::sleep(SETTLE);
    first.saturating_sub(main) as f64 / 1e3
}

/// `launches` config-file launches of `reset64`, `in_flight` at a time: microVMs per second,
/// until every one has exited and everything they left (a teardown keeper) has ended.
fn creation_rate(vmm: &Vmm, config: &Path, in_flight: usize, launches: usize) -> f64 {
    launch_rate(in_flight, launches, || {
        let mut child = vmm.spawn_config(config);
        Log::of(&mut child).drain();
        let status = child.wait().expect("wait for the VMM");
        assert!(status.success(), "{} failed: {status}", vmm.name());
    })
}

/// The host's own floor for [`creation_rate`]: `kvm_floor --irqchip` (a KVM VM with a memslot,
/// IRQ chip, PIT and one vCPU run to its first exit, then the process exits).
fn floor_rate(floor: &Path, in_flight: usize, launches: usize) -> f64 {
    launch_rate(in_flight, launches, || {
        let status = Command::new(floor)
            .arg("--irqchip")
            .stdout(Stdio::null())
            .status()
            .expect("run kvm_floor");
        assert!(status.success(), "kvm_floor failed: {status}");
    })
}

fn launch_rate(in_flight: usize, launches: usize, launch: impl Fn() + Sync) -> f64 {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..in_flight {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < launches {
                    launch();
                }
            });
        }
    });
    reap_children();
    launches as f64 / started.elapsed().as_secs_f64()
}

/// (PSS per instance, RSS beyond guest memory per instance) in MiB, with `count` idle guests
/// running at once.
fn memory_per_instance(vmm: &Vmm, config: &Path, count: usize) -> (f64, f64) {
    let mut running: Vec<(Child, Log)> = (0..count)
        .map(|_| {
            let mut child = vmm.spawn_config(config);
            let mut log = Log::of(&mut child);
            log.first_instruction(vmm);
            (child, log)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (mut pss_kib, mut rss_kib) = (0u64, 0u64);
    for (child, _) in &running {
        let smaps =
            std::fs::read_to_string(format!("/proc/{}/smaps", child.id())).expect("read smaps");
        let (pss, rss) = memory_beyond_guest(&smaps);
        pss_kib += pss;
        rss_kib += rss;
    }
    for (child, _) in &mut running {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(running);
    reap_children();
    let per = |kib: u64| kib as f64 / 1024.0 / count as f64;
    (per(pss_kib), per(rss_kib))
}

/// (Pss of the whole process, Rss outside guest memory) in KiB from `/proc/PID/smaps`; guest
/// memory is any mapping of 128 MiB or more (Firecracker adds guard pages around its own).
fn memory_beyond_guest(smaps: &str) -> (u64, u64) {
    const GUEST_KIB: u64 = 128 * 1024;
    let (mut pss, mut rss) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(kib)) = (words.next(), words.next()) else {
            continue;
        };
        let kib: u64 = kib.parse().unwrap_or(0);
        match key {
            "Size:" => in_guest = kib >= GUEST_KIB,
            "Pss:" => pss += kib,
            "Rss:" if !in_guest => rss += kib,
            _ => {}
        }
    }
    (pss, rss)
}

/// One row: both medians and their ratio (tessera / Firecracker).
fn row(figure: &str, unit: &str, tessera: &mut [f64], firecracker: &mut [f64]) {
    let (t, f) = (median(tessera), median(firecracker));
    println!(
        "| {figure} | {t:.3} {unit} | {f:.3} {unit} | {:.2} | {} |",
        t / f,
        tessera.len()
    );
}

fn main() {
    let Some(firecracker) = std::env::var_os("FIRECRACKER").map(PathBuf::from) else {
        println!(
            "SKIPPED firecracker benchmark: set FIRECRACKER=PATH to a firecracker binary \
             (docs/SPECIFICATION.md, \"Side by side with Firecracker\", says how to build one)"
        );
        return;
    };
    if let Some(why) = kvm_unavailable() {
        println!("SKIPPED firecracker benchmark: {why}");
        return;
    }
    assert!(
        firecracker.exists(),
        "FIRECRACKER={}: no such file",
        firecracker.display()
    );
    let vmms = [
        Vmm {
            kind: Kind::Tessera,
            bin: tessera_bin(),
        },
        Vmm {
            kind: Kind::Firecracker,
            bin: firecracker,
        },
    ];
    let runs = env_count("FC_RUNS", 20);
    let puts = env_count("FC_PUTS", 1000);
    let launches = env_count("FC_LAUNCHES", 48);
    let reset_guest = tiny_guest("reset64");
    let reset_config = config_file(&reset_guest);
    let idle_config = config_file(&tiny_guest("idle64"));
    adopt_orphans();
    // [tessera, firecracker] for each figure; each figure in its own loop, interleaved run by
    // run, so that one figure's runs do not follow another's VM teardown (the host's deferred
    // work after one slows the next spawn several-fold).
    let each = |measure: &dyn Fn(&Vmm) -> f64| {
        let mut values = [vec![], vec![]];
        for _ in 0..runs {
            for (i, vmm) in vmms.iter().enumerate() {
                values[i].push(measure(vmm));
            }
        }
        values
    };
    let mut accept = each(&spawn_to_accept);
    let mut config_puts = [vec![], vec![]];
    let mut config_to_first = [vec![], vec![]];
    for _ in 0..runs {
        for (i, vmm) in vmms.iter().enumerate() {
            let (puts_ms, first_ms) = api_launch(vmm, &reset_guest, None);
            config_puts[i].push(puts_ms);
            config_to_first[i].push(first_ms);
        }
    }
    let floor = vmms[0].bin.with_file_name("kvm_floor");
    assert!(
        floor.exists(),
        "{} is missing: run `cargo build --release --workspace --bins`",
        floor.display()
    );
    let mut floor_first: Vec<f64> = (0..runs).map(|_| floor_vm_to_first_exit(&floor)).collect();
    let mut start_to_first =
        each(&|vmm| api_launch(vmm, &reset_guest, Some(Duration::from_millis(50))).1);
    let mut reset = each(&|vmm| reset_to_wait(vmm, &reset_config));
    let mut kept_alive = [vec![], vec![]];
    for _ in 0..2 {
        for (i, vmm) in vmms.iter().enumerate() {
            kept_alive[i].extend(kept_alive_puts(vmm, puts / 2));
        }
    }
    let mut rates = Vec::new();
    for in_flight in [4, 8] {
        let (mut rate, mut floor_rates) = ([vec![], vec![]], vec![]);
        for _ in 0..3 {
            for (i, vmm) in vmms.iter().enumerate() {
                rate[i].push(creation_rate(vmm, &reset_config, in_flight, launches));
            }
            floor_rates.push(floor_rate(&floor, in_flight, launches));
        }
        rates.push((in_flight, rate, floor_rates));
    }
    let (mut pss, mut rss) = ([vec![], vec![]], [vec![], vec![]]);
    for _ in 0..3 {
        for (i, vmm) in vmms.iter().enumerate() {
            let (p, r) = memory_per_instance(vmm, &idle_config, 10);
            pss[i].push(p);
            rss[i].push(r);
        }
    }

    println!(
        "tessera: {} {}\nfirecracker: {}\n",
        vmms[0].bin.display(),
        tessera_args().join(" "),
        vmms[1].bin.display()
    );
    println!(
        "| figure | tessera (median) | firecracker (median) | tessera / firecracker | samples |"
    );
    println!("|---|---|---|---|---|");
    let [t, f] = &mut accept;
    row("spawn -> API socket accepting", "ms", t, f);
    let [t, f] = &mut config_puts;
    row("the two configuration PUTs", "ms", t, f);
    let [t, f] = &mut config_to_first;
    row(
        "machine-config sent -> first guest instruction (InstanceStart at once)",
        "ms",
        t,
        f,
    );
    println!(
        "| floor: `kvm_floor --irqchip`, its main -> first guest exit (VM, memslot, IRQ chip, PIT, vCPU) | {:.3} ms | | | {} |",
        median(&mut floor_first),
        floor_first.len()
    );
    let [t, f] = &mut start_to_first;
    row(
        "InstanceStart -> first guest instruction (after 50 ms)",
        "ms",
        t,
        f,
    );
    let [t, f] = &mut kept_alive;
    row("PUT /machine-config, kept-alive connection", "us", t, f);
    let [t, f] = &mut reset;
    row("guest reset -> the caller's wait returns", "ms", t, f);
    for (in_flight, [t, f], floor) in &mut rates {
        row(
            &format!("microVMs created and finished per second, {in_flight} in flight"),
            "/s",
            t,
            f,
        );
        println!(
            "| floor: `kvm_floor --irqchip` per second, {in_flight} in flight | {:.3} /s | | | {} |",
            median(floor),
            floor.len()
        );
    }
    let [t, f] = &mut pss;
    row("PSS per instance, 10 running (idle64)", "MiB", t, f);
    let [t, f] = &mut rss;
    row("RSS beyond guest memory, 10 running", "MiB", t, f);
    let _ = std::fs::remove_file(&reset_config);
    let _ = std::fs::remove_file(&idle_config);
}
