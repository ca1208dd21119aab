//! `tessera run`: boot a microVM with its console on this terminal, optionally running a
//! command under tessera-init, through the same checked `VmResources` and builder as the API.

use std::path::PathBuf;
use std::time::Instant;

use guest_init::spec::{
    EnvVar, Isolation as Level, Mount, Network, Policy, Rlimit, RootFs, WorkloadSpec, RLIMITS,
};
use vmm::builder;
use vmm::config::ConsoleOutput;
use vmm::config::{BootSourceBody, DriveBody, MachineConfigBody, VsockBody};
use vmm::kernel_cmdline::{COMMAND_CMDLINE, DEFAULT_CMDLINE};
use vmm::resources::devices::disk_name;
use vmm::resources::{ResourcesError, VmResources};
use vmm::seccomp::Filters;
use vmm::VmExit;

use super::run_dir::{self, RunDir};
use super::sandbox_run;
use super::stdio::{HostStdio, StdioFlags};
use super::volumes::{self, VolumeKeeper};
use super::wasm_run::{self, MicrovmModule, Prepared};
use super::{device_args, exit_code};
use crate::guest_image;
use images::store::{Store, StoreError};

#[derive(clap::Args)]
pub struct RunArgs {
    /// Guest kernel: an ELF vmlinux (PVH entry used when present) or a 64-bit bzImage
    /// [default with a command: the cached microvm kernel].
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,

    /// Initial ramdisk, placed page-aligned at the top of guest low memory; with a command, the
    /// workload spec's archive follows it [default with a command: the cached tessera-init
    /// initramfs].
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Kernel command line, at most 2047 bytes of ASCII (a command does not count: its workload
    /// spec is appended to the initrd) [default: a microVM console line, quiet when running a
    /// command].
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,

    /// Environment variable for the command (repeatable).
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    pub(super) env: Vec<String>,

    /// Working directory of the command inside the guest [default: /].
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,

    /// Run the command as USER[:GROUP] (names or numbers, resolved in the command's root:
    /// the image's /etc/passwd and /etc/group) [default: the image's User, else root].
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    user: Option<String>,

    /// Guest hostname [default: tessera].
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,

    /// Number of vCPUs, 1 to 32.
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u64,

    /// Guest memory in MiB, 8 to 1048576.
    #[arg(long, value_name = "MiB", default_value_t = 128)]
    memory: u64,

    /// Append the guest console to FILE instead of stdout; the guest then gets no input.
    #[arg(long, value_name = "FILE")]
    console_output: Option<PathBuf>,

    /// Add a virtio-blk disk backed by a raw file (repeatable; the first is /dev/vda):
    /// PATH[,ro][,root][,cache=unsafe|writeback][,id=NAME][,bw=BYTES_PER_S][,iops=N].
    #[arg(long, value_name = "SPEC")]
    disk: Vec<String>,

    /// Add a virtio-net interface on a host TAP device (repeatable):
    /// tap=NAME[,mac=MAC][,id=NAME][,bw=BYTES_PER_S per direction].
    #[arg(long, value_name = "SPEC")]
    net: Vec<String>,

    /// Add a virtio-vsock device whose host side is a unix socket: cid=N,uds=PATH. Host
    /// programs connect to PATH and send "CONNECT <port>\n"; the guest's connections to port P
    /// reach PATH_P.
    #[arg(long, value_name = "SPEC")]
    vsock: Option<String>,

    /// Add a virtio-rng device fed by the host's getrandom.
    #[arg(long)]
    entropy: bool,

    /// Run a container image (from the local store, `tessera image ls`, pulled first when it
    /// is not there): its root file system is a read-only disk (/dev/vda) under a tmpfs
    /// overlay, and CMD replaces the image's Cmd (its Entrypoint, Env, WorkingDir and User
    /// apply).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,

    /// The workload's policy: a JSON file (docs/POLICY.md) saying what it may touch and use
    /// and the weakest isolation it may run at; every level enforces it or refuses the run.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,

    /// When to pull the image from its registry: missing (when the store lacks it), never,
    /// always.
    #[arg(
        long,
        value_enum,
        value_name = "WHEN",
        default_value = "missing",
        requires = "image"
    )]
    pub(super) pull: PullPolicy,

    /// Keep stdin open and send it to the command (as `docker run -i`); without it the
    /// command's stdin is /dev/null.
    #[arg(short = 'i', long)]
    pub(super) interactive: bool,

    /// Give the command a terminal (a pty in the guest; its stdout and stderr share it, and
    /// with -i this terminal is in raw mode for the run).
    #[arg(short = 't', long)]
    tty: bool,

    /// Share a host directory: HOST_DIR:GUEST_DIR[:ro|:rw] (repeatable). It is copied onto a
    /// disk before the boot; a read-write volume's contents are copied back when the command
    /// has exited.
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]")]
    pub(super) volumes: Vec<String>,

    /// Take the image's writes on a disk of SIZE (512M, 2G, ...) instead of guest memory.
    #[arg(long, value_name = "SIZE", requires = "image")]
    scratch: Option<String>,

    /// Accepted for Docker's habit: a run always leaves nothing behind; a detached run's
    /// record (for `tessera ps -a` and `tessera logs`) then goes when it ends, else it stays
    /// until `tessera rm`.
    #[arg(long)]
    pub rm: bool,

    /// Run in the background: print the run's id and exit; `tessera ps`, `tessera logs ID`,
    /// `tessera stop ID` and `tessera rm ID` manage it.
    #[arg(short = 'd', long, conflicts_with_all = ["interactive", "tty"])]
    pub detach: bool,

    /// A name for a detached run, usable wherever its id is.
    #[arg(long, value_name = "NAME", requires = "detach")]
    pub name: Option<String>,

    /// A resource limit of the command: TYPE=SOFT[:HARD] as Docker writes it (nofile=1024:4096,
    /// nproc=512; -1 or unlimited for none), repeatable.
    #[arg(long, value_name = "TYPE=SOFT[:HARD]")]
    ulimit: Vec<String>,

    /// A Wasm module (.wasm, .wat, .wasi) or a Blockless JSON config to run, instead of a
    /// command; its arguments go after `--`.
    #[arg(value_name = "MODULE")]
    pub module: Option<PathBuf>,

    /// Where an image or a Wasm module runs: sandbox (a confined process tree on this host,
    /// sharing its kernel) or microvm (a microVM with tessera-init) [default: the strongest
    /// level this host runs, said on stderr; a command without an image always runs in a
    /// microVM].
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub isolation: Option<Isolation>,

    #[command(flatten)]
    pub wasm: WasmArgs,

    /// The command to run in the guest, after `--` (a Wasm module's arguments).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The isolation levels `tessera run` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Isolation {
    /// A confined process tree on this host (namespaces, cgroup, seccomp, Landlock, no
    /// capabilities, no_new_privs).
    Sandbox,
    /// A microVM with tessera-init.
    Microvm,
}

