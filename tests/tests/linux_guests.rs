//! Real Linux guests under tessera on real KVM, in the nested test host (see
//! `tests::test_host`). All tests of this file share one host boot; each prints a SKIPPED line
//! instead when this machine lacks QEMU, busybox or the cached kernels.

use std::time::Duration;

use tests::test_host::{self, paths, HostOutput};

/// Generous: the guest runs under KVM inside a TCG-emulated host.
const GUEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `command` in the shared host, or returns None after printing a skip line.
fn in_host(test: &str, command: &str) -> Option<HostOutput> {
    test_host::run_in_shared_host(test, command, GUEST_TIMEOUT)
}

#[test]
fn microvm_kernel_runs_echo_under_tessera_init() {
    let test = "microvm_kernel_runs_echo_under_tessera_init";
    let Some(out) = in_host(
        test,
        "tessera --log-level info run -- echo hello from the guest",
    ) else {
        return;
    };
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains("hello from the guest"), "{out}");
    // quiet: the kernel's own boot lines stay off the console.
    assert!(!out.output.contains("Linux version"), "{out}");
}

#[test]
fn command_exit_codes_reach_the_host() {
    let test = "command_exit_codes_reach_the_host";
    let cases = [
        ("tessera run -- true", 0),
        ("tessera run -- sh -c 'exit 3'", 3),
        // SIGKILL (9) -> 128 + 9, as a shell reports it.
        ("tessera run -- sh -c 'kill -KILL $$'", 137),
    ];
    for (command, want) in cases {
        let Some(out) = in_host(test, command) else {
            return;
        };
        assert_eq!(out.status, want, "`{command}`\n{out}");
    }
}

#[test]
fn missing_and_unexecutable_commands_are_reported() {
    let test = "missing_and_unexecutable_commands_are_reported";
    let Some(out) = in_host(test, "tessera --log-level debug run -- /no/such/binary arg") else {
        return;
    };
    assert_eq!(out.status, 127, "{out}");
    assert!(
        out.output
            .contains("tessera-init: error: cannot run \"/no/such/binary\""),
        "{out}"
    );
    let Some(out) = in_host(test, "tessera run -- /proc/cmdline") else {
        return;
    };
    assert_eq!(out.status, 126, "{out}");
}

#[test]
fn guest_sees_two_cpus_with_two_vcpus() {
    let test = "guest_sees_two_cpus_with_two_vcpus";
    let command = "tessera run --vcpus 2 -- sh -c 'nproc; grep -c ^processor /proc/cpuinfo'";
    let Some(out) = in_host(test, command) else {
        return;
    };
    assert_eq!(out.status, 0, "{out}");
    let numbers: Vec<&str> = out
        .output
        .lines()
        .map(str::trim)
        .filter(|l| l.parse::<u32>().is_ok())
        .collect();
    assert_eq!(numbers, ["2", "2"], "{out}");
}

/// The value of the first `key` line of a /proc/cpuinfo dump that follows `marker`.
fn cpuinfo_field<'a>(output: &'a str, marker: &str, key: &str) -> Option<&'a str> {
    output
        .split(marker)
        .nth(1)?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_once(':')
        .map(|(_, value)| value.trim())
}

#[test]
fn guest_sees_the_host_cpus_brand_string_frequency_and_deadline_timer() {
    let test = "guest_sees_the_host_cpus_brand_string_frequency_and_deadline_timer";
    let Some(out) = in_host(
        test,
        "echo HOST; grep -E 'model name|cpu MHz' /proc/cpuinfo; \
         tessera run -- sh -c \"echo GUEST; grep -E 'model name|cpu MHz|flags' /proc/cpuinfo\"",
    ) else {
        return;
    };
    assert_eq!(out.status, 0, "{out}");
    let field = |marker, key| {
        cpuinfo_field(&out.output, marker, key)
            .unwrap_or_else(|| panic!("no {key} after {marker}:\n{out}"))
    };
    // The brand string (leaves 0x80000002-4): the host's, not "17/01" (family/model only).
    assert_eq!(
        field("GUEST", "model name"),
        field("HOST", "model name"),
        "{out}"
    );
    // The TSC frequency the guest uses (from kvm-clock, with the timing leaf beside it) is the
    // host's within 0.5%.
    let mhz = |marker| field(marker, "cpu MHz").parse::<f64>().expect("a number");
    let (host, guest) = (mhz("HOST"), mhz("GUEST"));
    assert!(
        (guest - host).abs() / host < 0.005,
        "host {host} MHz, guest {guest} MHz\n{out}"
    );
}

