//! `tessera-wasm` on modules built here: a Rust WASI program (tests/guest, built for
//! wasm32-wasip1) and `.wat` modules, one per trap. Args, env, preopens (read, write, denied
//! outside), stdio, exit codes, each limit and each trap's code, config errors.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use wasm::exit;

fn tessera_wasm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tessera-wasm"))
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(mut command: Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = command
        .stdin(Stdio::null())
        .output()
        .expect("run tessera-wasm");
    Run {
        code: status.code().expect("tessera-wasm exits, it is not killed"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// tessera-wasm [flags] GUEST -- ARGS, with a cache of its own.
fn run_guest(cache: &Path, flags: &[&str], args: &[&str]) -> Option<Run> {
    let guest = tests::wasm_guest::guest_or_skip()?;
    let mut command = tessera_wasm();
    command
        .arg("--cache")
        .arg(cache)
        .args(flags)
        .arg(guest)
        .arg("--")
        .args(args);
    Some(run(command))
}

#[test]
fn args_env_and_streams_reach_the_module() {
    let cache = tempfile::tempdir().unwrap();
    let Some(out) = run_guest(
        cache.path(),
        &["-e", "A=1", "-e", "B=two"],
        &["args", "x", "y z"],
    ) else {
        return;
    };
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "wasm-test-guest.wasm args x y z\n");
    let out = run_guest(cache.path(), &["-e", "A=1", "-e", "B=two"], &["env"]).unwrap();
    assert_eq!(
        out.stdout, "A=1 B=two\n",
        "the host's environment stays out"
    );
    let out = run_guest(cache.path(), &[], &["streams"]).unwrap();
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("to stdout\n", "to stderr\n")
    );
    let out = run_guest(cache.path(), &["--stdin", "some text"], &["stdin"]).unwrap();
    assert_eq!(out.stdout, "SOME TEXT");
    // The first run compiled the module into the cache; the others only loaded it.
    let cached: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(cached.len(), 1, "one compiled module: {cached:?}");
}

#[test]
fn preopens_are_read_write_or_read_only_and_nothing_outside_is_reachable() {
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("in.txt"), "input\n").unwrap();
    let outside = data
        .path()
        .parent()
        .unwrap()
        .join(format!("tessera-wasm-outside-{}", std::process::id()));
    std::fs::write(&outside, "secret\n").unwrap();
    let dir = format!("{}::/data", data.path().display());
    let Some(out) = run_guest(cache.path(), &["--dir", &dir], &["cat", "/data/in.txt"]) else {
        return;
    };
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "input\n"),
        "{}",
        out.stderr
    );
    let out = run_guest(
        cache.path(),
        &["--dir", &dir],
        &["write", "/data/out.txt", "hi"],
    )
    .unwrap();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(data.path().join("out.txt")).unwrap(),
        "hi"
    );
    let name = outside.file_name().unwrap().to_str().unwrap();
    let escape = format!("/data/../{name}");
    let out = run_guest(cache.path(), &["--dir", &dir], &["cat", &escape]).unwrap();
    assert_eq!(
        out.code, 3,
        "a .. out of the preopen is refused: {}",
        out.stdout
    );
    let read_only = format!("{dir}:ro");
    let out = run_guest(
        cache.path(),
        &["--dir", &read_only],
        &["write", "/data/new", "x"],
    )
    .unwrap();
    assert_eq!(out.code, 3, "a read-only preopen refuses writes");
    assert!(!data.path().join("new").exists());
    let out = run_guest(
        cache.path(),
        &["--dir", &read_only],
        &["cat", "/data/in.txt"],
    )
    .unwrap();
    assert_eq!(out.stdout, "input\n", "and still reads");
    let out = run_guest(cache.path(), &[], &["cat", "/etc/passwd"]).unwrap();
    assert_eq!(out.code, 3, "no preopen, no host file");
    std::fs::remove_file(&outside).unwrap();
}

#[test]
fn exit_codes_pass_through_and_limits_stop_a_runaway_module() {
    let cache = tempfile::tempdir().unwrap();
    let Some(out) = run_guest(cache.path(), &[], &["exit", "42"]) else {
        return;
    };
    assert_eq!(out.code, 42);
    let out = run_guest(cache.path(), &["--fuel", "1000000"], &["spin"]).unwrap();
    assert_eq!(out.code, i32::from(exit::OUT_OF_FUEL), "{}", out.stderr);
    assert!(out.stderr.contains("ran out of fuel"), "{}", out.stderr);
    let out = run_guest(cache.path(), &["--timeout", "300"], &["spin"]).unwrap();
    assert_eq!(out.code, i32::from(exit::TIMEOUT), "{}", out.stderr);
    assert!(out.stderr.contains("wall-time limit"), "{}", out.stderr);
    let limit = (16u64 << 20).to_string();
    let out = run_guest(cache.path(), &["--memory-limit", &limit], &["grow"]).unwrap();
    assert_eq!(
        out.code,
        i32::from(exit::MEMORY_OVER_LIMIT),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("its limit is 16777216"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.starts_with("..."), "it ran until the limit");
}

/// A `_start` whose body is `body`, with a memory, a table of 2 (slot 0 empty, slot 1 a
/// function of another type) and what the traps need.
fn trap_module(body: &str) -> String {
    format!(
        r#"(module
  (type $v (func))
  (type $i (func (param i32)))
  (memory 1)
  (table 2 funcref)
  (elem (i32.const 1) $takes_i32)
  (func $takes_i32 (param i32))
  (func $deep (call $deep))
  (func (export "_start") {body}))"#
    )
}

