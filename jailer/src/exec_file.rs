//! The VMM program: opened once, through no symbolic link, checked to be a static x86_64 ELF
//! program, and copied into the jail from that same open file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::fcntl::OFlag;

use crate::config::ConfigError;
use crate::nofollow::{self, ResolveError};

/// The open exec file and its name (which the VMM has in the jail).
#[derive(Debug)]
pub struct ExecFile {
    file: File,
    shown: String,
}

impl ExecFile {
    /// Opens `path`, which must be a regular file reached through no symbolic link.
    pub fn open(path: &Path) -> Result<ExecFile, ConfigError> {
        let shown = path.display().to_string();
        // Non-blocking: a FIFO planted there must not hang the jailer (it is refused below).
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let file = match nofollow::open(path, flags) {
            Ok(fd) => File::from(fd),
            Err(ResolveError::Symlink(link)) => {
                return Err(ConfigError::ExecSymlink { path: shown, link })
            }
            Err(ResolveError::Io(_)) => return Err(ConfigError::ExecNotAFile(shown)),
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(ConfigError::ExecNotAFile(shown));
        }
        Ok(ExecFile { file, shown })
    }

    /// The open file, for the copy into the jail.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Refuses anything but a static 64-bit x86_64 ELF program.
    pub fn check_static(&self) -> Result<(), ConfigError> {
        check_static_executable(&self.file, &self.shown)
    }
}

/// The VMM must be a statically linked 64-bit ELF program: the jail holds no libraries or
/// dynamic loader, so anything else would fail only at exec, inside the jail.
fn check_static_executable(file: &File, shown: &str) -> Result<(), ConfigError> {
    let unusable = |why| ConfigError::ExecUnusable {
        path: shown.to_string(),
        why,
    };
    let mode = file
        .metadata()
        .map(|m| m.permissions().mode())
        .map_err(|_| unusable("cannot be read"))?;
    if mode & 0o111 == 0 {
        return Err(unusable("is not executable"));
    }
    // Only the ELF header and the program header table are read: reading the whole 3 MB VMM
    // took 4-7 ms here, a third of the jailer's start-up.
    let size = file
        .metadata()
        .map_err(|_| unusable("cannot be read"))?
        .len();
    let read = |offset: u64, len: u64| {
        read_at_most(file, size, offset, len).map_err(|_| unusable("cannot be read"))
    };
    // The 64-byte ELF header, or as much of it as the file has.
    let bytes = read(0, 64)?;
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return Err(unusable("is not a 64-bit ELF program"));
    }
    // Little-endian x86_64 (EI_DATA = 1, e_machine = EM_X86_64).
    if bytes.get(5) != Some(&1) || bytes.get(0x12..0x14) != Some(&62u16.to_le_bytes()[..]) {
        return Err(unusable("is not an x86_64 program"));
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    const PT_INTERP: u32 = 3;
    let (Some(phoff), Some(entsize), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return Err(unusable("has a truncated ELF header"));
    };
    // From the table's start to the end of the last entry's type (4 bytes), or as much of it as
    // the file has: entry `index`'s type is at `index * entsize` in it.
    let table = match u64::from(count).checked_sub(1) {
        Some(last) => read(phoff, last * u64::from(entsize) + 4)?,
        None => Vec::new(),
    };
    for index in 0..usize::from(count) {
        let at = index * usize::from(entsize);
        let at = table
            .get(at..at + 4)
            .ok_or(unusable("has a truncated program header table"))?;
        if u32::from_le_bytes([at[0], at[1], at[2], at[3]]) == PT_INTERP {
            return Err(unusable(
                "is dynamically linked; the jail has no libraries (build it static)",
            ));
        }
    }
    Ok(())
}

/// Up to `len` bytes of `file` (`size` bytes long) from `offset`: fewer where the file ends
/// first, none from past its end.
fn read_at_most(file: &File, size: u64, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let Some(len) = size.checked_sub(offset).map(|left| left.min(len)) else {
        return Ok(Vec::new());
    };
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    let mut file = file;
    file.seek(SeekFrom::Start(offset))?;
    file.take(len).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens `path` and checks it, as the jail does.
    fn check_static_executable(path: &Path) -> Result<(), ConfigError> {
        ExecFile::open(path)?.check_static()
    }

    #[test]
    fn only_static_elf_programs_can_be_jailed() {
        let dir = std::env::temp_dir();
        let script = dir.join(format!("jailer-args-{}.sh", std::process::id()));
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = check_static_executable(&script).unwrap_err().to_string();
        assert!(err.ends_with("is not a 64-bit ELF program"), "{err}");
        std::fs::remove_file(&script).unwrap();
        // /bin/sh is a dynamically linked program on any distribution this runs on.
        // Its real path: /bin is a link to usr/bin on merged-/usr systems, and links are refused.
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let err = check_static_executable(&sh).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        check_static_executable(&std::env::current_exe().unwrap()).unwrap();
    }

    /// Only the headers are read: a file cut short in them, or pointing past its end, is named
    /// as before, and a program whose interpreter entry is all that is left is still refused.
    #[test]
    fn cut_programs_are_named() {
        let path = std::env::temp_dir().join(format!("jailer-args-{}.elf", std::process::id()));
        let check = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            check_static_executable(&path).map_err(|e| e.to_string())
        };
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let phoff = u64::from_le_bytes(exe[0x20..0x28].try_into().unwrap()) as usize;
        let entsize = usize::from(u16::from_le_bytes([exe[0x36], exe[0x37]]));
        let count = usize::from(u16::from_le_bytes([exe[0x38], exe[0x39]]));
        let table_end = phoff + (count - 1) * entsize + 4;
        assert!(check(&exe[..table_end]).is_ok());
        let err = check(&exe[..0x30]).unwrap_err();
        assert!(err.ends_with("has a truncated ELF header"), "{err}");
        let err = check(&exe[..table_end - 1]).unwrap_err();
        assert!(
            err.ends_with("has a truncated program header table"),
            "{err}"
        );
        let mut far = exe[..table_end].to_vec();
        far[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = check(&far).unwrap_err();
        assert!(
            err.ends_with("has a truncated program header table"),
            "{err}"
        );
        // An interpreter entry in front of a cut: refused as dynamic, as the whole file would be.
        let mut dynamic = exe[..phoff + entsize + 4].to_vec();
        dynamic[phoff..phoff + 4].copy_from_slice(&3u32.to_le_bytes());
        let err = check(&dynamic).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn links_and_non_files_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("jailer-exec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let exe = std::env::current_exe().unwrap();
        let link = dir.join("vmm");
        std::os::unix::fs::symlink(&exe, &link).unwrap();
        let shown = link.display().to_string();
        assert_eq!(
            ExecFile::open(&link).unwrap_err(),
            ConfigError::ExecSymlink {
                path: shown.clone(),
                link: shown
            }
        );
        let through = dir.join("bin");
        std::os::unix::fs::symlink(exe.parent().unwrap(), &through).unwrap();
        let path = through.join(exe.file_name().unwrap());
        assert_eq!(
            ExecFile::open(&path).unwrap_err(),
            ConfigError::ExecSymlink {
                path: path.display().to_string(),
                link: through.display().to_string()
            }
        );
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o755)).unwrap();
        assert_eq!(
            ExecFile::open(&fifo).unwrap_err(),
            ConfigError::ExecNotAFile(fifo.display().to_string())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
