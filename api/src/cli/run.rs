//! `tessera run`: boot a microVM with its console on this terminal, optionally running a
//! command under tessera-init, through the same checked `VmResources` and builder as the API.

use std::path::PathBuf;
use std::time::Instant;

use guest_init::spec::{EnvVar, RootFs, WorkloadSpec};
use vmm::builder;
use vmm::config::ConsoleOutput;
use vmm::config::{BootSourceBody, DriveBody, MachineConfigBody};
use vmm::kernel_cmdline::{COMMAND_CMDLINE, DEFAULT_CMDLINE};
use vmm::resources::{ResourcesError, VmResources};
use vmm::seccomp::Filters;

use super::{device_args, exit_code};
use crate::guest_image;

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
    env: Vec<String>,

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

    /// Run a container image from the local store (`tessera image ls`): its root file system
    /// is a read-only disk (/dev/vda) under a tmpfs overlay, and CMD replaces the image's Cmd
    /// (its Entrypoint, Env and WorkingDir apply).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,

    /// The command to run in the guest, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The drive id of an image's root disk; `--disk` refuses it.
const IMAGE_DRIVE_ID: &str = "tessera-image-root";

/// What `tessera image inspect` says of an image, as `tessera run --image` needs it.
struct ImageRun {
    rootfs: PathBuf,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: Option<String>,
    user: Option<String>,
}

/// Looks `reference` up in the image store through `tessera image inspect`.
fn inspect_image(reference: &str) -> Result<ImageRun, String> {
    let store = guest_image::cache_dir()?.join("images");
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find tessera's own path: {e}"))?;
    let helper = exe.with_file_name("tessera-image");
    let out = std::process::Command::new(&helper)
        .arg("--store")
        .arg(&store)
        .args(["inspect", reference])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", helper.display()))?;
    if !out.status.success() {
        let message = String::from_utf8_lossy(&out.stderr);
        let message = message.trim().trim_start_matches("tessera: error: ");
        return Err(format!("--image {reference}: {message}"));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("--image {reference}: unreadable inspect output: {e}"))?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let config = &json["Config"]["config"];
    Ok(ImageRun {
        rootfs: PathBuf::from(json["Rootfs"].as_str().unwrap_or_default()),
        entrypoint: strings(&config["Entrypoint"]),
        cmd: strings(&config["Cmd"]),
        env: strings(&config["Env"]),
        working_dir: config["WorkingDir"]
            .as_str()
            .filter(|d| !d.is_empty())
            .map(String::from),
        user: config["User"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map(String::from),
    })
}

impl RunArgs {
    /// The checked resources these arguments describe: the same checks, in the same setters,
    /// as the REST API's and the config file's.
    pub fn to_resources(&self) -> Result<VmResources, String> {
        let mut resources = VmResources::default();
        let machine = MachineConfigBody {
            vcpu_count: Some(self.vcpus),
            mem_size_mib: Some(self.memory),
            ..Default::default()
        };
        let e = |e: ResourcesError| e.to_string();
        resources.set_machine_config(&machine, true).map_err(e)?;
        let image = self.image.as_deref().map(inspect_image).transpose()?;
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
        let workload = self.workload(image.as_ref())?;
        resources.set_boot_source(&self.boot_source()?).map_err(e)?;
        if let Some(spec) = workload {
            resources.set_workload(spec).map_err(e)?;
        }
        let devices = device_args::DeviceArgs {
            disks: &self.disk,
            nets: &self.net,
            vsock: self.vsock.as_deref(),
            entropy: self.entropy,
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
        if let Some(vsock) = &devices.vsock {
            resources.set_vsock(vsock).map_err(e)?;
        }
        if let Some(entropy) = &devices.entropy {
            resources.set_entropy(entropy).map_err(e)?;
        }
        resources.console = self
            .console_output
            .clone()
            .map_or(ConsoleOutput::Stdio, ConsoleOutput::File);
        Ok(resources)
    }

    /// Whether tessera-init runs a command: one after `--`, or an image's.
    pub fn runs_command(&self) -> bool {
        !self.command.is_empty() || self.image.is_some()
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
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// The command after `--` (or the image's) as a workload spec for tessera-init, if any.
    fn workload(&self, image: Option<&ImageRun>) -> Result<Option<WorkloadSpec>, String> {
        if !self.runs_command() {
            return Ok(None);
        }
        let image_env = image.map(|i| i.env.clone()).unwrap_or_default();
        let env = image_env
            .iter()
            .chain(&self.env)
            .map(|item| match EnvVar::parse(item) {
                Ok(var) if !var.name.is_empty() => Ok(var),
                _ => Err(format!("--env {item:?}: expected NAME=VALUE")),
            })
            .collect::<Result<_, _>>()?;
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
        let initrd = match &self.initrd {
            Some(initrd) => initrd.clone(),
            None => guest_image::default_initrd()?,
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
    let resources = args.to_resources()?;
    let running = builder::build(&resources, filters, process_start).map_err(|e| e.to_string())?;
    let exit = running.wait().map_err(|e| e.to_string())?;
    Ok(exit_code(exit, args.runs_command()))
}
