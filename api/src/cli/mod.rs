//! The `tessera` command line: Firecracker's flags (API socket, config file) and `tessera run`
//! ([`run`]). Every path ends in one checked `VmResources` and the one builder.

mod detached;
mod device_args;
mod image;
mod run;
mod run_dir;
mod sandbox_run;
mod stdio;
mod volumes;
mod wasm_run;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use clap::{Parser, Subcommand};
use vmm::config::ConsoleOutput;
use vmm::config::VmConfigBody;
use vmm::controller::{self, RunError, Vmm};
use vmm::metrics::ApiCounters;
use vmm::runtime::exit::EXIT_NO_STATUS;
use vmm::seccomp::{Filters, ThreadKind};
use vmm::VmExit;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::run::RunArgs;
use crate::http::ApiServer;
use crate::rest::Router;

/// Exit code for an error before or while running the VM (see `vmm::runtime::exit`).
pub(crate) const EXIT_VMM_ERROR: u8 = 1;
use jailer::usage::EXIT_USAGE;
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
    Run(Box<RunArgs>),
    /// List detached runs (`tessera run -d`): running ones, or with -a every one kept.
    Ps {
        /// Every run kept, ended ones too.
        #[arg(short, long)]
        all: bool,
    },
    /// Print a detached run's stdout and stderr.
    Logs {
        /// Keep printing until the run ends.
        #[arg(short, long)]
        follow: bool,
        /// The run's id (or a prefix of it) or name.
        id: String,
    },
    /// Stop a detached run: SIGTERM, then SIGKILL after the grace time (as `docker stop`).
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short, long, value_name = "SECONDS", default_value_t = 10)]
        time: u64,
        /// The run's id (or a prefix of it) or name.
        id: String,
    },
    /// Forget an ended detached run (its record and logs).
    Rm {
        /// Stop it first if it is running.
        #[arg(short, long)]
        force: bool,
        /// The run's id (or a prefix of it) or name.
        id: String,
    },
    /// Manage the local image store ($TESSERA_CACHE/images): pull, import, ls, inspect, rm
    /// (`tessera image --help` for each).
    #[command(disable_help_flag = true)]
    Image(image::ImageArgs),
}

/// `tessera`'s main.
pub fn main() -> ExitCode {
    let process_start = Instant::now();
    let cli: Cli = match jailer::usage::parse("tessera") {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
    };
    let default_level = match &cli.command {
        Some(Command::Run(args)) if args.runs_command() => log::LevelFilter::Warn,
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
        Some(Command::Run(args)) if args.command_flag_without_command().is_some() => {
            let flag = args.command_flag_without_command().unwrap_or_default();
            eprintln!("tessera: error: {flag} needs a command after `--` or --image");
            return ExitCode::from(EXIT_USAGE);
        }
        Some(Command::Run(args)) => {
            let level = args.planned_level();
            let what = args.description();
            match detached::start(args.detach, args.rm, args.name.as_deref(), level, what) {
                Ok(detached::Start::Foreground) => run::run(*args, process_start, &filters),
                Ok(detached::Start::Parent) => Ok(0),
                Ok(detached::Start::Child) => run::run(*args, process_start, &filters),
                Err(e) => Err(e),
            }
        }
        Some(Command::Ps { all }) => detached::ps(all),
        Some(Command::Logs { follow, id }) => detached::logs(&id, follow),
        Some(Command::Stop { time, id }) => detached::stop(&id, time),
        Some(Command::Rm { force, id }) => detached::rm(&id, force),
        Some(Command::Image(_)) if !cli.vmm.given().is_empty() => {
            eprintln!(
                "tessera: error: {} cannot be used with the `image` subcommand",
                cli.vmm.given().join(", ")
            );
            return ExitCode::from(EXIT_USAGE);
        }
        Some(Command::Image(args)) => image::run(args),
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
    // Started first: its seccomp filter (0.1-0.5 ms to install) goes in while this thread
    // binds the socket and applies the config file, so the first request does not wait for it.
    let api = match args.no_api {
        true => None,
        false => Some(ApiThread::spawn(filters, counters)?),
    };
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
    let (thread, end, shutdown) = match (api, server) {
        (Some(api), Some(server)) => {
            let (thread, end, shutdown) = api.serve(server)?;
            log::info!(
                "API listening on {} ({:?} after start)",
                api_sock.display(),
                process_start.elapsed()
            );
            (Some(thread), Some(end), Some(shutdown))
        }
        _ => (None, None, None),
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

/// The REST API's thread, filtered and waiting for its bound socket.
struct ApiThread {
    thread: thread::JoinHandle<()>,
    server_tx: mpsc::SyncSender<ApiServer>,
    ready_rx: mpsc::Receiver<Result<(), String>>,
    vmm_end: vmm::rpc::VmmEnd,
    shutdown: EventFd,
}

impl ApiThread {
    /// Starts the thread, which installs its seccomp filter and waits for [`ApiThread::serve`].
    fn spawn(filters: Filters, counters: ApiCounters) -> Result<Self, String> {
        let (api_end, vmm_end) =
            vmm::rpc::channel().map_err(|e| format!("cannot set up the API channel: {e}"))?;
        let shutdown =
            EventFd::new(EFD_NONBLOCK).map_err(|e| format!("cannot create an eventfd: {e}"))?;
        let stop = shutdown
            .try_clone()
            .map_err(|e| format!("cannot clone an eventfd: {e}"))?;
        let mut router = Router::new(api_end, counters);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (server_tx, server_rx) = mpsc::sync_channel::<ApiServer>(1);
        let thread = thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                let ready = filters.confine_worker(ThreadKind::Api);
                let failed = ready.is_err();
                let _ = ready_tx.send(ready);
                // No server comes when tessera could not bind or configure: nothing to serve.
                let (false, Ok(server)) = (failed, server_rx.recv()) else {
                    return;
                };
                // It removes its socket file as it ends.
                if let Err(e) = server.run(|request| router.handle(request), Some(&stop)) {
                    log::error!("API server stopped: {e}");
                }
            })
            .map_err(|e| format!("cannot start the API thread: {e}"))?;
        Ok(Self {
            thread,
            server_tx,
            ready_rx,
            vmm_end,
            shutdown,
        })
    }

    /// Hands the thread its socket once its filter is in: the thread to join, the VMM's end of
    /// the API channel, and the eventfd that stops the thread.
    fn serve(
        self,
        server: ApiServer,
    ) -> Result<(thread::JoinHandle<()>, vmm::rpc::VmmEnd, EventFd), String> {
        let ready = self
            .ready_rx
            .recv()
            .unwrap_or_else(|_| Err("the API thread ended before it was ready".into()));
        if let Err(e) = ready {
            // Dropped here, the server removes its socket file.
            drop(server);
            let _ = self.thread.join();
            return Err(e);
        }
        if self.server_tx.send(server).is_err() {
            let _ = self.thread.join();
            return Err("the API thread ended before it was ready".into());
        }
        Ok((self.thread, self.vmm_end, self.shutdown))
    }
}

fn read_config_file(path: &Path) -> Result<VmConfigBody, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --config-file {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("--config-file {}: {e}", path.display()))
}

/// The process exit code for `exit`, with the reason logged.
pub(crate) fn exit_code(exit: VmExit, runs_command: bool) -> u8 {
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
