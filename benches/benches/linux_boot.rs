//! Boot -> guest init of the microvm kernel with tessera-init, under tessera, under Debian's
//! QEMU (`-M microvm -accel kvm`) and, given `FIRECRACKER=PATH` (a statically linked build),
//! under Firecracker, side by side in one nested test host.
//!
//!   cargo build --release --workspace --bins && cargo bench -p benches --bench linux_boot
//!   LINUX_BOOT_RUNS=10 (default)
//!   LINUX_BOOT_TIMELINE=1: instead, boot once under each VMM with a verbose console
//!   (`printk.time=1`, `initcall_debug` with `LINUX_BOOT_TIMELINE=initcalls`) and print each
//!   guest's kernel log, for finding where the time goes.
//!
//! Both VMMs get the same kernel (ELF vmlinux, PVH entry), the same initramfs followed by the same
//! workload spec archive (tessera appends it; QEMU boots a copy with it appended), the same
//! command line, 1 vCPU and 128 MiB; the guest runs `true`. The time is from spawning the VMM to
//! the moment tessera-init's boot-done write to port 0x3f0 is seen outside it (tessera logs it;
//! QEMU writes it to a file through an isa-debugcon at that port, polled every 0.2 ms), taken by
//! `boot-time` in the host. Firecracker reads a config file with the same kernel, initrd (QEMU's)
//! and command line; its boot-done is its own log line for the unhandled port write.
//! Timings in the TCG-emulated host are not real-hardware timings: only the ratio carries over.

use std::path::PathBuf;
use std::time::Duration;

use benches::{boot_ms, initrd_with_archive, median, spec_archive_file};
use tests::test_host::{paths, HostFiles, HostOptions, TestHost};

/// The command line `tessera run -- CMD` gives its guest, for QEMU too.
const CMDLINE: &str = vmm::kernel_cmdline::COMMAND_CMDLINE;
const BOOT_TIME: &str = "/opt/tessera/bin/boot-time";
/// In the host: the spec archive for `true`, and the initrd QEMU boots (initramfs + archive).
const QEMU_SPEC: &str = "/opt/tessera/linux-boot-spec.cpio";
const QEMU_INITRD: &str = "/tmp/qemu-initrd.cpio";
const FIRECRACKER: &str = "/opt/tessera/bin/firecracker";

/// A host command writing the config file Firecracker boots from (host commands are one line).
fn firecracker_config(path: &str, cmdline: &str) -> String {
    format!(
        r#"printf '%s' '{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": "{QEMU_INITRD}", "boot_args": "{cmdline}"}}, "drives": [], "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}}}' > {path}"#,
        paths::VMLINUX
    )
}

