//! `tessera-initramfs`: packs tessera-init (as /init) and extra files into a newc cpio
//! initramfs, without root.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use guest_init::initramfs::Initramfs;

#[derive(Parser)]
#[command(
    name = "tessera-initramfs",
    version,
    about = "Build an initramfs with tessera-init as /init (newc cpio, optionally gzip)"
)]
struct Args {
    /// Where to write the archive (replaced atomically).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,

    /// The init binary [default: tessera-init next to this program].
    #[arg(long, value_name = "PATH")]
    init: Option<PathBuf>,

    /// Add a host file, symlink or directory tree at DEST in the archive (repeatable).
    #[arg(long = "add", value_name = "SRC:DEST")]
    add: Vec<String>,

    /// Add a static busybox as /bin/busybox with a link for each applet (sh, echo, cat, ...),
    /// so commands have a userland.
    #[arg(long, value_name = "PATH")]
    busybox: Option<PathBuf>,

    /// Compress with gzip (smaller file; the kernel spends time inflating it at boot).
    #[arg(long)]
    gzip: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match build(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tessera-initramfs: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn build(args: &Args) -> Result<(), String> {
    let init = match &args.init {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this program's directory: {e}"))?
            .with_file_name("tessera-init"),
    };
    let mut archive = Initramfs::with_base_layout();
    archive
        .add_from_host(&init, "init")
        .map_err(|e| format!("{e} (build it with `cargo build --release -p guest-init`)"))?;
    if let Some(busybox) = &args.busybox {
        archive
            .add_busybox(busybox)
            .map_err(|e| format!("--busybox: {e}"))?;
    }
    for item in &args.add {
        let (src, dest) = item
            .split_once(':')
            .ok_or_else(|| format!("--add {item:?}: expected SRC:DEST"))?;
        archive
            .add_from_host(src.as_ref(), dest)
            .map_err(|e| format!("--add {item:?}: {e}"))?;
    }

    let partial = args.output.with_extension("partial");
    let write = || -> std::io::Result<()> {
        let mut out = BufWriter::new(fs::File::create(&partial)?);
        if args.gzip {
            archive.write_cpio_gz(&mut out)?;
        } else {
            archive.write_cpio(&mut out)?;
        }
        out.flush()?;
        fs::rename(&partial, &args.output)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&partial);
        format!("cannot write {}: {e}", args.output.display())
    })
}
