//! `tessera`: the Tessera VMM command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use vmm::config::{BootSource, ConsoleOutput, MachineConfig, DEFAULT_CMDLINE};
use vmm::Vm;

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
    /// Log level for VMM messages on stderr: off, error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "info", value_name = "LEVEL")]
    log_level: log::LevelFilter,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel in a microVM with its serial console on this terminal.
    ///
    /// Exits 0 when the guest reboots or powers off, and non-zero with the reason on stderr
    /// otherwise: 1 VMM error, 2 usage error, 130/143 stopped by SIGINT/SIGTERM, 201 guest
    /// triple fault, 202 KVM could not run the guest, 203 unhandled vCPU exit. SIGTERM first
    /// sends Ctrl-Alt-Del to the guest; a second SIGTERM stops it at once.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Guest kernel: an ELF vmlinux (PVH entry used when present) or a 64-bit bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,

    /// Initial ramdisk, placed page-aligned at the top of guest low memory.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Kernel command line (at most 2047 bytes of ASCII).
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    cmdline: String,

    /// Number of vCPUs, 1 to 32.
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u64,

    /// Guest memory in MiB, 8 to 1048576.
    #[arg(long, value_name = "MiB", default_value_t = 128)]
    memory: u64,

    /// Append the guest console to FILE instead of stdout; the guest then gets no input.
    #[arg(long, value_name = "FILE")]
    console_output: Option<PathBuf>,
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
    init_logging(cli.log_level);
    match cli.command {
        Command::Run(args) => run(args, process_start),
    }
}

fn init_logging(level: log::LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
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
    let boot =
        BootSource::new(args.kernel, args.initrd, Some(args.cmdline)).map_err(|e| e.to_string())?;
    let console = args
        .console_output
        .map_or(ConsoleOutput::Stdio, ConsoleOutput::File);

    let vm = Vm::create(machine).map_err(|e| e.to_string())?;
    let running = vm
        .boot(&boot, &console, process_start)
        .map_err(|e| e.to_string())?;
    let exit = running.wait().map_err(|e| e.to_string())?;
    if exit.is_clean() {
        log::info!("VM stopped: {exit}");
    } else {
        log::error!("VM stopped: {exit} (exit code {})", exit.exit_code());
    }
    Ok(u8::try_from(exit.exit_code()).unwrap_or(EXIT_VMM_ERROR))
}
