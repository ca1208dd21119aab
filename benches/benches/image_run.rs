//! `tessera run --image busybox -- true` against `tessera run -- true`, wall time from the spawn
//! to the exit, in the nested test host (issue 15's figure: the image path should add under
//! 20%). The busybox-static image is built and imported here and its store packed into the
//! host, as `tests/tests/image_guests.rs` does.
//!
//!   cargo build --release --workspace --bins && cargo bench -p benches --bench image_run
//!   IMAGE_RUN_RUNS=10 (default)
//!
//! Each run is timed inside the host by `boot-time` up to tessera's exit log line
//! (`VM stopped`). Timings in the TCG-emulated host are not real-hardware timings: only the
//! ratio carries over.

use std::time::Duration;

use benches::{boot_ms, median};
use tests::images::{busybox_store_for_host, busybox_unavailable, BUSYBOX_IMAGE};
use tests::test_host::{HostFiles, HostOptions, TestHost};

const BOOT_TIME: &str = "/opt/tessera/bin/boot-time";
const HOST_STORE: &str = "/root/.cache/tessera/images";

fn main() {
    let runs: usize = std::env::var("IMAGE_RUN_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    if let Some(why) = busybox_unavailable() {
        println!("SKIPPED image_run: {why}");
        return;
    }
    let bin_dir = tests::bin_dir();
    let files = match HostFiles::find(&bin_dir) {
        Ok(files) => files,
        Err(why) => {
            println!("SKIPPED image_run: {why}");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("tessera-bench-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut extra_files = busybox_store_for_host(&dir, HOST_STORE);
    extra_files.push((bin_dir.join("boot-time"), BOOT_TIME.into()));
    let options = HostOptions {
        // The host the linux_boot figures were measured on.
        cpus: 2,
        extra_files,
        ..HostOptions::default()
    };
    let mut host = TestHost::boot(&files, &options).unwrap_or_else(|e| panic!("test host: {e}"));
    let commands = [
        (
            "tessera run -- true",
            format!("{BOOT_TIME} 'VM stopped' -- tessera --log-level info run -- true"),
        ),
        (
            "tessera run --image busybox -- true",
            format!(
                "{BOOT_TIME} 'VM stopped' -- tessera --log-level info run --image {BUSYBOX_IMAGE} -- true"
            ),
        ),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); commands.len()];
    for run in 0..runs {
        for (i, (name, command)) in commands.iter().enumerate() {
            let out = host
                .run(command, Duration::from_secs(300))
                .unwrap_or_else(|e| panic!("{e}"));
            let ms =
                boot_ms(&out.output).unwrap_or_else(|| panic!("no time from `{command}`\n{out}"));
            times[i].push(ms);
            eprintln!("run {run}: {name} {ms:.1} ms");
        }
    }
    let plain = median(&mut times[0]);
    let image = median(&mut times[1]);
    println!("spawn -> exit, nested test host, median of {runs}:");
    println!("  tessera run -- true                   {plain:8.1} ms");
    println!("  tessera run --image busybox -- true   {image:8.1} ms");
    println!(
        "  image / plain                         {:8.2}",
        image / plain
    );
    let _ = std::fs::remove_dir_all(&dir);
}
