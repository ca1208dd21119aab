//! virtio-blk, virtio-net and virtio-vsock throughput of the microvm guest under tessera and
//! under Debian's QEMU (`-M microvm,acpi=off -accel kvm`: without ACPI, QEMU announces its
//! virtio-mmio devices on the kernel command line as tessera does), side by side in one
//! nested test host.
//!
//!   cargo build --release --workspace --bins && cargo bench -p benches --bench virtio_io
//!   VIRTIO_IO_RUNS=5 (default)
//!
//! Each run boots each VMM once with the same kernel, initramfs (tessera-init, busybox, iotool),
//! 1 vCPU and 256 MiB, a 256 MiB raw disk on the host's tmpfs (tessera cache=unsafe, QEMU
//! cache=unsafe: both through the host page cache without flushes) and a TAP. In the guest,
//! `iotool` measures: 64 MiB of sequential 1 MiB O_DIRECT writes then reads on /dev/vda, 2000
//! random 4 KiB O_DIRECT reads, 32 MiB over TCP guest->host and host->guest, and (tessera only:
//! QEMU's vsock needs vhost-vsock in the host) 32 MiB over vsock guest->host into the hybrid
//! unix socket. Medians per figure; timings in the TCG-emulated host are not real-hardware
//! timings, only the ratios carry over.

use std::collections::BTreeMap;
use std::time::Duration;

use benches::{initrd_with_archive, median, spec_archive_file};
use tests::test_host::{paths, HostFiles, HostOptions, TestHost};

const TCP_BYTES: u64 = 32 << 20;
/// In the host: the workload spec archive for QEMU's guest, and the initrd QEMU boots.
const QEMU_SPEC: &str = "/opt/tessera/virtio-io-spec.cpio";
const QEMU_INITRD: &str = "/tmp/qemu-initrd.cpio";

/// The guest's workload; `$IP` and `$HOST` differ per VMM, `$VSOCK` is 1 when there is one.
const GUEST_SCRIPT: &str = "\
iotool disk write /dev/vda 64 | sed s/^/seqwrite:/; \
iotool disk read /dev/vda 64 | sed s/^/seqread:/; \
iotool disk randread /dev/vda 2000 | sed s/^/randread:/; \
ip addr add $IP/24 dev eth0 && ip link set eth0 up; \
iotool send tcp:$HOST:5000 $BYTES | sed s/^/tcp_tx:/; \
timeout 120 iotool recv tcp:0.0.0.0:5001 | sed s/^/tcp_rx:/; \
[ $VSOCK = 1 ] && iotool send vsock:2:52 $BYTES | sed s/^/vsock_tx:/; \
echo bench-done";

/// Host side: a TCP sink, a TCP source that retries until the guest listens, a vsock sink;
/// [`HOST_SIDE_STOP`] ends whichever of them is left once the VMM is gone.
fn host_side(host_ip: &str, guest_ip: &str) -> String {
    format!(
        "rm -f /tmp/v.sock /tmp/v.sock_52; \
         iotool recv tcp:{host_ip}:5000 > /dev/null 2>&1 & p1=$!; \
         (for i in $(seq 600); do timeout 5 iotool send tcp:{guest_ip}:5001 {TCP_BYTES} >/dev/null 2>&1 && break; sleep 0.1; done) & p2=$!; \
         iotool recv unix:/tmp/v.sock_52 > /dev/null 2>&1 & p3=$!; "
    )
}

const HOST_SIDE_STOP: &str = "; kill $p1 $p2 $p3 2>/dev/null; wait";

fn tap(name: &str, ip: &str) -> String {
    format!(
        "ip link show {name} >/dev/null 2>&1 || {{ tunctl -t {name} >/dev/null && ip addr add {ip}/24 dev {name} && ip link set {name} up; }}; "
    )
}

/// The guest's script for a VMM (`sh -c SCRIPT` is its workload).
fn guest_script(ip: &str, host: &str, vsock: bool) -> String {
    GUEST_SCRIPT
        .replace("$IP", ip)
        .replace("$HOST", host)
        .replace("$BYTES", &TCP_BYTES.to_string())
        .replace("$VSOCK", if vsock { "1" } else { "0" })
}

/// `figure -> value` from the guest's `name:... mib_s=R iops=R` lines.
fn figures(output: &str) -> BTreeMap<String, f64> {
    let mut found = BTreeMap::new();
    for line in output.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let value = |key: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse::<f64>().ok())
        };
        let (figure, key) = match name.trim() {
            "randread" => ("randread_iops", "iops="),
            "seqwrite" | "seqread" | "tcp_tx" | "tcp_rx" | "vsock_tx" => (name.trim(), "mib_s="),
            _ => continue,
        };
        if let Some(v) = value(key) {
            found.insert(figure.to_string(), v);
        }
    }
    found
}

