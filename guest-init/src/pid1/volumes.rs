//! Volumes: the spec's `mounts`, disks mounted into the command's root once PID 1 is in it.

use super::image_root::{mkdir, mount};
use super::Pid1Error;
use crate::spec::Mount;

/// Mounts each disk at its destination (created if missing), in order.
pub fn mount_all(mounts: &[Mount]) -> Result<(), Pid1Error> {
    for m in mounts {
        let flags = libc::MS_NOSUID | libc::MS_NODEV;
        let flags = match m.read_only {
            true => flags | libc::MS_RDONLY,
            false => flags,
        };
        mkdir(&m.destination)
            .and_then(|()| mount(&m.device, &m.destination, &m.fstype, flags, ""))
            .map_err(|e| Pid1Error::Volume(format!("{}: {e}", m.destination)))?;
    }
    Ok(())
}
