//! The backing file: opening and probing it, and the I/O requests run on it (read, write, flush,
//! GET_ID, discard, write-zeroes), each answering with a virtio-blk status.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP};
use virtio_queue::{Reader, Writer};

use super::{
    BlockConfig, BlockError, CacheType, MAX_DISCARD_SECTORS, MAX_WRITE_ZEROES_SECTORS, SECTOR_SIZE,
    S_IOERR, S_OK, S_UNSUPP,
};

/// The bounce buffer between guest memory and the backing file.
pub const BOUNCE_SIZE: usize = 128 << 10;
pub(super) const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// The backing file and what requests may do with it.
pub(super) struct Disk {
    pub(super) file: File,
    pub(super) path: PathBuf,
    /// Sectors the guest may address.
    pub(super) capacity: u64,
    pub(super) read_only: bool,
    pub(super) cache_type: CacheType,
    /// GET_ID answer, NUL-padded.
    pub(super) id: [u8; ID_BYTES],
    /// DISCARD and WRITE_ZEROES may be served: they were offered and the current file takes
    /// FALLOC_FL_PUNCH_HOLE (probed at open).
    pub(super) punch_hole: bool,
    pub(super) bounce: Vec<u8>,
}

/// An opened backing file and what probing it found.
pub(super) struct Backing {
    pub(super) file: File,
    /// Sectors the guest may address.
    pub(super) capacity: u64,
    /// The file takes FALLOC_FL_PUNCH_HOLE.
    pub(super) punch_hole: bool,
}

impl Backing {
    /// Opens `path` (O_RDONLY when `read_only`, else O_RDWR) and probes it. O_NONBLOCK keeps a
    /// FIFO given by mistake from blocking the open (it is refused as not a disk); it changes
    /// nothing for files and block devices. O_NOCTTY keeps a tty from becoming ours.
    pub(super) fn open(path: &Path, read_only: bool) -> Result<Backing, BlockError> {
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
    pub(super) fn probe(
        mut file: File,
        path: &Path,
        read_only: bool,
    ) -> Result<Backing, BlockError> {
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

impl Disk {
    /// The disk on an opened, probed backing file at `path`, as `config` asks (read-only, cache
    /// type, serial).
    pub(super) fn new(backing: Backing, path: PathBuf, config: &BlockConfig) -> Disk {
        let mut id = [0u8; ID_BYTES];
        let serial = config.serial.as_bytes();
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial[..n]);
        Disk {
            file: backing.file,
            path,
            capacity: backing.capacity,
            read_only: config.read_only,
            cache_type: config.cache_type,
            id,
            punch_hole: backing.punch_hole,
            bounce: vec![0; BOUNCE_SIZE],
        }
    }

    /// The file offset of `len` bytes at `sector`, if they are whole sectors inside the disk.
    fn byte_range(&self, sector: u64, len: u64) -> Option<u64> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (end <= self.capacity * SECTOR_SIZE).then_some(offset)
    }

    pub(super) fn read(&mut self, sector: u64, writer: &mut Writer) -> u8 {
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

    pub(super) fn write(&mut self, sector: u64, reader: &mut Reader) -> u8 {
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

    pub(super) fn flush(&mut self) -> u8 {
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

    pub(super) fn get_id(&mut self, writer: &mut Writer) -> u8 {
        let n = writer.available_bytes().min(ID_BYTES);
        match writer.write_all(&self.id[..n]) {
            Ok(()) => S_OK,
            Err(_) => S_IOERR,
        }
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

    pub(super) fn discard(&mut self, sector: u64, num_sectors: u32, flags: u32) -> u8 {
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

    pub(super) fn write_zeroes(&mut self, sector: u64, num_sectors: u32, flags: u32) -> u8 {
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

/// An anonymous in-memory file of `size` bytes.
pub(super) fn memfd(size: u64) -> io::Result<File> {
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
    use std::mem::offset_of;

    use virtio_bindings::virtio_blk::{
        virtio_blk_config, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
        VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
        VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
    };

    use super::super::fixtures::*;
    use super::super::*;
    use super::*;
    use crate::virtio::VirtioDevice;
    use std::os::unix::fs::MetadataExt;

    use vm_memory::{Bytes, GuestAddress};

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
}