impl Isolation {
    /// The workload spec's name for this level.
    pub fn level(self) -> Level {
        match self {
            Isolation::Sandbox => Level::Sandbox,
            Isolation::Microvm => Level::Microvm,
        }
    }
}

/// The flags of a Wasm module's run (`tessera run app.wasm`), passed on to tessera-wasm.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WasmArgs {
    /// Preopen a host directory for the module: HOST[::GUEST][:ro] (repeatable).
    #[arg(long, value_name = "HOST[::GUEST][:ro]", requires = "module")]
    pub dir: Vec<String>,
    /// The module's fuel (wasmtime's units); spent: exit code 1.
    #[arg(long, value_name = "N", requires = "module")]
    pub fuel: Option<u64>,
    /// The module's memory limit in bytes; asked for more: exit code 16.
    #[arg(long, value_name = "BYTES", requires = "module")]
    pub memory_limit: Option<u64>,
    /// The module's wall-time limit in milliseconds; past it: exit code 15.
    #[arg(long, value_name = "MS", requires = "module")]
    pub timeout: Option<u64>,
    /// A Blockless JSON config for the module (MODULE is then the module it runs).
    #[arg(long, value_name = "FILE", requires = "module")]
    pub config: Option<PathBuf>,
    /// The directory of the module's CGI extensions.
    #[arg(long = "ext", value_name = "DIR", requires = "module")]
    pub extensions: Option<PathBuf>,
}

/// The guest's vsock CID when `--vsock` names none (the first a guest may have).
const STDIO_GUEST_CID: u32 = 3;

/// The drive id of an image's root disk; `--disk` refuses it.
const IMAGE_DRIVE_ID: &str = "tessera-image-root";

