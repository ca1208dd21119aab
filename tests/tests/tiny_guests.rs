//! Tiny guests on /dev/kvm: the boot protocols, legacy devices and exit reasons, end to end
//! through the `tessera` binary.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use tests::{skip_without_kvm, tiny_guest, Run};
use vmm::x86_64::boot_params::e820_map;

const TIMEOUT: Duration = Duration::from_secs(20);

/// The e820 lines a report guest prints for `mib` MiB, in its format.
fn expected_e820(mib: u64) -> Vec<String> {
    e820_map(mib << 20)
        .iter()
        .map(|e| format!("e820 {:016x} {:016x} {:08x}", e.addr, e.size, e.kind))
        .collect()
}

fn e820_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.starts_with("e820 "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn elf_vmlinux_guest_reads_zero_page_cmdline_and_e820() {
    if skip_without_kvm("elf_vmlinux_guest_reads_zero_page_cmdline_and_e820") {
        return;
    }
    let out = Run::new(&tiny_guest("report64"))
        .args([
            "--memory",
            "256",
            "--cmdline",
            "console=ttyS0 tessera.test=zero-page",
        ])
        .output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("tessera-test: boot=linux64\n"), "{out}");
    assert!(
        out.stdout
            .contains("cmdline=console=ttyS0 tessera.test=zero-page\n"),
        "{out}"
    );
    assert_eq!(e820_lines(&out.stdout), expected_e820(256), "{out}");
    assert!(out.stdout.ends_with("tessera-test: done\n"), "{out}");
    assert!(
        out.stderr
            .contains("VM stopped: guest reset through the i8042"),
        "{out}"
    );
}

#[test]
fn pvh_guest_reads_start_info_cmdline_and_memmap() {
    if skip_without_kvm("pvh_guest_reads_start_info_cmdline_and_memmap") {
        return;
    }
    let out = Run::new(&tiny_guest("pvh"))
        .args(["--memory", "64", "--cmdline", "pvh says hi"])
        .output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stdout
            .contains("tessera-test: boot=pvh\nmagic=336ec578\n"),
        "{out}"
    );
    assert!(out.stdout.contains("cmdline=pvh says hi\n"), "{out}");
    assert_eq!(e820_lines(&out.stdout), expected_e820(64), "{out}");
}

#[test]
fn guest_memory_above_the_mmio_gap_is_reported_at_4_gib() {
    if skip_without_kvm("guest_memory_above_the_mmio_gap_is_reported_at_4_gib") {
        return;
    }
    // Memory is mapped lazily: a 4 GiB guest costs only the pages it touches.
    let out = Run::new(&tiny_guest("report64"))
        .args(["--memory", "4096"])
        .output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    let lines = e820_lines(&out.stdout);
    assert_eq!(lines, expected_e820(4096), "{out}");
    assert_eq!(
        lines.last().unwrap(),
        "e820 0000000100000000 0000000040000000 00000001"
    );
}

#[test]
fn boot_done_port_is_logged_with_time_since_start() {
    if skip_without_kvm("boot_done_port_is_logged_with_time_since_start") {
        return;
    }
    let out = Run::new(&tiny_guest("reset64")).output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("guest boot-done: value 0x01 at "))
        .unwrap_or_else(|| panic!("no boot-done line\n{out}"));
    let ms: f64 = line
        .split(" at ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"));
    assert!(ms > 0.0 && ms < TIMEOUT.as_secs_f64() * 1e3, "{line}");
    assert!(line.contains("monotonic_us="), "{line}");
}

#[test]
fn i8042_reset_ends_the_vm_cleanly() {
    if skip_without_kvm("i8042_reset_ends_the_vm_cleanly") {
        return;
    }
    let out = Run::new(&tiny_guest("reset64")).output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stderr
            .contains("guest requested a reset through the i8042"),
        "{out}"
    );
}

#[test]
fn triple_fault_gives_the_documented_error_and_exit_code() {
    if skip_without_kvm("triple_fault_gives_the_documented_error_and_exit_code") {
        return;
    }
    let out = Run::new(&tiny_guest("triple64")).output(TIMEOUT);
    assert_eq!(out.code, Some(201), "{out}");
    assert!(out.stdout.contains("about to triple fault"), "{out}");
    assert!(
        out.stderr.contains(
            "VM stopped: guest triple fault on vCPU 0 (the CPU shut down) (exit code 201)"
        ),
        "{out}"
    );
}

#[test]
fn four_vcpus_each_report_in() {
    if skip_without_kvm("four_vcpus_each_report_in") {
        return;
    }
    let out = Run::new(&tiny_guest("smp64"))
        .args(["--vcpus", "4"])
        .output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("mptable cpus=04\n"), "{out}");
    let mut aps: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("cpu "))
        .collect();
    aps.sort();
    assert_eq!(aps, ["cpu 01 up", "cpu 02 up", "cpu 03 up"], "{out}");
    assert!(out.stdout.contains("tessera-test: all cpus up\n"), "{out}");
}

#[test]
fn sigterm_sends_ctrl_alt_del_to_the_guest() {
    if skip_without_kvm("sigterm_sends_ctrl_alt_del_to_the_guest") {
        return;
    }
    let mut child = Run::new(&tiny_guest("kbd64")).spawn();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "tessera-test: waiting for keys\n");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let out = tests::wait_with_timeout(child, TIMEOUT);
    assert_eq!(
        rest, "key 14\nkey 11\nkey e0\nkey 71\ntessera-test: done\n",
        "{out}"
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stderr.contains("sent Ctrl-Alt-Del to the guest"),
        "{out}"
    );
}

#[test]
fn sigint_stops_a_running_guest_with_130() {
    if skip_without_kvm("sigint_stops_a_running_guest_with_130") {
        return;
    }
    let child = Run::new(&tiny_guest("idle64")).spawn();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = tests::wait_with_timeout(child, TIMEOUT);
    assert_eq!(out.code, Some(130), "{out}");
    assert!(
        out.stderr.contains("VM stopped: VMM stopped by signal 2"),
        "{out}"
    );
}

#[test]
fn console_output_can_go_to_a_file() {
    if skip_without_kvm("console_output_can_go_to_a_file") {
        return;
    }
    let file = std::env::temp_dir().join(format!("tessera-console-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let out = Run::new(&tiny_guest("report64"))
        .arg("--console-output")
        .arg(&file)
        .output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stdout, "", "{out}");
    let console = std::fs::read_to_string(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(
        console.contains("tessera-test: boot=linux64\n"),
        "{console}"
    );
}
