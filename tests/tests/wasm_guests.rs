//! One Wasm module at two isolation levels in the nested test host: `tessera run --isolation
//! sandbox` (a confined process on the host) and `--isolation microvm` (a real Linux guest
//! booted from the Wasm initramfs, the runner under tessera-init) give the same output and the
//! same exit code, and a read-write `--dir` is written back from the microVM. Boots its own
//! host, or prints a SKIPPED line.
//!
//! The host gets the release runner (`tests::wasm_guest::host_files` says why and checks that it
//! is not older than its sources).

use std::time::Duration;

use tests::test_host::{HostFiles, HostOptions, TestHost};
use tests::wasm_guest::{host_files, HOST_GUEST as MODULE};

const GUEST_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn a_module_gives_the_same_output_and_exit_code_in_the_sandbox_and_in_a_microvm() {
    let test = "a_module_gives_the_same_output_and_exit_code_in_the_sandbox_and_in_a_microvm";
    if tests::wasm_guest::guest_or_skip().is_none() {
        return;
    }
    let bin_dir = tests::bin_dir();
    let dir = std::env::temp_dir().join(format!("tessera-wasm-guests-{}", std::process::id()));
    let found =
        HostFiles::find(&bin_dir).and_then(|files| Ok((files, host_files(&bin_dir, &dir)?)));
    let (files, extra_files) = match found {
        Ok(found) => found,
        Err(why) => {
            println!("SKIPPED {test}: {why}");
            return;
        }
    };
    let options = HostOptions {
        extra_files,
        ..HostOptions::default()
    };
    let mut host = TestHost::boot(&files, &options)
        .unwrap_or_else(|e| panic!("the test host did not boot: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut run = |command: &str| {
        let mut out = host
            .run(command, GUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        // A guest console turns newlines into CR LF.
        out.output = out.output.replace('\r', "");
        out
    };
    let setup = run("mkdir -p /root/in /root/out-sandbox /root/out-microvm && echo from the host > /root/in/note.txt");
    assert_eq!(setup.status, 0, "{setup}");

    // (flags, module arguments, exit code, what the output holds)
    let cases = [
        ("", "hello", 0, "hello from wasm\n"),
        (
            "",
            "args one 'two three'",
            0,
            "wasm-test-guest.wasm args one two three\n",
        ),
        ("-e GREETING=hi -e EMPTY=", "env", 0, "EMPTY= GREETING=hi\n"),
        (
            "--dir /root/in::/in:ro",
            "cat /in/note.txt",
            0,
            "from the host\n",
        ),
        (
            "--dir /root/in::/in:ro",
            "write /in/new.txt x",
            3,
            "cannot write /in/new.txt",
        ),
        (
            "--dir /root/in::/in:ro",
            "cat /in/../etc/passwd",
            3,
            "cannot read /in/../etc/passwd",
        ),
        ("", "cat /etc/passwd", 3, "cannot read /etc/passwd"),
        ("", "exit 7", 7, ""),
        ("", "stdin", 0, ""),
        ("--fuel 1000000", "spin", 1, "fuel"),
    ];
    for (flags, args, code, holds) in cases {
        let sandbox = run(&format!(
            "tessera run --isolation sandbox {flags} {MODULE} -- {args}"
        ));
        let microvm = run(&format!(
            "tessera run --isolation microvm {flags} {MODULE} -- {args}"
        ));
        assert_eq!(sandbox.status, code, "sandbox, {flags} {args}: {sandbox}");
        assert!(sandbox.output.contains(holds), "sandbox, {args}: {sandbox}");
        assert_eq!(
            (microvm.status, &microvm.output),
            (sandbox.status, &sandbox.output),
            "{flags} {args}: the microVM's run differs from the sandbox's\nsandbox: {sandbox}\nmicrovm: {microvm}"
        );
    }

    // A read-write directory: the module's write reaches the host's directory at both levels.
    for level in ["sandbox", "microvm"] {
        let out = run(&format!(
            "tessera run --isolation {level} --dir /root/out-{level}::/out {MODULE} -- write /out/result.txt from-{level} && cat /root/out-{level}/result.txt"
        ));
        assert_eq!(out.status, 0, "{level}: {out}");
        assert!(
            out.output.ends_with(&format!("from-{level}")),
            "{level}: {out}"
        );
    }
    // The host's cache holds the module's forms (without fuel and with, for this CPU and for
    // the microVM's baseline), each compiled once; a microVM that had to compile for itself
    // would have said so on stderr, which the comparisons above would have caught.
    let cache = run("ls /root/.cache/tessera/wasm | wc -l");
    assert_eq!(cache.output.trim(), "4", "{cache}");
}
