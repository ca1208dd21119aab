//! `tessera-volume`: the disks of one `tessera run` with `-v` or `--scratch`, made before the
//! boot and, for read-write volumes, copied back after it. `tessera run` starts it before its
//! own seccomp filter goes in (which allows no exec, mkdir or rmdir) and talks to it over its
//! stdin and stdout:
//!
//! ```text
//! tessera-volume RUN_DIR [--volume HOST_DIR=IMAGE[:ro]]... [--scratch IMAGE=SIZE]
//!   -> makes each image under RUN_DIR, prints "ready" (or "error: ...") and waits for a line
//!   <- "sync": copies each read-write volume back into its directory, then removes RUN_DIR;
//!      prints "done" (or "error: ..."); "discard" (the VM never ran): removes RUN_DIR, prints
//!      "done"; EOF instead: tessera ended mid-run, the images are kept
//!      (a half-written disk never overwrites a directory) and their paths printed on stderr
//! ```

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use images::volume;

/// What the command line asks for: the run's directory, the volumes, the scratch disk.
struct Request {
    run_dir: PathBuf,
    volumes: Vec<Volume>,
    scratch: Option<(PathBuf, u64)>,
}

struct Volume {
    dir: PathBuf,
    image: PathBuf,
    read_only: bool,
}

fn parse(args: &[String]) -> Result<Request, String> {
    let (run_dir, rest) = args
        .split_first()
        .ok_or("usage: tessera-volume RUN_DIR ...")?;
    let mut volumes = Vec::new();
    let mut scratch = None;
    let mut rest = rest.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or(format!("{flag} needs a value"))?;
        let (left, right) = value
            .split_once('=')
            .ok_or(format!("{flag} {value}: expected A=B"))?;
        match flag.as_str() {
            "--volume" => {
                let (image, read_only) = match right.strip_suffix(":ro") {
                    Some(image) => (image, true),
                    None => (right, false),
                };
                volumes.push(Volume {
                    dir: left.into(),
                    image: image.into(),
                    read_only,
                });
            }
            "--scratch" => {
                let size = volume::parse_size(right).map_err(|e| e.to_string())?;
                scratch = Some((PathBuf::from(left), size));
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Request {
        run_dir: PathBuf::from(run_dir),
        volumes,
        scratch,
    })
}

fn prepare(volumes: &[Volume], scratch: &Option<(PathBuf, u64)>) -> Result<(), String> {
    for v in volumes {
        volume::create(&v.dir, &v.image).map_err(|e| format!("-v {}: {e}", v.dir.display()))?;
    }
    if let Some((image, size)) = scratch {
        volume::create_scratch(image, *size).map_err(|e| format!("--scratch: {e}"))?;
    }
    Ok(())
}

fn sync(run_dir: &Path, volumes: &[Volume]) -> Result<(), String> {
    for v in volumes.iter().filter(|v| !v.read_only) {
        let work = volume::work_dir(&v.image);
        volume::copy_back(&v.image, &v.dir, &work)
            .map_err(|e| format!("-v {}: the guest's writes were not copied back: {e} (the disk image is kept at {})", v.dir.display(), v.image.display()))?;
    }
    std::fs::remove_dir_all(run_dir)
        .map_err(|e| format!("cannot remove {}: {e}", run_dir.display()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout();
    let say = |out: &mut std::io::Stdout, line: &str| {
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    };
    let Request {
        run_dir,
        volumes,
        scratch,
    } = match parse(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            say(&mut out, &format!("error: {e}"));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = prepare(&volumes, &scratch) {
        let _ = std::fs::remove_dir_all(&run_dir);
        say(&mut out, &format!("error: {e}"));
        return ExitCode::from(1);
    }
    say(&mut out, "ready");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    if line.trim() == "discard" {
        let _ = std::fs::remove_dir_all(&run_dir);
        say(&mut out, "done");
        return ExitCode::SUCCESS;
    }
    if line.trim() != "sync" {
        if volumes.iter().any(|v| !v.read_only) {
            eprintln!(
                "tessera: warning: the run ended abnormally; the read-write volumes' disks are kept in {} (ext4 images; nothing was copied back)",
                run_dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        return ExitCode::from(1);
    }
    match sync(&run_dir, &volumes) {
        Ok(()) => {
            say(&mut out, "done");
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(&mut out, &format!("error: {e}"));
            ExitCode::from(1)
        }
    }
}
