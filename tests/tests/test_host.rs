//! The nested test host's own contract for a command that runs past its limit: the host says what
//! the command left, kills all of it (what it started in the background included), reports 137,
//! and takes no further commands. Boots its own host (~12 s), or prints a SKIPPED line.

use std::time::Duration;

use tests::test_host::{HostFiles, HostOptions, TestHost};

#[test]
fn a_command_past_its_limit_is_reported_then_killed_with_all_it_started() {
    let test = "a_command_past_its_limit_is_reported_then_killed_with_all_it_started";
    let files = match HostFiles::find(&tests::bin_dir()) {
        Ok(files) => files,
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            return;
        }
    };
    let mut host = TestHost::boot(&files, &HostOptions::default())
        .unwrap_or_else(|e| panic!("the test host did not boot: {e}"));
    let out = host
        .run(
            "sleep 301 & echo started; sleep 302",
            Duration::from_secs(3),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status, 137, "{out}");
    let (before, report) = out
        .output
        .split_once("@@TH-TIMEOUT:")
        .unwrap_or_else(|| panic!("no timeout report\n{out}"));
    assert!(before.contains("started"), "{out}");
    // Both sleeps were there when the limit came, with their kernel state...
    for sleep in ["sleep 301", "sleep 302"] {
        assert!(report.contains(&format!(": {sleep}")), "{sleep}\n{out}");
    }
    assert!(report.contains("wchan=hrtimer_nanosleep"), "{out}");
    // ...and neither outlived SIGKILL (the host would list it as stuck after 30 s).
    assert!(!report.contains("@@TH-STUCK:"), "{out}");
    assert!(
        report.contains("--- the host's kernel log while the command ran"),
        "{out}"
    );
    // A host whose command timed out is not trusted with another.
    let refused = host.run("true", Duration::from_secs(10));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("ran past its limit")),
        "{refused:?}"
    );
}
