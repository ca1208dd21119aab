//! The virtio devices with a real Linux guest, in the nested test host: an ext4 disk whose data
//! the host file holds, a read-only disk, a TAP network, vsock both ways through the unix
//! socket, /dev/hwrng, and a rate-limited disk. All tests of this file share one host boot; each
//! prints a SKIPPED line instead when this machine lacks what the host needs.

use std::time::Duration;

use tests::test_host::{self, HostOutput};

/// Generous: the guest runs under KVM inside a TCG-emulated host.
const GUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `command` in the shared host, or returns None after printing a skip line.
fn in_host(test: &str, command: &str) -> Option<HostOutput> {
    test_host::run_in_shared_host(test, command, GUEST_TIMEOUT)
}

/// The value of `key=` on the first line holding `marker` and that key.
fn field<'a>(output: &'a str, marker: &str, key: &str) -> Option<&'a str> {
    output
        .lines()
        .filter_map(|l| l.split_once(marker).map(|(_, rest)| rest))
        .find_map(|line| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        })
}

#[test]
fn entropy_device_feeds_dev_hwrng() {
    let test = "entropy_device_feeds_dev_hwrng";
    let command = "tessera run --entropy -- sh -c \
        'cat /sys/class/misc/hw_random/rng_current; dd if=/dev/hwrng bs=256 count=1 2>/dev/null | od -An -tx1 -v | tr -d \" \\n\"; echo'";
    let Some(out) = in_host(test, command) else {
        return;
    };
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains("virtio_rng"), "{out}");
    let hex = out
        .output
        .lines()
        .find(|l| l.len() == 512 && l.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no 256 random bytes in the output\n{out}"));
    assert!(hex.chars().any(|c| c != '0'), "{out}");
}

#[test]
fn ext4_disk_written_in_the_guest_holds_the_data_on_the_host() {
    let test = "ext4_disk_written_in_the_guest_holds_the_data_on_the_host";
    let command = "rm -f /tmp/ext4.img && truncate -s 64M /tmp/ext4.img && /opt/tessera/bin/mke2fs -q -t ext4 -F /tmp/ext4.img && \
        tessera run --disk /tmp/ext4.img,id=data0 -- sh -c \
        'cat /sys/block/vda/serial; echo; mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && \
         echo written-in-the-guest > /mnt/hello.txt && sync && umount /mnt && echo guest-done' && \
        debugfs -R 'cat /hello.txt' /tmp/ext4.img 2>/dev/null";
    let Some(out) = in_host(test, command) else {
        return;
    };
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains("data0"), "GET_ID serial\n{out}");
    assert!(out.output.contains("guest-done"), "{out}");
    let after = out.output.split("guest-done").nth(1).unwrap_or_default();
    assert!(
        after.contains("written-in-the-guest"),
        "debugfs on the host\n{out}"
    );
}

#[test]
fn read_only_disk_refuses_writes() {
    let test = "read_only_disk_refuses_writes";
    let command = "rm -f /tmp/ro.img && truncate -s 16M /tmp/ro.img && /opt/tessera/bin/mke2fs -q -t ext4 -F /tmp/ro.img && \
        before=$(sha256sum < /tmp/ro.img) && \
        tessera run --disk /tmp/ro.img,ro -- sh -c \
        'echo ro=$(cat /sys/block/vda/ro); \
         if dd if=/dev/zero of=/dev/vda bs=4096 count=1 conv=fsync 2>/dev/null; then echo raw-write-accepted; else echo raw-write-refused; fi; \
         mkdir -p /mnt && mount -t ext4 -o ro /dev/vda /mnt && \
         if touch /mnt/new 2>/dev/null; then echo fs-write-accepted; else echo fs-write-refused; fi'; \
        after=$(sha256sum < /tmp/ro.img); [ \"$before\" = \"$after\" ] && echo host-file-unchanged";
    let Some(out) = in_host(test, command) else {
        return;
    };
    assert!(out.output.contains("ro=1"), "{out}");
    assert!(out.output.contains("raw-write-refused"), "{out}");
    assert!(out.output.contains("fs-write-refused"), "{out}");
    assert!(out.output.contains("host-file-unchanged"), "{out}");
}

