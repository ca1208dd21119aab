//! The VM's teardown keeper (`vmm::runtime::teardown`): tessera's exit status is seen as soon as
//! the guest resets, the keeper holds none of tessera's stdio, and it ends by itself, freeing
//! the VM, once tessera has exited.
//!
//! One test per file on purpose: the test makes its process a child subreaper and reaps every
//! orphan it adopts, which must not race other tests' children.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::{skip_without_kvm, tessera_bin, tiny_guest};

/// Runs `tessera run --kernel reset64 EXTRA...` to its exit, reading its stdout and stderr to
/// end-of-file; returns the exit statuses of the orphans adopted meanwhile (the keeper), reaped
/// within a few seconds.
fn orphans_of_a_run(extra: &[&str]) -> Vec<i32> {
    let mut child = Command::new(tessera_bin())
        .args(extra)
        .arg("run")
        .arg("--kernel")
        .arg(tiny_guest("reset64"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
    });
    let mut log = String::new();
    // End-of-file on both pipes: the keeper must not hold tessera's stdio.
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .expect("read the log");
    reader.join().unwrap();
    let status = child.wait().expect("wait for tessera");
    assert!(status.success(), "tessera failed: {status}\n{log}");
    assert!(log.contains("VM stopped: guest reset"), "{log}");

    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut status = 0;
        // SAFETY: reaps any child without blocking; `status` outlives the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            assert!(
                libc::WIFEXITED(status),
                "the orphan {pid} was killed: {status:#x}"
            );
            statuses.push(libc::WEXITSTATUS(status));
            continue;
        }
        // ECHILD: nothing left to wait for.
        if pid < 0 || Instant::now() > deadline {
            return statuses;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_keeper_frees_the_vm_after_tessera_exits_and_holds_no_stdio() {
    if skip_without_kvm("the_keeper_frees_the_vm_after_tessera_exits_and_holds_no_stdio") {
        return;
    }
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);

    // With the built-in filters and without any: one keeper, ended by itself with status 0.
    assert_eq!(orphans_of_a_run(&[]), vec![0]);
    assert_eq!(orphans_of_a_run(&["--no-seccomp"]), vec![0]);

    // A custom filter may not allow the keeper's system calls: tessera tears the VM down itself.
    let builtin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/seccomp/x86_64.json");
    let builtin = builtin.to_str().expect("a UTF-8 path");
    assert_eq!(
        orphans_of_a_run(&["--seccomp-filter", builtin]),
        Vec::<i32>::new()
    );
}
