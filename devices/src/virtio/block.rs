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

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::mem::{offset_of, size_of};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::{DescriptorChain, Queue, Reader, Writer};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::bump;
use super::{
    drain_queue, fuzzing, read_config_bytes, ActivateError, Activation, GuestMemory, Interrupt,
    Served, VirtioDevice, TYPE_BLOCK,
};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};

/// Bytes per sector; virtio-blk addresses in 512-byte units whatever the backend's block size.
pub const SECTOR_SIZE: u64 = 512;
/// The request queue's largest size.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
/// Data segments per request we promise to accept (`seg_max`): a full queue minus the header
/// and status descriptors. Longer chains (possible through indirect tables) get IOERR.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// The bounce buffer between guest memory and the backing file.
pub const BOUNCE_SIZE: usize = 128 << 10;
/// Largest discard: hole punching is cheap, but it still runs on the event loop.
const MAX_DISCARD_SECTORS: u32 = 1 << 22; // 2 GiB
/// Largest write-zeroes: where the file cannot zero a range in place we write the zeroes.
const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 16; // 32 MiB
/// Segments per discard / write-zeroes request.
const MAX_DISCARD_SEG: u32 = 1;
/// Size of one `virtio_blk_discard_write_zeroes` segment.
const DISCARD_SEGMENT_SIZE: usize = 16;
/// Size of `virtio_blk_outhdr`.
const HEADER_SIZE: usize = 16;
const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

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

/// The device's state while the driver has it running.
struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Interrupt,
    acked_features: u64,
}

/// The backing file and what requests may do with it.
struct Disk {
    file: File,
    path: PathBuf,
    /// Sectors the guest may address.
    capacity: u64,
    read_only: bool,
    cache_type: CacheType,
    /// GET_ID answer, NUL-padded.
    id: [u8; ID_BYTES],
    /// DISCARD and WRITE_ZEROES may be served: they were offered and the current file takes
    /// FALLOC_FL_PUNCH_HOLE (probed at open).
    punch_hole: bool,
    bounce: Vec<u8>,
}

/// An opened backing file and what probing it found.
struct Backing {
    file: File,
    /// Sectors the guest may address.
    capacity: u64,
    /// The file takes FALLOC_FL_PUNCH_HOLE.
    punch_hole: bool,
}

impl Backing {
    /// Opens `path` (O_RDONLY when `read_only`, else O_RDWR) and probes it. O_NONBLOCK keeps a
    /// FIFO given by mistake from blocking the open (it is refused as not a disk); it changes
    /// nothing for files and block devices. O_NOCTTY keeps a tty from becoming ours.
    fn open(path: &Path, read_only: bool) -> Result<Backing, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Self::probe(file, path, read_only)
    }

    /// Checks that `file` is a disk and finds its size and whether it can punch holes; `path`
    /// only names it in messages.
    fn probe(mut file: File, path: &Path, read_only: bool) -> Result<Backing, BlockError> {
        let size_err = |source| BlockError::Size {
            path: path.to_path_buf(),
            source,
        };
        let file_type = file.metadata().map_err(size_err)?.file_type();
        if !file_type.is_file() && !file_type.is_block_device() {
            return Err(BlockError::NotADisk {
                path: path.to_path_buf(),
            });
        }
        // Seeking to the end works for block devices too, whose metadata length is 0.
        let size = file.seek(SeekFrom::End(0)).map_err(size_err)?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "disk image {}: size {size} is not a multiple of {SECTOR_SIZE}: {} bytes hidden",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        let punch_hole = !read_only && probe_punch_hole(&file, size);
        Ok(Backing {
            file,
            capacity: size / SECTOR_SIZE,
            punch_hole,
        })
    }
}

/// A virtio-blk device.
pub struct Block {
    disk: Disk,
    /// Fixed at creation: the driver negotiates them once and cannot be told they changed.
    avail_features: u64,
    config_space: Vec<u8>,
    queue_evts: [EventFd; 1],
    limiter: RateLimiter,
    active: Option<Active>,
    metrics: BlockMetrics,
}

impl Block {
    /// Opens the disk (O_RDONLY when read-only, else O_RDWR) and works out its capacity and the
    /// features it can offer.
    pub fn new(config: BlockConfig) -> Result<Block, BlockError> {
        let backing = Backing::open(&config.path, config.read_only)?;
        Self::with_backing(backing, &config)
    }

    /// Builds the device on an opened, probed backing file.
    fn with_backing(backing: Backing, config: &BlockConfig) -> Result<Block, BlockError> {
        let path = config.path.clone();
        let limiter =
            RateLimiter::new(config.rate_limiter).map_err(|source| BlockError::RateLimiter {
                path: path.clone(),
                source,
            })?;
        let queue_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| BlockError::EventFd {
            path: path.clone(),
            source,
        })?;

        let mut id = [0u8; ID_BYTES];
        let serial = config.serial.as_bytes();
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial[..n]);

        let mut avail_features = (1u64 << VIRTIO_BLK_F_SEG_MAX) | (1u64 << VIRTIO_BLK_F_BLK_SIZE);
        if config.read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        if config.cache_type == CacheType::Writeback {
            avail_features |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        if backing.punch_hole {
            avail_features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }

        Ok(Block {
            config_space: config_space(backing.capacity, backing.punch_hole),
            disk: Disk {
                file: backing.file,
                path,
                capacity: backing.capacity,
                read_only: config.read_only,
                cache_type: config.cache_type,
                id,
                punch_hole: backing.punch_hole,
                bounce: vec![0; BOUNCE_SIZE],
            },
            avail_features,
            queue_evts: [queue_evt],
            limiter,
            active: None,
            metrics: BlockMetrics::default(),
        })
    }

    /// The disk size the guest sees, in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity
    }

    /// The backing file's path.
    pub fn path(&self) -> &Path {
        &self.disk.path
    }

    /// Whether DISCARD and WRITE_ZEROES are served now: they were offered at creation (writable,
    /// and the first file punched holes) and the current backing file punches holes.
    pub fn discard_supported(&self) -> bool {
        self.disk.punch_hole
    }

    /// What the device served and refused so far.
    pub fn counters(&self) -> BlockMetrics {
        self.metrics
    }

    /// The rate limiter's current settings.
    pub fn rate_limiter_config(&self) -> RateLimiterConfig {
        self.limiter.config()
    }

    /// Changes the rate limits while the VM runs (see [`RateLimiter::update`]: changed buckets
    /// start full, `None` is unlimited); invalid settings change nothing. A request the old
    /// limits were holding back is retried at once through the limiter's timer.
    pub fn set_rate_limiter(&mut self, config: RateLimiterConfig) -> Result<(), BlockError> {
        self.limiter
            .update(config)
            .map_err(|source| BlockError::RateLimiter {
                path: self.disk.path.clone(),
                source,
            })
    }

    /// Puts the disk on another file while the VM runs, opened in the drive's current mode
    /// (read-only stays read-only). Any error names `path` and leaves the device on its old file.
    ///
    /// The new file's size becomes the capacity; when the driver runs, it gets a config-change
    /// interrupt (which also moves the config generation) and Linux re-reads the capacity. The
    /// offered features cannot change under a driver that already negotiated them, so they stay
    /// as they were: if the new file cannot punch holes although the first one could, DISCARD and
    /// WRITE_ZEROES now get UNSUPP; if it can but the first could not, they stay unoffered.
    ///
    /// Requests are served synchronously under the same `&mut self`, so none is in flight
    /// across the swap. The old file is closed without a sync: whatever the guest flushed is
    /// already on disk, and unflushed writes were never promised.
    pub fn set_backing_file(&mut self, path: &Path) -> Result<(), BlockError> {
        let backing = Backing::open(path, self.disk.read_only)?;
        let discard_offered = self.avail_features & (1 << VIRTIO_BLK_F_DISCARD) != 0;
        self.disk.file = backing.file;
        self.disk.path = path.to_path_buf();
        self.disk.capacity = backing.capacity;
        self.disk.punch_hole = discard_offered && backing.punch_hole;
        self.config_space = config_space(backing.capacity, discard_offered);
        log::info!(
            "virtio-blk: now on {} ({} sectors)",
            path.display(),
            backing.capacity
        );
        // Before activation there is nobody to tell: the driver reads the capacity when it
        // probes the device.
        if let Some(active) = &self.active {
            active.interrupt.signal_config_change();
        }
        Ok(())
    }

    /// The driver kicked the queue.
    fn queue_notified(&mut self) {
        // Reading only clears the eventfd; EAGAIN (nothing pending) is fine.
        let _ = self.queue_evts[0].read();
        self.process_queue();
    }

    /// The rate limiter's timer fired: deferred requests may go now.
    fn limiter_ready(&mut self) {
        self.limiter.timer_fired();
        self.process_queue();
    }

    /// Serves available chains until the queue is empty or the rate limiter refuses one.
    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self.limiter.is_blocked() {
            return;
        }
        let Active {
            mem,
            queue,
            interrupt,
            acked_features,
        } = active;
        let (disk, limiter, metrics) = (&mut self.disk, &mut self.limiter, &mut self.metrics);
        drain_queue(
            queue,
            mem,
            &"virtio-blk",
            interrupt,
            &self.queue_evts[0],
            |chain| handle_chain(disk, limiter, metrics, mem, chain, *acked_features),
        );
    }
}

