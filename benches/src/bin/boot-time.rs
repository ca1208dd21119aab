//! `boot-time NEEDLE -- CMD ARGS...`: starts CMD, prints how long after the spawn NEEDLE first
//! appeared on its stdout or stderr, then kills it (only the boot is timed; QEMU microvm cannot
//! reset through an i8042, so it would not exit by itself):
//!
//!   boot_ms=1234.567                 (boot_ms=none when NEEDLE never appeared)
//!
//! `boot-time --watch FILE NEEDLE -- CMD...` looks for NEEDLE in FILE instead (polled every
//! 0.2 ms): QEMU's file chardev does not write to a pipe.
//!
//! Runs inside the nested test host so that tessera (needle: its boot-done log line) and QEMU
//! (needle: the boot-done byte its isa-debugcon at port 0x3f0 passes to stdout) are timed alike.

use std::io::Read;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let watch = if args.first().map(String::as_str) == Some("--watch") && args.len() > 1 {
        let file = args.remove(1);
        args.remove(0);
        Some(file)
    } else {
        None
    };
    let (needle, command) = match args.split_first() {
        Some((needle, rest))
            if rest.first().map(String::as_str) == Some("--") && rest.len() > 1 =>
        {
            (needle.as_bytes().to_vec(), &rest[1..])
        }
        _ => {
            eprintln!("usage: boot-time [--watch FILE] NEEDLE -- CMD ARGS... (NEEDLE not empty)");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let mut child = match Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("boot-time: cannot start {}: {e}", command[0]);
            return ExitCode::FAILURE;
        }
    };
    let (tx, rx) = mpsc::channel();
    let streams: [Box<dyn Read + Send>; 2] = match (child.stdout.take(), child.stderr.take()) {
        (Some(out), Some(err)) => [Box::new(out), Box::new(err)],
        _ => return ExitCode::FAILURE,
    };
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let (tx, needle) = (tx.clone(), needle.clone());
            std::thread::spawn(move || {
                // Keep the tail of what was read so a needle split across reads is still found.
                let mut window = Vec::new();
                let mut buf = [0u8; 4096];
                let mut found = false;
                let mut kept = Vec::new();
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if !found {
                        window.extend_from_slice(&buf[..n]);
                        if window.windows(needle.len()).any(|w| w == needle.as_slice()) {
                            found = true;
                            let _ = tx.send(start.elapsed());
                        }
                        let keep = window.len().saturating_sub(needle.len());
                        window.drain(..keep);
                    }
                    kept.extend_from_slice(&buf[..n]);
                }
                kept
            })
        })
        .collect();
    if let Some(file) = watch {
        let needle = needle.clone();
        std::thread::spawn(move || {
            while start.elapsed() < TIMEOUT {
                let data = std::fs::read(&file).unwrap_or_default();
                if data.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    let _ = tx.send(start.elapsed());
                    return;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
    } else {
        drop(tx);
    }
    let boot = rx.recv_timeout(TIMEOUT).ok();
    let _ = child.kill();
    let _ = child.wait();
    let output: Vec<u8> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap_or_default())
        .collect();
    match boot {
        Some(elapsed) => println!("boot_ms={:.3}", elapsed.as_secs_f64() * 1e3),
        None => {
            println!("boot_ms=none");
            eprintln!("{}", String::from_utf8_lossy(&output));
        }
    }
    ExitCode::SUCCESS
}
