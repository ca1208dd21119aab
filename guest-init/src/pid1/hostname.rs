//! The guest's hostname.

use std::io;

use super::Pid1Error;

/// Sets the hostname (UTS namespace of PID 1: the whole guest).
pub fn set(name: &str) -> Result<(), Pid1Error> {
    // SAFETY: the pointer and length describe a live byte slice.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(Pid1Error::Hostname {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}