/// Whether `file` supports FALLOC_FL_PUNCH_HOLE, asked without touching data: we punch a 4 KiB
/// hole just past the end of the file with KEEP_SIZE, which filesystems that can punch accept as
/// a no-op and others refuse with EOPNOTSUPP. Block devices refuse any range starting at their
/// end (EINVAL), so they are offered no DISCARD/WRITE_ZEROES: there is no harmless probe there.
fn probe_punch_hole(file: &File, size: u64) -> bool {
    let Ok(offset) = libc::off_t::try_from(size) else {
        return false;
    };
    // SAFETY: fallocate on an fd we own; no memory is passed. The range lies beyond the end of
    // the file and KEEP_SIZE keeps the size, so no data changes.
    let ret = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            4096,
        )
    };
    ret == 0
}

/// `struct virtio_blk_config`, little-endian, laid out by the virtio-bindings definition.
fn config_space(capacity: u64, discard: bool) -> Vec<u8> {
    fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
        buf[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    let mut cfg = vec![0u8; size_of::<virtio_blk_config>()];
    put(
        &mut cfg,
        offset_of!(virtio_blk_config, capacity),
        &capacity.to_le_bytes(),
    );
    put(
        &mut cfg,
        offset_of!(virtio_blk_config, seg_max),
        &SEG_MAX.to_le_bytes(),
    );
    put(
        &mut cfg,
        offset_of!(virtio_blk_config, blk_size),
        &(SECTOR_SIZE as u32).to_le_bytes(),
    );
    put(
        &mut cfg,
        offset_of!(virtio_blk_config, num_queues),
        &1u16.to_le_bytes(),
    );
    if discard {
        for (offset, value) in [
            (
                offset_of!(virtio_blk_config, max_discard_sectors),
                MAX_DISCARD_SECTORS,
            ),
            (
                offset_of!(virtio_blk_config, max_discard_seg),
                MAX_DISCARD_SEG,
            ),
            (offset_of!(virtio_blk_config, discard_sector_alignment), 1),
            (
                offset_of!(virtio_blk_config, max_write_zeroes_sectors),
                MAX_WRITE_ZEROES_SECTORS,
            ),
            (
                offset_of!(virtio_blk_config, max_write_zeroes_seg),
                MAX_DISCARD_SEG,
            ),
        ] {
            put(&mut cfg, offset, &value.to_le_bytes());
        }
        cfg[offset_of!(virtio_blk_config, write_zeroes_may_unmap)] = 1;
    }
    cfg
}

/// Serves one chain: finds its status byte, runs the request and reports the used length (the
/// bytes written to the guest, status byte included).
fn handle_chain(
    disk: &mut Disk,
    limiter: &mut RateLimiter,
    metrics: &mut BlockMetrics,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    acked_features: u64,
) -> Served {
    // Walk the chain once: it must end (no loop, no bad next index) within the iterator's limit.
    let mut count = 0usize;
    let mut terminated = false;
    for desc in chain.clone() {
        count += 1;
        terminated = !desc.has_next();
    }
    let unanswerable = |metrics: &mut BlockMetrics, why: &str| {
        crate::guest_debug!("virtio-blk: dropping a chain: {why}");
        bump(&mut metrics.bad_chains, 1);
        Served::Used(0)
    };
    if !terminated {
        return unanswerable(metrics, "it does not end");
    }
    let Ok(mut writer) = Writer::new(mem, chain.clone()) else {
        return unanswerable(metrics, "writable buffers outside guest memory");
    };
    // The status byte is the last writable byte; without one there is nowhere to answer.
    let Some(data_len) = writer.available_bytes().checked_sub(1) else {
        return unanswerable(metrics, "no status byte");
    };
    let Ok(mut status) = writer.split_at(data_len) else {
        return unanswerable(metrics, "no status byte");
    };
    let code = if count > MAX_DESCRIPTORS {
        crate::guest_debug!("virtio-blk: chain of {count} descriptors exceeds seg_max");
        S_IOERR
    } else {
        match Reader::new(mem, chain) {
            Ok(mut reader) => {
                match serve(
                    disk,
                    limiter,
                    metrics,
                    &mut reader,
                    &mut writer,
                    acked_features,
                ) {
                    Some(code) => code,
                    None => return Served::PutBack,
                }
            }
            Err(e) => {
                crate::guest_debug!("virtio-blk: readable buffers: {e}");
                S_IOERR
            }
        }
    };
    match code {
        S_IOERR => bump(&mut metrics.io_errors, 1),
        S_UNSUPP => bump(&mut metrics.unsupported, 1),
        _ => {}
    }
    let written = writer.bytes_written() + usize::from(status.write_all(&[code]).is_ok());
    Served::Used(u32::try_from(written).unwrap_or(u32::MAX))
}

/// Parses the header and runs the request; None when the rate limiter defers it. Successful
/// requests are counted here, by type.
fn serve(
    disk: &mut Disk,
    limiter: &mut RateLimiter,
    metrics: &mut BlockMetrics,
    reader: &mut Reader,
    writer: &mut Writer,
    acked_features: u64,
) -> Option<u8> {
    let mut header = [0u8; HEADER_SIZE];
    if reader.read_exact(&mut header).is_err() {
        crate::guest_debug!("virtio-blk: short or unreadable request header");
        return Some(S_IOERR);
    }
    let (request_type, sector) = parse_header(&header);
    let bytes = match request_type {
        VIRTIO_BLK_T_IN => writer.available_bytes(),
        VIRTIO_BLK_T_OUT => reader.available_bytes(),
        _ => 0,
    } as u64;
    if !limiter.consume(bytes) {
        bump(&mut metrics.rate_limited, 1);
        return None;
    }
    let code = run(disk, request_type, sector, reader, writer, acked_features);
    if code == S_OK {
        metrics.served(request_type, bytes);
    }
    Some(code)
}

impl BlockMetrics {
    /// Counts a request that succeeded; `bytes` is what a read or write moved.
    fn served(&mut self, request_type: u32, bytes: u64) {
        let count = match request_type {
            VIRTIO_BLK_T_IN => {
                bump(&mut self.read_bytes, bytes);
                &mut self.read_count
            }
            VIRTIO_BLK_T_OUT => {
                bump(&mut self.write_bytes, bytes);
                &mut self.write_count
            }
            VIRTIO_BLK_T_FLUSH => &mut self.flush_count,
            VIRTIO_BLK_T_GET_ID => &mut self.get_id_count,
            VIRTIO_BLK_T_DISCARD => &mut self.discard_count,
            VIRTIO_BLK_T_WRITE_ZEROES => &mut self.write_zeroes_count,
            // Unknown types are never OK.
            _ => return,
        };
        bump(count, 1);
    }
}

/// Runs one parsed request on the disk; returns its status.
fn run(
    disk: &mut Disk,
    request_type: u32,
    sector: u64,
    reader: &mut Reader,
    writer: &mut Writer,
    acked_features: u64,
) -> u8 {
    match request_type {
        VIRTIO_BLK_T_IN => disk.read(sector, writer),
        VIRTIO_BLK_T_OUT => disk.write(sector, reader),
        VIRTIO_BLK_T_FLUSH => disk.flush(),
        VIRTIO_BLK_T_GET_ID => disk.get_id(writer),
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let feature = if request_type == VIRTIO_BLK_T_DISCARD {
                VIRTIO_BLK_F_DISCARD
            } else {
                VIRTIO_BLK_F_WRITE_ZEROES
            };
            if acked_features & (1 << feature) == 0 || !disk.punch_hole {
                S_UNSUPP
            } else {
                disk.discard_or_zero(request_type, reader)
            }
        }
        _ => S_UNSUPP,
    }
}