fn main() {
    let runs: usize = std::env::var("VIRTIO_IO_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let files = match HostFiles::find(&tests::bin_dir()) {
        Ok(files) => files,
        Err(why) => {
            eprintln!("SKIPPED virtio_io: {why}");
            return;
        }
    };
    // QEMU takes one initrd: the guest initramfs with the workload spec's archive appended, as
    // tessera lays them out in guest memory.
    let qemu_script = guest_script("172.16.1.2", "172.16.1.1", false);
    let qemu_spec = spec_archive_file("virtio-io", &["sh", "-c", &qemu_script]);
    let options = HostOptions {
        with_qemu: true,
        // The host its published figures were measured on.
        cpus: 2,
        memory_mib: 3072,
        extra_files: vec![(qemu_spec.clone(), QEMU_SPEC.into())],
    };
    let mut host = TestHost::boot(&files, &options).unwrap_or_else(|e| panic!("test host: {e}"));
    let _ = std::fs::remove_file(&qemu_spec);

    let base = "console=ttyS0 quiet panic=-1 pci=off nomodule i8042.noaux i8042.nomux \
                i8042.nopnp i8042.dumbkbd";
    let tessera = format!(
        "{}{}rm -f /tmp/bench.img; truncate -s 256M /tmp/bench.img; \
         tessera run --memory 256 --kernel {} --initrd {} --cmdline '{base} reboot=k' \
         --disk /tmp/bench.img --net tap=tsr0 --vsock cid=3,uds=/tmp/v.sock -- sh -c '{}'{HOST_SIDE_STOP}",
        tap("tsr0", "172.16.0.1"),
        host_side("172.16.0.1", "172.16.0.2"),
        paths::VMLINUX,
        paths::GUEST_INITRAMFS,
        guest_script("172.16.0.2", "172.16.0.1", true),
    );
    // QEMU's microvm has no i8042 to reset through: the guest asks for a triple fault
    // (-no-reboot ends QEMU then), and QEMU is stopped once the workload is done in any case.
    let qemu = format!(
        "{}{}rm -f /tmp/bench.img /tmp/qemu.out; truncate -s 256M /tmp/bench.img; \
         {}; {} -M microvm,x-option-roms=off,rtc=off,acpi=off -accel kvm -cpu host -smp 1 -m 256 \
         -nodefaults -no-user-config -display none -no-reboot -monitor none -serial file:/tmp/qemu.out \
         -kernel {} -initrd {QEMU_INITRD} -append '{base} reboot=t' \
         -drive id=d0,file=/tmp/bench.img,format=raw,if=none,cache=unsafe -device virtio-blk-device,drive=d0 \
         -netdev tap,id=n0,ifname=tsr1,script=no,downscript=no -device virtio-net-device,netdev=n0 & q=$!; \
         for i in $(seq 3000); do grep -q bench-done /tmp/qemu.out 2>/dev/null && break; \
           kill -0 $q 2>/dev/null || break; sleep 0.1; done; kill $q 2>/dev/null; cat /tmp/qemu.out{HOST_SIDE_STOP}",
        tap("tsr1", "172.16.1.1"),
        host_side("172.16.1.1", "172.16.1.2"),
        initrd_with_archive(paths::GUEST_INITRAMFS, QEMU_SPEC, QEMU_INITRD),
        paths::QEMU,
        paths::VMLINUX,
    );

    let mut results: [BTreeMap<String, Vec<f64>>; 2] = Default::default();
    for run in 0..runs {
        for (i, command) in [&tessera, &qemu].into_iter().enumerate() {
            let name = ["tessera", "qemu"][i];
            let out = host
                .run(command, Duration::from_secs(400))
                .unwrap_or_else(|e| panic!("{e}"));
            if !out.output.contains("bench-done") {
                eprintln!("run {run}: {name} did not finish its workload; skipped\n{out}");
                continue;
            }
            let found = figures(&out.output);
            eprintln!("run {run}: {name} {found:?}");
            for (figure, value) in found {
                results[i].entry(figure).or_default().push(value);
            }
        }
    }

    println!(
        "virtio I/O, nested test host, medians of up to {runs} runs (MiB/s; IOPS for randread):"
    );
    println!(
        "  {:<14} {:>10} {:>10} {:>8}",
        "figure", "tessera", "qemu", "ratio"
    );
    let names = [
        "seqwrite",
        "seqread",
        "randread_iops",
        "tcp_tx",
        "tcp_rx",
        "vsock_tx",
    ];
    for figure in names {
        let mut cell = |i: usize| results[i].get_mut(figure).map(|v| (median(v), v.len()));
        let (t, q) = (cell(0), cell(1));
        let show =
            |c: Option<(f64, usize)>| c.map_or("-".to_string(), |(m, n)| format!("{m:.1} ({n})"));
        let ratio = match (t, q) {
            (Some((t, _)), Some((q, _))) if q > 0.0 => format!("{:.2}", t / q),
            _ => "-".to_string(),
        };
        println!("  {figure:<14} {:>10} {:>10} {ratio:>8}", show(t), show(q));
    }
}
