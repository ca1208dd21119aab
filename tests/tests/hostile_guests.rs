//! Tiny guests that behave as a hostile guest would: one pulses the reset line ten times and
//! keeps running, one writes the boot-done port 10,000 times. None of them may run on after a
//! reset or flood the host's log.

use std::time::Duration;

use tests::{skip_without_kvm, tiny_guest, Run};

const TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn the_first_reset_pulse_stops_the_vcpu_and_is_logged_once() {
    if skip_without_kvm("the_first_reset_pulse_stops_the_vcpu_and_is_logged_once") {
        return;
    }
    let out = Run::new(&tiny_guest("rereset64")).output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    // Nothing the guest printed after its first reset write reaches the console.
    assert_eq!(out.stdout, "tessera-test: resetting ten times\n", "{out}");
    let resets = out
        .stderr
        .lines()
        .filter(|l| l.contains("guest requested a reset through the i8042"))
        .count();
    assert_eq!(resets, 1, "{out}");
    assert!(
        out.stderr
            .contains("VM stopped: guest reset through the i8042"),
        "{out}"
    );
}

fn boot_done_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("boot-done")).collect()
}

#[test]
fn ten_thousand_boot_done_writes_log_one_line() {
    if skip_without_kvm("ten_thousand_boot_done_writes_log_one_line") {
        return;
    }
    let out = Run::new(&tiny_guest("bootspam64")).output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(out.stdout, "tessera-test: done\n", "{out}");
    let lines = boot_done_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains("guest boot-done: value 0x01 at "),
        "{out}"
    );

    // At the debug level the repeats show, rate-limited: a burst, then one line a second.
    let out = Run::new(&tiny_guest("bootspam64"))
        .args(["--log-level", "debug"])
        .output(TIMEOUT);
    assert_eq!(out.code, Some(0), "{out}");
    let lines = boot_done_lines(&out.stderr);
    let limit = devices::log_limit::BURST as usize + 1 + 10;
    assert!(
        (2..=limit).contains(&lines.len()),
        "{} boot-done lines (at most {limit} expected)\n{out}",
        lines.len()
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("guest boot-done: value"))
            .count(),
        1,
        "{out}"
    );
}
