//! One workload spec, two isolation levels: the busybox image and a Wasm module run in the host
//! sandbox (on this machine) and in a microVM (in the nested test host) give the same stdout,
//! the same stderr and the same exit code: echo, env/cwd/user, exit 3, a signal, a read-only
//! volume read, a read-write volume written. Then the policy's confinement at the microVM
//! level, each case ending inside the guest. Boots its own test host, or prints a SKIPPED line.
//!
//! What the runtimes say of their own (lines starting `tessera:` or `tessera-init:`, such as
//! "killed by signal 10") is not the workload's output and is left out of the comparison.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tests::images::{
    busybox_docker_save, busybox_store_for_host, busybox_unavailable, BUSYBOX_IMAGE,
};
use tests::tessera_bin;
use tests::test_host::{HostFiles, HostOptions, HostOutput, TestHost};
use tests::wasm_guest::{host_files, HOST_GUEST};

const GUEST_TIMEOUT: Duration = Duration::from_secs(180);
const HOST_STORE: &str = "/root/.cache/tessera/images";

/// What a run gave: exit code, stdout, stderr (the workload's lines only; all of it in `raw`,
/// for messages).
#[derive(Debug)]
struct Result {
    code: i32,
    stdout: String,
    stderr: String,
    raw: String,
}

impl PartialEq for Result {
    fn eq(&self, other: &Self) -> bool {
        (self.code, &self.stdout, &self.stderr) == (other.code, &other.stdout, &other.stderr)
    }
}

