//! What maps guest RAM on the host: anonymous memory, a memfd, or a memfd plus `guest_memfd`s.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use super::MemoryError;
use crate::hypervisor;

/// How guest RAM is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryBackend {
    /// Private anonymous memory (MAP_PRIVATE | MAP_ANONYMOUS): a plain VM.
    #[default]
    Anonymous,
    /// One memfd mapped MAP_SHARED, regions at increasing offsets: memory that can be written
    /// out for a snapshot or mapped by another process.
    Memfd,
    /// The memfd as shared memory, plus a `guest_memfd` per region for the pages the guest
    /// makes private (SEV-SNP, TDX).
    GuestMemfd,
}

/// A close-on-exec memfd of `size` bytes.
pub(super) fn memfd(size: u64) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated string literal; the call takes no other pointers.
    let fd = unsafe { libc::memfd_create(c"tessera-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned this descriptor; nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// Whether a hypervisor's errno says it has no `guest_memfd` at all (an unknown ioctl, an
/// unsupported operation, or a VM type that cannot have private memory).
fn means_no_guest_memfd(e: &hypervisor::Error) -> bool {
    matches!(
        e.errno(),
        libc::ENOTTY | libc::ENOTSUP | libc::EINVAL | libc::ENOSYS
    )
}

/// The error for a `guest_memfd` the VM would not create.
pub(super) fn guest_memfd_error(size: u64, source: hypervisor::Error) -> MemoryError {
    if means_no_guest_memfd(&source) {
        MemoryError::NoGuestMemfd {
            what: "KVM_CREATE_GUEST_MEMFD",
            source,
        }
    } else {
        MemoryError::GuestMemfd { size, source }
    }
}

/// The error for a slot backed by a `guest_memfd` that the VM refused.
pub(super) fn private_slot_error(source: hypervisor::Error) -> MemoryError {
    if means_no_guest_memfd(&source) {
        MemoryError::NoGuestMemfd {
            what: "KVM_SET_USER_MEMORY_REGION2",
            source,
        }
    } else {
        MemoryError::Slot { source }
    }
}
