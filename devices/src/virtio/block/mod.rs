//! The virtio-blk device (virtio 1.2, section 5.2) over a raw disk image or a block device.
//!
//! One request queue. I/O is synchronous on the VMM event loop thread: a request's `pread` /
//! `pwrite` / `fdatasync` runs to completion before the next chain is looked at, which keeps the
//! device simple and is fast enough for a page-cached image (io_uring is the later option when a
//! slow backend must not stall the loop). Data moves through one bounded bounce buffer because
//! virtio-queue's `Reader`/`Writer` do not expose their guest memory slices; a request costs one
//! extra memcpy and never more than [`BOUNCE_SIZE`] bytes of host memory.
//!
//! Every guest-supplied number is checked: chains must end, carry a status byte in device-writable
//! memory and stay inside guest memory; sectors and lengths are checked with checked arithmetic
//! against the capacity. A bad request gets `VIRTIO_BLK_S_IOERR` (or `UNSUPP`) when the chain has
//! somewhere to put a status, and is returned with used length 0 otherwise.
//!
//! While the VM runs, the drive can move to another file of any size
//! ([`Block::set_backing_file`], announced to the driver with a config-change interrupt) and
//! change its rate limits ([`Block::set_rate_limiter`]); the features offered at creation stay.
//!
//! The code is in three parts: `device` ([`Block`]: features, config space, activation, event
//! handling, live changes), `request` (descriptor chain to request: chain checks, header, rate
//! limiting, feature checks, dispatch, status byte) and `disk` (the backing file: open and probe,
//! and the I/O run on it). Requests are charged to the rate limiter in `request`, before they
//! reach the disk, because the limit is on what the guest asks for, not on the backing file.

use std::io;
use std::path::PathBuf;

use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};

use crate::rate_limiter::{RateLimiterConfig, RateLimiterError};

mod device;
mod disk;
#[cfg(test)]
mod fixtures;
mod request;

pub use device::{fuzz_one, Block};
pub use disk::BOUNCE_SIZE;

/// Bytes per sector; virtio-blk addresses in 512-byte units whatever the backend's block size.
pub const SECTOR_SIZE: u64 = 512;
/// The request queue's largest size.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request we promise to accept (`seg_max`): a full queue minus the header
/// and status descriptors. Longer chains (possible through indirect tables) get IOERR.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest discard: hole punching is cheap, but it still runs on the event loop.
const MAX_DISCARD_SECTORS: u32 = 1 << 22; // 2 GiB
/// Largest write-zeroes: where the file cannot zero a range in place we write the zeroes.
const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 16; // 32 MiB
/// Segments per discard / write-zeroes request.
const MAX_DISCARD_SEG: u32 = 1;

const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// What a guest FLUSH means for the host page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheType {
    /// FLUSH is offered and runs `fdatasync`: data the guest flushed survives a host crash.
    Writeback,
    /// FLUSH is not offered and, if sent anyway, succeeds without syncing: fastest, for
    /// throwaway disks.
    #[default]
    Unsafe,
}

/// How to build a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Disk image (regular file) or host block device.
    pub path: PathBuf,
    /// Opened O_RDONLY and offered with VIRTIO_BLK_F_RO.
    pub read_only: bool,
    pub cache_type: CacheType,
    /// The GET_ID string; only its first 20 bytes are used.
    pub serial: String,
    pub rate_limiter: RateLimiterConfig,
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum BlockError {
    /// cannot open disk image {path}: {source}
    Open { path: PathBuf, source: io::Error },
    /// disk image {path} is neither a regular file nor a block device
    NotADisk { path: PathBuf },
    /// cannot find the size of disk image {path}: {source}
    Size { path: PathBuf, source: io::Error },
    /// disk image {path}: {source}
    RateLimiter {
        path: PathBuf,
        source: RateLimiterError,
    },
    /// disk image {path}: cannot create the queue eventfd: {source}
    EventFd { path: PathBuf, source: io::Error },
}

device_metrics! {
    /// What the device served and refused since it was created. Requests count when they
    /// succeed; a failed one counts once, under `io_errors` or `unsupported`.
    pub struct BlockMetrics {
        /// Reads served, and the bytes they moved to the guest.
        pub read_count,
        pub read_bytes,
        /// Writes served, and the bytes they moved to the disk.
        pub write_count,
        pub write_bytes,
        pub flush_count,
        /// DISCARD and WRITE_ZEROES requests served.
        pub discard_count,
        pub write_zeroes_count,
        pub get_id_count,
        /// Requests answered VIRTIO_BLK_S_IOERR: out of range, malformed, too many segments, a
        /// write to a read-only disk, or a failed host I/O.
        pub io_errors,
        /// Requests answered VIRTIO_BLK_S_UNSUPP: unknown types, features not negotiated, or
        /// discard on a backing file that cannot punch holes.
        pub unsupported,
        /// Chains returned unanswered because they had nowhere to put a status: cut short (a
        /// loop, a bad next index), no device-writable last byte, or buffers outside memory.
        pub bad_chains,
        /// Times the rate limiter deferred a request (one request may be deferred again).
        pub rate_limited,
    }
}
