//! `tessera`: the Tessera VMM command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use api::routes::Router;
use api::server::ApiServer;
use clap::{Parser, Subcommand};
use guest_init::protocol;
use guest_init::spec::{EnvVar, WorkloadSpec};
use vmm::config::{BootSource, ConsoleOutput, MachineConfig, DEFAULT_CMDLINE};
use vmm::controller::{self, RunError, Vmm};
use vmm::exit::EXIT_NO_STATUS;
use vmm::metrics::ApiCounters;
use vmm::resources::VmConfig;
use vmm::seccomp::{Filters, ThreadKind};
use vmm::{Vm, VmExit};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod device_args;
mod guest_image;

/// Exit code for an error before or while running the VM (see `vmm::exit`).
const EXIT_VMM_ERROR: u8 = 1;
/// Exit code for a command-line usage error.
const EXIT_USAGE: u8 = 2;
/// Where the API listens without `--api-sock` (Firecracker's is /run/firecracker.socket).
const DEFAULT_API_SOCK: &str = "/run/tessera.socket";
/// The instance id without `--id` (Firecracker's).
const DEFAULT_ID: &str = "anonymous-instance";

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: a minimal KVM microVM monitor",
    long_about = "Tessera: a minimal KVM microVM monitor.\n\nWithout a subcommand it works as \
        Firecracker does: it serves Firecracker's REST API on a unix socket (--api-sock) and \
        boots when asked (PUT /actions InstanceStart), or at once from --config-file. The \
        guest's serial console is on stdin/stdout."
)]
struct Cli {
    /// Log level for VMM messages on stderr: off, error, warn, info, debug or trace
    /// [default: info; warn when running a command, so stderr carries only the command's].
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<log::LevelFilter>,

    /// Run without seccomp filters (for debugging; never in production).
    #[arg(long, global = true, conflicts_with = "seccomp_filter")]
    no_seccomp: bool,

    /// Use the seccomp filters in FILE instead of the built-in ones: JSON in seccompiler's
    /// format with one filter each for the "vmm", "api" and "vcpu" threads.
    #[arg(long, global = true, value_name = "FILE")]
    seccomp_filter: Option<PathBuf>,

    #[command(flatten)]
    vmm: VmmArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

/// The Firecracker-style process: API socket and/or config file.
#[derive(clap::Args)]
struct VmmArgs {
    /// Serve the REST API on a unix socket at PATH (a stale socket file there is replaced;
    /// the file is removed when tessera exits) [default: /run/tessera.socket].
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,

    /// Configure the microVM from a JSON file (Firecracker's config-file shape: boot-source,
    /// machine-config, drives, network-interfaces, vsock, entropy, logger, metrics) and boot
    /// it at once.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,

    /// Do not serve the API (only with --config-file).
    #[arg(long, requires = "config_file")]
    no_api: bool,

    /// The instance id `GET /` reports [default: anonymous-instance].
    #[arg(long, value_name = "ID")]
    id: Option<String>,
}

impl VmmArgs {
    /// The flags given, for the error when they come with `run` (which has its own).
    fn given(&self) -> Vec<&'static str> {
        [
            ("--api-sock", self.api_sock.is_some()),
            ("--config-file", self.config_file.is_some()),
            ("--no-api", self.no_api),
            ("--id", self.id.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }
}

#[derive(Subcommand)]
enum Command {
    /// Boot a microVM with its serial console on this terminal; with `-- CMD ARGS...`, run
    /// that command under tessera-init and exit with its status.
    ///
    /// With a command, the kernel and initrd default to the cached microvm kernel and the
    /// tessera-init initramfs, and the exit code is the command's (128+N if signal N killed
    /// it; 125 tessera-init failed, 126 cannot execute, 127 not found). Without one, exits 0
    /// when the guest reboots or powers off. Otherwise, with the reason on stderr: 1 VMM
    /// error, 2 usage error, 130/143 stopped by SIGINT/SIGTERM, 201 guest triple fault, 202
    /// KVM could not run the guest, 203 unhandled vCPU exit, 204 guest kernel panic, 205 the
    /// guest ended without reporting the command's status. SIGTERM first sends Ctrl-Alt-Del to
    /// the guest (tessera-init passes it on as SIGTERM); a second SIGTERM stops it at once.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
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
    #[arg(short, long = "env", value_name = "NAME=VALUE", requires = "command")]
    env: Vec<String>,

