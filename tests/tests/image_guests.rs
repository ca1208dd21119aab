//! `tessera run --image` with a real Linux guest in the nested test host: the busybox-static
//! image (built and imported here, its store packed into the host) becomes the command's root,
//! read-only under a tmpfs overlay, with the image's Env, WorkingDir and Cmd. Boots its own host
//! (the store and `tessera-image` are packed into it), or prints a SKIPPED line.

use std::time::Duration;

use tests::images::{
    busybox_store_for_host, busybox_unavailable, BUSYBOX_IMAGE, DEFAULT_CMD_OUTPUT, MOTD,
};
use tests::test_host::{HostFiles, HostOptions, TestHost};

const GUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The store's place in the host: the default cache of root, beside the guest kernel.
const HOST_STORE: &str = "/root/.cache/tessera/images";

#[test]
fn an_image_becomes_the_commands_root_with_its_env_workdir_cmd_and_users() {
    let test = "an_image_becomes_the_commands_root_with_its_env_workdir_cmd_and_users";
    if let Some(why) = busybox_unavailable() {
        println!("SKIPPED {test}: {why}");
        return;
    }
    let bin_dir = tests::bin_dir();
    let files = match HostFiles::find(&bin_dir) {
        Ok(files) => files,
        Err(why) => {
            println!("SKIPPED {test}: {why}");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("tessera-image-guests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let extra_files = busybox_store_for_host(&dir, HOST_STORE);
    let options = HostOptions {
        extra_files,
        ..HostOptions::default()
    };
    let mut host = TestHost::boot(&files, &options)
        .unwrap_or_else(|e| panic!("the test host did not boot: {e}"));
    // The guest's console turns each newline into CR LF: compare without the CRs.
    let mut run = |command: &str| {
        let mut out = host
            .run(command, GUEST_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        out.output = out.output.replace('\r', "");
        out
    };

    // The image's Cmd, Env and WorkingDir; its files; writes land in the overlay.
    let out = run(&format!(
        "tessera run --image {BUSYBOX_IMAGE} -- sh -c 'cat motd; pwd; echo PATH=$PATH; \
         echo written > /etc/new; cat /etc/new; ls /bin/busybox; id -u'"
    ));
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains(MOTD), "{out}");
    assert!(out.output.contains("/etc\n"), "{out}");
    assert!(out.output.contains("PATH=/bin\n"), "{out}");
    assert!(out.output.contains("written\n"), "{out}");
    assert!(out.output.contains("/bin/busybox\n"), "{out}");
    // The initramfs is gone from view: no tessera-init, no /.tessera.
    let out = run(&format!(
        "tessera run --image {BUSYBOX_IMAGE} -- sh -c 'ls /.tessera /init 2>&1; exit 7'"
    ));
    assert_eq!(out.status, 7, "{out}");
    assert!(!out.output.contains("spec.json"), "{out}");
    // Without a command: the image's own Cmd.
    let out = run(&format!("tessera run --image {BUSYBOX_IMAGE}"));
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains(DEFAULT_CMD_OUTPUT), "{out}");
    // -w and -e over the image's.
    let out = run(&format!(
        "tessera run --image {BUSYBOX_IMAGE} -w /bin -e PATH=/bin:/sbin -- sh -c 'pwd; echo $PATH'"
    ));
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains("/bin\n/bin:/sbin\n"), "{out}");
    // -u: a name with its primary and supplementary groups, numbers, a user the image lacks.
    let out = run(&format!(
        "tessera run --image {BUSYBOX_IMAGE} -- cat /etc/passwd /etc/group"
    ));
    assert!(out.output.contains("app:x:1000"), "{out}");
    let out = run(&format!(
        "tessera run --image {BUSYBOX_IMAGE} -u app -- sh -c 'id -u; id -G; echo HOME=$HOME'"
    ));
    assert_eq!(out.status, 0, "{out}");
    assert!(
        out.output.contains("1000\n1000 10\nHOME=/home/app\n"),
        "{out}"
    );
    let out = run(&format!(
        "tessera run --image {BUSYBOX_IMAGE} -u 1000:10 -- sh -c 'id -u; id -g'"
    ));
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains("1000\n10\n"), "{out}");
    let out = run(&format!(
        "tessera run --image {BUSYBOX_IMAGE} -u ghost -- true"
    ));
    assert_eq!(out.status, 125, "{out}");
    assert!(
        out.output
            .contains("user \"ghost\" is not in the image's /etc/passwd"),
        "{out}"
    );
    // An image not in the store: one line.
    let out = run("tessera run --image nope:1 -- true");
    assert_eq!(out.status, 1, "{out}");
    assert!(
        out.output
            .contains("--image nope:1: no image \"nope:1\" in the store"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
