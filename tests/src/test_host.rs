//! The nested test host: Debian's `qemu-system-x86_64` under TCG with an emulated AMD CPU that
//! has SVM, running Debian's stock kernel with kvm-amd loaded, so a real Linux guest can run under
//! tessera on real KVM even where the machine's own /dev/kvm cannot boot Linux.
//!
//! The host boots from an initramfs built here: busybox, the four KVM modules, our `tessera`,
//! the cached microvm kernel (at the default place under `/root/.cache/tessera`, so `tessera run
//! -- CMD` works there exactly as for a user), a guest initramfs (tessera-init + busybox), Debian's
//! vmlinuz and, for benchmarks, QEMU itself. Its `/init` answers commands on the second serial
//! port: `<id> <timeout s> <command>` in, its output and `@@TH-DONE <id> <status>` out. The first serial
//! port carries the host's console, kept in a log file. One boot serves many commands.

use std::io::{BufRead, BufReader, Write};
use std::ops::{Deref, DerefMut};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use guest_init::initramfs::{Initramfs, Node};

/// Paths of the test host's files as the host sees them.
pub mod paths {
    /// The `tessera` binary (also on PATH).
    pub const TESSERA: &str = "/opt/tessera/bin/tessera";
    /// The microvm kernel, ELF with PVH entry (the `tessera run` default).
    pub const VMLINUX: &str = "/root/.cache/tessera/kernel/microvm/vmlinux";
    /// The same kernel as a bzImage.
    pub const BZIMAGE: &str = "/root/.cache/tessera/kernel/microvm/bzImage";
    /// tessera-init + busybox (the `tessera run` default).
    pub const GUEST_INITRAMFS: &str = "/root/.cache/tessera/initramfs/tessera-init.cpio";
    /// Debian's stock vmlinuz, the host's own kernel.
    pub const DEBIAN_VMLINUZ: &str = "/opt/tessera/debian-vmlinuz";
    /// The stream tool (tests/src/bin/iotool.rs); also /usr/bin/iotool in the guest initramfs.
    pub const IOTOOL: &str = "/opt/tessera/bin/iotool";
    /// e2fsprogs' mke2fs (busybox sh would run its own applet for a bare `mke2fs`).
    pub const MKE2FS: &str = "/opt/tessera/bin/mke2fs";
    /// QEMU, when the host was built with it.
    pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
}

const HOST_BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Loaded in this order at host boot: KVM for the guests, tun for their TAP devices.
const HOST_MODULES: [&str; 5] = ["irqbypass", "kvm", "ccp", "kvm-amd", "tun"];

/// What the host is built from, all found on this machine.
#[derive(Debug, Clone)]
pub struct HostFiles {
    pub qemu: PathBuf,
    pub busybox: PathBuf,
    pub debian_vmlinuz: PathBuf,
    pub modules: Vec<PathBuf>,
    /// `mke2fs` and `debugfs`, to make and inspect guest disks in the host.
    pub e2fsprogs: Vec<PathBuf>,
    pub microvm_dir: PathBuf,
    /// Directory holding `tessera` and `tessera-init` of the build to test.
    pub bin_dir: PathBuf,
}