    /// Working directory of the command inside the guest [default: /].
    #[arg(short = 'w', long, value_name = "DIR", requires = "command")]
    workdir: Option<String>,

    /// Guest hostname [default: tessera].
    #[arg(long, value_name = "NAME", requires = "command")]
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

    /// The command to run in the guest, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

impl RunArgs {
    /// The boot source these arguments describe, with defaults filled in.
    fn boot_source(&self) -> Result<BootSource, String> {
        if self.command.is_empty() {
            let kernel = self.kernel.clone().ok_or(
                "nothing to boot: give --kernel PATH, or a command after `--` to run in the default microVM",
            )?;
            let cmdline = self.cmdline.clone().unwrap_or(DEFAULT_CMDLINE.to_string());
            return BootSource::new(kernel, self.initrd.clone(), Some(cmdline))
                .map_err(|e| e.to_string());
        }
        let env = self
            .env
            .iter()
            .map(|item| match EnvVar::parse(item) {
                Ok(var) if !var.name.is_empty() => Ok(var),
                _ => Err(format!("--env {item:?}: expected NAME=VALUE")),
            })
            .collect::<Result<_, _>>()?;
        let spec = WorkloadSpec {
            env,
            cwd: self.workdir.clone(),
            hostname: self.hostname.clone(),
            ..WorkloadSpec::new(self.command.clone())
        };
        // The spec travels in a newc archive appended to the initrd, not on the command line.
        let archive = protocol::spec_archive(&spec).map_err(|e| format!("command: {e}"))?;
        let base = self
            .cmdline
            .as_deref()
            .unwrap_or(guest_image::COMMAND_CMDLINE);
        let kernel = match &self.kernel {
            Some(kernel) => kernel.clone(),
            None => guest_image::default_kernel()?,
        };
        let initrd = match &self.initrd {
            Some(initrd) => initrd.clone(),
            None => guest_image::default_initrd()?,
        };
        let mut boot = BootSource::new(kernel, Some(initrd), Some(base.to_string()))
            .map_err(|e| e.to_string())?;
        boot.initrd_append = archive;
        Ok(boot)
    }
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message runs to the first blank line (a missing argument's name is on
            // the line after "not provided:"); usage and tips follow.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("tessera: {}", message.join(" "));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let default_level = match &cli.command {
        Some(Command::Run(args)) if !args.command.is_empty() => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    vmm::logger::init(cli.log_level.unwrap_or(default_level));
    let filters = match (cli.no_seccomp, &cli.seccomp_filter) {
        (true, _) => Filters::none(),
        (false, Some(path)) => match Filters::from_file(path) {
            Ok(filters) => filters,
            Err(e) => return finish(Err(e.to_string())),
        },
        (false, None) => Filters::builtin(),
    };
    let result = match cli.command {
        // Checked here rather than by clap, which would also refuse the global --log-level.
        Some(Command::Run(_)) if !cli.vmm.given().is_empty() => {
            eprintln!(
                "tessera: error: {} cannot be used with the `run` subcommand",
                cli.vmm.given().join(", ")
            );
            return ExitCode::from(EXIT_USAGE);
        }
        Some(Command::Run(args)) => boot_and_wait(args, process_start, &filters),
        None => serve(cli.vmm, process_start, filters),
    };
    finish(result)
}

fn finish(result: Result<u8, String>) -> ExitCode {
    match result {
        Ok(code) => {
            let _ = std::io::stdout().flush();
            ExitCode::from(code)
        }
        Err(message) => {
            eprintln!("tessera: error: {message}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}

fn boot_and_wait(args: RunArgs, process_start: Instant, filters: &Filters) -> Result<u8, String> {
    let machine = MachineConfig::new(args.vcpus, args.memory).map_err(|e| e.to_string())?;
    let boot = args.boot_source()?;
    let runs_command = !args.command.is_empty();
    let console = args
        .console_output
        .map_or(ConsoleOutput::Stdio, ConsoleOutput::File);

    let devices = device_args::DeviceArgs {
        disks: &args.disk,
        nets: &args.net,
        vsock: args.vsock.as_deref(),
        entropy: args.entropy,
    }
    .to_config()?;

    let vm = Vm::create(machine, filters).map_err(|e| e.to_string())?;
    let running = vm
        .boot(&boot, &devices, &console, process_start)
        .map_err(|e| e.to_string())?;
    let exit = running.wait().map_err(|e| e.to_string())?;
    Ok(exit_code(exit, runs_command))
}

/// Serves the API and/or boots the config file's VM; exits when the VM ends.
fn serve(args: VmmArgs, process_start: Instant, filters: Filters) -> Result<u8, String> {
    let counters = ApiCounters::default();
    let api_sock = args
        .api_sock
        .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCK));
    let mut vmm = Vmm::new(
        args.id.unwrap_or_else(|| DEFAULT_ID.to_string()),
        counters.clone(),
        ConsoleOutput::Stdio,
        process_start,
        filters.clone(),
    );
    let config = args
        .config_file
        .as_deref()
        .map(read_config_file)
        .transpose()?;
    // Bound before the config file is applied, which may create log and metrics files: a
    // socket in use must not leave them behind.
    let server = match args.no_api {
        true => None,
        false => Some(ApiServer::bind(&api_sock).map_err(|e| e.to_string())?),
    };
    if let (Some(path), Some(config)) = (&args.config_file, &config) {
        vmm.configure(config)
            .map_err(|e| format!("--config-file {}: {e}", path.display()))?;
    }
    let (thread, end, shutdown) = match server {
        None => (None, None, None),
        Some(server) => {
            let (api_end, vmm_end) =
                vmm::rpc::channel().map_err(|e| format!("cannot set up the API channel: {e}"))?;
            let shutdown =
                EventFd::new(EFD_NONBLOCK).map_err(|e| format!("cannot create an eventfd: {e}"))?;
            let stop = shutdown
                .try_clone()
                .map_err(|e| format!("cannot clone an eventfd: {e}"))?;
            let mut router = Router::new(api_end, counters);
            let (ready_tx, ready_rx) = mpsc::sync_channel(1);
            let thread = thread::Builder::new()
                .name("api".into())
                .spawn(move || {
                    let ready = filters.confine_worker(ThreadKind::Api);
                    let failed = ready.is_err();
                    let _ = ready_tx.send(ready);
                    if failed {
                        return;
                    }
                    if let Err(e) = server.run(|request| router.handle(request), Some(&stop)) {
                        log::error!("API server stopped: {e}");
                    }
                })
                .map_err(|e| format!("cannot start the API thread: {e}"))?;
            let ready = ready_rx
                .recv()
                .unwrap_or_else(|_| Err("the API thread ended before it was ready".into()));
            if let Err(e) = ready {
                // It removes its socket file as it ends.
                let _ = thread.join();
                return Err(e);
            }
            log::info!(
                "API listening on {} ({:?} after start)",
                api_sock.display(),
                process_start.elapsed()
            );
            (Some(thread), Some(vmm_end), Some(shutdown))
        }
    };
    let result = controller::run(vmm, end, args.config_file.is_some());
    // Stop the API thread so that it removes its socket file.
    if let (Some(thread), Some(shutdown)) = (thread, shutdown) {
        let _ = shutdown.write(1);
        let _ = thread.join();
    }
    match result {
        Ok(exit) => Ok(exit_code(exit, false)),
        Err(e @ RunError::Signal(signal)) => {
            log::info!("{e}");
            Ok(u8::try_from(128 + signal).unwrap_or(EXIT_VMM_ERROR))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn read_config_file(path: &Path) -> Result<VmConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --config-file {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("--config-file {}: {e}", path.display()))
}

/// The process exit code for `exit`, with the reason logged.
fn exit_code(exit: VmExit, runs_command: bool) -> u8 {
    if runs_command && matches!(exit, VmExit::Reset | VmExit::Halted { .. }) {
        log::error!(
            "VM stopped: {exit}, but the guest never reported the command's exit status (is tessera-init the initramfs's /init?) (exit code {EXIT_NO_STATUS})"
        );
        return EXIT_NO_STATUS as u8;
    }
    if exit.is_clean() {
        log::info!("VM stopped: {exit}");
    } else {
        log::error!("VM stopped: {exit} (exit code {})", exit.exit_code());
    }
    u8::try_from(exit.exit_code()).unwrap_or(EXIT_VMM_ERROR)
}
