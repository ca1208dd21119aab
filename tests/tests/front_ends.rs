//! One launch path: `tessera run` and the REST API check a configuration with the same setters,
//! so they refuse the same bad input with the same message. Neither needs /dev/kvm: every case
//! is refused before a VM is created.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tests::api_client::{TempDir, Tessera};
use tests::{tiny_guest, Run};

/// A bad input as `tessera run` flags and as the REST request that says the same.
struct Case {
    flags: Vec<String>,
    method: &'static str,
    path: &'static str,
    body: serde_json::Value,
}

fn case(flags: &[&str], method: &'static str, path: &'static str, body: serde_json::Value) -> Case {
    Case {
        flags: flags.iter().map(|f| f.to_string()).collect(),
        method,
        path,
        body,
    }
}

/// `tessera run --kernel KERNEL FLAGS...`: its one error line, without the `tessera: error: `.
fn run_error(kernel: &Path, flags: &[String]) -> String {
    let out = Run::new(kernel).args(flags).output(Duration::from_secs(20));
    assert_eq!(out.code, Some(1), "{flags:?}: {out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{flags:?}: expected one line of error\n{out}"
    );
    lines[0]
        .strip_prefix("tessera: error: ")
        .unwrap_or_else(|| panic!("{flags:?}: not a tessera error line: {}", lines[0]))
        .to_string()
}

#[test]
fn run_and_rest_refuse_the_same_input_with_the_same_message() {
    let kernel = tiny_guest("reset64");
    let kernel_str = kernel.display().to_string();
    let long_cmdline = "x".repeat(2048);
    let cases = [
        case(
            &["--vcpus", "0"],
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 0, "mem_size_mib": 128}),
        ),
        case(
            &["--vcpus", "33"],
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 33, "mem_size_mib": 128}),
        ),
        case(
            &["--memory", "4"],
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 4}),
        ),
        case(
            &["--cmdline", &long_cmdline],
            "PUT",
            "/boot-source",
            json!({"kernel_image_path": kernel_str, "boot_args": long_cmdline}),
        ),
        case(
            &["--initrd", "/nonexistent/initrd.img"],
            "PUT",
            "/boot-source",
            json!({"kernel_image_path": kernel_str, "initrd_path": "/nonexistent/initrd.img"}),
        ),
        case(
            &["--disk", "/nonexistent/disk.img"],
            "PUT",
            "/drives/disk0",
            json!({"drive_id": "disk0", "path_on_host": "/nonexistent/disk.img",
                   "is_root_device": false, "is_read_only": false}),
        ),
        case(
            &["--net", "tap=tap0,mac=01:00:00:00:00:01"],
            "PUT",
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "tap0",
                   "guest_mac": "01:00:00:00:00:01"}),
        ),
        case(
            &["--vsock", "cid=2,uds=/tmp/tessera-front-ends.sock"],
            "PUT",
            "/vsock",
            json!({"guest_cid": 2, "uds_path": "/tmp/tessera-front-ends.sock"}),
        ),
    ];

    let dir = TempDir::new("front-ends");
    let socket = dir.join("api.sock");
    let mut vmm = Tessera::spawn_api(&socket);
    let mut client = vmm.client();
    for case in &cases {
        let from_run = run_error(&kernel, &case.flags);
        let response = client.request(case.method, case.path, Some(&case.body.to_string()));
        assert_eq!(
            response.status, 400,
            "{} {}: {response}",
            case.method, case.path
        );
        assert_eq!(
            from_run,
            response.fault_message(),
            "`tessera run {}` and {} {} disagree",
            case.flags.join(" "),
            case.method,
            case.path
        );
    }
    // The kernel itself, named by the run flag and by the boot source alike.
    let missing = Path::new("/nonexistent/vmlinux");
    let from_run = run_error(missing, &[]);
    let response = client.put(
        "/boot-source",
        &json!({"kernel_image_path": missing}).to_string(),
    );
    assert_eq!(response.status, 400, "{response}");
    assert_eq!(from_run, response.fault_message());
}
