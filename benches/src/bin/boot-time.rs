//! `boot-time NEEDLE -- CMD ARGS...`: starts CMD, prints how long after the spawn NEEDLE first
//! appeared on its stdout or stderr, then kills it (only the boot is timed; QEMU microvm cannot
//! reset through an i8042, so it would not exit by itself):
//!
//!   boot_ms=1234.567                 (boot_ms=none when NEEDLE never appeared)
//!
//! `boot-time --mark EARLIER ... NEEDLE -- CMD...` also prints `mark_ms=` for each EARLIER
//! needle (in the order given, `mark_ms=none` when it never appeared) before `boot_ms=`:
//! tessera's `microVM started` line splits a run into the part before the guest kernel runs
//! and the rest.
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
    let mut watch = None;
    let mut needles: Vec<Vec<u8>> = Vec::new();
    while args.len() > 1 && matches!(args[0].as_str(), "--watch" | "--mark") {
        let value = args.remove(1);
        match args.remove(0).as_str() {
            "--watch" => watch = Some(value),
            _ => needles.push(value.into_bytes()),
        }
    }
    let command = match args.split_first() {
        Some((needle, rest))
            if !needle.is_empty()
                && rest.first().map(String::as_str) == Some("--")
                && rest.len() > 1 =>
        {
            needles.push(needle.as_bytes().to_vec());
            &rest[1..]
        }
        _ => {
            eprintln!(
                "usage: boot-time [--watch FILE] [--mark EARLIER]... NEEDLE -- CMD ARGS... (needles not empty)"
            );
            return ExitCode::from(2);
        }
    };
    if needles.iter().any(Vec::is_empty) {
        eprintln!("boot-time: an empty --mark needle");
        return ExitCode::from(2);
    }
    // The last needle ends the measurement; the ones before it are marks on the way.
    let last = needles.len() - 1;
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
            let (tx, needles) = (tx.clone(), needles.clone());
            std::thread::spawn(move || {
                // Keep the tail of what was read so a needle split across reads is still found.
                let longest = needles.iter().map(Vec::len).max().unwrap_or(0);
                let mut window = Vec::new();
                let mut buf = [0u8; 4096];
                let mut found = vec![false; needles.len()];
                let mut kept = Vec::new();
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    window.extend_from_slice(&buf[..n]);
                    for (i, needle) in needles.iter().enumerate() {
                        if !found[i] && window.windows(needle.len()).any(|w| w == needle.as_slice())
                        {
                            found[i] = true;
                            let _ = tx.send((i, start.elapsed()));
                        }
                    }
                    let keep = window.len().saturating_sub(longest);
                    window.drain(..keep);
                    kept.extend_from_slice(&buf[..n]);
                }
                kept
            })
        })
        .collect();
    if let Some(file) = watch {
        let needle = needles[last].clone();
        std::thread::spawn(move || {
            while start.elapsed() < TIMEOUT {
                let data = std::fs::read(&file).unwrap_or_default();
                if data.windows(needle.len()).any(|w| w == needle.as_slice()) {
                    let _ = tx.send((last, start.elapsed()));
                    return;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        });
    } else {
        drop(tx);
    }
    let mut seen: Vec<Option<Duration>> = vec![None; needles.len()];
    while seen[last].is_none() {
        let left = TIMEOUT.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok((i, elapsed)) => {
                seen[i].get_or_insert(elapsed);
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let output: Vec<u8> = readers
        .into_iter()
        .flat_map(|r| r.join().unwrap_or_default())
        .collect();
    let ms = |seen: Option<Duration>| match seen {
        Some(elapsed) => format!("{:.3}", elapsed.as_secs_f64() * 1e3),
        None => "none".into(),
    };
    for mark in &seen[..last] {
        println!("mark_ms={}", ms(*mark));
    }
    println!("boot_ms={}", ms(seen[last]));
    if seen[last].is_none() {
        eprintln!("{}", String::from_utf8_lossy(&output));
    }
    ExitCode::SUCCESS
}