/// What `tessera image inspect` says of an image, as `tessera run --image` needs it.
pub(super) struct ImageRun {
    /// The image in the store.
    pub(super) image: images::store::Image,
    rootfs: PathBuf,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
}

/// When `tessera run --image` pulls its image (`--pull`, as Docker's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    /// Pull when the store lacks the image.
    Missing,
    /// Never pull: the image must be in the store.
    Never,
    /// Pull every time.
    Always,
}

/// `tessera-image --store STORE ARGS`: the image helper beside this binary.
fn image_helper(store: &std::path::Path) -> Result<std::process::Command, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find tessera's own path: {e}"))?;
    let mut command = std::process::Command::new(exe.with_file_name("tessera-image"));
    command.arg("--store").arg(store);
    Ok(command)
}

/// Pulls `reference` into the store, its progress on this stderr; the digest line is dropped.
fn pull_image(store: &std::path::Path, reference: &str) -> Result<(), String> {
    let status = image_helper(store)?
        .args(["pull", reference])
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run tessera-image: {e}"))?;
    match status.success() {
        true => Ok(()),
        false => Err(format!(
            "--image {reference}: not in the store, and the pull failed (above)"
        )),
    }
}

/// Looks `reference` up in the image store, pulling it first as `pull` says. The lookup is
/// done here (it reads two small files) rather than by the `tessera-image` helper, whose start
/// alone would cost a `--image` run tens of milliseconds; only a pull runs the helper.
pub(super) fn inspect_image(reference: &str, pull: PullPolicy) -> Result<ImageRun, String> {
    let dir = guest_image::cache_dir()?.join("images");
    if pull == PullPolicy::Always {
        pull_image(&dir, reference)?;
    }
    let find = || Store::open(&dir).and_then(|store| store.find(reference));
    let image = match find() {
        Err(StoreError::NotFound(_)) if pull == PullPolicy::Missing => {
            pull_image(&dir, reference)?;
            find()
        }
        found => found,
    }
    .map_err(|e| format!("--image {reference}: {e}"))?;
    let config = image.config.config().clone().unwrap_or_default();
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    Ok(ImageRun {
        rootfs: image.rootfs.clone(),
        entrypoint: config.entrypoint().clone().unwrap_or_default(),
        cmd: config.cmd().clone().unwrap_or_default(),
        env: config.env().clone().unwrap_or_default(),
        working_dir: non_empty(config.working_dir()),
        user: non_empty(config.user()),
        image,
    })
}

/// A run made ready: the checked resources and the host's side of the command's streams and
/// disks.
struct Launch {
    resources: VmResources,
    stdio: Option<HostStdio>,
    volumes: Option<VolumeKeeper>,
    /// Socket files of this run, removed at its end.
    sockets: Vec<PathBuf>,
}

/// Parses `--env NAME=VALUE` flags.
pub(super) fn parse_env(items: &[String]) -> Result<Vec<EnvVar>, String> {
    items
        .iter()
        .map(|item| match EnvVar::parse(item) {
            Ok(var) if !var.name.is_empty() => Ok(var),
            _ => Err(format!("--env {item:?}: expected NAME=VALUE")),
        })
        .collect()
}

/// Parses `--ulimit TYPE=SOFT[:HARD]` (Docker's form; HARD defaults to SOFT).
fn parse_ulimit(flag: &str) -> Result<Rlimit, String> {
    let bad = || format!("--ulimit {flag:?}: expected TYPE=SOFT[:HARD], e.g. nofile=1024:4096");
    let (kind, values) = flag.split_once('=').ok_or_else(bad)?;
    let kind = format!("RLIMIT_{}", kind.to_ascii_uppercase());
    if !RLIMITS.contains(&kind.as_str()) {
        return Err(format!(
            "--ulimit {flag:?}: unknown type (core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack, as)"
        ));
    }
    let value = |v: &str| match v {
        "-1" | "unlimited" => Ok(u64::MAX),
        v => v.parse::<u64>().map_err(|_| bad()),
    };
    let (soft, hard) = match values.split_once(':') {
        Some((soft, hard)) => (value(soft)?, value(hard)?),
        None => (value(values)?, value(values)?),
    };
    if soft > hard {
        return Err(format!(
            "--ulimit {flag:?}: the soft limit is above the hard limit"
        ));
    }
    Ok(Rlimit { kind, soft, hard })
}

