//! Guest memory: anonymous mappings laid out around the 32-bit MMIO gap.
//!
//! Regions are built from a plain list of ranges, so backing them with a memfd (snapshots,
//! vhost-user) or `guest_memfd` (SEV-SNP/TDX private memory) later only changes how each range is
//! mapped, not the layout.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

pub use devices::GuestMemory;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum MemoryError {
    /// cannot map {mib} MiB of guest memory: {source}
    Map {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges for `size` bytes of guest memory: below the MMIO gap, then from 4 GiB up.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), (size - low) as usize));
    }
    ranges
}

/// Maps `mib` MiB of anonymous, lazily populated guest memory.
pub fn create(mib: u64) -> Result<GuestMemory, MemoryError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(mib << 20))
        .map_err(|source| MemoryError::Map { mib, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_guests_get_one_low_region() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
    }

    #[test]
    fn large_guests_skip_the_mmio_gap() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(
            ranges,
            vec![
                (GuestAddress(0), MMIO_GAP_START as usize),
                (GuestAddress(MMIO_GAP_END), (1 << 30) as usize)
            ]
        );
        let total: usize = ranges.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
    }

    #[test]
    fn created_memory_has_the_requested_size() {
        let mem = create(16).unwrap();
        let total: u64 = mem.iter().map(|r| r.len()).sum();
        assert_eq!(total, 16 << 20);
    }
}
