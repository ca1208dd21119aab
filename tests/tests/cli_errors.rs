//! Bad input to `tessera run` gives a one-line error and a non-zero exit, without KVM.

use std::time::Duration;

use tests::{tiny_guest, Run};

fn one_line_error(args: &[&str]) -> (Option<i32>, String) {
    let out = Run::new(&tiny_guest("reset64"))
        .args(args)
        .output(Duration::from_secs(20));
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line of error\n{out}");
    assert!(lines[0].starts_with("tessera: "), "{out}");
    (out.code, lines[0].to_owned())
}

#[test]
fn out_of_range_counts_and_sizes() {
    let (code, msg) = one_line_error(&["--vcpus", "0"]);
    assert_eq!(
        (code, msg.as_str()),
        (
            Some(1),
            "tessera: error: vCPU count 0 is out of range: use 1 to 32"
        )
    );
    let (code, msg) = one_line_error(&["--vcpus", "33"]);
    assert_eq!(code, Some(1), "{msg}");
    let (code, msg) = one_line_error(&["--memory", "4"]);
    assert_eq!(
        (code, msg.as_str()),
        (
            Some(1),
            "tessera: error: memory size 4 MiB is out of range: use 8 to 1048576 MiB"
        )
    );
    let (code, msg) = one_line_error(&["--memory", "lots"]);
    assert_eq!(code, Some(2), "{msg}");
    assert!(msg.contains("--memory"), "{msg}");
}

#[test]
fn cmdline_over_the_limit() {
    let long = "x".repeat(2048);
    let (code, msg) = one_line_error(&["--cmdline", &long]);
    assert_eq!(code, Some(1));
    assert_eq!(
        msg,
        "tessera: error: kernel command line is 2048 bytes; the limit is 2047 bytes"
    );
}

#[test]
fn bad_paths_are_named() {
    let (code, msg) = one_line_error(&["--initrd", "/nonexistent/initrd.img"]);
    assert_eq!(code, Some(1));
    // With /dev/kvm the initrd is opened after the VM exists; without it, KVM fails first.
    assert!(
        msg.contains("/nonexistent/initrd.img") || msg.contains("/dev/kvm"),
        "{msg}"
    );
    let out =
        Run::new(std::path::Path::new("/nonexistent/vmlinux")).output(Duration::from_secs(20));
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    assert!(out.stderr.contains("/nonexistent/vmlinux"), "{out}");
}

#[test]
fn help_explains_every_flag() {
    let out = std::process::Command::new(tests::tessera_bin())
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--vcpus",
        "--memory",
        "--console-output",
        "--log-level",
        "--no-seccomp",
        "--seccomp-filter",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} missing\n{help}"));
        let described = help
            .lines()
            .skip_while(|l| l != &line)
            .nth(1)
            .is_some_and(|next| !next.trim().is_empty());
        assert!(described, "{flag} has no description\n{help}");
    }
}

/// `tessera run` with the given environment and arguments (no --kernel), expecting one error line.
fn defaults_error(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(tests::tessera_bin());
    cmd.arg("run").args(args).stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tessera");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line of error\n{stderr}");
    (out.status.code(), lines[0].to_owned())
}

#[test]
fn a_command_without_a_cached_guest_says_how_to_build_it() {
    let empty = std::env::temp_dir().join(format!("tessera-empty-cache-{}", std::process::id()));
    let cache = empty.to_str().unwrap();
    let (code, msg) = defaults_error(&[("TESSERA_CACHE", cache)], &["--", "echo", "hi"]);
    assert_eq!(code, Some(1), "{msg}");
    assert!(
        msg.starts_with(&format!(
            "tessera: error: no guest kernel at {cache}/kernel/microvm/vmlinux"
        )) && msg.contains("kernel-configs/build"),
        "{msg}"
    );
    // A kernel given, the default initramfs missing: named with its set-up command too.
    let kernel = tiny_guest("reset64");
    let (code, msg) = defaults_error(
        &[("TESSERA_CACHE", cache)],
        &["--kernel", kernel.to_str().unwrap(), "--", "true"],
    );
    assert_eq!(code, Some(1), "{msg}");
    assert!(
        msg.contains("no tessera-init initramfs at") && msg.contains("scripts/setup"),
        "{msg}"
    );
}

