//! `test-host`: boots the nested test host and runs each argument there as a shell command,
//! printing its output and status; exits with the last command's status.
//!
//!   cargo run -p tests --bin test-host -- 'tessera run -- uname -a' 'cat /proc/cpuinfo'
//!   TEST_HOST_QEMU=1: also pack QEMU into the host.
//!   TEST_HOST_FILES=SRC:DST[,SRC:DST...]: also pack these files (DST an absolute path in the
//!   host), e.g. a statically linked firecracker to compare against.

use std::process::ExitCode;
use std::time::Duration;

use tests::test_host::{HostFiles, HostOptions, TestHost};

fn main() -> ExitCode {
    let commands: Vec<String> = std::env::args().skip(1).collect();
    let files = match HostFiles::find(&tests::bin_dir()) {
        Ok(files) => files,
        Err(why) => {
            eprintln!("test-host: error: {why}");
            return ExitCode::FAILURE;
        }
    };
    let mut extra_files = Vec::new();
    for pair in std::env::var("TEST_HOST_FILES")
        .unwrap_or_default()
        .split(',')
    {
        match pair.split_once(':') {
            Some((src, dst)) if dst.starts_with('/') => extra_files.push((src.into(), dst.into())),
            None if pair.is_empty() => {}
            _ => {
                eprintln!("test-host: error: TEST_HOST_FILES: expected SRC:/DST, got {pair:?}");
                return ExitCode::FAILURE;
            }
        }
    }
    let options = HostOptions {
        with_qemu: std::env::var_os("TEST_HOST_QEMU").is_some(),
        extra_files,
        ..HostOptions::default()
    };
    let mut host = match TestHost::boot(&files, &options) {
        Ok(host) => host,
        Err(why) => {
            eprintln!("test-host: error: {why}");
            return ExitCode::FAILURE;
        }
    };
    let mut last = 0;
    for command in commands {
        eprintln!("test-host$ {command}");
        match host.run(&command, Duration::from_secs(600)) {
            Ok(out) => {
                println!("{}", out.output);
                eprintln!("test-host: status {}", out.status);
                last = out.status;
            }
            Err(why) => {
                eprintln!("test-host: error: {why}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::from(u8::try_from(last).unwrap_or(1))
}
