//! `tessera run --image busybox -- true` against `tessera run -- true`, wall time from the spawn
//! to the exit and the part of it before the guest kernel runs, in the nested test host (issue
//! 15's figure: the image path should add under 20%). Then the same image root as ext4 (what
//! the store builds) and as EROFS, each booted from a config file that differs only in the
//! root disk and its fstype, to choose between them. The busybox-static image is built and
//! imported here and its store packed into the host, as `tests/tests/image_guests.rs` does.
//!
//!   cargo build --release --workspace --bins && cargo bench -p benches --bench image_run
//!   IMAGE_RUN_RUNS=10 (default); IMAGE_RUN_TRACE=1 first prints, for one plain and one image
//!   run, the guest kernel log (printk.time, initcall_debug) and the image disk's request counts
//!
//! Each run is timed inside the host by `boot-time`: up to tessera's `microVM started` log line
//! (the vCPUs are running: everything before it is the VMM's and the image lookup's) and up to
//! `VM stopped: guest command exited with status 0`. Timings in the TCG-emulated host are not
//! real-hardware timings: only the ratios carry over.

use std::process::Command;
use std::time::Duration;

use benches::{boot_ms, mark_ms, median};
use tests::images::{busybox_layer, busybox_store_for_host, busybox_unavailable, BUSYBOX_IMAGE};
use tests::test_host::{paths, HostFiles, HostOptions, TestHost};

const BOOT_TIME: &str = "/opt/tessera/bin/boot-time";
const HOST_STORE: &str = "/root/.cache/tessera/images";
const STARTED: &str = "microVM started";
const STOPPED: &str = "VM stopped: guest command exited with status 0";

/// A config file booting the image root `disk` (of `fstype`) and running `true` from it, as
/// `tessera run --image` would but without the stdio relay and the image lookup.
fn root_config(disk: &str, fstype: &str) -> String {
    serde_json::json!({
        "boot-source": {
            "kernel_image_path": paths::VMLINUX,
            "initrd_path": paths::GUEST_INITRAMFS,
            "boot_args": vmm::kernel_cmdline::COMMAND_CMDLINE,
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "drives": [{
            "drive_id": "image-root",
            "path_on_host": disk,
            "is_root_device": false,
            "is_read_only": true,
        }],
        "workload": {
            "version": 1,
            "args": ["true"],
            "env": ["PATH=/bin"],
            "root": {"device": "/dev/vda", "fstype": fstype},
        },
    })
    .to_string()
}

fn main() {
    let runs: usize = std::env::var("IMAGE_RUN_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    if let Some(why) = busybox_unavailable() {
        println!("SKIPPED image_run: {why}");
        return;
    }
    if Command::new("mkfs.erofs").arg("--help").output().is_err() {
        println!("SKIPPED image_run: mkfs.erofs missing (apt-get install erofs-utils)");
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

    // The same root twice: the busybox layer applied, then built by the store's mkfs.ext4 and
    // by mkfs.erofs (uncompressed).
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    images::unpack::apply_layer(&tree, &busybox_layer()[..]).expect("apply the busybox layer");
    images::store::make_ext4(&tree, &dir.join("root.ext4")).expect("mkfs.ext4");
    let erofs = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(dir.join("root.erofs"))
        .arg(&tree)
        .output()
        .expect("run mkfs.erofs");
    assert!(erofs.status.success(), "mkfs.erofs: {erofs:?}");
    for (fstype, file) in [("ext4", "root.ext4"), ("erofs", "root.erofs")] {
        let config = dir.join(format!("{fstype}.json"));
        let disk = format!("/opt/bench/{file}");
        std::fs::write(&config, root_config(&disk, fstype)).unwrap();
        extra_files.push((dir.join(file), disk));
        extra_files.push((config, format!("/opt/bench/{fstype}.json")));
    }

    let options = HostOptions {
        // The host the linux_boot figures were measured on.
        cpus: 2,
        extra_files,
        ..HostOptions::default()
    };
    let mut host = TestHost::boot(&files, &options).unwrap_or_else(|e| panic!("test host: {e}"));
    let timed = |command: &str| {
        format!("{BOOT_TIME} --mark '{STARTED}' '{STOPPED}' -- tessera --log-level info {command}")
    };
    let commands = [
        ("tessera run -- true", timed("run -- true")),
        (
            "tessera run --image busybox -- true",
            timed(&format!("run --image {BUSYBOX_IMAGE} -- true")),
        ),
        (
            "config file, ext4 image root",
            timed("--no-api --config-file /opt/bench/ext4.json"),
        ),
        (
            "config file, EROFS image root",
            timed("--no-api --config-file /opt/bench/erofs.json"),
        ),
    ];
    if std::env::var_os("IMAGE_RUN_TRACE").is_some() {
        // The guest kernel's own timestamps (ring buffer only: the console stays quiet so
        // that it costs nothing), read by the command itself at its start.
        let args = format!(
            "{} printk.time=1 initcall_debug",
            vmm::kernel_cmdline::COMMAND_CMDLINE
        );
        let show = "busybox sh -c 'echo command-starts > /dev/kmsg; busybox dmesg | busybox grep -E \"after [0-9]{4,} usecs|TRACE|command-starts|EXT4|virtio|Run /init\"; busybox cat /sys/block/vda/stat /sys/block/vda/queue/read_ahead_kb'";
        for probe in [] {
            let out = host
                .run(probe, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("{e}"));
            println!("$ {probe}\n{}", out.output);
        }
        for image in ["", &format!("--image {BUSYBOX_IMAGE}")] {
            let command =
                format!("tessera --log-level debug run --cmdline '{args}' {image} -- {show}");
            let out = host
                .run(&command, Duration::from_secs(300))
                .unwrap_or_else(|e| panic!("{e}"));
            println!("$ {command}\n{}", out.output);
        }
    }
    let mut totals: Vec<Vec<f64>> = vec![Vec::new(); commands.len()];
    let mut befores: Vec<Vec<f64>> = vec![Vec::new(); commands.len()];
    for run in 0..runs {
        // Each round starts one command later, so that none always follows the same one (the
        // first after a teardown pays for it).
        for i in (0..commands.len()).map(|k| (k + run) % commands.len()) {
            let (name, command) = &commands[i];
            let out = host
                .run(command, Duration::from_secs(300))
                .unwrap_or_else(|e| panic!("{e}"));
            let (Some(total), Some(before)) = (boot_ms(&out.output), mark_ms(&out.output)) else {
                panic!("no times from `{command}`\n{out}");
            };
            totals[i].push(total);
            befores[i].push(before);
            eprintln!("run {run}: {name} {total:.1} ms ({before:.1} ms before the guest)");
        }
    }
    println!("spawn -> exit, nested test host, median of {runs}:");
    println!(
        "  {:<38} {:>9} {:>14} {:>7}",
        "", "total ms", "before vCPUs", "share"
    );
    let mut medians = Vec::new();
    for (i, (name, _)) in commands.iter().enumerate() {
        let total = median(&mut totals[i]);
        let before = median(&mut befores[i]);
        println!(
            "  {name:<38} {total:9.1} {before:11.1} ms {:6.1}%",
            before / total * 100.0
        );
        medians.push(total);
    }
    println!(
        "  image / plain                          {:9.2}",
        medians[1] / medians[0]
    );
    println!(
        "  EROFS / ext4 (config file)             {:9.2}",
        medians[3] / medians[2]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
