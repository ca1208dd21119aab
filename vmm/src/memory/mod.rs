//! Guest memory: RAM laid out around the 32-bit MMIO gap, mapped from one of three backends
//! ([`MemoryBackend`]), and registered with the hypervisor as memory slots.
//!
//! The layout is a plain list of ranges ([`ram_ranges`]); a backend only decides how each range
//! is mapped: anonymous memory (today's boot), one memfd mapped shared (snapshots, sharing with
//! another process), or a shared memfd plus a `guest_memfd` per region (private memory for
//! SEV-SNP and TDX; the `guest_memfd`s are made when the slots are registered, since they
//! belong to a VM).

mod backend;

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

pub use self::backend::MemoryBackend;
use crate::hypervisor::{self, MemorySlot, PrivateBacking};
use crate::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Guest memory, as the devices see it too (defined once, in `devices`).
pub use devices::GuestMemory;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum MemoryError {
    /// cannot map {mib} MiB of guest memory: {source}
    Map {
        mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    /// cannot create a {mib} MiB memfd for guest memory: {source}
    Memfd { mib: u64, source: io::Error },
    /// cannot map guest memory: no host address
    NoHostAddress,
    /// cannot set up guest memory slots: {source}
    Slot { source: hypervisor::Error },
    /// the host's KVM has no guest_memfd ({what}: {source}): private guest memory needs KVM with guest_memfd (Linux 6.8 or later) and a confidential VM type
    NoGuestMemfd {
        what: &'static str,
        source: hypervisor::Error,
    },
    /// cannot create a guest_memfd of {size} bytes: {source}
    GuestMemfd {
        size: u64,
        source: hypervisor::Error,
    },
}

/// Guest memory and what backs it.
#[derive(Debug)]
pub struct GuestRam {
    /// One `guest_memfd` per region, in region order ([`MemoryBackend::GuestMemfd`], once the
    /// slots are registered). Declared first so that they (which hold the KVM VM) close
    /// before `memory` is unmapped.
    guest_memfds: Vec<File>,
    pub memory: GuestMemory,
    backend: MemoryBackend,
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

/// Maps `mib` MiB of lazily populated guest memory from `backend`.
pub fn create(mib: u64, backend: MemoryBackend) -> Result<GuestRam, MemoryError> {
    let ranges = ram_ranges(mib << 20);
    let map_err = |source| MemoryError::Map { mib, source };
    let memory = match backend {
        MemoryBackend::Anonymous => GuestMemoryMmap::from_ranges(&ranges).map_err(map_err)?,
        MemoryBackend::Memfd | MemoryBackend::GuestMemfd => {
            let memfd = Arc::new(
                backend::memfd(mib << 20).map_err(|source| MemoryError::Memfd { mib, source })?,
            );
            let mut offset = 0u64;
            let with_files: Vec<_> = ranges
                .iter()
                .map(|&(addr, len)| {
                    let file = FileOffset::from_arc(memfd.clone(), offset);
                    offset += len as u64;
                    (addr, len, Some(file))
                })
                .collect();
            GuestMemoryMmap::from_ranges_with_files(&with_files).map_err(map_err)?
        }
    };
    Ok(GuestRam {
        memory,
        backend,
        guest_memfds: Vec::new(),
    })
}

impl GuestRam {
    pub fn backend(&self) -> MemoryBackend {
        self.backend
    }

    /// The memfd behind every region (at the region's file offset), for the memfd backends.
    pub fn memfd(&self) -> Option<&File> {
        let region = self.memory.iter().next()?;
        region.file_offset().map(|f| f.file())
    }

    /// The `guest_memfd` of each region, once registered with [`MemoryBackend::GuestMemfd`].
    pub fn guest_memfds(&self) -> &[File] {
        &self.guest_memfds
    }

    /// Registers one memory slot per region with `vm`; for [`MemoryBackend::GuestMemfd`]
    /// first creates each region's `guest_memfd` through the VM and backs the slot with it.
    ///
    /// # Safety
    /// `self.memory` must outlive `vm` (or the slots must be removed first), and its mappings
    /// must not be handed to another slot: the guest reaches them for as long as the VM exists.
    pub unsafe fn register_slots(&mut self, vm: &dyn hypervisor::Vm) -> Result<(), MemoryError> {
        if self.backend == MemoryBackend::GuestMemfd && self.guest_memfds.is_empty() {
            for region in self.memory.iter() {
                let guest_memfd = vm
                    .create_guest_memfd(region.len())
                    .map_err(|source| backend::guest_memfd_error(region.len(), source))?;
                self.guest_memfds.push(guest_memfd);
            }
        }
        for (slot, region) in self.memory.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| MemoryError::NoHostAddress)?;
            let private = self
                .guest_memfds
                .get(slot)
                .map(|guest_memfd| PrivateBacking {
                    guest_memfd: guest_memfd.as_fd(),
                    offset: 0,
                });
            let memslot = MemorySlot {
                slot: slot as u32,
                guest_addr: region.start_addr().0,
                size: region.len(),
                host_addr: host as u64,
                private,
            };
            // SAFETY: the range is a live mapping owned by `self.memory`, which the caller keeps
            // for as long as the VM exists; slots do not overlap because regions do not.
            unsafe { vm.set_memory_slot(&memslot) }.map_err(|source| match private {
                Some(_) => backend::private_slot_error(source),
                None => MemoryError::Slot { source },
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
