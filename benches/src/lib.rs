//! Shared pieces of Tessera's benchmarks.

pub use devices::clock::monotonic_us;
use guest_init::protocol;
use guest_init::spec::WorkloadSpec;

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Writes the newc archive that carries `args` as a workload spec (what `tessera run -- ARGS`
/// appends to its initrd) to a temporary file, for [`tests::test_host::HostOptions`]'s
/// `extra_files`: VMMs that take one initrd file (QEMU) get it through
/// [`initrd_with_archive`].
pub fn spec_archive_file(name: &str, args: &[&str]) -> std::path::PathBuf {
    let spec = WorkloadSpec::new(args.iter().map(|a| a.to_string()).collect());
    let archive = protocol::spec_archive(&spec).expect("the bench's workload spec is valid");
    let path =
        std::env::temp_dir().join(format!("tessera-bench-{}-{name}.cpio", std::process::id()));
    std::fs::write(&path, archive).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// A test-host shell command writing `out`: `initrd`, zero bytes up to its next 4-byte
/// boundary, then `archive`, as tessera lays out an initrd and the workload spec
/// (`guest_init::protocol::appended_archive_offset`).
pub fn initrd_with_archive(initrd: &str, archive: &str, out: &str) -> String {
    format!(
        "cp {initrd} {out} && s=$(wc -c < {out}) && head -c $(( (4 - s % 4) % 4 )) /dev/zero >> {out} \
         && cat {archive} >> {out}"
    )
}

/// Makes this process the reaper of its orphaned descendants, so that [`reap_children`] can
/// wait for what a VMM leaves running after its exit (tessera's teardown keeper, which frees
/// the KVM VM) before the next measurement starts.
pub fn adopt_orphans() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    assert_eq!(
        rc,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
}

/// Waits until this process has no children left. Only between measurements: it also reaps
/// children that a `std::process::Child` still expects to wait for.
pub fn reap_children() {
    // SAFETY: waitpid with a null status pointer reaps any child; -1 with ECHILD ends the loop.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0 {}
}

/// `2026-12-02T14:45:15.297685782` (UTC) as µs since the epoch.
pub fn parse_utc_us(stamp: &str) -> Option<u64> {
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.split('-').map(|v| v.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, fraction) = time.split_once('.')?;
    let mut hms = hms.split(':').map(|v| v.parse::<i64>().ok());
    let (hh, mm, ss) = (hms.next()??, hms.next()??, hms.next()??);
    let digits: String = fraction.chars().take_while(char::is_ascii_digit).collect();
    let micros: i64 = format!("{digits:0<6}")[..6].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(seconds * 1_000_000 + micros).ok()
}

/// The `boot_ms=N` that `boot-time` prints, from a host command's output.
pub fn boot_ms(output: &str) -> Option<f64> {
    number_after(output, "boot_ms=")
}

/// The first `mark_ms=` figure in `output` (`boot-time --mark`), if any.
pub fn mark_ms(output: &str) -> Option<f64> {
    number_after(output, "mark_ms=")
}

fn number_after(output: &str, key: &str) -> Option<f64> {
    output
        .split(key)
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The number after `key=` in `line`, if any.
pub fn field_u64(line: &str, key: &str) -> Option<u64> {
    let start = line.find(key)? + key.len();
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A minimal HTTP/1.1 client over a unix socket, for the REST API benchmarks.
pub mod http {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// Connects, retrying until the socket accepts (at most 5 s).
    pub fn connect(socket: &Path) -> UnixStream {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match UnixStream::connect(socket) {
                Ok(stream) => return stream,
                Err(e) if Instant::now() > deadline => panic!("{}: {e}", socket.display()),
                Err(_) => std::hint::spin_loop(),
            }
        }
    }

    /// Sends one request and reads its response; returns the status.
    pub fn request(stream: &mut UnixStream, method: &str, path: &str, body: &str) -> u16 {
        let message = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(message.as_bytes()).expect("send request");
        read_response(stream)
    }

    pub fn read_response(stream: &mut UnixStream) -> u16 {
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 512];
        loop {
            let n = stream.read(&mut chunk).expect("read response");
            assert!(n > 0, "connection closed mid-response");
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
                return status.expect("a status line");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_firecracker_timestamps() {
        assert_eq!(parse_utc_us("1970-01-01T00:00:01.5"), Some(1_500_000));
        assert_eq!(
            parse_utc_us("2026-12-02T14:45:15.297685782"),
            Some(1_796_222_715_297_685)
        );
        assert_eq!(parse_utc_us("not a time"), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn fields_are_found_after_their_key() {
        let line = "INFO guest boot-done: value 0x01 (monotonic_us=12345)";
        assert_eq!(field_u64(line, "monotonic_us="), Some(12345));
        assert_eq!(field_u64(line, "missing="), None);
    }
}