impl RunArgs {
    /// The checked resources these arguments describe (the same checks, in the same setters,
    /// as the REST API's and the config file's), with the run's streams and disks made ready;
    /// `wasm` is the module a microVM runs, if any.
    fn prepare(
        &self,
        wasm: Option<MicrovmModule>,
        policy: Option<Policy>,
    ) -> Result<Launch, String> {
        let mut resources = VmResources::default();
        let machine = MachineConfigBody {
            vcpu_count: Some(self.vcpus),
            mem_size_mib: Some(self.memory),
            ..Default::default()
        };
        let e = |e: ResourcesError| e.to_string();
        resources.set_machine_config(&machine, true).map_err(e)?;
        let image = self
            .image
            .as_deref()
            .map(|reference| inspect_image(reference, self.pull))
            .transpose()?;
        if let Some(image) = &image {
            // First, so that it is /dev/vda whatever --disk adds.
            resources
                .put_drive(&DriveBody {
                    drive_id: IMAGE_DRIVE_ID.into(),
                    path_on_host: image.rootfs.clone(),
                    is_root_device: false,
                    is_read_only: true,
                    cache_type: Default::default(),
                    rate_limiter: None,
                })
                .map_err(e)?;
        }
        let mut workload = self.workload(image.as_ref(), wasm.as_ref())?;
        let mut nets = self.net.clone();
        if let (Some(spec), Some(policy)) = (workload.as_mut(), policy) {
            // The interface the policy names is a host TAP: the guest's first interface.
            if let Network::Interface(tap) = &policy.network {
                nets.insert(0, format!("tap={tap}"));
            }
            if wasm.is_none() {
                spec.policy = Some(policy);
            }
        }
        resources.set_boot_source(&self.boot_source()?).map_err(e)?;
        let devices = device_args::DeviceArgs {
            disks: &self.disk,
            nets: &nets,
            vsock: self.vsock.as_deref(),
            // wasmtime-wasi seeds its random source with getrandom(2), which blocks until the
            // guest kernel's CRNG is ready: virtio-rng makes that a matter of milliseconds.
            entropy: self.entropy || wasm.is_some(),
        }
        .to_config()?;
        for drive in &devices.drives {
            if image.is_some() && drive.drive_id == IMAGE_DRIVE_ID {
                return Err(format!(
                    "--disk id={IMAGE_DRIVE_ID}: that id is the --image root disk's"
                ));
            }
            resources.put_drive(drive).map_err(e)?;
        }
        for iface in &devices.network_interfaces {
            resources.put_network_interface(iface).map_err(e)?;
        }
        if let Some(entropy) = &devices.entropy {
            resources.set_entropy(entropy).map_err(e)?;
        }
        let mut launch = Launch {
            resources,
            stdio: None,
            volumes: None,
            sockets: Vec::new(),
        };
        let Some(spec) = workload.as_mut() else {
            if let Some(vsock) = &devices.vsock {
                launch.resources.set_vsock(vsock).map_err(e)?;
            }
            launch.resources.console = self
                .console_output
                .clone()
                .map_or(ConsoleOutput::Stdio, ConsoleOutput::File);
            return Ok(launch);
        };
        // A command's streams travel over vsock, apart from the console, which goes to stderr
        // (with `quiet`, the kernel says nothing there unless something is wrong).
        launch.resources.console = self
            .console_output
            .clone()
            .map_or(ConsoleOutput::Stderr, ConsoleOutput::File);
        let run_dir = RunDir::new()?;
        let vsock = match &devices.vsock {
            Some(vsock) => vsock.clone(),
            None => {
                run_dir::remove_stale(&run_dir.vsock());
                VsockBody {
                    vsock_id: None,
                    guest_cid: STDIO_GUEST_CID,
                    uds_path: run_dir.vsock(),
                }
            }
        };
        launch.resources.set_vsock(&vsock).map_err(e)?;
        if devices.vsock.is_none() {
            launch.sockets.push(vsock.uds_path.clone());
        }
        let flags = StdioFlags {
            interactive: self.interactive,
            tty: self.tty,
        };
        let host_stdio = HostStdio::bind(&vsock.uds_path, flags)?;
        launch.sockets.extend(host_stdio.files());
        launch.stdio = Some(host_stdio);
        spec.stdio = Some(flags.spec());
        spec.rlimits = self
            .ulimit
            .iter()
            .map(|flag| parse_ulimit(flag))
            .collect::<Result<_, _>>()?;
        let mut volumes = wasm
            .as_ref()
            .map(|module| module.volumes.clone())
            .unwrap_or_default();
        for flag in &self.volumes {
            volumes.push(volumes::parse(flag)?);
        }
        if !volumes.is_empty() || self.scratch.is_some() {
            let (keeper, disks, scratch) =
                VolumeKeeper::start(&run_dir.disks(), &volumes, self.scratch.as_deref())?;
            // Its disk is made: the module's bundle directory goes.
            drop(wasm);
            launch.volumes = Some(keeper);
            let mut put = |id: String, path: PathBuf, read_only: bool| {
                launch
                    .resources
                    .put_drive(&DriveBody {
                        drive_id: id,
                        path_on_host: path,
                        is_root_device: false,
                        is_read_only: read_only,
                        cache_type: Default::default(),
                        rate_limiter: None,
                    })
                    .map_err(e)?;
                Ok::<_, String>(disk_name(launch.resources.devices.drives.len() - 1))
            };
            for (i, (flag, disk)) in volumes.iter().zip(disks).enumerate() {
                let device = put(format!("tessera-volume-{i}"), disk.image, disk.read_only)?;
                spec.mounts.push(Mount {
                    device,
                    fstype: "ext4".into(),
                    destination: flag.guest.clone(),
                    read_only: flag.read_only,
                });
            }
            if let (Some(image), Some(root)) = (scratch, spec.root.as_mut()) {
                root.scratch = Some(put("tessera-scratch".into(), image, false)?);
            }
        }
        launch.resources.set_workload(spec.clone()).map_err(e)?;
        Ok(launch)
    }