#[test]
fn guest_sees_the_memory_it_was_given() {
    let test = "guest_sees_the_memory_it_was_given";
    let command =
        "tessera run --memory 256 -- sh -c 'dmesg | grep \"Memory:\"; grep MemTotal /proc/meminfo'";
    let Some(out) = in_host(test, command) else {
        return;
    };
    assert_eq!(out.status, 0, "{out}");
    // "Memory: 229876K/261624K available (...)": the second figure is all RAM the kernel
    // manages, i.e. 256 MiB less the legacy hole below 1 MiB and page 0.
    let managed_kib: u64 = out
        .output
        .split("Memory: ")
        .nth(1)
        .and_then(|rest| rest.split('/').nth(1))
        .and_then(|total| total.split('K').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Memory: line\n{out}"));
    assert!(
        (256 * 1024 - 1024..=256 * 1024).contains(&managed_kib),
        "kernel manages {managed_kib} KiB of a 256 MiB guest\n{out}"
    );
    let mem_total_kib: u64 = out
        .output
        .split("MemTotal:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal\n{out}"));
    assert!(
        mem_total_kib > 200 * 1024 && mem_total_kib <= managed_kib,
        "MemTotal {mem_total_kib} KiB\n{out}"
    );
}

#[test]
fn environment_workdir_hostname_and_mounts_are_set() {
    let test = "environment_workdir_hostname_and_mounts_are_set";
    let command = "tessera run -e 'GREETING=hi there' -w /tmp --hostname box1 -- \
                   sh -c 'echo \"[$GREETING] [$(pwd)] [$(hostname)]\"; cat /proc/mounts'";
    let Some(out) = in_host(test, command) else {
        return;
    };
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains("[hi there] [/tmp] [box1]"), "{out}");
    for mount in [
        "proc /proc proc",
        "sysfs /sys sysfs",
        "devtmpfs /dev devtmpfs",
        "devpts /dev/pts devpts",
        "tmpfs /dev/shm tmpfs",
        "tmpfs /tmp tmpfs",
        "tmpfs /run tmpfs",
        "cgroup2 /sys/fs/cgroup cgroup2",
    ] {
        assert!(out.output.contains(mount), "no `{mount}` mount\n{out}");
    }
}

#[test]
fn sigterm_reaches_the_command_through_ctrl_alt_del() {
    let test = "sigterm_reaches_the_command_through_ctrl_alt_del";
    // Once the command runs (so tessera-init has taken over Ctrl-Alt-Del), stop the VMM the way
    // `docker stop` would. The command's own exit code shows that its TERM trap ran; `timeout`
    // bounds a guest that never gets the signal (the VMM then dies of SIGKILL: 137).
    let command = "timeout -s KILL 120 tessera --log-level info run -- sh -c \
                   'trap \"echo got TERM; exit 42\" TERM; echo READY-FOR-TERM; while :; do sleep 1; done' \
                   > sig.out 2>&1 & pid=$!; \
                   while ! grep -q READY-FOR-TERM sig.out; do sleep 0.2; done; \
                   kill -TERM $(pidof tessera); wait $pid; status=$?; cat sig.out; exit $status";
    let Some(out) = in_host(test, command) else {
        return;
    };
    assert_eq!(out.status, 42, "{out}");
    assert!(out.output.contains("got TERM"), "{out}");
}