/// `virtio_blk_outhdr`: type, ioprio (ignored), sector.
fn parse_header(header: &[u8; HEADER_SIZE]) -> (u32, u64) {
    (le_u32(header, 0), le_u64(header, 8))
}

/// Little-endian fields of the 16-byte request structures.
fn le_u32(bytes: &[u8; 16], at: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(field)
}

fn le_u64(bytes: &[u8; 16], at: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(field)
}

impl Disk {
    /// The file offset of `len` bytes at `sector`, if they are whole sectors inside the disk.
    fn byte_range(&self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (end <= self.capacity * SECTOR_SIZE).then_some(offset)
    }

    fn read(&mut self, sector: u64, writer: &mut Writer) -> u8 {
        let len = writer.available_bytes() as u64;
        let Some(mut offset) = self.byte_range(sector, len) else {
            crate::guest_debug!(
                "virtio-blk: read of {len} bytes at sector {sector} is out of range"
            );
            return S_IOERR;
        };
        let mut left = len;
        while left > 0 {
            let n = left.min(self.bounce.len() as u64) as usize;
            let buf = &mut self.bounce[..n];
            if let Err(e) = self.file.read_exact_at(buf, offset) {
                crate::guest_warn!("virtio-blk {}: read at {offset}: {e}", self.path.display());
                return S_IOERR;
            }
            if writer.write_all(buf).is_err() {
                return S_IOERR;
            }
            offset += n as u64;
            left -= n as u64;
        }
        S_OK
    }

    fn write(&mut self, sector: u64, reader: &mut Reader) -> u8 {
        if self.read_only {
            crate::guest_debug!("virtio-blk: write to a read-only disk");
            return S_IOERR;
        }
        let len = reader.available_bytes() as u64;
        let Some(mut offset) = self.byte_range(sector, len) else {
            crate::guest_debug!(
                "virtio-blk: write of {len} bytes at sector {sector} is out of range"
            );
            return S_IOERR;
        };
        let mut left = len;
        while left > 0 {
            let n = left.min(self.bounce.len() as u64) as usize;
            let buf = &mut self.bounce[..n];
            if reader.read_exact(buf).is_err() {
                return S_IOERR;
            }
            if let Err(e) = self.file.write_all_at(buf, offset) {
                crate::guest_warn!("virtio-blk {}: write at {offset}: {e}", self.path.display());
                return S_IOERR;
            }
            offset += n as u64;
            left -= n as u64;
        }
        S_OK
    }

    fn flush(&mut self) -> u8 {
        match self.cache_type {
            // Not offered FLUSH, the driver should not ask; if it does, there is nothing owed.
            CacheType::Unsafe => S_OK,
            CacheType::Writeback => match self.file.sync_data() {
                Ok(()) => S_OK,
                Err(e) => {
                    crate::guest_warn!("virtio-blk {}: fdatasync: {e}", self.path.display());
                    S_IOERR
                }
            },
        }
    }

    fn get_id(&mut self, writer: &mut Writer) -> u8 {
        let n = writer.available_bytes().min(ID_BYTES);
        match writer.write_all(&self.id[..n]) {
            Ok(()) => S_OK,
            Err(_) => S_IOERR,
        }
    }

    /// DISCARD and WRITE_ZEROES: an array of `virtio_blk_discard_write_zeroes` segments.
    fn discard_or_zero(&mut self, request_type: u32, reader: &mut Reader) -> u8 {
        let len = reader.available_bytes();
        if len == 0
            || !len.is_multiple_of(DISCARD_SEGMENT_SIZE)
            || len / DISCARD_SEGMENT_SIZE > MAX_DISCARD_SEG as usize
        {
            crate::guest_debug!("virtio-blk: discard/write-zeroes payload of {len} bytes");
            return S_IOERR;
        }
        for _ in 0..len / DISCARD_SEGMENT_SIZE {
            let mut segment = [0u8; DISCARD_SEGMENT_SIZE];
            if reader.read_exact(&mut segment).is_err() {
                return S_IOERR;
            }
            // virtio_blk_discard_write_zeroes: sector, num_sectors, flags.
            let (sector, num_sectors, flags) = (
                le_u64(&segment, 0),
                le_u32(&segment, 8),
                le_u32(&segment, 12),
            );
            let code = if request_type == VIRTIO_BLK_T_DISCARD {
                self.discard(sector, num_sectors, flags)
            } else {
                self.write_zeroes(sector, num_sectors, flags)
            };
            if code != S_OK {
                return code;
            }
        }
        S_OK
    }

    /// The byte offset and length of a discard/write-zeroes segment: IOERR past `max` sectors or
    /// the disk's end, `None` for an empty segment (nothing to do).
    fn segment_range(
        &self,
        sector: u64,
        num_sectors: u32,
        max: u32,
    ) -> Result<Option<(u64, u64)>, u8> {
        if num_sectors > max {
            return Err(S_IOERR);
        }
        let len = u64::from(num_sectors) * SECTOR_SIZE;
        let offset = self.byte_range(sector, len).ok_or(S_IOERR)?;
        Ok((len > 0).then_some((offset, len)))
    }

