//! `tessera run -v HOST:GUEST[:ro|:rw]` and `--scratch SIZE`, the host side: each volume's
//! directory becomes an ext4 disk before the boot and, read-write, is copied back after the
//! run, by the `tessera-volume` helper (images crate). It is started before the boot, while
//! this process may still exec, create and remove directories (its seccomp filter later
//! allows none of that), and told over a pipe how the run ended.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// One `-v` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFlag {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// Parses `HOST:GUEST[:ro|:rw]`; HOST is made absolute, GUEST must be absolute.
pub fn parse(flag: &str) -> Result<VolumeFlag, String> {
    let bad = |why: &str| format!("-v {flag:?}: {why}");
    let mut parts: Vec<&str> = flag.split(':').collect();
    let read_only = match parts.last() {
        Some(&"ro") if parts.len() == 3 => true,
        Some(&"rw") if parts.len() == 3 => false,
        _ if parts.len() == 2 => false,
        _ => return Err(bad("expected HOST_DIR:GUEST_DIR[:ro|:rw]")),
    };
    parts.truncate(2);
    let (host, guest) = (parts[0], parts[1]);
    if host.is_empty() || !guest.starts_with('/') || guest.split('/').any(|p| p == "..") {
        return Err(bad(
            "expected an existing host directory and an absolute guest path without `..`",
        ));
    }
    let host = std::path::absolute(host).map_err(|e| bad(&e.to_string()))?;
    if !host.is_dir() {
        return Err(bad(&format!("{} is not a directory", host.display())));
    }
    Ok(VolumeFlag {
        host,
        guest: guest.to_string(),
        read_only,
    })
}

/// The running helper, waiting for the end of the run.
pub struct VolumeKeeper {
    /// Never waited for: once the filter is in, the VMM thread may not; it ends with us.
    _child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// A disk the keeper made: where it is and whether the guest may write it.
pub struct Disk {
    pub image: PathBuf,
    pub read_only: bool,
}

impl VolumeKeeper {
    /// Makes the disks for `volumes` (in order) and the scratch disk under `dir`.
    pub fn start(
        dir: &Path,
        volumes: &[VolumeFlag],
        scratch: Option<&str>,
    ) -> Result<(Self, Vec<Disk>, Option<PathBuf>), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find tessera's own path: {e}"))?;
        let helper = exe.with_file_name("tessera-volume");
        let mut command = Command::new(&helper);
        command.arg(dir);
        let mut disks = Vec::new();
        for (i, v) in volumes.iter().enumerate() {
            let image = dir.join(format!("volume-{i}.ext4"));
            let mut value = v.host.as_os_str().to_owned();
            value.push("=");
            value.push(&image);
            if v.read_only {
                value.push(":ro");
            }
            command.arg("--volume").arg(value);
            disks.push(Disk {
                image,
                read_only: v.read_only,
            });
        }
        let scratch_image = scratch.map(|size| {
            let image = dir.join("scratch.ext4");
            let mut value = image.as_os_str().to_owned();
            value.push(format!("={size}"));
            command.arg("--scratch").arg(value);
            image
        });
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", helper.display()))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no pipe from tessera-volume")?);
        match read_line(&mut stdout).as_str() {
            "ready" => Ok((
                Self {
                    _child: child,
                    stdin,
                    stdout,
                },
                disks,
                scratch_image,
            )),
            other => {
                let _ = child.wait();
                Err(other.trim_start_matches("error: ").to_string())
            }
        }
    }

    /// The VM never ran: the disks go, nothing is copied back.
    pub fn discard(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"discard\n");
        }
        let _ = read_line(&mut self.stdout);
    }

    /// After a run whose command exited: copies the read-write volumes back and removes the
    /// disks. The caller is under the VMM's seccomp filter: only pipe reads and writes here.
    pub fn sync(mut self) -> Result<(), String> {
        let Some(mut stdin) = self.stdin.take() else {
            return Ok(());
        };
        stdin
            .write_all(b"sync\n")
            .map_err(|e| format!("lost tessera-volume: {e}"))?;
        match read_line(&mut self.stdout).as_str() {
            "done" => Ok(()),
            other => Err(other.trim_start_matches("error: ").to_string()),
        }
    }
}

fn read_line(from: &mut impl BufRead) -> String {
    let mut line = String::new();
    match from.read_line(&mut line) {
        Ok(n) if n > 0 => line.trim_end().to_string(),
        _ => "error: tessera-volume ended without an answer".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags_read_as_docker_writes_them() {
        let dir = std::env::temp_dir();
        let host = dir.display().to_string();
        let v = parse(&format!("{host}:/data")).unwrap();
        assert_eq!(
            (v.host.as_path(), v.guest.as_str(), v.read_only),
            (dir.as_path(), "/data", false)
        );
        assert!(parse(&format!("{host}:/data:ro")).unwrap().read_only);
        assert!(!parse(&format!("{host}:/data:rw")).unwrap().read_only);
        for bad in [
            host.clone(),
            format!("{host}:data"),
            format!("{host}:/a/../b"),
            format!("{host}:/data:rx"),
            "/no/such/dir:/data".to_string(),
            ":/data".to_string(),
        ] {
            let err = parse(&bad).unwrap_err();
            assert!(err.starts_with(&format!("-v {bad:?}: ")), "{err}");
        }
    }
}
