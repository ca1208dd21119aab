//! `tessera-image`: the local image store, run by `tessera image ...` with `--store` set to
//! `$TESSERA_CACHE/images` (its own binary, so that the VMM's binary carries none of this code:
//! its resident pages are the VMM's memory figures). Pull, import, ls, inspect, rm. A pull runs
//! on a current-thread tokio runtime made here (the library's pull is async).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use images::progress::ImportBar;
use images::pull::{self, Credentials, PullOptions};
use images::store::{Image, Store};

#[derive(Parser)]
#[command(
    name = "tessera image",
    bin_name = "tessera image",
    about = "Manage Tessera's local image store",
    long_about = "Manage Tessera's local image store ($TESSERA_CACHE/images, else \
        ~/.cache/tessera/images). Run it as `tessera image COMMAND`."
)]
struct Cli {
    /// The store's directory (`tessera image` sets it).
    #[arg(long, value_name = "DIR", hide = true)]
    store: Option<PathBuf>,

    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(clap::Subcommand)]
enum ImageCommand {
    /// Pull an image from an OCI or Docker registry (Docker Hub unless REF starts with a
    /// registry host) and resolve a multi-platform image to linux/amd64; prints its digest.
    #[command(
        long_about = "Pull an image from an OCI or Docker registry (Docker Hub unless \
        REF starts with a registry host), a multi-platform image resolved to linux/amd64, \
        every blob checked against its digest; prints its digest. It is stored under REF as \
        written (busybox is busybox:latest). Credentials: --username with --password-stdin, \
        else $TESSERA_REGISTRY_USER and $TESSERA_REGISTRY_PASSWORD, else the `auths` of \
        $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, \
        ~/.config/containers/auth.json or ~/.docker/config.json, else anonymous."
    )]
    Pull {
        /// busybox, busybox:1.36, 127.0.0.1:5000/busybox:1.36, NAME@sha256:DIGEST.
        #[arg(value_name = "REF")]
        reference: String,
        /// Speak plain HTTP (no TLS) to REF's registry: a local or test registry.
        #[arg(long)]
        insecure: bool,
        /// Log in as USER (the password from --password-stdin or $TESSERA_REGISTRY_PASSWORD).
        #[arg(long, short = 'u', value_name = "USER")]
        username: Option<String>,
        /// Read the registry password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Import an image from an OCI image layout (a directory), an OCI archive or a
    /// `docker save` tar; prints its digest.
    Import {
        /// The layout directory or the tar file.
        #[arg(value_name = "FILE|DIR")]
        source: PathBuf,
        /// Name the image NAME[:TAG] instead of the names the source gives it.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// List the images in the store.
    #[command(alias = "list")]
    Ls,
    /// Show an image's digest, names, size, filesystem and config as JSON.
    Inspect {
        /// A name (busybox, busybox:1.36), a digest or a digest prefix.
        #[arg(value_name = "IMAGE")]
        reference: String,
    },
    /// Remove an image and all its names.
    #[command(alias = "remove")]
    Rm {
        #[arg(value_name = "IMAGE", required = true)]
        references: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli: Cli = match jailer::usage::parse("tessera image") {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
    };
    let Some(store) = cli.store else {
        eprintln!("tessera image: error: run it as `tessera image COMMAND` (no --store given)");
        return ExitCode::from(2);
    };
    match run(&store, cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tessera: error: {message}");
            ExitCode::from(1)
        }
    }
}

/// The registry login: --username with --password-stdin (or $TESSERA_REGISTRY_PASSWORD), else
/// $TESSERA_REGISTRY_USER and $TESSERA_REGISTRY_PASSWORD, else the auth files, else anonymous.
fn credentials(
    reference: &str,
    username: Option<String>,
    password_stdin: bool,
) -> Result<Credentials, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let username = username.or_else(|| env("TESSERA_REGISTRY_USER"));
    let password = match password_stdin {
        true => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
            Some(text.trim_end_matches(['\n', '\r']).to_string())
        }
        false => env("TESSERA_REGISTRY_PASSWORD"),
    };
    match (username, password) {
        (Some(username), Some(password)) => Ok(Credentials::Basic { username, password }),
        (Some(_), None) => Err(
            "--username needs the password: --password-stdin or $TESSERA_REGISTRY_PASSWORD".into(),
        ),
        (None, Some(_)) if password_stdin => {
            Err("--password-stdin needs --username (or $TESSERA_REGISTRY_USER)".into())
        }
        (None, _) => {
            let parsed = pull::parse_reference(reference).map_err(|e| e.to_string())?;
            let found = pull::credentials_from_files(&parsed, env).map_err(|e| e.to_string())?;
            Ok(found.unwrap_or(Credentials::Anonymous))
        }
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    // A store directory renamed by hand may not be hex: never cut inside a character.
    hex.get(..12).unwrap_or(hex)
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

fn inspect(image: &Image) -> serde_json::Value {
    serde_json::json!({
        "Digest": image.digest,
        "Names": image.names,
        "Rootfs": image.rootfs,
        "Size": image.size,
        "Config": image.config,
    })
}

/// Runs one command on the store in `dir`; its output goes to stdout.
fn run(dir: &std::path::Path, command: ImageCommand) -> Result<(), String> {
    let store = Store::open(dir).map_err(|e| e.to_string())?;
    match command {
        ImageCommand::Pull {
            reference,
            insecure,
            username,
            password_stdin,
        } => {
            let fail = |e: &dyn std::fmt::Display| format!("cannot pull {reference}: {e}");
            let credentials =
                credentials(&reference, username, password_stdin).map_err(|e| fail(&e))?;
            let options = PullOptions {
                insecure,
                credentials,
                progress: true,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| fail(&format!("cannot start the async runtime: {e}")))?;
            let image = runtime
                .block_on(pull::pull(&store, &reference, &options))
                .map_err(|e| fail(&e))?;
            println!("{}", image.digest);
        }
        ImageCommand::Import { source, name } => {
            let bar = ImportBar::on_stderr();
            let image = store
                .import_reporting(&source, name.as_deref(), &mut |step| bar.step(step))
                .map_err(|e| format!("cannot import {}: {e}", source.display()))?;
            println!("{}", image.digest);
        }
        ImageCommand::Ls => {
            let (images, broken) = store.list_all().map_err(|e| e.to_string())?;
            for e in broken {
                eprintln!("tessera: warning: a damaged image is left out: {e} (delete its directory to drop it)");
            }
            println!("{:<40} {:<14} {:>10}", "NAME", "IMAGE ID", "SIZE");
            for image in images {
                let names = match image.names.is_empty() {
                    true => vec!["<none>".to_string()],
                    false => image.names.clone(),
                };
                for name in names {
                    println!(
                        "{name:<40} {:<14} {:>10}",
                        short(&image.digest),
                        size(image.size)
                    );
                }
            }
        }
        ImageCommand::Inspect { reference } => {
            let image = store.find(&reference).map_err(|e| e.to_string())?;
            let json =
                serde_json::to_string_pretty(&inspect(&image)).expect("JSON values serialize");
            println!("{json}");
        }
        ImageCommand::Rm { references } => {
            for reference in references {
                let image = store.remove(&reference).map_err(|e| e.to_string())?;
                println!("Deleted: {}", image.digest);
            }
        }
    }
    Ok(())
}