    fn discard(&mut self, sector: u64, num_sectors: u32, flags: u32) -> u8 {
        // The spec refuses the unmap flag (and any unknown flag) on a discard.
        if flags != 0 {
            return S_UNSUPP;
        }
        let (offset, len) = match self.segment_range(sector, num_sectors, MAX_DISCARD_SECTORS) {
            Ok(Some(range)) => range,
            Ok(None) => return S_OK,
            Err(status) => return status,
        };
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => S_OK,
            Err(e) => {
                crate::guest_warn!("virtio-blk {}: punch hole: {e}", self.path.display());
                S_IOERR
            }
        }
    }

    fn write_zeroes(&mut self, sector: u64, num_sectors: u32, flags: u32) -> u8 {
        if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            return S_UNSUPP;
        }
        let (offset, len) = match self.segment_range(sector, num_sectors, MAX_WRITE_ZEROES_SECTORS)
        {
            Ok(Some(range)) => range,
            Ok(None) => return S_OK,
            Err(status) => return status,
        };
        // A punched hole reads as zeroes, so either way the range ends up zero.
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        if unmap
            && self
                .fallocate(libc::FALLOC_FL_PUNCH_HOLE | keep, offset, len)
                .is_ok()
        {
            return S_OK;
        }
        if self
            .fallocate(libc::FALLOC_FL_ZERO_RANGE | keep, offset, len)
            .is_ok()
        {
            return S_OK;
        }
        // No in-place zeroing here (tmpfs, some filesystems): write the zeroes.
        self.bounce.fill(0);
        let mut offset = offset;
        let mut left = len;
        while left > 0 {
            let n = left.min(self.bounce.len() as u64) as usize;
            if let Err(e) = self.file.write_all_at(&self.bounce[..n], offset) {
                crate::guest_warn!("virtio-blk {}: write zeroes: {e}", self.path.display());
                return S_IOERR;
            }
            offset += n as u64;
            left -= n as u64;
        }
        S_OK
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let to_off = |v: u64| {
            libc::off_t::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
        };
        let (offset, len) = (to_off(offset)?, to_off(len)?);
        // SAFETY: fallocate on an fd we own; no memory is passed. The range was checked against
        // the disk's capacity by the caller.
        let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let got = activation.queues.len();
        let Ok([queue]) = <[Queue; 1]>::try_from(activation.queues) else {
            return Err(ActivateError::QueueCount { got, want: 1 });
        };
        self.active = Some(Active {
            mem: activation.mem,
            queue,
            interrupt: activation.interrupt,
            acked_features: activation.acked_features,
        });
        // Requests the driver queued before DRIVER_OK are picked up by the event loop.
        if let Err(e) = self.queue_evts[0].write(1) {
            crate::guest_warn!(
                "virtio-blk {}: cannot kick the queue: {e}",
                self.disk.path.display()
            );
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        self.metrics.pairs()
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evts[0], EventSet::IN)) {
            log::error!(
                "virtio-blk {}: cannot watch the queue: {e}",
                self.disk.path.display()
            );
        }
        if let Err(e) = ops.add(Events::new(&self.limiter, EventSet::IN)) {
            log::error!(
                "virtio-blk {}: cannot watch the rate limiter: {e}",
                self.disk.path.display()
            );
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.queue_evts[0].as_raw_fd() {
            self.queue_notified();
        } else if fd == self.limiter.as_raw_fd() {
            self.limiter_ready();
        } else {
            log::warn!(
                "virtio-blk {}: event on unknown fd {fd}",
                self.disk.path.display()
            );
        }
    }
}

/// Size of the memfd disk the fuzzer drives.
const FUZZ_DISK_SIZE: u64 = 64 << 10;

/// One fuzz case: a memfd-backed disk (writable or not, writeback or unsafe, as the first byte
/// says) serves a queue whose chains come from the input.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let mut bytes = fuzzing::FuzzBytes::new(data);
    let knobs = bytes.u8();
    let size = 1u16 << (bytes.u8() % 9);
    let mem = fuzzing::guest_memory();
    let queue = fuzzing::fuzzed_queue(&mem, &mut bytes, 0, size);
    fuzzing::fill_data(&mem, &mut bytes);

    let Ok(file) = memfd(FUZZ_DISK_SIZE) else {
        return;
    };
    let config = BlockConfig {
        path: PathBuf::from("fuzz-memfd"),
        read_only: knobs & 1 != 0,
        cache_type: if knobs & 2 != 0 {
            CacheType::Writeback
        } else {
            CacheType::Unsafe
        },
        serial: "fuzz".into(),
        rate_limiter: RateLimiterConfig::default(),
    };
    let Ok(backing) = Backing::probe(file, &config.path, config.read_only) else {
        return;
    };
    let Ok(mut block) = Block::with_backing(backing, &config) else {
        return;
    };
    let Ok(irqfd) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let acked_features = block.avail_features();
    let activation = Activation {
        mem,
        queues: vec![queue],
        interrupt: Interrupt::new(irqfd),
        acked_features,
    };
    if block.activate(activation).is_ok() {
        block.queue_notified();
    }
}