#[test]
fn each_trap_kind_has_its_blockless_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("(call $deep)", exit::STACK_OVERFLOW),
        (
            "(drop (i32.load (i32.const 70000)))",
            exit::MEMORY_OUT_OF_BOUNDS,
        ),
        (
            "(call_indirect (type $v) (i32.const 5))",
            exit::TABLE_OUT_OF_BOUNDS,
        ),
        (
            "(call_indirect (type $v) (i32.const 0))",
            exit::UNINITIALIZED_ELEMENT,
        ),
        (
            "(call_indirect (type $v) (i32.const 1))",
            exit::SIGNATURE_MISMATCH,
        ),
        (
            "(drop (i32.div_s (i32.const -2147483648) (i32.const -1)))",
            exit::INTEGER_OVERFLOW,
        ),
        (
            "(drop (i32.div_u (i32.const 1) (i32.const 0)))",
            exit::DIVIDE_BY_ZERO,
        ),
        (
            "(drop (i32.trunc_f32_s (f32.const nan)))",
            exit::BAD_CONVERSION,
        ),
        ("(unreachable)", exit::UNREACHABLE),
        ("(nop)", exit::OK),
    ];
    for (i, (body, code)) in cases.iter().enumerate() {
        let module = dir.path().join(format!("trap{i}.wat"));
        std::fs::write(&module, trap_module(body)).unwrap();
        let mut command = tessera_wasm();
        command.arg("--no-cache").arg(&module);
        let out = run(command);
        assert_eq!(out.code, i32::from(*code), "{body}: {}", out.stderr);
        if *code != exit::OK {
            assert!(out.stderr.contains("wasm trap"), "{body}: {}", out.stderr);
        }
    }
}

#[test]
fn blockless_configs_run_and_their_errors_are_128() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("main.wat");
    std::fs::write(&module, trap_module("(nop)")).unwrap();
    let md5 = {
        use md5::Digest as _;
        hex::encode(md5::Md5::digest(std::fs::read(&module).unwrap()))
    };
    let config = |json: serde_json::Value| {
        let path = dir.path().join("bls.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let mut command = tessera_wasm();
        command.arg("--no-cache").arg(&path);
        run(command)
    };
    let module_path = module.to_str().unwrap();
    let out = config(serde_json::json!({
        "version": 1, "entry": "_start", "limited_fuel": 100000,
        "modules": [{"file": module_path, "name": "main", "type": "entry", "md5": md5}],
    }));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = config(serde_json::json!({
        "version": 1, "entry": "_start",
        "modules": [{"file": module_path, "name": "main", "type": "entry", "md5": "00"}],
    }));
    assert_eq!(out.code, i32::from(exit::CONFIG_ERROR));
    assert!(out.stderr.contains("md5"), "{}", out.stderr);
    let out = config(serde_json::json!({"entry": module_path, "limited_fule": 5}));
    assert_eq!(out.code, i32::from(exit::CONFIG_ERROR));
    assert!(
        out.stderr.contains("unknown field `limited_fule`"),
        "{}",
        out.stderr
    );
    let out = config(serde_json::json!({"entry": module_path, "run_time": "soon"}));
    assert_eq!(out.code, i32::from(exit::CONFIG_ERROR), "{}", out.stderr);
    assert!(out.stderr.contains("bls.json"), "{}", out.stderr);
}

/// A CGI extension directory: `upper` (verified: upper-cases `$GREETING $1 LINE`), `rogue`
/// (answers --ext_verify without is_cgi) and a file that is not executable.
fn extensions() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let script = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(
        "upper",
        "#!/bin/sh\nif [ \"$1\" = --ext_verify ]; then\n  echo '{\"alias\": \"upper\", \"description\": \"upper-cases a line\", \"is_cgi\": true}'\n  exit 0\nfi\nread -r line\necho \"$GREETING $1 $line\" | tr a-z A-Z\n",
    );
    script(
        "rogue",
        "#!/bin/sh\necho '{\"alias\": \"rogue\", \"description\": \"x\", \"is_cgi\": false}'\n",
    );
    std::fs::write(dir.path().join("notes.txt"), "not an extension").unwrap();
    dir
}

