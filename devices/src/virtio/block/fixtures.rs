//! Test fixtures shared by the block device's tests: a disk image in the temp dir, guest
//! memory, and the driver's side of the request queue with the device activated on it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::request::HEADER_SIZE;
use super::{Block, BlockConfig, CacheType, QUEUE_SIZE, S_OK};
use crate::rate_limiter::RateLimiterConfig;
use crate::virtio::transport::mmio::MmioInterrupt;
use crate::virtio::{Activation, GuestMemory, VirtioDevice};

pub(super) const HDR: u64 = 0x10_0000;
pub(super) const DATA: u64 = 0x20_0000;
pub(super) const STATUS: u64 = 0x30_0000;
pub(super) const MEM_SIZE: usize = 0x40_0000;

/// A disk image in the temp dir whose sector `i` is filled with the byte `i`; removed on drop.
pub(super) struct TempDisk {
    pub(super) path: PathBuf,
}

impl TempDisk {
    pub(super) fn new(sectors: u64) -> Self {
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
    pub(super) fn filled(sectors: u64, byte: u8) -> Self {
        let disk = Self::new(0);
        std::fs::write(&disk.path, vec![byte; (sectors * 512) as usize]).unwrap();
        disk
    }

    pub(super) fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    pub(super) fn config(&self) -> BlockConfig {
        BlockConfig {
            path: self.path.clone(),
            read_only: false,
            cache_type: CacheType::Writeback,
            serial: "tessera-disk-0".into(),
            rate_limiter: RateLimiterConfig::default(),
        }
    }

    pub(super) fn block(&self) -> Block {
        Block::new(self.config()).unwrap()
    }
}

impl Drop for TempDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub(super) fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// One descriptor: address, length, device-writable.
pub(super) type Part = (u64, u32, bool);

pub(super) fn hdr() -> Part {
    (HDR, HEADER_SIZE as u32, false)
}

pub(super) fn status() -> Part {
    (STATUS, 1, true)
}

pub(super) fn write_header(mem: &GuestMemory, request_type: u32, sector: u64) {
    mem.write_obj(request_type.to_le(), GuestAddress(HDR))
        .unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    mem.write_obj(sector.to_le(), GuestAddress(HDR + 8))
        .unwrap();
}

pub(super) fn write_segment(mem: &GuestMemory, at: u64, sector: u64, num_sectors: u32, flags: u32) {
    mem.write_obj(sector.to_le(), GuestAddress(at)).unwrap();
    mem.write_obj(num_sectors.to_le(), GuestAddress(at + 8))
        .unwrap();
    mem.write_obj(flags.to_le(), GuestAddress(at + 12)).unwrap();
}

pub(super) fn raw(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// The driver side of the queue, with the device activated on it. The interrupt is the MMIO
/// transport's, so tests read what a driver would see.
pub(super) struct Rig<'a> {
    pub(super) vq: MockSplitQueue<'a, GuestMemory>,
    pub(super) next_desc: u16,
    pub(super) interrupt: Arc<MmioInterrupt>,
}

impl<'a> Rig<'a> {
    pub(super) fn new(mem: &'a GuestMemory, block: &mut Block) -> Self {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let queue: Queue = vq.create_queue().unwrap();
        let interrupt = Arc::new(MmioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ));
        block
            .activate(Activation {
                mem: mem.clone(),
                queues: vec![queue],
                interrupt: interrupt.clone(),
                acked_features: block.avail_features(),
            })
            .unwrap();
        // Status bytes start as a value no request answers with.
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        Self {
            vq,
            next_desc: 0,
            interrupt,
        }
    }

    /// Offers a chain of `parts` linked in order.
    pub(super) fn push(&mut self, parts: &[Part]) {
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
    pub(super) fn push_raw(&mut self, descs: &[RawDescriptor]) {
        self.vq.add_desc_chains(descs, self.next_desc).unwrap();
        self.next_desc += descs.len() as u16;
    }

    /// The used ring: (head index, used length).
    pub(super) fn used(&self) -> Vec<(u32, u32)> {
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
pub(super) fn request(block: &mut Block, mem: &GuestMemory, parts: &[Part]) -> (u8, u32) {
    let mut rig = Rig::new(mem, block);
    rig.push(parts);
    block.queue_notified();
    let used = rig.used();
    assert_eq!(used.len(), 1, "exactly one chain is returned");
    (mem.read_obj(GuestAddress(STATUS)).unwrap(), used[0].1)
}

pub(super) fn read_sectors(block: &mut Block, mem: &GuestMemory, sector: u64, len: u32) -> Vec<u8> {
    write_header(mem, VIRTIO_BLK_T_IN, sector);
    let (st, used) = request(block, mem, &[hdr(), (DATA, len, true), status()]);
    assert_eq!((st, used), (S_OK, len + 1));
    let mut buf = vec![0u8; len as usize];
    mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    buf
}

pub(super) fn config_u32(block: &Block, field: usize) -> u32 {
    let mut buf = [0u8; 4];
    block.read_config(field as u64, &mut buf);
    u32::from_le_bytes(buf)
}