#[test]
fn guest_on_a_tap_reaches_the_host_by_ping_and_tcp() {
    let test = "guest_on_a_tap_reaches_the_host_by_ping_and_tcp";
    let command = "ip link show tsr0 >/dev/null 2>&1 || { tunctl -t tsr0 >/dev/null && \
          ip addr add 172.16.0.1/24 dev tsr0 && ip link set tsr0 up; } && \
        rm -f /tmp/recv.txt && { iotool recv tcp:172.16.0.1:5000 > /tmp/recv.txt 2>&1 & } && \
        for i in $(seq 50); do grep -q listening /tmp/recv.txt && break; sleep 0.1; done; \
        tessera run --net tap=tsr0,mac=06:00:ac:10:00:02 -- sh -c \
        'ip addr add 172.16.0.2/24 dev eth0 && ip link set eth0 up && \
         cat /sys/class/net/eth0/address && ping -c 3 -W 5 172.16.0.1 && \
         iotool send tcp:172.16.0.1:5000 4194304 | sed s/^/sent:/'; \
        status=$?; wait; sed s/^/received:/ /tmp/recv.txt; exit $status";
    let Some(out) = in_host(test, command) else {
        return;
    };
    assert_eq!(out.status, 0, "{out}");
    assert!(out.output.contains("06:00:ac:10:00:02"), "{out}");
    assert!(out.output.contains("3 packets received"), "{out}");
    let sent = field(&out.output, "sent:", "hash");
    let received = field(&out.output, "received:", "hash");
    assert!(sent.is_some(), "{out}");
    assert_eq!(sent, received, "{out}");
    assert_eq!(
        field(&out.output, "received:", "bytes"),
        Some("4194304"),
        "{out}"
    );
}

#[test]
fn vsock_echo_in_both_directions_through_the_unix_socket() {
    let test = "vsock_echo_in_both_directions_through_the_unix_socket";
    let command = "rm -f /tmp/v.sock /tmp/v.sock_52 /tmp/guest.txt && \
        { iotool echo unix:/tmp/v.sock_52 > /tmp/echo52.txt 2>&1 & } && \
        { tessera run --vsock cid=3,uds=/tmp/v.sock -- sh -c \
          'iotool call vsock:2:52 hello-from-the-guest; iotool echo vsock:4294967295:53' \
          > /tmp/guest.txt 2>&1 & } && \
        for i in $(seq 300); do grep -q listening /tmp/guest.txt && break; sleep 0.1; done; \
        iotool call hybrid:/tmp/v.sock:53 hello-from-the-host | sed s/^/host-got:/; \
        wait; cat /tmp/guest.txt | sed s/^/guest:/; [ ! -e /tmp/v.sock ] && echo socket-removed";
    let Some(out) = in_host(test, command) else {
        return;
    };
    assert!(out.output.contains("guest:hello-from-the-guest"), "{out}");
    assert!(out.output.contains("host-got:hello-from-the-host"), "{out}");
    assert!(out.output.contains("socket-removed"), "{out}");
}

#[test]
fn rate_limiter_caps_disk_throughput() {
    let test = "rate_limiter_caps_disk_throughput";
    // 2 MiB/s with a full 2 MiB bucket at start: 8 MiB cannot take less than 3 s.
    let command = "rm -f /tmp/rl.img && truncate -s 16M /tmp/rl.img && \
        for spec in /tmp/rl.img /tmp/rl.img,bw=2097152; do \
          tessera run --disk $spec -- sh -c \
          's=$(cut -d\" \" -f1 /proc/uptime); dd if=/dev/vda of=/dev/null bs=1M count=8 2>/dev/null; \
           e=$(cut -d\" \" -f1 /proc/uptime); echo \"spec='$spec' start=$s end=$e\"'; \
        done";
    let Some(out) = in_host(test, command) else {
        return;
    };
    assert_eq!(out.status, 0, "{out}");
    let elapsed = |spec: &str| -> f64 {
        let line = out
            .output
            .lines()
            .find(|l| l.contains(&format!("spec={spec} ")))
            .unwrap_or_else(|| panic!("no result for {spec}\n{out}"));
        let num = |key: &str| -> f64 {
            field(line, "spec=", key)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        };
        num("end") - num("start")
    };
    let unlimited = elapsed("/tmp/rl.img");
    let limited = elapsed("/tmp/rl.img,bw=2097152");
    eprintln!("8 MiB read: unlimited {unlimited:.2} s, 2 MiB/s limit {limited:.2} s");
    assert!(
        limited >= 2.8,
        "limited read took only {limited:.2} s\n{out}"
    );
    assert!(limited > unlimited, "{out}");
}