#[test]
fn a_cgi_extension_round_trips_data_and_an_unverified_one_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let ext = extensions();
    let ext_dir = ext.path().to_str().unwrap();
    for sandbox in [&[][..], &["--sandbox"][..]] {
        let flags = [sandbox, &["--ext", ext_dir]].concat();
        let Some(out) = run_guest(cache.path(), &flags, &["cgi-list"]) else {
            return;
        };
        assert_eq!(out.code, 0, "{sandbox:?}: {}", out.stderr);
        let listing: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        let aliases: Vec<&str> = listing
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["alias"].as_str().unwrap())
            .collect();
        assert_eq!(aliases, ["upper"], "only the verified extension is listed");
        assert_eq!(listing[0]["fileName"], "upper");
        let out = run_guest(cache.path(), &flags, &["cgi", "upper", "round trip"]).unwrap();
        assert_eq!(out.code, 0, "{sandbox:?}: {}", out.stderr);
        assert_eq!(out.stdout, "HI ARG1 ROUND TRIP\n", "{sandbox:?}");
        let out = run_guest(cache.path(), &flags, &["cgi", "rogue", "x"]).unwrap();
        assert_eq!(
            out.code,
            wasm::cgi::INVALID_EXTENSION,
            "{sandbox:?}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_wasi_preview_2_component_runs_with_args_env_preopens_exit_codes_and_limits() {
    let component = match tests::wasm_guest::component_guest() {
        Ok(path) => path,
        Err(why) => {
            println!("SKIPPED a_wasi_preview_2_component_runs: {why}");
            return;
        }
    };
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("note.txt"), "from the host\n").unwrap();
    let dir = format!("{}::/data", data.path().display());
    let ro = format!("{dir}:ro");
    let component_run = |flags: &[&str], args: &[&str]| {
        let mut command = tessera_wasm();
        command
            .arg("--cache")
            .arg(cache.path())
            .args(flags)
            .arg(component)
            .arg("--")
            .args(args);
        run(command)
    };
    let out = component_run(&["-e", "GREETING=hi"], &["args", "one", "two three"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "wasm-test-guest.wasm args one two three\n");
    let out = component_run(&["-e", "GREETING=hi"], &["env"]);
    assert_eq!(out.stdout, "GREETING=hi\n", "{}", out.stderr);
    // Preopens: read, write, read-only, nothing outside.
    let out = component_run(&["--dir", &dir], &["cat", "/data/note.txt"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "from the host\n"),
        "{}",
        out.stderr
    );
    let out = component_run(&["--dir", &dir], &["write", "/data/new.txt", "x"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(data.path().join("new.txt")).unwrap(),
        "x"
    );
    // The guest exits 3 on these refusals; Rust's std for wasm32-wasip2 reports any non-zero
    // exit as wasi:cli/exit's `err`, which is exit code 1 (a component calling
    // exit-with-code passes its own code).
    let out = component_run(&["--dir", &ro], &["write", "/data/other.txt", "x"]);
    assert_eq!(
        out.code, 1,
        "a read-only preopen refuses writes: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("cannot write /data/other.txt"),
        "{}",
        out.stderr
    );
    assert!(!data.path().join("other.txt").exists());
    let out = component_run(&["--dir", &dir], &["cat", "/data/../../etc/passwd"]);
    assert_eq!(out.code, 1, "`..` out of a preopen: {}", out.stdout);
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);
    let out = component_run(&[], &["cat", "/etc/passwd"]);
    assert_eq!(out.code, 1, "no preopen, no host file: {}", out.stdout);
    // Exits; limits stop it with their codes.
    assert_eq!(component_run(&[], &["exit", "0"]).code, 0);
    assert_eq!(component_run(&[], &["exit", "7"]).code, 1);
    let out = component_run(&["--fuel", "1000000"], &["spin"]);
    assert_eq!(out.code, i32::from(exit::OUT_OF_FUEL), "{}", out.stderr);
    let out = component_run(&["--timeout", "200"], &["spin"]);
    assert_eq!(out.code, i32::from(exit::TIMEOUT), "{}", out.stderr);
    // The second run of the same settings maps the cached compile.
    let cached = std::fs::read_dir(cache.path()).unwrap().count();
    component_run(&[], &["hello"]);
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), cached);
    // A component has its own entry (wasi:cli/run): --entry is a config error.
    let out = component_run(&["--entry", "main"], &["hello"]);
    assert_eq!(out.code, i32::from(exit::CONFIG_ERROR), "{}", out.stderr);
    assert!(out.stderr.contains("component"), "{}", out.stderr);
}