fn main() {
    let runs: usize = std::env::var("LINUX_BOOT_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let bin_dir = tests::bin_dir();
    let files = match HostFiles::find(&bin_dir) {
        Ok(files) => files,
        Err(why) => {
            eprintln!("SKIPPED linux_boot: {why}");
            return;
        }
    };
    // The workload spec tessera appends to the initrd for `-- true`; QEMU takes one initrd, so
    // it gets the same bytes as one file.
    let spec = spec_archive_file("linux-boot", &["true"]);
    let firecracker = std::env::var_os("FIRECRACKER").map(PathBuf::from);
    let mut extra_files = vec![
        (PathBuf::from(&bin_dir).join("boot-time"), BOOT_TIME.into()),
        (spec.clone(), QEMU_SPEC.into()),
    ];
    match &firecracker {
        Some(path) => extra_files.push((path.clone(), FIRECRACKER.into())),
        None => eprintln!("linux_boot: FIRECRACKER is not set: tessera and QEMU only"),
    }
    let options = HostOptions {
        with_qemu: true,
        // The host its published figures were measured on.
        cpus: 2,
        extra_files,
        ..HostOptions::default()
    };
    let mut host = TestHost::boot(&files, &options).unwrap_or_else(|e| panic!("test host: {e}"));
    let _ = std::fs::remove_file(&spec);
    let concat = initrd_with_archive(paths::GUEST_INITRAMFS, QEMU_SPEC, QEMU_INITRD);
    let out = host
        .run(&concat, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 0, "`{concat}`\n{out}");

    let tessera = format!(
        "{BOOT_TIME} 'guest boot-done' -- tessera --log-level info run --memory 128 --console-output /dev/null \
         --kernel {} --initrd {} --cmdline '{CMDLINE}' -- true",
        paths::VMLINUX,
        paths::GUEST_INITRAMFS
    );
    let qemu = format!(
        "rm -f /tmp/bootdone; {BOOT_TIME} --watch /tmp/bootdone '~' -- {} -M microvm,x-option-roms=off,rtc=off -accel kvm -cpu host -smp 1 -m 128 \
         -nodefaults -no-user-config -display none -no-reboot -monitor none \
         -kernel {} -initrd {QEMU_INITRD} -append '{CMDLINE}' -serial file:/dev/null \
         -chardev file,id=bootdone,path=/tmp/bootdone -device isa-debugcon,iobase=0x3f0,chardev=bootdone",
        paths::QEMU,
        paths::VMLINUX,
    );

    let mut vmms = vec![("tessera", tessera), ("qemu -M microvm", qemu)];
    if firecracker.is_some() {
        let config = firecracker_config("/tmp/fc.json", CMDLINE);
        let out = host
            .run(&config, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.status, 0, "`{config}`\n{out}");
        vmms.push((
            "firecracker",
            format!(
                "{BOOT_TIME} 'IO write @ 0x3f0' -- {FIRECRACKER} --no-api --config-file /tmp/fc.json"
            ),
        ));
    }
    if let Ok(mode) = std::env::var("LINUX_BOOT_TIMELINE") {
        timelines(&mut host, firecracker.is_some(), mode == "initcalls");
        return;
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); vmms.len()];
    for run in 0..runs {
        for (i, (name, command)) in vmms.iter().enumerate() {
            let out = host
                .run(command, Duration::from_secs(300))
                .unwrap_or_else(|e| panic!("{e}"));
            let ms = boot_ms(&out.output)
                .unwrap_or_else(|| panic!("no boot time from `{command}`\n{out}"));
            times[i].push(ms);
            eprintln!("run {run}: {name} {ms:.1} ms");
        }
    }
    println!("linux boot -> tessera-init, nested test host, median of {runs}:");
    let tessera_ms = median(&mut times[0]);
    for ((name, _), times) in vmms.iter().zip(&mut times) {
        let ms = median(times);
        println!(
            "  {name:<18} {ms:8.1} ms   tessera / {name}: {:.2}",
            tessera_ms / ms
        );
    }
}

/// One verbose boot under each VMM; prints each guest's kernel log.
fn timelines(host: &mut TestHost, firecracker: bool, initcalls: bool) {
    let verbose = CMDLINE.replace(
        "quiet",
        if initcalls {
            "printk.time=1 loglevel=8 initcall_debug"
        } else {
            "printk.time=1 loglevel=8"
        },
    );
    let mut runs = vec![
        (
            "tessera",
            format!(
                "tessera --log-level info run --memory 128 --console-output /tmp/console.log \
                 --kernel {} --initrd {} --cmdline '{verbose}' -- true",
                paths::VMLINUX,
                paths::GUEST_INITRAMFS
            ),
        ),
        (
            "qemu -M microvm",
            format!(
                "timeout 60 {} -M microvm,x-option-roms=off,rtc=off -accel kvm -cpu host -smp 1 -m 128 \
                 -nodefaults -no-user-config -display none -no-reboot -monitor none \
                 -kernel {} -initrd {QEMU_INITRD} -append '{verbose}' -serial file:/tmp/console.log",
                paths::QEMU,
                paths::VMLINUX
            ),
        ),
    ];
    if firecracker {
        runs.push((
            "firecracker",
            format!(
                "{} && {FIRECRACKER} --no-api --config-file /tmp/fc-verbose.json > /tmp/console.log",
                firecracker_config("/tmp/fc-verbose.json", &verbose)
            ),
        ));
    }
    for (name, command) in runs {
        let command = format!("rm -f /tmp/console.log; {command}; cat /tmp/console.log");
        let out = host
            .run(&command, Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("{e}"));
        println!(
            "===== {name}: `{command}` (status {})\n{}",
            out.status, out.output
        );
    }
}
