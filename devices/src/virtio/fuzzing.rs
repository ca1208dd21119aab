//! Turns arbitrary bytes into a guest: memory holding descriptor tables, avail rings and buffers
//! the bytes decide. The devices' `fuzz_one` entry points build on it; `fuzz/` runs them under
//! libFuzzer and the unit tests replay them over seeded pseudo-random inputs, so CI exercises the
//! same code without a nightly toolchain.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::GuestMemory;

/// Size of the fuzzed guest's memory.
pub const MEM_SIZE: u64 = 1 << 20;
/// Where fuzz bytes land as buffer contents (headers, packets, sectors).
pub const DATA_START: u64 = 0x8_0000;
/// Queue structures: queue `i` uses `QUEUE_AREA + i * 0x4000`.
const QUEUE_AREA: u64 = 0x1_0000;

/// A cursor over the fuzz input; reads past the end yield zeros.
pub struct FuzzBytes<'a>(&'a [u8]);

impl<'a> FuzzBytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }

    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.0.len())
    }
}

/// A fresh 1 MiB guest.
pub fn guest_memory() -> GuestMemory {
    // 1 MiB of anonymous memory at 0 cannot fail to map short of the host being out of memory.
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("mapping 1 MiB of fuzz guest memory")
}

/// Builds ready queue `index` of `size` entries whose descriptors, avail ring and used-ring
/// flags come from `bytes`. Descriptor addresses usually point into the data area but may point
/// anywhere, lengths and flags are arbitrary, so chains can loop, overflow or leave memory.
pub fn fuzzed_queue(mem: &GuestMemory, bytes: &mut FuzzBytes, index: u64, size: u16) -> Queue {
    let base = QUEUE_AREA + index * 0x4000;
    let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
    for i in 0..u64::from(size) {
        let addr = match bytes.u8() % 4 {
            0 => bytes.u64(),
            _ => DATA_START + u64::from(bytes.u16()) * 8,
        };
        let entry = desc + i * 16;
        let _ = mem.write_obj(addr, GuestAddress(entry));
        let _ = mem.write_obj(bytes.u32() % 0x2_0000, GuestAddress(entry + 8));
        let _ = mem.write_obj(bytes.u16() & 0x7, GuestAddress(entry + 12));
        let _ = mem.write_obj(bytes.u16() % (size + 2), GuestAddress(entry + 14));
    }
    let avail_count = bytes.u8() % 8;
    let _ = mem.write_obj(0u16, GuestAddress(avail));
    let _ = mem.write_obj(u16::from(avail_count), GuestAddress(avail + 2));
    for i in 0..u64::from(avail_count) {
        let _ = mem.write_obj(bytes.u16() % (size + 1), GuestAddress(avail + 4 + i * 2));
    }
    let mut queue = Queue::new(size).expect("fuzz queue size is a power of two");
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(used as u32), Some(0));
    queue.set_ready(true);
    queue
}

/// Writes the rest of the input into the data area.
pub fn fill_data(mem: &GuestMemory, bytes: &mut FuzzBytes) {
    let rest = bytes.rest();
    let n = rest.len().min((MEM_SIZE - DATA_START) as usize);
    let _ = mem.write_slice(&rest[..n], GuestAddress(DATA_START));
}

/// Deterministic pseudo-random inputs for the replay tests.
pub fn seeded_inputs(seed: u64, count: usize, len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state = seed | 1;
    (0..count).map(move |_| {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    })
}
