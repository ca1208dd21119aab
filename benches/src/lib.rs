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

/// The number after `key=` in `line`, if any.
pub fn field_u64(line: &str, key: &str) -> Option<u64> {
    let start = line.find(key)? + key.len();
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