impl HostFiles {
    /// Finds everything, or says what is missing and which set-up step provides it.
    pub fn find(bin_dir: &Path) -> Result<Self, String> {
        let qemu = which("qemu-system-x86_64").ok_or(
            "qemu-system-x86_64 is not installed (scripts/setup installs Debian's qemu-system-x86)",
        )?;
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or("busybox is not installed (scripts/setup installs Debian's busybox-static)")?;
        let debian_vmlinuz = crate::debian_vmlinuz()
            .filter(|p| p.is_file())
            .ok_or("Debian's vmlinuz is not cached (run scripts/debian-kernel)")?;
        let modules = host_modules(&debian_vmlinuz)?;
        let microvm_dir = cache_dir()?.join("kernel/microvm");
        if !microvm_dir.join("vmlinux").is_file() || !microvm_dir.join("bzImage").is_file() {
            return Err(format!(
                "the microvm guest kernel is not cached in {} (run kernel-configs/build)",
                microvm_dir.display()
            ));
        }
        let e2fsprogs = ["mke2fs", "debugfs"]
            .iter()
            .map(|tool| {
                which(tool)
                    .or_else(|| Some(Path::new("/usr/sbin").join(tool)).filter(|p| p.is_file()))
                    .ok_or(format!(
                        "{tool} is not installed (scripts/setup installs Debian's e2fsprogs)"
                    ))
            })
            .collect::<Result<_, _>>()?;
        for bin in ["tessera", "tessera-init", "iotool"] {
            if !bin_dir.join(bin).is_file() {
                return Err(format!(
                    "{} is not built (cargo build --workspace --bins)",
                    bin_dir.join(bin).display()
                ));
            }
        }
        Ok(Self {
            qemu,
            busybox,
            debian_vmlinuz,
            modules,
            e2fsprogs,
            microvm_dir,
            bin_dir: bin_dir.to_path_buf(),
        })
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// `$TESSERA_CACHE`, else `~/.cache/tessera`: the rule `tessera run` uses.
pub fn cache_dir() -> Result<PathBuf, String> {
    api::guest_image::cache_dir()
}

/// The KVM modules matching `vmlinuz`, from the same linux-image package tree
/// (`<root>/boot/vmlinuz-V` and `<root>/lib/modules/V/kernel/...`).
fn host_modules(vmlinuz: &Path) -> Result<Vec<PathBuf>, String> {
    let name = vmlinuz
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    let version = name
        .as_deref()
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .ok_or_else(|| format!("{} is not named vmlinuz-VERSION", vmlinuz.display()))?;
    let root = vmlinuz
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} has no package root", vmlinuz.display()))?;
    let kernel = root.join("lib/modules").join(version).join("kernel");
    let wanted = [
        "virt/lib/irqbypass.ko",
        "arch/x86/kvm/kvm.ko",
        "drivers/crypto/ccp/ccp.ko",
        "arch/x86/kvm/kvm-amd.ko",
        "drivers/net/tun.ko",
    ];
    wanted
        .iter()
        .map(|rel| {
            let path = kernel.join(rel);
            path.is_file().then_some(path.clone()).ok_or_else(|| {
                format!(
                    "{} is missing: the host kernel's KVM modules must sit beside it (scripts/debian-kernel)",
                    path.display()
                )
            })
        })
        .collect()
}

/// How to build the host.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Also pack QEMU with its libraries and microvm firmware (for side-by-side benchmarks).
    pub with_qemu: bool,
    /// Host memory in MiB.
    pub memory_mib: u32,
    /// Host CPUs. One by default: with two, the emulated host froze or soft-locked about once
    /// in 15 guest runs on a busy 2-core machine (tessera builds from before and after the
    /// seccomp work alike, with and without an in-kernel PIT); with one, not once in 45.
    pub cpus: u32,
    /// More host files to pack: (file on this machine, absolute path in the host).
    pub extra_files: Vec<(PathBuf, String)>,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            with_qemu: false,
            memory_mib: 2048,
            cpus: 1,
            extra_files: Vec::new(),
        }
    }
}

/// The output and status of one command run in the host.
#[derive(Debug)]
pub struct HostOutput {
    pub status: i32,
    pub output: String,
}

impl std::fmt::Display for HostOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status {}\n--- output\n{}", self.status, self.output)
    }
}

/// A booted test host.
pub struct TestHost {
    qemu: Child,
    commands: ChildStdin,
    lines: Receiver<String>,
    console_log: PathBuf,
    next_id: u64,
    /// Set when the host stopped answering, its kernel got stuck or a command ran past its
    /// limit: it runs no more commands.
    broken: Option<String>,
    _workdir: TempDir,
}