#[test]
fn bzimage_of_the_same_kernel_boots() {
    let test = "bzimage_of_the_same_kernel_boots";
    let command = format!(
        "tessera run --kernel {} -- echo booted from bzImage",
        paths::BZIMAGE
    );
    let Some(out) = in_host(test, &command) else {
        return;
    };
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains("booted from bzImage"), "{out}");
}

#[test]
fn debian_stock_vmlinuz_reaches_its_console() {
    let test = "debian_stock_vmlinuz_reaches_its_console";
    // Not quiet, so the kernel's banner shows; the same tessera-init initramfs follows.
    let command = format!(
        "tessera run --memory 512 --kernel {} --cmdline 'console=ttyS0 reboot=k panic=-1' -- echo debian kernel ran the command",
        paths::DEBIAN_VMLINUZ
    );
    let Some(out) = in_host(test, &command) else {
        return;
    };
    assert!(out.output.contains("Linux version 6.1"), "{out}");
    assert!(out.output.contains("Command line: console=ttyS0"), "{out}");
    assert_eq!(out.status, 0, "{out}");
    assert!(
        out.output.contains("debian kernel ran the command"),
        "{out}"
    );
}

#[test]
fn guest_kernel_panic_ends_the_vm_with_a_clear_message() {
    let test = "guest_kernel_panic_ends_the_vm_with_a_clear_message";
    // No usable init in the initramfs and no root disk: the kernel panics.
    let command =
        "tessera run --cmdline 'console=ttyS0 quiet reboot=k panic=-1 rdinit=/missing' -- true";
    let Some(out) = in_host(test, command) else {
        return;
    };
    assert_eq!(out.status, 204, "{out}");
    assert!(
        out.output
            .contains("VM stopped: guest kernel panic: VFS: Unable to mount root fs"),
        "{out}"
    );
}

#[test]
fn a_100_kib_environment_reaches_the_command() {
    let test = "a_100_kib_environment_reaches_the_command";
    // Far past the kernel command line's 2047 bytes: the spec travels in an archive appended to
    // the initrd. The host's shell makes the value (the serial line to the host is not the place
    // for 100 KiB); one argument may be up to 128 KiB.
    let command = "big=$(head -c 102400 /dev/zero | tr '\\0' x) && \
                   tessera run -e \"BIG=$big\" -e AFTER=ok -- sh -c 'echo \"len=${#BIG} after=$AFTER\"'";
    let Some(out) = in_host(test, command) else {
        return;
    };
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains("len=102400 after=ok"), "{out}");
}

#[test]
fn the_spec_follows_a_gzip_initrd_whose_length_is_not_a_multiple_of_4() {
    let test = "the_spec_follows_a_gzip_initrd_whose_length_is_not_a_multiple_of_4";
    // Linux looks for the appended archive only at a 4-byte boundary from the initrd's start;
    // the VMM pads to it. A gzip initrd (plus a NUL, which the kernel skips, when its length
    // happens to be aligned) ends off the boundary.
    let command = format!(
        "gzip -c {} > /tmp/g.cpio.gz && \
         if [ $(( $(wc -c < /tmp/g.cpio.gz) % 4 )) = 0 ]; then head -c 1 /dev/zero >> /tmp/g.cpio.gz; fi && \
         echo \"initrd-mod-4=$(( $(wc -c < /tmp/g.cpio.gz) % 4 ))\" && \
         tessera run --initrd /tmp/g.cpio.gz -w /tmp -- sh -c 'echo \"[$(pwd)]\"'",
        paths::GUEST_INITRAMFS
    );
    let Some(out) = in_host(test, &command) else {
        return;
    };
    assert_eq!(out.status, 0, "{out}");
    assert!(!out.output.contains("initrd-mod-4=0"), "{out}");
    assert!(out.output.contains("[/tmp]"), "{out}");
}