fn workload_lines(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.starts_with("tessera:") && !l.starts_with("tessera-init:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `tessera run --isolation sandbox ARGS` here.
fn sandbox(cache: &Path, args: &[String]) -> Result {
    let out = Command::new(tessera_bin())
        .args(["run", "--isolation", "sandbox"])
        .args(args)
        .env("TESSERA_CACHE", cache)
        .output()
        .unwrap();
    Result {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: workload_lines(&String::from_utf8_lossy(&out.stderr)),
        raw: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The same in the test host's microVM, `args` quoted for its shell.
fn microvm(run: &mut impl FnMut(&str) -> HostOutput, args: &[String]) -> Result {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let out = run(&format!(
        "tessera run --isolation microvm {} >/tmp/o 2>/tmp/e; echo \"@@RC=$?\"; echo @@O; cat /tmp/o; echo @@E; cat /tmp/e; echo @@END",
        quoted.join(" ")
    ));
    let text = out.output;
    let between = |from: &str, to: &str| -> String {
        let start = text.find(from).map(|i| i + from.len()).unwrap_or(0);
        let end = text[start..].find(to).map_or(text.len(), |i| start + i);
        text[start..end].to_string()
    };
    let code = between("@@RC=", "\n").trim().parse().unwrap_or(-1);
    Result {
        code,
        stdout: between("@@O\n", "@@E\n"),
        stderr: workload_lines(&between("@@E\n", "@@END")),
        raw: text.clone(),
    }
}

/// The same run's arguments here and in the test host (paths differ).
type Pair = (Vec<String>, Vec<String>);

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn the_same_spec_gives_the_same_result_in_the_sandbox_and_in_a_microvm() {
    let test = "the_same_spec_gives_the_same_result_in_the_sandbox_and_in_a_microvm";
    if let Some(why) = busybox_unavailable() {
        println!("SKIPPED {test}: {why}");
        return;
    }
    let Some(module) = tests::wasm_guest::guest_or_skip() else {
        return;
    };
    let bin_dir = tests::bin_dir();
    let dir = std::env::temp_dir().join(format!("tessera-levels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let found =
        HostFiles::find(&bin_dir).and_then(|files| Ok((files, host_files(&bin_dir, &dir)?)));
    let (files, mut extra_files) = match found {
        Ok(found) => found,
        Err(why) => {
            println!("SKIPPED {test}: {why}");
            return;
        }
    };
    for (from, to) in busybox_store_for_host(&dir, HOST_STORE) {
        if !extra_files.iter().any(|(_, there)| *there == to) {
            extra_files.push((from, to));
        }
    }
    let probe = PathBuf::from(env!("CARGO_BIN_EXE_sandbox-probe"));
    extra_files.push((probe.clone(), "/root/probe/sandbox-probe".into()));
    // This machine's store, from the same image tar.
    let cache = dir.join("cache");
    let save = busybox_docker_save(&dir);
    let imported = Command::new(tessera_bin())
        .args(["image", "import"])
        .arg(&save)
        .env("TESSERA_CACHE", &cache)
        .output()
        .unwrap();
    assert!(imported.status.success(), "{imported:?}");
    let local_volume = dir.join("volume");
    std::fs::create_dir_all(&local_volume).unwrap();
    std::fs::write(local_volume.join("in.txt"), "from the host\n").unwrap();
    // The sandbox's root is a mapped uid (see sandbox_level.rs).
    std::fs::set_permissions(
        &local_volume,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let local_probe = dir.join("probe");
    std::fs::create_dir_all(&local_probe).unwrap();
    std::fs::copy(&probe, local_probe.join("sandbox-probe")).unwrap();

    let options = HostOptions {
        extra_files,
        ..HostOptions::default()
    };
    let mut host = TestHost::boot(&files, &options)
        .unwrap_or_else(|e| panic!("the test host did not boot: {e}"));
    let mut run = |command: &str| {
        let mut out = host
            .run(command, GUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        out.output = out.output.replace('\r', "");
        out
    };
    let setup = run("mkdir -p /root/volume && echo 'from the host' > /root/volume/in.txt");
    assert_eq!(setup.status, 0, "{setup}");

    let image = |flags: &[&str], cmd: &str| -> Pair {
        let mut args = s(flags);
        args.extend(s(&["--image", BUSYBOX_IMAGE, "--", "/bin/sh", "-c", cmd]));
        let local: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("@VOLUME", local_volume.to_str().unwrap())
                    .replace("@PROBE", local_probe.to_str().unwrap())
            })
            .collect();
        let remote: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("@VOLUME", "/root/volume")
                    .replace("@PROBE", "/root/probe")
            })
            .collect();
        (local, remote)
    };
    // (case, (arguments here, arguments in the test host), exit code)
    let cases: Vec<(&str, Pair, i32)> = vec![
        ("echo", image(&[], "echo hello; echo to stderr >&2"), 0),
        (
            "env, cwd, user",
            image(
                &["-e", "X=1 2", "-w", "/bin", "-u", "app"],
                "echo \"$X\"; pwd; id; echo $HOME",
            ),
            0,
        ),
        ("root", image(&[], "id; hostname"), 0),
        ("exit 3", image(&[], "echo bye; exit 3"), 3),
        ("a signal", image(&[], "kill -USR1 $$; sleep 5"), 138),
        (
            "read-only volume",
            image(
                &["-v", "@VOLUME:/data:ro"],
                "cat /data/in.txt; echo x > /data/no.txt",
            ),
            1,
        ),
        (
            "read-write volume",
            image(
                &["-v", "@VOLUME:/data"],
                "cat /data/in.txt; echo written > /data/out.txt",
            ),
            0,
        ),
    ];
    for (name, (local, remote), code) in &cases {
        let here = sandbox(&cache, local);
        let there = microvm(&mut run, remote);
        assert_eq!(here.code, *code, "{name}: sandbox {here:?}");
        assert_eq!(
            here, there,
            "{name}: sandbox (left) and microVM (right)\nsandbox: {}\nmicroVM: {}",
            here.raw, there.raw
        );
    }
    assert_eq!(
        std::fs::read_to_string(local_volume.join("out.txt")).unwrap(),
        "written\n"
    );
    let out = run("cat /root/volume/out.txt");
    assert!(out.output.contains("written\n"), "{out}");

    // The same Wasm module at both levels.
    let local_module = module.to_str().unwrap();
    for (name, args, code) in [
        ("wasm hello", vec!["hello"], 0),
        ("wasm args", vec!["args", "one", "two three"], 0),
        ("wasm exit 7", vec!["exit", "7"], 7),
    ] {
        let mut local = s(&[local_module, "--"]);
        local.extend(s(&args));
        let mut remote = s(&[HOST_GUEST, "--"]);
        remote.extend(s(&args));
        let here = sandbox(&cache, &local);
        let there = microvm(&mut run, &remote);
        assert_eq!(here.code, code, "{name}: sandbox {here:?}");
        // The module names itself by its path's file name: the same at both.
        assert_eq!(
            here, there,
            "{name}: sandbox (left) and microVM (right)\nsandbox: {}\nmicroVM: {}",
            here.raw, there.raw
        );
    }

    // Without --isolation: the strongest level this host runs, said in one line.
    let out = run(&format!("tessera run --image {BUSYBOX_IMAGE} -- true 2>&1"));
    assert_eq!(out.status, 0, "{out}");
    assert!(
        out.output.contains(
            "tessera: isolation microvm (the strongest this host runs; --isolation chooses)\n"
        ),
        "{out}"
    );

    // The policy's confinement inside the guest.
    let policies = [
        (
            "fs",
            r#"{"version":1,"filesystem":{"read_only_root":true,"read_write":["/scratch"]}}"#,
        ),
        ("pids", r#"{"version":1,"limits":{"pids":8}}"#),
        ("memory", r#"{"version":1,"limits":{"memory_mib":16}}"#),
        ("wall", r#"{"version":1,"limits":{"wall_time_s":2}}"#),
        ("default", r#"{"version":1}"#),
    ];
    for (name, json) in policies {
        let out = run(&format!("echo '{json}' > /root/{name}.json"));
        assert_eq!(out.status, 0, "{out}");
    }
    let vm = |policy: &str, cmd: &str| {
        format!(
            "tessera run --isolation microvm --policy /root/{policy}.json -v /root/probe:/probe:ro --image {BUSYBOX_IMAGE} -- sh -c '{cmd}'"
        )
    };
    let out = run(&vm(
        "fs",
        "echo ok > /scratch/a && cat /scratch/a; echo no > /etc/b",
    ));
    assert_eq!(out.status, 1, "{out}");
    assert!(
        out.output.contains("ok\n") && out.output.contains("Read-only file system"),
        "{out}"
    );
    let out = run(&vm(
        "pids",
        "for i in $(seq 20); do sleep 3 & done; wait; echo done",
    ));
    assert!(
        out.output.contains("fork") || out.output.contains("Resource temporarily unavailable"),
        "pids: {out}"
    );
    let out = run(&vm(
        "memory",
        "exec dd if=/dev/zero of=/dev/null bs=64M count=1",
    ));
    assert_eq!(out.status, 137, "memory: {out}");
    let out = run(&vm("wall", "while :; do :; done"));
    assert_eq!(out.status, 137, "wall time: {out}");
    assert!(out.output.contains("wall-time limit (2 s)"), "{out}");
    let out = run(&vm("default", "nc 127.0.0.1 9 < /dev/null"));
    assert!(
        out.output.contains("Network is unreachable"),
        "network none: {out}"
    );
    for probe in ["mount", "init-module", "unshare", "bpf", "ptrace 1"] {
        let out = run(&vm("default", &format!("/probe/sandbox-probe {probe}")));
        assert_eq!(out.status, 1, "{probe}: {out}");
        assert!(out.output.contains("refused"), "{probe}: {out}");
    }

    // A detached microVM: listed, logged, stopped (its command gets SIGTERM through
    // Ctrl-Alt-Del), removed.
    let out = run(&format!(
        "id=$(tessera run -d --name vm1 --isolation microvm --image {BUSYBOX_IMAGE} -- sh -c 'echo up; trap \"echo term; exit 9\" TERM; while :; do sleep 1; done') && \
         for i in $(seq 100); do tessera logs vm1 | grep -q up && break; sleep 0.2; done; \
         tessera ps; tessera logs $id; tessera stop vm1 >/dev/null; tessera ps -a; tessera rm vm1 >/dev/null && echo removed"
    ));
    assert!(out.output.contains("microvm   running"), "{out}");
    assert!(out.output.contains("up\n"), "{out}");
    assert!(
        out.output.contains("exited (9)"),
        "stopped with SIGTERM: {out}"
    );
    assert!(out.output.contains("removed"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