impl TestHost {
    /// Builds the host initramfs and boots QEMU, waiting until the host answers commands.
    pub fn boot(files: &HostFiles, options: &HostOptions) -> Result<Self, String> {
        let workdir = TempDir::new("tessera-test-host")?;
        let initramfs = workdir.0.join("host.cpio");
        build_host_initramfs(files, options, &initramfs)?;
        let console_log = workdir.0.join("console.log");
        // QEMU warns about every CPU feature TCG lacks; keep that out of test output.
        let qemu_log = std::fs::File::create(workdir.0.join("qemu.log"))
            .map_err(|e| format!("cannot create qemu.log: {e}"))?;

        let mut command = Command::new(&files.qemu);
        command
            .args(["-accel", "tcg,thread=multi", "-cpu", "EPYC,+svm,+npt"])
            .args(["-smp", &options.cpus.to_string()])
            .args(["-m", &options.memory_mib.to_string()])
            .arg("-kernel")
            .arg(&files.debian_vmlinuz)
            .arg("-initrd")
            .arg(&initramfs)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
                "-monitor",
                "none",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console_log.display()))
            .args(["-serial", "stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(qemu_log);
        let mut qemu = spawn_tied_to_process(command)
            .map_err(|e| format!("cannot start {}: {e}", files.qemu.display()))?;
        let (commands, stdout) = match (qemu.stdin.take(), qemu.stdout.take()) {
            (Some(i), Some(o)) => (i, o),
            _ => return Err("QEMU's stdio pipes are missing".into()),
        };
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("test-host-reader".into())
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if tx.send(text).is_err() {
                        break;
                    }
                    line.clear();
                }
            })
            .map_err(|e| format!("cannot start the reader thread: {e}"))?;

        let mut host = Self {
            qemu,
            commands,
            lines,
            console_log,
            next_id: 0,
            broken: None,
            _workdir: workdir,
        };
        let started = Instant::now();
        loop {
            match host.next_line(started + HOST_BOOT_TIMEOUT) {
                Ok(line) if line.starts_with("@@TH-READY") => break,
                Ok(line) if line.starts_with("@@TH-FAILED") => {
                    return Err(format!("{}\n{}", line.trim(), host.console_tail()));
                }
                Ok(_) => {}
                Err(why) => {
                    return Err(format!(
                        "host did not come up: {why}\n{}",
                        host.console_tail()
                    ))
                }
            }
        }
        eprintln!("test host up in {:.1} s", started.elapsed().as_secs_f64());
        Ok(host)
    }

    /// Runs `command` with the host's `sh -c`, returning its merged stdout/stderr and status.
    /// After `timeout` the host prints what the command left (see `expire` in the host's init)
    /// and kills all of it (status 137); when that shows the host's own kernel stuck, the host
    /// is marked broken and this returns an error.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<HostOutput, String> {
        if let Some(why) = &self.broken {
            return Err(format!("the test host is unusable: {why}"));
        }
        if command.contains('\n') {
            return Err("host commands are one line".into());
        }
        self.next_id += 1;
        let id = self.next_id;
        // The host kills the command at `timeout` (status 137), so a hung guest costs one test,
        // not the host; this side waits a little longer for that to arrive.
        let limit = timeout.as_secs().max(1);
        writeln!(self.commands, "{id} {limit} {command}")
            .and_then(|()| self.commands.flush())
            .map_err(|e| {
                let message = format!("cannot send a command to the host: {e}");
                self.broken = Some(message.clone());
                message
            })?;
        // Past the limit the host takes ~35-45 s at most to print what it saw and end the command.
        let deadline = Instant::now() + timeout + Duration::from_secs(60);
        let done = format!("@@TH-DONE {id} ");
        let mut output = String::new();
        loop {
            let line = self.next_line(deadline).map_err(|why| {
                let message = format!("`{command}`: {why}\n--- output so far\n{output}");
                self.broken = Some(message.clone());
                format!("{message}\n{}", self.console_tail())
            })?;
            if let Some(status) = line.strip_prefix(&done) {
                // The agent puts a newline before the marker so it always starts a line.
                if output.ends_with('\n') {
                    output.pop();
                }
                let status = status.trim().parse().map_err(|_| {
                    let message = format!("bad marker {line:?}");
                    self.broken = Some(message.clone());
                    message
                })?;
                if !timed_out(&output) {
                    return Ok(HostOutput { status, output });
                }
                if let Some(lockup) = kernel_lockup(&output) {
                    let message = format!(
                        "`{command}` ran past its limit while the test host's kernel reported \
                         `{lockup}`: a CPU of the emulated host is stuck for good\n\
                         --- output\n{output}"
                    );
                    self.broken = Some(message.clone());
                    return Err(format!("{message}\n{}", self.console_tail()));
                }
                // The command's own failure; the host is still replaced before the next one,
                // in case it is stuck in a way the kernel did not report.
                self.broken = Some(format!("`{command}` ran past its limit"));
                return Ok(HostOutput { status, output });
            }
            output.push_str(&line);
        }
    }

    fn next_line(&mut self, deadline: Instant) -> Result<String, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => Err("timed out".into()),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.qemu.try_wait().ok().flatten();
                Err(format!("QEMU exited ({status:?})"))
            }
        }
    }

    /// The last lines of the host's console, for failure messages.
    pub fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- test host console (last 40 lines)\n{tail}")
    }
}

