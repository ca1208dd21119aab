//! `tessera`: the Tessera VMM command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use guest_init::task::Task;
use vmm::config::{BootSource, ConsoleOutput, MachineConfig, DEFAULT_CMDLINE};
use vmm::exit::EXIT_NO_STATUS;
use vmm::{Vm, VmExit};

mod device_args;
mod guest_image;

/// Exit code for an error before or while running the VM (see `vmm::exit`).
const EXIT_VMM_ERROR: u8 = 1;
/// Exit code for a command-line usage error.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: a minimal KVM microVM monitor"
)]
struct Cli {
    /// Log level for VMM messages on stderr: off, error, warn, info, debug or trace
    /// [default: info; warn when running a command, so stderr carries only the command's].
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<log::LevelFilter>,

    #[command(subcommand)]
    command: Command,
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

    /// Initial ramdisk, placed page-aligned at the top of guest low memory [default with a
    /// command: the cached tessera-init initramfs].
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Kernel command line, at most 2047 bytes of ASCII; a command's encoding is appended
    /// [default: a microVM console line, quiet when running a command].
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
            .map(|item| match item.split_once('=') {
                Some((name, value)) if !name.is_empty() => {
                    Ok((name.to_string(), value.to_string()))
                }
                _ => Err(format!("--env {item:?}: expected NAME=VALUE")),
            })
            .collect::<Result<_, _>>()?;
        let task = Task {
            argv: self.command.clone(),
            env,
            cwd: self.workdir.clone(),
            hostname: self.hostname.clone(),
        };
        let encoded = task.to_cmdline().map_err(|e| format!("command: {e}"))?;
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
        BootSource::new(kernel, Some(initrd), Some(format!("{base}{encoded}")))
            .map_err(|e| format!("{e} (the command is encoded into it; shorten it)"))
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
            let rendered = e.render().to_string();
            eprintln!(
                "tessera: {}",
                rendered.lines().next().unwrap_or("invalid arguments")
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let Command::Run(args) = &cli.command;
    let default_level = if args.command.is_empty() {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    };
    init_logging(cli.log_level.unwrap_or(default_level));
    match cli.command {
        Command::Run(args) => run(args, process_start),
    }
}

fn init_logging(level: log::LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
        // virtio-queue logs every malformed ring at error level: a guest could flood stderr.
        .filter_module("virtio_queue", log::LevelFilter::Off)
        .format(|buf, record| {
            let thread = std::thread::current();
            writeln!(
                buf,
                "{} {:<5} [{}] {}",
                buf.timestamp_micros(),
                record.level(),
                thread.name().unwrap_or("?"),
                record.args()
            )
        })
        .init();
}

fn run(args: RunArgs, process_start: Instant) -> ExitCode {
    match boot_and_wait(args, process_start) {
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

fn boot_and_wait(args: RunArgs, process_start: Instant) -> Result<u8, String> {
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

    let vm = Vm::create(machine).map_err(|e| e.to_string())?;
    let running = vm
        .boot(&boot, &devices, &console, process_start)
        .map_err(|e| e.to_string())?;
    let exit = running.wait().map_err(|e| e.to_string())?;
    if runs_command && matches!(exit, VmExit::Reset | VmExit::Halted { .. }) {
        log::error!(
            "VM stopped: {exit}, but the guest never reported the command's exit status (is tessera-init the initramfs's /init?) (exit code {EXIT_NO_STATUS})"
        );
        return Ok(EXIT_NO_STATUS as u8);
    }
    if exit.is_clean() {
        log::info!("VM stopped: {exit}");
    } else {
        log::error!("VM stopped: {exit} (exit code {})", exit.exit_code());
    }
    Ok(u8::try_from(exit.exit_code()).unwrap_or(EXIT_VMM_ERROR))
}