#[test]
fn nothing_to_boot_and_bad_task_options_are_refused() {
    let (code, msg) = defaults_error(&[], &[]);
    assert_eq!(code, Some(1), "{msg}");
    assert!(
        msg.contains("nothing to boot: give --kernel PATH, or a command after `--`"),
        "{msg}"
    );
    let (code, msg) = defaults_error(&[], &["--env", "NOEQUALS", "--", "true"]);
    assert_eq!(code, Some(1), "{msg}");
    assert!(
        msg.contains("--env \"NOEQUALS\": expected NAME=VALUE"),
        "{msg}"
    );
    // --env without a command makes no sense: a usage error.
    let (code, msg) = defaults_error(&[], &["--env", "A=1", "--kernel", "x"]);
    assert_eq!(code, Some(2), "{msg}");
}

#[test]
fn bad_device_flags_are_named() {
    let (code, msg) = one_line_error(&["--disk", "disk.img,rw"]);
    assert_eq!(code, Some(1));
    assert!(
        msg.starts_with("tessera: error: --disk \"disk.img,rw\": unknown option \"rw\""),
        "{msg}"
    );
    let (code, msg) = one_line_error(&["--net", "tap=tap0,mac=01:00:00:00:00:01"]);
    assert_eq!(code, Some(1));
    assert!(msg.contains("multicast"), "{msg}");
    let (code, msg) = one_line_error(&["--vsock", "cid=2,uds=/tmp/x.sock"]);
    assert_eq!(code, Some(1));
    assert!(msg.contains("guest_cid 2 is reserved"), "{msg}");
}

#[test]
fn missing_disk_and_existing_vsock_path_are_named() {
    if tests::skip_without_kvm("missing_disk_and_existing_vsock_path_are_named") {
        return;
    }
    let (code, msg) = one_line_error(&["--disk", "/nonexistent/disk.img"]);
    assert_eq!(code, Some(1));
    assert!(msg.contains("/nonexistent/disk.img"), "{msg}");

    // A file already at the socket path is neither replaced nor removed.
    let path = std::env::temp_dir().join(format!("tessera-vsock-{}.sock", std::process::id()));
    std::fs::write(&path, b"someone's file").unwrap();
    let uds = format!("cid=3,uds={}", path.display());
    let (code, msg) = one_line_error(&["--vsock", &uds]);
    let kept = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, Some(1));
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(kept, b"someone's file");
}

/// The global `--log-level` may come before `run`; the API flags may not come with it.
#[test]
fn global_log_level_before_run_and_api_flags_with_run() {
    let tessera = tests::tessera_bin();
    let out = std::process::Command::new(&tessera)
        .args([
            "--log-level",
            "debug",
            "run",
            "--kernel",
            "/nonexistent/vmlinux",
        ])
        .output()
        .expect("run tessera");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/vmlinux"), "{stderr}");

    let out = std::process::Command::new(&tessera)
        .args(["--api-sock", "/tmp/x.sock", "run", "--", "true"])
        .output()
        .expect("run tessera");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "tessera: error: --api-sock cannot be used with the `run` subcommand"
    );
}

/// A little-endian ELF64 header for `machine` with `loads` PT_LOAD segments of 16 bytes at
/// 1 MiB (the segment bytes follow the program headers).
fn crafted_elf(machine: u16, loads: u16) -> Vec<u8> {
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little endian
    elf[6] = 1;
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&machine.to_le_bytes());
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // e_entry
    elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf[56..58].copy_from_slice(&loads.to_le_bytes()); // e_phnum
    let data_at = 64 + 56 * u64::from(loads);
    for _ in 0..loads {
        let mut phdr = [0u8; 56];
        phdr[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        phdr[8..16].copy_from_slice(&data_at.to_le_bytes()); // p_offset
        phdr[16..24].copy_from_slice(&0x10_0000u64.to_le_bytes()); // p_vaddr
        phdr[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // p_paddr
        phdr[32..40].copy_from_slice(&16u64.to_le_bytes()); // p_filesz
        phdr[40..48].copy_from_slice(&16u64.to_le_bytes()); // p_memsz
        elf.extend_from_slice(&phdr);
    }
    elf.extend_from_slice(&[0xf4; 16]);
    elf
}

#[test]
fn unbootable_elf_kernels_are_named_in_one_line() {
    if tests::skip_without_kvm("unbootable_elf_kernels_are_named_in_one_line") {
        return;
    }
    let dir = tests::api_client::TempDir::new("elf");
    for (name, image, what) in [
        (
            "aarch64.elf",
            crafted_elf(183, 1),
            "is an ELF for machine 183 (AArch64), not x86_64",
        ),
        ("empty.elf", crafted_elf(62, 0), "has no loadable segment"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, image).unwrap();
        let out = Run::new(&path).output(Duration::from_secs(20));
        assert_eq!(out.code, Some(1), "{out}");
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(
            lines,
            [format!("tessera: error: kernel {} {what}", path.display())],
            "{out}"
        );
    }
}