/// The kernel's own report of a stuck CPU, from the diagnostics the host prints when a command
/// runs past its limit. Under TCG the emulated host sometimes gets a thread stuck in its kernel
/// (a vCPU thread in KVM_RUN, KVM's PIT worker, or the host's own kworker and RCU threads): no
/// signal ends it and it holds a CPU for good, so later guests starve. A hang without such a
/// report is the command's own.
fn kernel_lockup(output: &str) -> Option<&str> {
    output
        .lines()
        .skip_while(|l| !l.starts_with(TIMEOUT_MARKER))
        .find(|l| {
            l.starts_with(STUCK_MARKER)
                || l.strip_prefix(KERNEL_LOG_MARKER)
                    .is_some_and(|l| l.contains("soft lockup") || l.contains("detected stall"))
        })
        .map(str::trim)
}

/// Whether the host reported that `output`'s command ran past its limit.
fn timed_out(output: &str) -> bool {
    output.lines().any(|l| l.starts_with(TIMEOUT_MARKER))
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// Starts `command` from a thread that lives as long as the process, with PR_SET_PDEATHSIG:
/// the kernel kills the child when the thread that forked it ends, and test threads end early.
fn spawn_tied_to_process(command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("test-host-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop ends only with the process.
                for (mut command, reply) in rx {
                    // SAFETY: the closure only calls prctl, which is async-signal-safe.
                    unsafe {
                        command.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((command, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

/// Starts the diagnostics the host prints when a command runs past its limit.
const TIMEOUT_MARKER: &str = "@@TH-TIMEOUT:";
/// Starts the list of a timed-out command's processes that outlived SIGKILL.
const STUCK_MARKER: &str = "@@TH-STUCK:";
/// Starts each line of the host's kernel log in that report.
const KERNEL_LOG_MARKER: &str = "@@TH-KLOG ";

/// The host's /init: mounts, loads the KVM modules, then serves commands on ttyS1.
const HOST_INIT: &str = r#"#!/bin/busybox sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in irqbypass kvm ccp kvm-amd tun; do
    insmod /lib/modules/$m.ko || echo "insmod $m failed" >> /tmp/init-errors
done
exec </dev/ttyS1 >/dev/ttyS1 2>&1
stty raw -echo
export HOME=/root PATH=/opt/tessera/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd /tmp
if [ -c /dev/kvm ]; then
    echo "@@TH-READY"
else
    echo "@@TH-FAILED no /dev/kvm in the test host: $(cat /tmp/init-errors 2>/dev/null) $(dmesg | grep -i -E 'kvm|svm' | tail -n 3 | tr '\n' ' ')"
fi
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# The processes of session $1 (this busybox has no pgrep; builtins only, no fork per process).
session_pids() {
    sid=$1
    for stat in /proc/[0-9]*/stat; do
        { read -r line < "$stat"; } 2>/dev/null || continue
        # Fields after the command name: state, ppid, pgrp, session.
        set -- ${line##*)}
        if [ "$4" = "$sid" ]; then
            pid=${stat#/proc/}
            echo "${pid%/stat}"
        fi
    done
}
# SIGKILL to every process of session $1, whatever its process group.
kill_session() {
    for p in $(session_pids "$1"); do kill -s KILL "$p" 2>/dev/null; done
}
# The kernel's view of every thread of the processes in session $1. Reading a command line takes
# the process's mm lock, which a stuck thread may hold: bounded.
threads() {
    for p in $(session_pids "$1"); do
        echo "process $p: $(timeout -s KILL 2 tr '\0' ' ' < /proc/$p/cmdline | head -c 200)"
        for t in /proc/$p/task/*; do
            { read -r line < $t/stat; } 2>/dev/null || continue
            set -- ${line##*)}
            echo "  thread ${t##*/} $(cat $t/comm) state=$1 wchan=$(cat $t/wchan) syscall=$(cut -d' ' -f1 $t/syscall)"
            sed 's/^/    /' $t/stack 2>/dev/null
        done
    done
}
# Command $1 ran past its limit of $2 s: show what it left (load, its threads, KVM's exit
# counters twice: is a guest still running?), kill all of it, and say whether anything outlived
# SIGKILL, which only a thread stuck in the kernel can. The host's own lines are marked, so that
# a guest's console cannot pass for the host's kernel.
expire() {
    # Should the report itself get stuck, the command still dies.
    ( sleep 10; kill_session "$1" ) &
    echo "@@TH-TIMEOUT: the command ran past its $2 s; the host's view before it is killed:"
    echo "loadavg $(cat /proc/loadavg)"
    threads "$1"
    for round in 1 2; do
        for d in /sys/kernel/debug/kvm/*-*; do
            [ -d "$d" ] && echo "kvm ${d##*/} exits=$(cat $d/exits) halt_exits=$(cat $d/halt_exits) io_exits=$(cat $d/io_exits) mmio_exits=$(cat $d/mmio_exits)"
        done
        [ $round = 1 ] && sleep 2
    done
    for i in $(seq 30); do
        kill_session "$1"
        [ -n "$(session_pids "$1")" ] || break
        sleep 1
    done
    if [ -n "$(session_pids "$1")" ]; then
        echo "@@TH-STUCK: still there 30 s after SIGKILL:"
        threads "$1"
    fi
    echo "--- the host's kernel log while the command ran"
    dmesg | tail -n 40 | sed 's/^/@@TH-KLOG /'
}
# Each command runs in its own session, so that at its limit all of it is killed (a VMM it
# started in the background included, which would otherwise go on using the host's CPU), and
# so that nothing it leaves in the session outlives it. Whichever of the command's end and its
# limit comes first claims /tmp/.th-<id> (mkdir is atomic): the other side then stands down.
while read -r id limit command; do
    dmesg -c >/dev/null
    setsid sh -c "$command" </dev/null 2>&1 &
    pid=$!
    { sleep "$limit"; mkdir "/tmp/.th-$id" 2>/dev/null && expire "$pid" "$limit"; } &
    watchdog=$!
    wait "$pid"
    status=$?
    if mkdir "/tmp/.th-$id" 2>/dev/null; then
        kill "$watchdog" 2>/dev/null
    else
        wait "$watchdog"
    fi
    kill_session "$pid"
    printf '\n@@TH-DONE %s %s\n' "$id" "$status"
done
poweroff -f
"#;

fn build_host_initramfs(
    files: &HostFiles,
    options: &HostOptions,
    out: &Path,
) -> Result<(), String> {
    let mut host = Initramfs::with_base_layout();
    let e = |e: guest_init::initramfs::InitramfsError| e.to_string();
    host.add("init", 0o755, Node::File(HOST_INIT.as_bytes().to_vec()))
        .map_err(e)?;
    host.add_busybox(&files.busybox).map_err(e)?;
    for (name, path) in HOST_MODULES.iter().zip(&files.modules) {
        host.add_from_host(path, &format!("lib/modules/{name}.ko"))
            .map_err(e)?;
    }
    host.add_from_host(&files.bin_dir.join("tessera"), paths::TESSERA)
        .map_err(e)?;
    host.add_from_host(&files.microvm_dir.join("vmlinux"), paths::VMLINUX)
        .map_err(e)?;
    host.add_from_host(&files.microvm_dir.join("bzImage"), paths::BZIMAGE)
        .map_err(e)?;
    host.add_from_host(&files.debian_vmlinuz, paths::DEBIAN_VMLINUZ)
        .map_err(e)?;
    host.add_from_host(&files.bin_dir.join("iotool"), paths::IOTOOL)
        .map_err(e)?;
    for tool in &files.e2fsprogs {
        // busybox sh prefers its own applets (mke2fs is one): call these by full path.
        let name = tool
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        add_dynamic(&mut host, tool, &format!("/opt/tessera/bin/{name}"))?;
    }

    let mut guest = Initramfs::with_base_layout();
    guest
        .add_from_host(&files.bin_dir.join("tessera-init"), "init")
        .map_err(e)?;
    guest.add_busybox(&files.busybox).map_err(e)?;
    guest
        .add_from_host(&files.bin_dir.join("iotool"), "usr/bin/iotool")
        .map_err(e)?;
    let mut guest_bytes = Vec::new();
    guest
        .write_cpio(&mut guest_bytes)
        .map_err(|e| e.to_string())?;
    host.add(paths::GUEST_INITRAMFS, 0o644, Node::File(guest_bytes))
        .map_err(e)?;

    if options.with_qemu {
        add_qemu(&mut host, &files.qemu)?;
    }
    for (src, dest) in &options.extra_files {
        host.add_from_host(src, dest).map_err(e)?;
    }
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?,
    );
    host.write_cpio(&mut file)
        .and_then(|()| file.flush())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))
}

/// QEMU with its libraries, and the microvm firmware.
fn add_qemu(host: &mut Initramfs, qemu: &Path) -> Result<(), String> {
    let e = |e: guest_init::initramfs::InitramfsError| e.to_string();
    add_dynamic(host, qemu, paths::QEMU)?;
    for firmware in [
        "bios-microvm.bin",
        "qboot.rom",
        "pvh.bin",
        "linuxboot_dma.bin",
        "kvmvapic.bin",
    ] {
        let path = Path::new("/usr/share/qemu").join(firmware);
        if path.exists() {
            let real =
                std::fs::canonicalize(&path).map_err(|err| format!("{}: {err}", path.display()))?;
            host.add_from_host(&real, &path.to_string_lossy())
                .map_err(e)?;
        }
    }
    Ok(())
}

/// A dynamically linked program at `dest`, with the shared libraries `ldd` lists for it at
/// their real paths (libraries already packed are kept).
fn add_dynamic(host: &mut Initramfs, program: &Path, dest: &str) -> Result<(), String> {
    let ldd = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| format!("cannot run ldd: {e}"))?;
    let mut libs: Vec<PathBuf> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    libs.sort();
    libs.dedup();
    let e = |e: guest_init::initramfs::InitramfsError| e.to_string();
    for lib in libs {
        let name = lib.to_string_lossy();
        if host.contains(&name) {
            continue;
        }
        // Keep the name ldd printed (often a symlink); store the file it points to.
        let real =
            std::fs::canonicalize(&lib).map_err(|err| format!("{}: {err}", lib.display()))?;
        let bytes = std::fs::read(&real).map_err(|err| format!("{}: {err}", real.display()))?;
        host.add(&name, 0o755, Node::File(bytes)).map_err(e)?;
    }
    host.add_from_host(program, dest).map_err(e)
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<Self, String> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The host shared by every test of one test binary, booted by the first test that needs it.
pub struct SharedHost(MutexGuard<'static, Option<Result<TestHost, String>>>);

impl Deref for SharedHost {
    type Target = TestHost;
    fn deref(&self) -> &TestHost {
        match self.0.as_ref() {
            Some(Ok(host)) => host,
            _ => unreachable!("SharedHost is only made around a booted host"),
        }
    }
}

impl DerefMut for SharedHost {
    fn deref_mut(&mut self) -> &mut TestHost {
        match self.0.as_mut() {
            Some(Ok(host)) => host,
            _ => unreachable!("SharedHost is only made around a booted host"),
        }
    }
}

/// How many fresh hosts one command may get when the host gets stuck under it (with two host
/// CPUs that was seen about once in 15 guest runs; see [`HostOptions::cpus`]).
const FRESH_HOSTS_PER_COMMAND: usize = 2;

impl SharedHost {
    /// Runs `command` like [`TestHost::run`]. If the host itself stopped answering or its kernel
    /// got stuck (the nested TCG host sometimes does, with QEMU's and tessera's guests alike and
    /// with older tessera builds too: see the issue-3 and issue-6 notes), says so on stderr with
    /// what the host showed, boots a fresh host and runs the command again. A host whose last
    /// command ran past its limit is replaced first.
    pub fn run_retrying_hung_host(
        &mut self,
        test: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<HostOutput, String> {
        if let Some(why) = &self.broken {
            let headline = why.lines().next().unwrap_or_default().to_owned();
            eprintln!("NEW HOST for {test}: the last command left the host suspect ({headline})");
            self.boot_fresh_host()?;
        }
        let mut fresh_hosts = 0;
        loop {
            match self.run(command, timeout) {
                Err(why) if self.broken.is_some() && fresh_hosts < FRESH_HOSTS_PER_COMMAND => {
                    fresh_hosts += 1;
                    let headline = why.lines().next().unwrap_or_default();
                    eprintln!(
                        "RETRIED {test}: the test host is stuck ({headline}); booting a new one"
                    );
                    eprintln!("{why}");
                    self.boot_fresh_host()?;
                }
                result => return result,
            }
        }
    }

    fn boot_fresh_host(&mut self) -> Result<(), String> {
        let files = HostFiles::find(&crate::bin_dir())?;
        // Stop the old QEMU first: it would hold memory and CPUs while the new host boots.
        *self.0 = None;
        let host = TestHost::boot(&files, &HostOptions::default());
        let booted = match &host {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("the test host did not boot again: {e}")),
        };
        *self.0 = Some(host);
        booted
    }
}

/// Runs `command` in the shared host (see [`SharedHost::run_retrying_hung_host`]), or returns
/// `None` after printing a skip line; panics, naming `test`, when the host cannot run it.
pub fn run_in_shared_host(test: &str, command: &str, timeout: Duration) -> Option<HostOutput> {
    let mut host = shared(test)?;
    Some(
        host.run_retrying_hung_host(test, command, timeout)
            .unwrap_or_else(|e| panic!("{test}: {e}")),
    )
}

/// The shared test host, or `None` after printing `SKIPPED <test>: <why>` when this machine
/// lacks something it needs. Panics when the host should boot but does not.
pub fn shared(test: &str) -> Option<SharedHost> {
    static HOST: Mutex<Option<Result<TestHost, String>>> = Mutex::new(None);
    let files = match HostFiles::find(&crate::bin_dir()) {
        Ok(files) => files,
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            return None;
        }
    };
    let mut guard = HOST.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(TestHost::boot(&files, &HostOptions::default()));
    }
    if let Some(Err(why)) = guard.as_ref() {
        panic!("the test host did not boot: {why}");
    }
    Some(SharedHost(guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_init_prints_the_markers_the_harness_reads() {
        assert!(HOST_INIT.contains(&format!("echo \"{TIMEOUT_MARKER} ")));
        assert!(HOST_INIT.contains(&format!("echo \"{STUCK_MARKER} ")));
        assert!(HOST_INIT.contains(&format!("sed 's/^/{KERNEL_LOG_MARKER}/'")));
    }

    #[test]
    fn a_stuck_kernel_is_read_only_from_a_timed_out_commands_diagnostics() {
        let lockup = "[  96.6] watchdog: BUG: soft lockup - CPU#1 stuck for 27s! [vcpu0:332]";
        let report = format!("guest\n{TIMEOUT_MARKER} ...\n{KERNEL_LOG_MARKER}{lockup}\n");
        assert!(timed_out(&report));
        assert_eq!(
            kernel_lockup(&report),
            Some(format!("{KERNEL_LOG_MARKER}{lockup}").trim())
        );
        let stalls = "[ 188.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:";
        let report = format!("{TIMEOUT_MARKER} ...\n{KERNEL_LOG_MARKER}{stalls}\n");
        assert!(kernel_lockup(&report).is_some_and(|l| l.ends_with(stalls)));
        let unkillable = format!("{STUCK_MARKER} still there 30 s after SIGKILL:");
        let report = format!("{TIMEOUT_MARKER} ...\n{unkillable}\nprocess 7: tessera\n");
        assert_eq!(kernel_lockup(&report), Some(unkillable.as_str()));
        // A plain timeout is the command's own failure.
        let hung =
            format!("{TIMEOUT_MARKER} ...\nprocess 7: tessera\n{KERNEL_LOG_MARKER}[ 1.0] ok\n");
        assert_eq!(kernel_lockup(&hung), None);
        // A guest's own console (or anything else the command prints) is not the host's kernel,
        // and a command that prints the marker mid-line has not timed out.
        let guest = format!("{TIMEOUT_MARKER} ...\n{lockup}\n{stalls}\n");
        assert_eq!(kernel_lockup(&guest), None);
        assert!(!timed_out(&format!("cat: {TIMEOUT_MARKER}")));
        assert_eq!(kernel_lockup(&format!("{KERNEL_LOG_MARKER}{lockup}")), None);
    }
}
