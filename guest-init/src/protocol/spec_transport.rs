//! How the workload spec reaches the guest: as a second, tiny newc archive right after the
//! initrd, which Linux unpacks on top of the initrd's own files. PID 1 then reads the spec from
//! a file; nothing rides on the kernel command line (2047 bytes), so a container's whole config
//! fits, and no device, disk or copy is needed.
//!
//! ```text
//! initrd in guest memory (its size in boot_params / the PVH module list covers all of it):
//!   [ initrd file, any format Linux unpacks (newc, gzip, zstd, ...) ]
//!   [ 0-3 zero bytes: up to the next 4-byte boundary from the initrd's start ]   appended_archive_offset
//!   [ spec archive: newc "070701" entries, 4-byte framed, length a multiple of 4 ]   spec_archive
//!       .tessera            directory, mode 0700
//!       .tessera/spec.json  regular file, mode 0400: the spec's JSON (see crate::spec)
//!       TRAILER!!!
//! ```
//!
//! Why this works (Linux 6.1 `init/initramfs.c`, `unpack_to_rootfs`): the unpacker loops over
//! the initrd; at a `0` byte at an offset that is a multiple of 4 it starts a newc archive, it
//! skips NUL bytes one by one, and anything else must be the magic of a compressed archive. After
//! an archive's `TRAILER!!!` (state `Reset`) it eats NUL padding and requires the next header to
//! start at a multiple of 4 ("broken padding" otherwise); after a compressed archive the offset
//! advances by the compressed bytes consumed. Offsets count from the initrd's start, so the
//! archive must start at a multiple of 4 from there: hence the zero padding, whatever the
//! initrd's length or compression. Later archives may replace earlier files, so the spec
//! always wins over a stale `/.tessera/spec.json` in the initrd itself.
//!
//! The file stays in the guest's rootfs after PID 1 read it (the workload may read its own spec).

use std::io;
use std::path::{Path, PathBuf};

use crate::newc::{self, Header, S_IFDIR, S_IFREG};
use crate::spec::{SpecError, WorkloadSpec};

/// Where the spec lands in the guest's rootfs.
pub const SPEC_PATH: &str = "/.tessera/spec.json";
/// The archive's directory and file names (relative to the rootfs), as newc stores them.
const SPEC_DIR_NAME: &str = ".tessera";
const SPEC_FILE_NAME: &str = ".tessera/spec.json";
const SPEC_DIR_MODE: u32 = 0o700;
const SPEC_FILE_MODE: u32 = 0o400;

/// The alignment, from the initrd's start, at which an appended archive must begin.
pub const ARCHIVE_ALIGN: u64 = 4;

