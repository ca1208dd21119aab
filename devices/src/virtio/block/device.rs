//! The virtio-blk device itself: what the transport sees ([`VirtioDevice`]: features, config
//! space, activation), how it runs on the event loop (the queue and the rate limiter's timer),
//! and what the VMM can change while it runs (backing file, rate limits).

use std::mem::{offset_of, size_of};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::disk::{memfd, Backing, Disk};
use super::request::handle_chain;
use super::{
    BlockConfig, BlockError, BlockMetrics, CacheType, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG,
    MAX_WRITE_ZEROES_SECTORS, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX,
};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::virtio::{
    drain_queue, fuzzing, read_config_bytes, ActivateError, Activation, GuestMemory, InterruptKind,
    VirtioDevice, VirtioInterrupt, TYPE_BLOCK,
};

const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
/// The one queue: requests.
const REQUEST_QUEUE: u16 = 0;

/// The device's state while the driver has it running.
pub(super) struct Active {
    pub(super) mem: GuestMemory,
    pub(super) queue: Queue,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    pub(super) acked_features: u64,
}

/// A virtio-blk device.
pub struct Block {
    pub(super) disk: Disk,
    /// Fixed at creation: the driver negotiates them once and cannot be told they changed.
    pub(super) avail_features: u64,
    pub(super) config_space: Vec<u8>,
    pub(super) queue_evts: [EventFd; 1],
    pub(super) limiter: RateLimiter,
    pub(super) active: Option<Active>,
    pub(super) metrics: BlockMetrics,
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
            disk: Disk::new(backing, path, config),
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
            active.interrupt.trigger(InterruptKind::Config);
        }
        Ok(())
    }

    /// The driver kicked the queue.
    pub(super) fn queue_notified(&mut self) {
        // Reading only clears the eventfd; EAGAIN (nothing pending) is fine.
        let _ = self.queue_evts[0].read();
        self.process_queue();
    }

    /// The rate limiter's timer fired: deferred requests may go now.
    pub(super) fn limiter_ready(&mut self) {
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
            REQUEST_QUEUE,
            mem,
            &"virtio-blk",
            &**interrupt,
            &self.queue_evts[0],
            |chain| handle_chain(disk, limiter, metrics, mem, chain, *acked_features),
        );
    }
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
    let acked_features = block.avail_features();
    let activation = Activation {
        mem,
        queues: vec![queue],
        interrupt: Arc::new(crate::virtio::interrupt::RecordingInterrupt::default()),
        acked_features,
    };
    if block.activate(activation).is_ok() {
        block.queue_notified();
    }
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use virtio_bindings::virtio_blk::{
        virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
    };

    use super::super::fixtures::*;
    use super::super::*;
    use super::*;
    use crate::virtio::{ActivateError, Activation, VirtioDevice, TYPE_BLOCK};
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    use vm_memory::{Bytes, GuestAddress};

    use crate::rate_limiter::TokenBucketConfig;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::mock::MockSplitQueue;

    use crate::virtio::interrupt::RecordingInterrupt;
    use crate::virtio::transport::mmio::INTERRUPT_CONFIG_CHANGE;

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
                interrupt: Arc::new(RecordingInterrupt::default()),
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
        let rig = Rig::new(&mem, &mut block);
        let interrupt = rig.interrupt.clone();

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
        let rig = Rig::new(&mem, &mut block);
        let interrupt = rig.interrupt.clone();

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

    /// No transport: the device reports a served request as queue 0 and a backing-file swap as
    /// a config change, in virtio terms, to whatever interrupt it was activated with.
    #[test]
    fn tells_its_interrupt_the_queue_index_and_config_changes() {
        let old = TempDisk::new(16);
        let new = TempDisk::new(32);
        let mut block = old.block();
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let irq = Arc::new(RecordingInterrupt::default());
        block
            .activate(Activation {
                mem: mem.clone(),
                queues: vec![vq.create_queue().unwrap()],
                interrupt: irq.clone(),
                acked_features: block.avail_features(),
            })
            .unwrap();
        write_header(&mem, VIRTIO_BLK_T_IN, 3);
        vq.add_desc_chains(
            &[
                raw(HDR, 16, VRING_DESC_F_NEXT, 1),
                raw(DATA, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2),
                raw(STATUS, 1, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        block.queue_notified();
        assert_eq!(block.counters().read_count, 1);
        assert_eq!(irq.take(), vec![InterruptKind::Queue(REQUEST_QUEUE)]);

        block.set_backing_file(&new.path).unwrap();
        assert_eq!(irq.take(), vec![InterruptKind::Config]);
        // Reset: the device lets go of the interrupt; a swap now tells nobody.
        block.reset();
        block.set_backing_file(&old.path).unwrap();
        assert_eq!(irq.take(), vec![]);
        assert_eq!(Arc::strong_count(&irq), 1);
    }

    #[test]
    fn fuzz_replay() {
        for input in fuzzing::seeded_inputs(0xb10c, 3000, 512) {
            fuzz_one(&input);
        }
    }
}
