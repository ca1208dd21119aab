//! A host TAP interface carrying one Ethernet frame per read or write, each behind a 12-byte
//! `virtio_net_hdr_v1`: the backend of virtio-net.
//!
//! The header lets checksum and segmentation offloads cross between guest and host unchanged.
//! Which offloads the kernel's TAP accepts is probed once at open, so the device offers the guest
//! only what the host can deliver.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

/// Size of `struct virtio_net_hdr_v1`, which prefixes every frame.
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name the kernel takes (IFNAMSIZ less the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// TUNSETOFFLOAD flags: what the TAP may hand us without finishing it in software.
pub const TUN_F_CSUM: u32 = libc::TUN_F_CSUM;
pub const TUN_F_TSO4: u32 = libc::TUN_F_TSO4;
pub const TUN_F_TSO6: u32 = libc::TUN_F_TSO6;
pub const TUN_F_UFO: u32 = libc::TUN_F_UFO;

const TUN_PATH: &str = "/dev/net/tun";

mod ioctls {
    const TUNTAP: u32 = b'T' as u32;
    vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, libc::c_int);
    vmm_sys_util::ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, libc::c_uint);
    vmm_sys_util::ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, libc::c_int);
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum TapError {
    /// cannot open /dev/net/tun: {0}
    OpenTun(#[source] io::Error),
    /// TAP interface name {0:?} must be 1 to 15 bytes without NUL
    InvalidName(String),
    /// TUNSETIFF {name}: {source}
    SetIff { name: String, source: io::Error },
    /// TUNSETVNETHDRSZ {name}: {source}
    SetVnetHdrSize { name: String, source: io::Error },
    /// TUNSETOFFLOAD {name} (flags {flags:#x}): {source}
    SetOffload {
        name: String,
        flags: u32,
        source: io::Error,
    },
}

/// An open TAP interface in non-blocking mode with virtio-net headers on.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    offloads: u32,
}

impl Tap {
    /// Opens (or creates) TAP interface `name`, switches on 12-byte virtio-net headers and probes
    /// the offloads it accepts; offloads are left off until [`Tap::set_offload`].
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
            return Err(TapError::InvalidName(name.to_string()));
        }
        // std adds O_CLOEXEC itself; O_NONBLOCK keeps the event loop from ever waiting on it.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(TapError::OpenTun)?;

        // SAFETY: all-zero bytes are a valid ifreq (integers, byte arrays and raw pointers).
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes back one ifreq, which `ifr` is and outlives the call.
        let ret = unsafe { ioctl_with_mut_ref(&file, ioctls::TUNSETIFF(), &mut ifr) };
        if ret < 0 {
            return Err(TapError::SetIff {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // The kernel writes back the name it used (it expands patterns such as "tap%d").
        let actual: Vec<u8> = ifr
            .ifr_name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        let name = String::from_utf8(actual).unwrap_or_else(|_| name.to_string());

        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int, which `hdr_len` is and outlives the call.
        let ret = unsafe { ioctl_with_ref(&file, ioctls::TUNSETVNETHDRSZ(), &hdr_len) };
        if ret < 0 {
            return Err(TapError::SetVnetHdrSize {
                name,
                source: io::Error::last_os_error(),
            });
        }

        let mut tap = Tap {
            file,
            name,
            offloads: 0,
        };
        tap.offloads = tap.probe_offloads();
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// The interface name the kernel gave the TAP.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TUN_F_* flags the TAP accepted when probed at open.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// Tells the TAP which offloads the reader handles: it may then hand over frames with
    /// partial checksums (`TUN_F_CSUM`) or unsegmented (`TUN_F_TSO*`, `TUN_F_UFO`).
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
        let ret = unsafe {
            ioctl_with_val(
                &self.file,
                ioctls::TUNSETOFFLOAD(),
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::SetOffload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Tries growing sets of offloads (checksum; then TSO4/6; then UFO) and returns the largest
    /// the TAP accepted. Leaves whatever was last accepted set: callers reset it.
    pub fn probe_offloads(&self) -> u32 {
        let steps = [TUN_F_CSUM, TUN_F_TSO4 | TUN_F_TSO6, TUN_F_UFO];
        let mut accepted = 0;
        for step in steps {
            if self.set_offload(accepted | step).is_err() {
                break;
            }
            accepted |= step;
        }
        accepted
    }

    /// Reads one frame (header included); `WouldBlock` when none is waiting.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (header included).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    /// Reads one frame scattered over `bufs`.
    pub fn readv(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&self.file).read_vectored(bufs)
    }

    /// Writes one frame gathered from `bufs`.
    pub fn writev(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_anything_is_opened() {
        for bad in ["", "sixteen-bytes-xx", "a\0b"] {
            let err = Tap::open(bad).unwrap_err();
            assert!(matches!(err, TapError::InvalidName(_)), "{bad:?}: {err}");
        }
        assert_eq!(
            Tap::open("0123456789abcdef").unwrap_err().to_string(),
            "TAP interface name \"0123456789abcdef\" must be 1 to 15 bytes without NUL"
        );
    }

    #[test]
    fn errors_name_the_interface_and_the_step() {
        let err = TapError::SetIff {
            name: "tap0".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(err.to_string().starts_with("TUNSETIFF tap0: "), "{err}");
        let err = TapError::OpenTun(io::Error::from_raw_os_error(libc::ENOENT));
        assert!(
            err.to_string().starts_with("cannot open /dev/net/tun: "),
            "{err}"
        );
    }

    #[test]
    fn real_tap_opens_and_probes_offloads() {
        let tap = match Tap::open("tsrtest0") {
            Ok(tap) => tap,
            Err(e) => {
                println!("SKIPPED: real_tap_opens_and_probes_offloads: {e}");
                return;
            }
        };
        assert_eq!(tap.name(), "tsrtest0");
        // Every kernel with IFF_VNET_HDR takes checksum and TSO offloads.
        let base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        assert_eq!(tap.offloads() & base, base, "{:#x}", tap.offloads());
        // TSO without checksum offload is refused by the kernel, and named in the error.
        let err = tap.set_offload(TUN_F_TSO4).unwrap_err();
        assert!(
            err.to_string().starts_with("TUNSETOFFLOAD tsrtest0"),
            "{err}"
        );
        tap.set_offload(base).unwrap();
        tap.set_offload(0).unwrap();
        // Nothing is waiting on a TAP that is down: reads say so instead of blocking.
        let mut buf = [0u8; 64];
        assert_eq!(
            tap.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