/// Why the spec could not be packed or read.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum TransportError {
    /// workload spec: {0}
    Spec(#[from] SpecError),
    /// the workload spec is {0} bytes of JSON; a cpio entry holds at most 4 GiB
    TooLarge(usize),
    /// cannot write the workload spec archive: {0}
    Write(io::Error),
    /// no workload spec at {0}: the VMM appends it to the initrd when it runs a command (`tessera run -- CMD`)
    Missing(PathBuf),
    /// cannot read the workload spec at {path}: {source}
    Read { path: PathBuf, source: io::Error },
    /// {0}
    Archive(#[from] newc::ParseError),
    /// the archive holds no .tessera/spec.json
    NotInArchive,
}

/// Where an archive appended to an initrd of `initrd_len` bytes starts; the bytes between are
/// zero. The initrd handed to the kernel is then `offset + archive.len()` bytes long.
pub fn appended_archive_offset(initrd_len: u64) -> u64 {
    initrd_len.next_multiple_of(ARCHIVE_ALIGN)
}

/// The newc archive carrying `spec` (validated) at [`SPEC_PATH`]; its length is a multiple of
/// 4, so it can be appended at [`appended_archive_offset`] of any initrd.
pub fn spec_archive(spec: &WorkloadSpec) -> Result<Vec<u8>, TransportError> {
    let json = spec.to_json()?;
    let filesize = u32::try_from(json.len()).map_err(|_| TransportError::TooLarge(json.len()))?;
    let mut archive = newc::Writer::new(Vec::with_capacity(json.len() + 512));
    let dir = Header {
        ino: 1,
        mode: S_IFDIR | SPEC_DIR_MODE,
        nlink: 2,
        filesize: 0,
        rdev: (0, 0),
        name: SPEC_DIR_NAME,
    };
    let file = Header {
        ino: 2,
        mode: S_IFREG | SPEC_FILE_MODE,
        nlink: 1,
        filesize,
        rdev: (0, 0),
        name: SPEC_FILE_NAME,
    };
    let write = |archive: &mut newc::Writer<Vec<u8>>| {
        archive.entry(&dir, &[])?;
        archive.entry(&file, &json)
    };
    write(&mut archive).map_err(TransportError::Write)?;
    archive.finish().map_err(TransportError::Write)
}

/// The spec in an archive made by [`spec_archive`] (for checks on the host side).
pub fn spec_from_archive(archive: &[u8]) -> Result<WorkloadSpec, TransportError> {
    let entries = newc::parse(archive)?;
    let file = entries
        .iter()
        .rev()
        .find(|e| e.name == SPEC_FILE_NAME && e.mode & 0o170000 == S_IFREG)
        .ok_or(TransportError::NotInArchive)?;
    Ok(WorkloadSpec::from_json(&file.data)?)
}

/// The guest side: PID 1 reads the spec the kernel unpacked to [`SPEC_PATH`].
pub fn read_spec() -> Result<WorkloadSpec, TransportError> {
    read_spec_from(Path::new("/"))
}

/// [`read_spec`] under another root (an unpacked initrd, in tests).
pub fn read_spec_from(root: &Path) -> Result<WorkloadSpec, TransportError> {
    let path = root.join(SPEC_FILE_NAME);
    let json = std::fs::read(&path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TransportError::Missing(path.clone()),
        _ => TransportError::Read {
            path: path.clone(),
            source,
        },
    })?;
    Ok(WorkloadSpec::from_json(&json)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::EnvVar;

    /// A spec with a 100 KiB variable: far past what the kernel command line could carry.
    fn big_spec() -> WorkloadSpec {
        let mut spec = WorkloadSpec::new(vec!["sh".into(), "-c".into(), "echo ${#BIG}".into()]);
        let big: String = (0..100 * 1024)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        spec.env.push(EnvVar::new("BIG", big));
        spec.env.push(EnvVar::new("QUOTED", "a \"b\" 'c' \\ \n é"));
        spec.cwd = Some("/tmp".into());
        spec.hostname = Some("box1".into());
        spec
    }

    #[test]
    fn archive_is_newc_with_the_spec_at_its_path() {
        let spec = big_spec();
        let archive = spec_archive(&spec).unwrap();
        assert_eq!(archive.len() % 4, 0);
        assert_eq!(&archive[..6], b"070701");
        let entries = newc::parse(&archive).unwrap();
        let names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.mode)).collect();
        assert_eq!(
            names,
            [(".tessera", 0o040700), (".tessera/spec.json", 0o100400)]
        );
        assert_eq!(format!("/{}", entries[1].name), SPEC_PATH);
        assert_eq!(spec_from_archive(&archive).unwrap(), spec);
        assert_eq!(spec.env[0].value.len(), 100 * 1024);
    }

    #[test]
    fn refuses_a_spec_that_cannot_run() {
        let err = spec_archive(&WorkloadSpec::new(vec![])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "workload spec: args is empty: it needs at least a program (or a wasm module)"
        );
    }

    #[test]
    fn appended_archives_start_at_a_4_byte_boundary() {
        let offsets: Vec<u64> = (0..9).map(appended_archive_offset).collect();
        assert_eq!(offsets, [0, 4, 4, 4, 4, 8, 8, 8, 8]);
    }

    /// Unpacks initrd + padding + spec archive with the `cpio` tool, as the kernel unpacks
    /// concatenated archives, and reads the spec back as PID 1 does.
    #[test]
    fn round_trips_through_cpio_after_an_unaligned_initrd() {
        let Ok(status) = std::process::Command::new("cpio").arg("--version").output() else {
            eprintln!("SKIPPED round_trips_through_cpio_after_an_unaligned_initrd: no `cpio` tool (apt-get install cpio)");
            return;
        };
        assert!(status.status.success());
        let dir = std::env::temp_dir().join(format!("tessera-spec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let spec = big_spec();
        let archive = spec_archive(&spec).unwrap();
        // The tool, unlike the kernel, reads one archive at a time: unpack the spec archive at
        // its offset after a stand-in initrd of odd length, to check that offset is the start.
        let initrd = vec![0x5a_u8; 1001];
        let mut image = initrd.clone();
        image.resize(appended_archive_offset(initrd.len() as u64) as usize, 0);
        image.extend_from_slice(&archive);
        let tail = &image[appended_archive_offset(initrd.len() as u64) as usize..];
        let mut child = std::process::Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames"])
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(tail).unwrap();
        assert!(child.wait().unwrap().success());
        let read = read_spec_from(&dir);
        let mode = std::fs::metadata(dir.join(SPEC_FILE_NAME)).map(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o777
        });
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(read.unwrap(), spec);
        assert_eq!(mode.unwrap(), 0o400);
    }

    /// The top-level loop of Linux's `unpack_to_rootfs` for uncompressed archives: NUL bytes
    /// are skipped, a `0` at a multiple of 4 starts an archive, anything else is an error.
    fn unpack_like_linux(image: &[u8]) -> Result<Vec<newc::Entry>, String> {
        let mut entries = Vec::new();
        let mut at = 0;
        while at < image.len() {
            match image[at] {
                0 => at += 1,
                b'0' if at % 4 == 0 => {
                    let (found, len) =
                        newc::parse_prefix(&image[at..]).map_err(|e| e.to_string())?;
                    entries.extend(found);
                    at += len;
                }
                _ => return Err(format!("invalid magic at offset {at}")),
            }
        }
        Ok(entries)
    }

    #[test]
    fn linux_finds_the_spec_after_an_initrd_of_any_length() {
        let archive = spec_archive(&big_spec()).unwrap();
        for extra in 0..4 {
            let mut initrd = newc::Writer::new(Vec::new()).finish().unwrap();
            initrd.resize(initrd.len() + extra, 0);
            let at = appended_archive_offset(initrd.len() as u64) as usize;
            let mut image = initrd.clone();
            image.resize(at, 0);
            image.extend_from_slice(&archive);
            let entries = unpack_like_linux(&image).unwrap();
            let file = entries.iter().find(|e| e.name == SPEC_FILE_NAME).unwrap();
            assert_eq!(WorkloadSpec::from_json(&file.data).unwrap(), big_spec());
        }
        // Without the padding rule a misplaced archive is refused, as the kernel refuses it.
        let mut image = vec![0];
        image.extend_from_slice(&archive);
        assert_eq!(
            unpack_like_linux(&image).unwrap_err(),
            "invalid magic at offset 1"
        );
    }

    #[test]
    fn a_missing_spec_says_where_it_looked() {
        let err = read_spec_from(Path::new("/nonexistent-root")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("no workload spec at /nonexistent-root/.tessera/spec.json"),
            "{err}"
        );
    }
}