    /// The `--ulimit` flags as the spec's rlimits.
    pub(super) fn rlimits(&self) -> Result<Vec<Rlimit>, String> {
        self.ulimit.iter().map(|flag| parse_ulimit(flag)).collect()
    }

    /// A flag given that only a VM takes (the sandbox level has no kernel, devices or memory
    /// size of its own), if any.
    pub fn vm_only_flag(&self) -> Option<&'static str> {
        [
            (self.kernel.is_some(), "--kernel"),
            (self.initrd.is_some(), "--initrd"),
            (self.cmdline.is_some(), "--cmdline"),
            (self.vcpus != 1, "--vcpus"),
            (self.memory != 128, "--memory"),
            (self.console_output.is_some(), "--console-output"),
            (!self.disk.is_empty(), "--disk"),
            (!self.net.is_empty(), "--net"),
            (self.vsock.is_some(), "--vsock"),
            (self.entropy, "--entropy"),
            (self.scratch.is_some(), "--scratch"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// The level to run at: `--isolation`, else the strongest this host runs (said on stderr
    /// in one line); refused when weaker than the policy's minimum.
    fn choose_level(&self, policy: Option<&Policy>) -> Result<Isolation, String> {
        let minimum = policy.map(|p| p.min_isolation).unwrap_or_default();
        let chosen = match self.isolation {
            Some(level) => level,
            // A command without an image has no root of its own to run on this host.
            None if self.image.is_none() && self.module.is_none() => Isolation::Microvm,
            None => {
                let level = match self.microvm_available() {
                    true => Isolation::Microvm,
                    false => Isolation::Sandbox,
                };
                eprintln!(
                    "tessera: isolation {} (the strongest this host runs; --isolation chooses)",
                    level.level()
                );
                level
            }
        };
        if chosen.level() < minimum {
            return Err(format!(
                "the policy's min_isolation is {minimum}: --isolation {} is weaker (use --isolation {minimum} or stronger)",
                chosen.level()
            ));
        }
        if minimum > Level::Microvm {
            return Err(format!(
                "the policy's min_isolation is {minimum}: this build runs sandbox and microvm only"
            ));
        }
        Ok(chosen)
    }

    /// The level a run will have, for a detached run's record (as `choose_level` picks it,
    /// without saying so).
    pub fn planned_level(&self) -> &'static str {
        match self.isolation {
            Some(Isolation::Sandbox) => "sandbox",
            Some(Isolation::Microvm) => "microvm",
            None if self.image.is_none() && self.module.is_none() => "microvm",
            None if self.microvm_available() => "microvm",
            None => "sandbox",
        }
    }

    /// What a run runs, for `tessera ps`.
    pub fn description(&self) -> String {
        let mut parts = Vec::new();
        if let Some(image) = &self.image {
            parts.push(format!("--image {image}"));
        }
        if let Some(module) = &self.module {
            parts.push(module.display().to_string());
        }
        if !self.command.is_empty() {
            parts.push(format!("-- {}", self.command.join(" ")));
        }
        if parts.is_empty() {
            parts.push("(a VM)".into());
        }
        parts.join(" ")
    }

    /// Whether this host can boot the microVM a run needs: /dev/kvm opens read-write and is
    /// not the PVM software hypervisor (which boots no Linux guest), and the kernel and
    /// initramfs are there.
    fn microvm_available(&self) -> bool {
        if vmm::hypervisor::kvm::is_pvm_host() {
            return false;
        }
        let kvm = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let kernel = self.kernel.is_some() || guest_image::default_kernel().is_ok();
        let initrd = self.initrd.is_some()
            || match self.module {
                Some(_) => guest_image::default_wasm_initrd().is_ok(),
                None => guest_image::default_initrd().is_ok(),
            };
        kvm && kernel && initrd
    }

    /// A flag given that only a command or an image takes (a Wasm module has no user, working
    /// directory, terminal, rlimits or volumes of its own), if any.
    pub fn process_only_flag(&self) -> Option<&'static str> {
        [
            (!self.volumes.is_empty(), "-v/--volume"),
            (self.user.is_some(), "--user"),
            (self.workdir.is_some(), "--workdir"),
            (self.tty, "--tty"),
            (!self.ulimit.is_empty(), "--ulimit"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// Whether tessera-init runs a command: one after `--`, or an image's (or a Wasm module
    /// runs).
    pub fn runs_command(&self) -> bool {
        !self.command.is_empty() || self.image.is_some() || self.module.is_some()
    }

    /// A flag for the command (--env, --workdir, --hostname, --user) given with no command: a
    /// usage error.
    pub fn command_flag_without_command(&self) -> Option<&'static str> {
        if self.runs_command() {
            return None;
        }
        [
            (!self.env.is_empty(), "--env"),
            (self.workdir.is_some(), "--workdir"),
            (self.hostname.is_some(), "--hostname"),
            (self.user.is_some(), "--user"),
            (self.interactive, "--interactive"),
            (self.tty, "--tty"),
            (!self.volumes.is_empty(), "--volume"),
            (!self.ulimit.is_empty(), "--ulimit"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// The command after `--` (or the image's, or the Wasm module with its arguments) as a
    /// workload spec for tessera-init, if any.
    pub(super) fn workload(
        &self,
        image: Option<&ImageRun>,
        wasm: Option<&MicrovmModule>,
    ) -> Result<Option<WorkloadSpec>, String> {
        if !self.runs_command() {
            return Ok(None);
        }
        let mut env = image.map(|i| i.env.clone()).unwrap_or_default();
        env.extend(self.env.iter().cloned());
        let env = parse_env(&env)?;
        if let Some(module) = wasm {
            return Ok(Some(WorkloadSpec {
                env,
                hostname: self.hostname.clone(),
                wasm: Some(module.wasm.clone()),
                ..WorkloadSpec::new(self.command.clone())
            }));
        }
        let args = match image {
            None => self.command.clone(),
            Some(image) => {
                let cmd = match self.command.is_empty() {
                    true => &image.cmd,
                    false => &self.command,
                };
                let args: Vec<String> = image.entrypoint.iter().chain(cmd).cloned().collect();
                if args.is_empty() {
                    return Err(format!(
                        "--image {}: the image has no Entrypoint or Cmd: give a command after `--`",
                        self.image.as_deref().unwrap_or_default()
                    ));
                }
                args
            }
        };
        Ok(Some(WorkloadSpec {
            env,
            cwd: self
                .workdir
                .clone()
                .or_else(|| image.and_then(|i| i.working_dir.clone())),
            hostname: self.hostname.clone(),
            user: self
                .user
                .clone()
                .or_else(|| image.and_then(|i| i.user.clone())),
            root: image.map(|_| RootFs {
                device: "/dev/vda".into(),
                fstype: "ext4".into(),
                scratch: None,
            }),
            ..WorkloadSpec::new(args)
        }))
    }

    /// The boot source these arguments describe, with defaults filled in.
    fn boot_source(&self) -> Result<BootSourceBody, String> {
        if !self.runs_command() {
            let kernel = self.kernel.clone().ok_or(
                "nothing to boot: give --kernel PATH, or a command after `--` to run in the default microVM",
            )?;
            return Ok(BootSourceBody {
                kernel_image_path: kernel,
                initrd_path: self.initrd.clone(),
                boot_args: Some(self.cmdline.clone().unwrap_or(DEFAULT_CMDLINE.to_string())),
            });
        }
        let base = self.cmdline.as_deref().unwrap_or(COMMAND_CMDLINE);
        let kernel = match &self.kernel {
            Some(kernel) => kernel.clone(),
            None => guest_image::default_kernel()?,
        };
        let initrd = match (&self.initrd, &self.module) {
            (Some(initrd), _) => initrd.clone(),
            (None, Some(_)) => guest_image::default_wasm_initrd()?,
            (None, None) => guest_image::default_initrd()?,
        };
        Ok(BootSourceBody {
            kernel_image_path: kernel,
            initrd_path: Some(initrd),
            boot_args: Some(base.to_string()),
        })
    }
}

/// Boots the VM these arguments describe and waits for it; the exit code is the command's.
pub fn run(args: RunArgs, process_start: Instant, filters: &Filters) -> Result<u8, String> {
    let policy = args.policy.as_deref().map(read_policy).transpose()?;
    if args.module.is_some() && args.image.is_some() {
        return Err("MODULE and --image: give one of them".into());
    }
    let level = match args.runs_command() {
        true => args.choose_level(policy.as_ref())?,
        false => Isolation::Microvm,
    };
    let wasm = match &args.module {
        Some(module) => match wasm_run::prepare(module, &args, level, policy.as_ref())? {
            Prepared::Microvm(module) => Some(*module),
            Prepared::Exit(code) => return Ok(code),
        },
        None if level == Isolation::Sandbox && args.image.is_none() => {
            return Err(
                "--isolation sandbox runs an image (--image REF) or a Wasm module: a bare command needs the microVM's root (drop --isolation)".into(),
            )
        }
        None if level == Isolation::Sandbox => return sandbox_run::run(&args, policy),
        None => None,
    };
    let mut launch = args.prepare(wasm, policy)?;
    let sockets = std::mem::take(&mut launch.sockets);
    let remove_sockets = || {
        for socket in &sockets {
            let _ = std::fs::remove_file(socket);
        }
    };
    let relays = match launch.stdio.take().map(|s| s.start(filters)).transpose() {
        Ok(relays) => relays,
        Err(e) => {
            remove_sockets();
            return Err(e);
        }
    };
    let running = match builder::build(&launch.resources, filters, process_start) {
        Ok(running) => running,
        Err(e) => {
            remove_sockets();
            if let Some(keeper) = launch.volumes {
                keeper.discard();
            }
            return Err(e.to_string());
        }
    };
    log::info!(
        "microVM started ({:?} after start)",
        process_start.elapsed()
    );
    let exit = running.wait();
    if let Some(relays) = relays {
        relays.finish();
    }
    remove_sockets();
    let exit = exit.map_err(|e| e.to_string())?;
    let command_exited = matches!(exit, VmExit::CommandExited { .. });
    let code = exit_code(exit, args.runs_command());
    if let (true, Some(keeper)) = (command_exited, launch.volumes) {
        // Dropped otherwise: the helper keeps a disk the run may have left half-written.
        keeper.sync()?;
    }
    Ok(code)
}

/// Reads a `--policy` file.
fn read_policy(path: &std::path::Path) -> Result<Policy, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--policy {}: {e}", path.display()))?;
    Policy::from_json(&bytes).map_err(|e| format!("--policy {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulimits_read_as_docker_writes_them() {
        let limit = parse_ulimit("nofile=1024:4096").unwrap();
        assert_eq!(
            (limit.kind.as_str(), limit.soft, limit.hard),
            ("RLIMIT_NOFILE", 1024, 4096)
        );
        let limit = parse_ulimit("nproc=512").unwrap();
        assert_eq!((limit.soft, limit.hard), (512, 512));
        let limit = parse_ulimit("core=-1:unlimited").unwrap();
        assert_eq!((limit.soft, limit.hard), (u64::MAX, u64::MAX));
        for bad in [
            "nofile",
            "files=1",
            "nofile=a",
            "nofile=10:5",
            "nofile=1:2:3",
        ] {
            let err = parse_ulimit(bad).unwrap_err();
            assert!(err.starts_with(&format!("--ulimit {bad:?}: ")), "{err}");
        }
    }
}
