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
    streams_volumes_and_limits(&mut run);

    // An image not in the store: one line.
    let out = run("tessera run --pull never --image nope:1 -- true");
    assert_eq!(out.status, 1, "{out}");
    assert!(
        out.output
            .contains("--image nope:1: no image \"nope:1\" in the store"),
        "{out}"
    );
    // Not in the store: pulled first, which fails here in one line (the test host has no CA
    // certificates; with them, no registry answers on port 9).
    let out = run("tessera run --image 127.0.0.1:9/nope:1 -- true");
    assert_eq!(out.status, 1, "{out}");
    assert!(
        out.output.contains("no CA certificates on this machine")
            || out.output.contains("registry 127.0.0.1:9 is unreachable"),
        "{out}"
    );
    assert!(
        out.output
            .contains("--image 127.0.0.1:9/nope:1: not in the store, and the pull failed"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The command's streams (apart, no kernel lines, stdin only with -i, a terminal with -t), the
/// read-only image disk, volumes, the scratch disk, ulimits, a missing program, out of memory.
fn streams_volumes_and_limits(run: &mut impl FnMut(&str) -> tests::test_host::HostOutput) {
    let image = BUSYBOX_IMAGE;
    // stdout and stderr each hold exactly what the command wrote there.
    let out = run(&format!(
        "tessera run --isolation microvm --image {image} -- sh -c 'echo out; echo err >&2; exit 3' >/tmp/o 2>/tmp/e; \
         echo rc=$?; echo \"O[$(cat /tmp/o)]\"; echo \"E[$(cat /tmp/e)]\""
    ));
    assert!(out.output.contains("rc=3\nO[out]\nE[err]\n"), "{out}");
    // stdin: /dev/null without -i, forwarded with it.
    let out = run(&format!(
        "echo piped | tessera run --image {image} -- cat; echo; \
         printf 'one\\ntwo\\n' | tessera run -i --image {image} -- sh -c 'wc -l; echo done'"
    ));
    assert_eq!(out.status, 0, "{out}");
    assert!(!out.output.contains("piped"), "{out}");
    assert!(out.output.contains("2\ndone\n"), "{out}");
    // -t: a terminal in the guest.
    let out = run(&format!(
        "tessera run -t --image {image} -- sh -c '[ -t 0 ] && [ -t 1 ] && tty'"
    ));
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains("/dev/pts/0"), "{out}");
    // The image's disk is read-only underneath the overlay.
    let out = run(&format!(
        "tessera run --image {image} -- sh -c 'cat /sys/block/vda/ro; echo x > /dev/vda || echo refused'"
    ));
    assert!(out.output.contains("1\n"), "{out}");
    assert!(out.output.contains("refused"), "{out}");
    // A read-write volume: the guest's reads, writes and deletions are on the host after.
    let out = run(&format!(
        "rm -rf /tmp/vol && mkdir -p /tmp/vol/sub && echo old > /tmp/vol/keep && echo gone > /tmp/vol/del && \
         tessera run -v /tmp/vol:/data --image {image} -- sh -c 'cat /data/keep; echo new > /data/sub/new; rm /data/del' && \
         ls -1 /tmp/vol && cat /tmp/vol/sub/new"
    ));
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains("old\nkeep\nsub\nnew\n"), "{out}");
    // Read-only: writes refused, the directory unchanged.
    let out = run(&format!(
        "tessera run -v /tmp/vol:/data:ro --image {image} -- sh -c 'echo x > /data/x'; \
         echo rc=$?; ls -1 /tmp/vol"
    ));
    assert!(out.output.contains("Read-only file system"), "{out}");
    assert!(!out.output.contains("rc=0"), "{out}");
    assert!(out.output.contains("\nkeep\nsub\n"), "{out}");
    // --scratch: 80 MiB of writes, more than a 128 MiB guest's tmpfs takes.
    let write = "dd if=/dev/zero of=/big bs=1M count=80 2>/dev/null && echo wrote";
    let out = run(&format!(
        "tessera run --image {image} -- sh -c '{write}'; tessera run --scratch 512M --image {image} -- sh -c '{write}'"
    ));
    assert_eq!(out.output.matches("wrote").count(), 1, "{out}");
    // --ulimit as Docker writes it.
    let out = run(&format!(
        "tessera run --ulimit nofile=100:200 --image {image} -- sh -c 'ulimit -n; ulimit -Hn'"
    ));
    assert!(out.output.contains("100\n200\n"), "{out}");
    // A program the image lacks.
    let out = run(&format!("tessera run --image {image} -- /no/such/program"));
    assert_eq!(out.status, 127, "{out}");
    assert!(
        out.output.contains("cannot run \"/no/such/program\""),
        "{out}"
    );
    // Out of memory: 137 and a line that says so.
    let out = run(&format!(
        "tessera run --image {image} -- sh -c 'exec dd if=/dev/zero of=/dev/null bs=110M count=1'"
    ));
    assert_eq!(out.status, 137, "{out}");
    assert!(out.output.contains("the guest ran out of memory"), "{out}");
}