/// An anonymous in-memory file of `size` bytes.
fn memfd(size: u64) -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: a valid NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"tessera-blk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use crate::rate_limiter::TokenBucketConfig;
    use crate::virtio::INTERRUPT_CONFIG_CHANGE;

    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;
    const MEM_SIZE: usize = 0x40_0000;

    /// A disk image in the temp dir whose sector `i` is filled with the byte `i`; removed on drop.
    struct TempDisk {
        path: PathBuf,
    }

    impl TempDisk {
        fn new(sectors: u64) -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "tessera-blk-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ));
            let data: Vec<u8> = (0..sectors).flat_map(|s| [s as u8; 512]).collect();
            std::fs::write(&path, data).unwrap();
            Self { path }
        }

        /// A disk of `sectors` sectors, every byte `byte`.
        fn filled(sectors: u64, byte: u8) -> Self {
            let disk = Self::new(0);
            std::fs::write(&disk.path, vec![byte; (sectors * 512) as usize]).unwrap();
            disk
        }

        fn contents(&self) -> Vec<u8> {
            std::fs::read(&self.path).unwrap()
        }

        fn config(&self) -> BlockConfig {
            BlockConfig {
                path: self.path.clone(),
                read_only: false,
                cache_type: CacheType::Writeback,
                serial: "tessera-disk-0".into(),
                rate_limiter: RateLimiterConfig::default(),
            }
        }

        fn block(&self) -> Block {
            Block::new(self.config()).unwrap()
        }
    }

    impl Drop for TempDisk {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    /// One descriptor: address, length, device-writable.
    type Part = (u64, u32, bool);

    fn hdr() -> Part {
        (HDR, HEADER_SIZE as u32, false)
    }

    fn status() -> Part {
        (STATUS, 1, true)
    }

    fn write_header(mem: &GuestMemory, request_type: u32, sector: u64) {
        mem.write_obj(request_type.to_le(), GuestAddress(HDR))
            .unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
    }

    fn write_segment(mem: &GuestMemory, at: u64, sector: u64, num_sectors: u32, flags: u32) {
        mem.write_obj(sector.to_le(), GuestAddress(at)).unwrap();
        mem.write_obj(num_sectors.to_le(), GuestAddress(at + 8))
            .unwrap();
        mem.write_obj(flags.to_le(), GuestAddress(at + 12)).unwrap();
    }

    fn raw(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    /// The driver side of the queue, with the device activated on it.
    struct Rig<'a> {
        vq: MockSplitQueue<'a, GuestMemory>,
        next_desc: u16,
    }

    impl<'a> Rig<'a> {
        fn new(mem: &'a GuestMemory, block: &mut Block) -> Self {
            let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
            let queue: Queue = vq.create_queue().unwrap();
            block
                .activate(Activation {
                    mem: mem.clone(),
                    queues: vec![queue],
                    interrupt: Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
                    acked_features: block.avail_features(),
                })
                .unwrap();
            // Status bytes start as a value no request answers with.
            mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            Self { vq, next_desc: 0 }
        }

        /// Offers a chain of `parts` linked in order.
        fn push(&mut self, parts: &[Part]) {
            let first = self.next_desc;
            let descs: Vec<RawDescriptor> = parts
                .iter()
                .enumerate()
                .map(|(i, &(addr, len, write))| {
                    let last = i + 1 == parts.len();
                    let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
                    if !last {
                        flags |= VRING_DESC_F_NEXT;
                    }
                    raw(addr, len, flags, first + i as u16 + 1)
                })
                .collect();
            self.push_raw(&descs);
        }

        /// Offers descriptors exactly as given (flags and next indexes untouched).
        fn push_raw(&mut self, descs: &[RawDescriptor]) {
            self.vq.add_desc_chains(descs, self.next_desc).unwrap();
            self.next_desc += descs.len() as u16;
        }

        /// The used ring: (head index, used length).
        fn used(&self) -> Vec<(u32, u32)> {
            let n = self.vq.used().idx().load();
            (0..n)
                .map(|i| {
                    let elem = self.vq.used().ring().ref_at(usize::from(i)).unwrap().load();
                    (elem.id(), elem.len())
                })
                .collect()
        }
    }

    /// Serves one chain; returns (status byte, used length).
    fn request(block: &mut Block, mem: &GuestMemory, parts: &[Part]) -> (u8, u32) {
        let mut rig = Rig::new(mem, block);
        rig.push(parts);
        block.queue_notified();
        let used = rig.used();
        assert_eq!(used.len(), 1, "exactly one chain is returned");
        (mem.read_obj(GuestAddress(STATUS)).unwrap(), used[0].1)
    }

    fn read_sectors(block: &mut Block, mem: &GuestMemory, sector: u64, len: u32) -> Vec<u8> {
        write_header(mem, VIRTIO_BLK_T_IN, sector);
        let (st, used) = request(block, mem, &[hdr(), (DATA, len, true), status()]);
        assert_eq!((st, used), (S_OK, len + 1));
        let mut buf = vec![0u8; len as usize];
        mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        buf
    }

    fn config_u32(block: &Block, field: usize) -> u32 {
        let mut buf = [0u8; 4];
        block.read_config(field as u64, &mut buf);
        u32::from_le_bytes(buf)
    }

    #[test]
    fn open_checks_the_path_and_sizes_the_disk() {
        let disk = TempDisk::new(16);
        let block = disk.block();
        assert_eq!(block.capacity_sectors(), 16);
        assert_eq!(block.device_type(), TYPE_BLOCK);
        assert_eq!(block.queue_max_sizes(), &[256]);
        let mut cap = [0u8; 8];
        block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 16);
        assert_eq!(
            config_u32(&block, offset_of!(virtio_blk_config, seg_max)),
            254
        );
        assert_eq!(
            config_u32(&block, offset_of!(virtio_blk_config, blk_size)),
            512
        );
        let f = block.avail_features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_SEG_MAX), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_BLK_SIZE), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);

        let missing = disk.path.with_extension("missing");
        let err = Block::new(BlockConfig {
            path: missing.clone(),
            ..disk.config()
        })
        .err()
        .unwrap();
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );

        let err = Block::new(BlockConfig {
            path: std::env::temp_dir(),
            read_only: true,
            ..disk.config()
        })
        .err()
        .unwrap();
        assert!(matches!(err, BlockError::NotADisk { .. }), "{err}");

        // A FIFO with no writer: a plain read-only open would block forever.
        let fifo = std::env::temp_dir().join(format!("tessera-block-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path; the result is checked.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let err = Block::new(BlockConfig {
            path: fifo.clone(),
            read_only: true,
            ..disk.config()
        })
        .err()
        .unwrap();
        assert!(matches!(err, BlockError::NotADisk { .. }), "{err}");
        std::fs::remove_file(fifo).unwrap();
    }

    #[test]
    fn odd_sized_image_hides_the_partial_sector() {
        let disk = TempDisk::new(2);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&disk.path)
            .unwrap()
            .write_all(&[7; 100])
            .unwrap();
        assert_eq!(disk.block().capacity_sectors(), 2);
    }

    #[test]
    fn reads_sectors_into_guest_memory() {
        let disk = TempDisk::new(16);
        let mut block = disk.block();
        let mem = memory();
        let data = read_sectors(&mut block, &mem, 3, 1024);
        assert!(data[..512].iter().all(|&b| b == 3));
        assert!(data[512..].iter().all(|&b| b == 4));
        assert_eq!(
            block.counters(),
            BlockMetrics {
                read_count: 1,
                read_bytes: 1024,
                ..Default::default()
            }
        );
        let pairs = VirtioDevice::metrics(&block);
        assert!(pairs.contains(&("read_bytes", 1024)), "{pairs:?}");
        assert!(pairs.contains(&("rate_limited", 0)), "{pairs:?}");
    }

    #[test]
    fn reads_larger_than_the_bounce_buffer_across_descriptors() {
        let sectors = 2 * (BOUNCE_SIZE as u64 / 512) + 8;
        let disk = TempDisk::new(sectors);
        let mut block = disk.block();
        let mem = memory();
        let half = (sectors * 512 / 2) as u32;
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        let parts = [
            hdr(),
            (DATA, half, true),
            (DATA + u64::from(half), half, true),
            status(),
        ];
        assert_eq!(request(&mut block, &mem, &parts), (S_OK, 2 * half + 1));
        let mut buf = vec![0u8; 2 * half as usize];
        mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert_eq!(buf, disk.contents());
    }

    #[test]
    fn write_then_read_back() {
        let disk = TempDisk::new(16);
        let mut block = disk.block();
        let mem = memory();
        let payload: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        mem.write_slice(&payload, GuestAddress(DATA)).unwrap();
        write_header(&mem, VIRTIO_BLK_T_OUT, 5);
        // Header and data share one descriptor (any layout), status in its own.
        mem.write_slice(&payload, GuestAddress(HDR + 16)).unwrap();
        let (st, used) = request(&mut block, &mem, &[(HDR, 16 + 1024, false), status()]);
        assert_eq!((st, used), (S_OK, 1));
        let file = disk.contents();
        assert_eq!(&file[5 * 512..7 * 512], &payload[..]);
        assert!(file[4 * 512..5 * 512].iter().all(|&b| b == 4));
        assert!(file[7 * 512..8 * 512].iter().all(|&b| b == 7));
        assert_eq!(read_sectors(&mut block, &mem, 5, 1024), payload);
        let m = block.counters();
        assert_eq!((m.write_count, m.write_bytes), (1, 1024));
        assert_eq!((m.read_count, m.read_bytes), (1, 1024));
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let disk = TempDisk::new(16);
        let mut block = Block::new(BlockConfig {
            read_only: true,
            ..disk.config()
        })
        .unwrap();
        let f = block.avail_features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        let mem = memory();
        mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
        write_header(&mem, VIRTIO_BLK_T_OUT, 0);
        let (st, used) = request(&mut block, &mem, &[hdr(), (DATA, 512, false), status()]);
        assert_eq!((st, used), (S_IOERR, 1));
        assert_eq!(
            (block.counters().io_errors, block.counters().write_count),
            (1, 0)
        );
        assert!(disk.contents()[..512].iter().all(|&b| b == 0));
        // Reads still work.
        assert!(read_sectors(&mut block, &mem, 1, 512)
            .iter()
            .all(|&b| b == 1));
    }

    #[test]
    fn flush_syncs_with_writeback_and_is_a_no_op_when_unsafe() {
        let disk = TempDisk::new(4);
        let mem = memory();
        let mut block = disk.block();
        write_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(request(&mut block, &mem, &[hdr(), status()]), (S_OK, 1));
        assert_eq!(block.counters().flush_count, 1);

        let mut block = Block::new(BlockConfig {
            cache_type: CacheType::Unsafe,
            ..disk.config()
        })
        .unwrap();
        assert_eq!(block.avail_features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
        write_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(request(&mut block, &mem, &[hdr(), status()]), (S_OK, 1));
        assert_eq!(CacheType::default(), CacheType::Unsafe);
    }

    #[test]
    fn get_id_returns_the_nul_padded_serial() {
        let disk = TempDisk::new(4);
        let mem = memory();
        let mut block = disk.block();
        mem.write_slice(&[0xaa; 20], GuestAddress(DATA)).unwrap();
        write_header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        let (st, used) = request(&mut block, &mem, &[hdr(), (DATA, 20, true), status()]);
        assert_eq!((st, used), (S_OK, 21));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..14], b"tessera-disk-0");
        assert_eq!(&id[14..], &[0; 6]);
        assert_eq!(block.counters().get_id_count, 1);

        let mut block = Block::new(BlockConfig {
            serial: "0123456789abcdefghijKLMNOP".into(),
            ..disk.config()
        })
        .unwrap();
        let (st, used) = request(&mut block, &mem, &[hdr(), (DATA, 64, true), status()]);
        assert_eq!((st, used), (S_OK, 21));
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"0123456789abcdefghij");
    }

    #[test]
    fn discard_punches_a_hole_in_the_file() {
        let disk = TempDisk::new(2048); // 1 MiB, fully allocated
        let mut block = disk.block();
        let mem = memory();
        if !block.discard_supported() {
            // The temp dir's filesystem cannot punch holes: nothing offered, nothing done.
            assert_eq!(block.avail_features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
            write_segment(&mem, DATA, 0, 8, 0);
            write_header(&mem, VIRTIO_BLK_T_DISCARD, 0);
            let parts = [hdr(), (DATA, 16, false), status()];
            assert_eq!(request(&mut block, &mem, &parts), (S_UNSUPP, 1));
            return;
        }
        let f = block.avail_features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        assert_eq!(
            config_u32(&block, offset_of!(virtio_blk_config, max_discard_seg)),
            1
        );
        assert_eq!(
            config_u32(&block, offset_of!(virtio_blk_config, max_discard_sectors)),
            MAX_DISCARD_SECTORS
        );
        let mut may_unmap = [0u8];
        block.read_config(
            offset_of!(virtio_blk_config, write_zeroes_may_unmap) as u64,
            &mut may_unmap,
        );
        assert_eq!(may_unmap, [1]);

        let blocks_before = std::fs::metadata(&disk.path).unwrap().blocks();
        write_segment(&mem, DATA, 256, 1024, 0); // 512 KiB from 128 KiB
        write_header(&mem, VIRTIO_BLK_T_DISCARD, 0);
        let parts = [hdr(), (DATA, 16, false), status()];
        assert_eq!(request(&mut block, &mem, &parts), (S_OK, 1));
        let meta = std::fs::metadata(&disk.path).unwrap();
        assert_eq!(meta.len(), 1 << 20, "discard keeps the size");
        assert!(
            meta.blocks() < blocks_before,
            "{} !< {blocks_before}",
            meta.blocks()
        );
        let file = disk.contents();
        assert!(file[256 * 512..1280 * 512].iter().all(|&b| b == 0));
        assert!(file[255 * 512..256 * 512].iter().all(|&b| b == 255));
        assert!(file[1280 * 512..1281 * 512].iter().all(|&b| b == 0));
        assert!(file[1281 * 512..1282 * 512].iter().all(|&b| b == 1));
        // Discarding what is already a hole (a sparse range) succeeds and changes nothing.
        assert_eq!(request(&mut block, &mem, &parts), (S_OK, 1));
        assert_eq!(disk.contents(), file);
        assert_eq!(block.counters().discard_count, 2);

        // The unmap flag is not allowed on discard; out-of-range and oversized ones fail.
        write_segment(&mem, DATA, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        assert_eq!(request(&mut block, &mem, &parts), (S_UNSUPP, 1));
        write_segment(&mem, DATA, 2047, 2, 0);
        assert_eq!(request(&mut block, &mem, &parts), (S_IOERR, 1));
        write_segment(&mem, DATA, u64::MAX, 1, 0);
        assert_eq!(request(&mut block, &mem, &parts), (S_IOERR, 1));
        // Two segments exceed max_discard_seg; a partial segment is malformed.
        write_segment(&mem, DATA + 16, 0, 8, 0);
        let two = [hdr(), (DATA, 32, false), status()];
        assert_eq!(request(&mut block, &mem, &two), (S_IOERR, 1));
        let partial = [hdr(), (DATA, 12, false), status()];
        assert_eq!(request(&mut block, &mem, &partial), (S_IOERR, 1));
    }

    #[test]
    fn write_zeroes_with_and_without_unmap() {
        let disk = TempDisk::new(64);
        let mut block = disk.block();
        let mem = memory();
        if !block.discard_supported() {
            return; // covered by discard_punches_a_hole_in_the_file
        }
        let parts = [hdr(), (DATA, 16, false), status()];
        write_header(&mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        write_segment(&mem, DATA, 2, 3, 0);
        assert_eq!(request(&mut block, &mem, &parts), (S_OK, 1));
        write_segment(&mem, DATA, 10, 4, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        assert_eq!(request(&mut block, &mem, &parts), (S_OK, 1));
        assert_eq!(block.counters().write_zeroes_count, 2);
        let file = disk.contents();
        for s in 0..64u64 {
            let zeroed = (2..5).contains(&s) || (10..14).contains(&s);
            let want = if zeroed { 0 } else { s as u8 };
            let range = (s * 512) as usize..((s + 1) * 512) as usize;
            assert!(file[range].iter().all(|&b| b == want), "sector {s}");
        }
        // Unknown flags are unsupported; the disk must stay in range.
        write_segment(&mem, DATA, 0, 1, 2);
        assert_eq!(request(&mut block, &mem, &parts), (S_UNSUPP, 1));
        write_segment(&mem, DATA, 60, 5, 0);
        assert_eq!(request(&mut block, &mem, &parts), (S_IOERR, 1));
        assert_eq!(disk.contents()[60 * 512], 60);
    }

    #[test]
    fn write_zeroes_falls_back_to_writing_zeroes() {
        let mut disk = Disk {
            file: memfd(8 * 512).unwrap(),
            path: "memfd".into(),
            capacity: 8,
            read_only: false,
            cache_type: CacheType::Unsafe,
            id: [0; ID_BYTES],
            punch_hole: true,
            bounce: vec![0xaa; 512],
        };
        disk.file.write_all_at(&[0x55; 8 * 512], 0).unwrap();
        // tmpfs has no ZERO_RANGE: the zeroes are written, two bounce buffers' worth.
        assert_eq!(disk.write_zeroes(1, 2, 0), S_OK);
        let mut back = [0u8; 8 * 512];
        disk.file.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..512].iter().all(|&b| b == 0x55));
        assert!(back[512..3 * 512].iter().all(|&b| b == 0));
        assert!(back[3 * 512..].iter().all(|&b| b == 0x55));
    }

    #[test]
    fn out_of_range_requests_fail_without_touching_the_disk() {
        let disk = TempDisk::new(16);
        let mut block = disk.block();
        let mem = memory();
        let before = disk.contents();
        mem.write_slice(&[0xcc; 1024], GuestAddress(DATA)).unwrap();
        let cases = [
            (VIRTIO_BLK_T_IN, 15, 1024, true),      // runs past the end
            (VIRTIO_BLK_T_OUT, 15, 1024, false),    // runs past the end
            (VIRTIO_BLK_T_OUT, 16, 512, false),     // starts at the end
            (VIRTIO_BLK_T_IN, 0, 500, true),        // not whole sectors
            (VIRTIO_BLK_T_OUT, 0, 513, false),      // not whole sectors
            (VIRTIO_BLK_T_IN, u64::MAX, 512, true), // sector * 512 overflows
            (VIRTIO_BLK_T_OUT, u64::MAX / 512, 1024, false), // offset + len overflows
        ];
        for (request_type, sector, len, write) in cases {
            write_header(&mem, request_type, sector);
            let parts = [hdr(), (DATA, len, write), status()];
            let (st, used) = request(&mut block, &mem, &parts);
            assert_eq!((st, used), (S_IOERR, 1), "{request_type} {sector} {len}");
        }
        assert_eq!(disk.contents(), before);
        let m = block.counters();
        assert_eq!(m.io_errors, cases.len() as u64);
        assert_eq!((m.read_count, m.write_count, m.read_bytes), (0, 0, 0));
    }

    #[test]
    fn unknown_request_type_is_unsupported() {
        let disk = TempDisk::new(4);
        let mut block = disk.block();
        let mem = memory();
        write_header(&mem, 99, 0);
        let parts = [hdr(), (DATA, 512, true), status()];
        assert_eq!(request(&mut block, &mem, &parts), (S_UNSUPP, 1));
        assert_eq!(block.counters().unsupported, 1);
        // Discard not negotiated by the driver.
        let mut rig_block = disk.block();
        let mut rig = Rig::new(&mem, &mut rig_block);
        if let Some(active) = rig_block.active.as_mut() {
            active.acked_features = 0;
        }
        write_header(&mem, VIRTIO_BLK_T_DISCARD, 0);
        write_segment(&mem, DATA, 0, 1, 0);
        rig.push(&[hdr(), (DATA, 16, false), status()]);
        rig_block.queue_notified();
        assert_eq!(rig.used(), vec![(0, 1)]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_UNSUPP);
        assert_eq!(rig_block.counters().unsupported, 1);
    }

    #[test]
    fn malformed_chains_never_reach_the_disk() {
        let disk = TempDisk::new(16);
        let mut block = disk.block();
        let mem = memory();
        let before = disk.contents();
        mem.write_slice(&[0xcc; 512], GuestAddress(DATA)).unwrap();

        // No writable byte at all: nowhere to put a status, returned with length 0.
        write_header(&mem, VIRTIO_BLK_T_OUT, 0);
        let (st, used) = request(&mut block, &mem, &[hdr(), (DATA, 512, false)]);
        assert_eq!((st, used), (0xff, 0));
        // Status in a read-only descriptor: same.
        let parts = [hdr(), (DATA, 512, false), (STATUS, 1, false)];
        assert_eq!(request(&mut block, &mem, &parts), (0xff, 0));
        // Header in a write-only descriptor: unreadable header, IOERR.
        let parts = [(HDR, 16, true), status()];
        assert_eq!(request(&mut block, &mem, &parts), (S_IOERR, 1));
        // Short header.
        let parts = [(HDR, 8, false), status()];
        assert_eq!(request(&mut block, &mem, &parts), (S_IOERR, 1));
        // A readable data descriptor outside guest memory: IOERR, nothing written.
        let parts = [hdr(), (1 << 40, 512, false), status()];
        assert_eq!(request(&mut block, &mem, &parts), (S_IOERR, 1));
        // A writable one outside memory: the writable part is unusable, length 0.
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        let parts = [hdr(), (MEM_SIZE as u64 - 256, 512, true), status()];
        assert_eq!(request(&mut block, &mem, &parts), (0xff, 0));
        // Address + length wrapping around.
        let parts = [hdr(), (u64::MAX - 100, 512, true), status()];
        assert_eq!(request(&mut block, &mem, &parts), (0xff, 0));
        assert_eq!(disk.contents(), before);
        let m = block.counters();
        assert_eq!((m.bad_chains, m.io_errors), (4, 3));
    }

    #[test]
    fn looping_and_dangling_chains_are_dropped() {
        let disk = TempDisk::new(16);
        let mut block = disk.block();
        let mem = memory();
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        let mut rig = Rig::new(&mem, &mut block);
        let (n, w) = (VRING_DESC_F_NEXT, VRING_DESC_F_WRITE);
        // 0 -> 1 -> 0 -> ...
        rig.push_raw(&[raw(HDR, 16, n, 1), raw(STATUS, 1, n | w, 0)]);
        // 2 -> 3 -> index past the queue.
        rig.push_raw(&[raw(HDR, 16, n, 3), raw(STATUS, 1, n | w, 999)]);
        // A well-formed request after them is still served.
        rig.push(&[hdr(), (DATA, 512, true), status()]);
        block.queue_notified();
        assert_eq!(rig.used(), vec![(0, 0), (2, 0), (4, 513)]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_OK);
        assert_eq!(
            (block.counters().bad_chains, block.counters().read_count),
            (2, 1)
        );
    }

    #[test]
    fn too_many_segments_through_an_indirect_table() {
        let disk = TempDisk::new(16);
        let mut block = disk.block();
        let mem = memory();
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        let table = 0x38_0000u64;
        let count = MAX_DESCRIPTORS as u16 + 1;
        for i in 0..count {
            let desc = match i {
                0 => raw(HDR, 16, VRING_DESC_F_NEXT, 1),
                _ if i + 1 == count => raw(STATUS, 1, VRING_DESC_F_WRITE, 0),
                _ => raw(DATA, 0, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, i + 1),
            };
            mem.write_obj(desc, GuestAddress(table + u64::from(i) * 16))
                .unwrap();
        }
        let mut rig = Rig::new(&mem, &mut block);
        let indirect = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
        rig.push_raw(&[raw(table, u32::from(count) * 16, indirect, 0)]);
        block.queue_notified();
        assert_eq!(rig.used(), vec![(0, 1)]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_IOERR);
    }

    #[test]
    fn inactive_device_ignores_kicks_and_reset_stops_it() {
        let disk = TempDisk::new(4);
        let mut block = disk.block();
        block.queue_evts[0].write(1).unwrap();
        block.queue_notified(); // not activated: nothing to do, no panic
        let mem = memory();
        let mut rig = Rig::new(&mem, &mut block);
        block.reset();
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        rig.push(&[hdr(), (DATA, 512, true), status()]);
        block.queue_notified();
        assert!(rig.used().is_empty());
        let err = block
            .activate(Activation {
                mem: mem.clone(),
                queues: vec![],
                interrupt: Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
                acked_features: 0,
            })
            .unwrap_err();
        assert!(matches!(err, ActivateError::QueueCount { got: 0, want: 1 }));
    }

    #[test]
    fn rate_limiter_defers_and_resumes_on_its_timer() {
        let disk = TempDisk::new(64);
        let mut block = Block::new(BlockConfig {
            rate_limiter: RateLimiterConfig {
                bandwidth: Some(TokenBucketConfig {
                    size: 4096,
                    one_time_burst: 0,
                    refill_time_ms: 100,
                }),
                ops: None,
            },
            ..disk.config()
        })
        .unwrap();
        let mem = memory();
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        let mut rig = Rig::new(&mem, &mut block);
        rig.push(&[hdr(), (DATA, 4096, true), status()]);
        rig.push(&[hdr(), (DATA + 4096, 4096, true), (STATUS + 1, 1, true)]);
        block.queue_notified();
        assert_eq!(rig.used(), vec![(0, 4097)], "the second request waits");
        assert!(block.limiter.is_blocked());
        assert_eq!(block.counters().rate_limited, 1);
        // Kicks while blocked change nothing.
        block.queue_notified();
        assert_eq!(rig.used().len(), 1);

        let start = Instant::now();
        let mut fds = [libc::pollfd {
            fd: block.limiter.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, length 1.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 2000) };
        assert_eq!(ready, 1, "the limiter's timer fires");
        assert!(start.elapsed() < Duration::from_secs(1));
        block.limiter_ready();
        assert_eq!(rig.used(), vec![(0, 4097), (3, 4097)]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS + 1)).unwrap(), S_OK);
        let mut second = [0u8; 4096];
        mem.read_slice(&mut second, GuestAddress(DATA + 4096))
            .unwrap();
        assert_eq!(&second[..], &disk.contents()[..4096]);
    }

    /// A deferred request is held by a limiter with a minute-long refill.
    fn blocked_block<'m>(disk: &TempDisk, mem: &'m GuestMemory) -> (Block, Rig<'m>) {
        let mut block = Block::new(BlockConfig {
            rate_limiter: RateLimiterConfig {
                bandwidth: None,
                ops: Some(TokenBucketConfig {
                    size: 1,
                    one_time_burst: 0,
                    refill_time_ms: 60_000,
                }),
            },
            ..disk.config()
        })
        .unwrap();
        write_header(mem, VIRTIO_BLK_T_IN, 0);
        let mut rig = Rig::new(mem, &mut block);
        rig.push(&[hdr(), (DATA, 512, true), status()]);
        rig.push(&[hdr(), (DATA + 512, 512, true), (STATUS + 1, 1, true)]);
        block.queue_notified();
        assert_eq!(rig.used(), vec![(0, 513)]);
        assert!(block.limiter.is_blocked());
        (block, rig)
    }

    fn limiter_fires_within(block: &Block, ms: i32) -> bool {
        let mut fds = [libc::pollfd {
            fd: block.limiter.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, length 1.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) == 1 }
    }

    #[test]
    fn lifting_the_rate_limit_resumes_a_deferred_request() {
        let disk = TempDisk::new(16);
        let mem = memory();
        let (mut block, rig) = blocked_block(&disk, &mem);
        let fd = block.limiter.as_raw_fd();

        let bad = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 0,
                one_time_burst: 0,
                refill_time_ms: 10,
            }),
            ops: None,
        };
        let err = block.set_rate_limiter(bad).unwrap_err();
        assert!(
            err.to_string().contains(&*disk.path.to_string_lossy()),
            "{err}"
        );
        assert!(block.rate_limiter_config().ops.is_some(), "unchanged");
        assert!(!limiter_fires_within(&block, 20), "still waiting a minute");

        block
            .set_rate_limiter(RateLimiterConfig::default())
            .unwrap();
        assert_eq!(block.rate_limiter_config(), RateLimiterConfig::default());
        assert_eq!(block.limiter.as_raw_fd(), fd, "the registered fd stays");
        // The event loop sees the timer at once and the device serves what waited.
        assert!(limiter_fires_within(&block, 1000));
        block.limiter_ready();
        assert_eq!(rig.used(), vec![(0, 513), (3, 513)]);
        assert_eq!(block.counters().rate_limited, 1);
        assert_eq!(block.counters().read_count, 2);
    }

    #[test]
    fn swapping_to_a_bigger_file_resizes_and_tells_the_driver() {
        let old = TempDisk::new(16);
        let new = TempDisk::filled(64, 0xa5);
        let mut block = old.block();
        let features = block.avail_features();
        let discard = block.discard_supported();
        let mem = memory();
        let _rig = Rig::new(&mem, &mut block);
        let interrupt = block.active.as_ref().unwrap().interrupt.clone();

        block.set_backing_file(&new.path).unwrap();

        assert_eq!(block.capacity_sectors(), 64);
        assert_eq!(block.path(), new.path.as_path());
        let mut cap = [0u8; 8];
        block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 64);
        assert_eq!(interrupt.status(), INTERRUPT_CONFIG_CHANGE);
        assert_eq!(interrupt.config_generation(), 1);
        assert_eq!(block.avail_features(), features, "negotiated features stay");
        assert_eq!(block.discard_supported(), discard);
        // Sector 40 did not exist before; reads and writes go to the new file.
        assert!(read_sectors(&mut block, &mem, 40, 512)
            .iter()
            .all(|&b| b == 0xa5));
        mem.write_slice(&[0x3c; 512], GuestAddress(DATA)).unwrap();
        write_header(&mem, VIRTIO_BLK_T_OUT, 1);
        let parts = [hdr(), (DATA, 512, false), status()];
        assert_eq!(request(&mut block, &mem, &parts), (S_OK, 1));
        assert!(new.contents()[512..1024].iter().all(|&b| b == 0x3c));
        assert!(old.contents()[512..1024].iter().all(|&b| b == 1));
    }

    #[test]
    fn a_failed_swap_keeps_the_old_file() {
        let disk = TempDisk::new(16);
        let mut block = disk.block();
        let mem = memory();
        let _rig = Rig::new(&mem, &mut block);
        let interrupt = block.active.as_ref().unwrap().interrupt.clone();

        let missing = disk.path.with_extension("missing");
        let err = block.set_backing_file(&missing).unwrap_err();
        assert!(matches!(err, BlockError::Open { .. }), "{err}");
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );
        let err = block.set_backing_file(Path::new("/dev/null")).unwrap_err();
        assert!(matches!(err, BlockError::NotADisk { .. }), "{err}");

        assert_eq!((interrupt.status(), interrupt.config_generation()), (0, 0));
        assert_eq!(block.capacity_sectors(), 16);
        assert_eq!(block.path(), disk.path.as_path());
        assert!(read_sectors(&mut block, &mem, 9, 512)
            .iter()
            .all(|&b| b == 9));
    }

    #[test]
    fn swapping_an_inactive_read_only_disk_keeps_it_read_only() {
        let old = TempDisk::new(16);
        let new = TempDisk::filled(8, 0x11);
        let mut block = Block::new(BlockConfig {
            read_only: true,
            ..old.config()
        })
        .unwrap();
        // Not activated: only the config space changes, for the driver to read at probe.
        block.set_backing_file(&new.path).unwrap();
        assert_eq!(block.capacity_sectors(), 8);
        assert_ne!(block.avail_features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert!(!block.discard_supported());
        let mem = memory();
        mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
        write_header(&mem, VIRTIO_BLK_T_OUT, 0);
        let parts = [hdr(), (DATA, 512, false), status()];
        assert_eq!(request(&mut block, &mem, &parts), (S_IOERR, 1));
        assert!(new.contents().iter().all(|&b| b == 0x11));
        // The file was opened read-only: the kernel refuses writes even past our check.
        assert!(block.disk.file.write_all_at(&[0], 0).is_err());
    }

    #[test]
    fn discard_after_a_swap_needs_the_offer_and_the_new_file() {
        let old = TempDisk::new(16);
        let new = TempDisk::new(16);
        let mut block = old.block();
        let offered = block.avail_features() & (1 << VIRTIO_BLK_F_DISCARD) != 0;
        let config_before = block.config_space.clone();
        block.set_backing_file(&new.path).unwrap();
        // Same-sized file: the config space is byte for byte the same, discard limits included.
        assert_eq!(block.config_space, config_before);
        assert_eq!(block.discard_supported(), offered);
        // A file that cannot punch holes under a driver that took DISCARD: UNSUPP, not IOERR.
        block.disk.punch_hole = false;
        let mem = memory();
        let mut rig = Rig::new(&mem, &mut block);
        if let Some(active) = block.active.as_mut() {
            active.acked_features |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        write_header(&mem, VIRTIO_BLK_T_DISCARD, 0);
        write_segment(&mem, DATA, 0, 1, 0);
        rig.push(&[hdr(), (DATA, 16, false), status()]);
        block.queue_notified();
        assert_eq!(rig.used(), vec![(0, 1)]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), S_UNSUPP);
    }

    #[test]
    fn fuzz_replay() {
        for input in fuzzing::seeded_inputs(0xb10c, 3000, 512) {
            fuzz_one(&input);
        }
    }
}
