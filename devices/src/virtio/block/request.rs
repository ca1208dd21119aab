//! From a descriptor chain to a served request: the chain is checked (it ends, has a
//! device-writable status byte, stays within guest memory and `seg_max`), the header parsed, the
//! rate limiter asked, the request type checked against what was negotiated and run on the
//! [`Disk`]; then the status byte is written.

use std::io::{Read, Write};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::{DescriptorChain, Reader, Writer};

use super::disk::Disk;
use super::{BlockMetrics, MAX_DISCARD_SEG, QUEUE_SIZE, S_IOERR, S_OK, S_UNSUPP};
use crate::rate_limiter::RateLimiter;
use crate::virtio::metrics::bump;
use crate::virtio::{GuestMemory, Served};

/// Descriptors per chain we accept: a full queue (`seg_max` data segments plus the header and
/// status descriptors). Longer chains (possible through indirect tables) get IOERR.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// Size of one `virtio_blk_discard_write_zeroes` segment.
const DISCARD_SEGMENT_SIZE: usize = 16;
/// Size of `virtio_blk_outhdr`.
pub(super) const HEADER_SIZE: usize = 16;

/// Serves one chain: finds its status byte, runs the request and reports the used length (the
/// bytes written to the guest, status byte included).
pub(super) fn handle_chain(
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
                discard_or_zero(disk, request_type, reader)
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

/// DISCARD and WRITE_ZEROES: an array of `virtio_blk_discard_write_zeroes` segments, each run on
/// the disk in turn; the first failure ends the request.
fn discard_or_zero(disk: &mut Disk, request_type: u32, reader: &mut Reader) -> u8 {
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
            disk.discard(sector, num_sectors, flags)
        } else {
            disk.write_zeroes(sector, num_sectors, flags)
        };
        if code != S_OK {
            return code;
        }
    }
    S_OK
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};

    use super::super::fixtures::*;
    use super::super::*;
    use super::*;

    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::{Bytes, GuestAddress};

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
}
