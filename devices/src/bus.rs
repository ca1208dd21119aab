//! Address-range dispatch for PIO and MMIO exits.
//!
//! A vCPU thread that exits on a port or MMIO access asks the bus for the device covering the
//! address and calls it with the offset into that device's range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// What a guest write asks of the vCPU that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteEffect {
    /// Go on running the guest.
    Continue,
    /// Stop running the guest: the write reset the machine (the i8042's reset line). The
    /// vCPU ends its run loop with a reset instead of executing what follows the write.
    Reset,
}

/// A device reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
    /// Like [`BusDevice::write`], and says whether the vCPU may go on running the guest. The
    /// bus calls this one; a device whose writes can stop the machine overrides it.
    fn write_effect(&mut self, offset: u64, data: &[u8]) -> WriteEffect {
        self.write(offset, data);
        WriteEffect::Continue
    }
}

/// Errors from building a bus.
#[derive(Debug, PartialEq, Eq, thiserror::Error, displaydoc::Display)]
pub enum BusError {
    /// range {base:#x}+{len:#x} overlaps a device already on the bus
    Overlap { base: u64, len: u64 },
    /// range at {base:#x} has zero length or wraps around the address space
    BadRange { base: u64 },
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Non-overlapping address ranges, each served by one device.
#[derive(Default, Clone)]
pub struct Bus {
    /// Keyed by base address; the value holds the range length and the device.
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` on `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base })?;
        let overlaps_previous = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(&b, &(l, _))| b + l > base);
        if overlaps_previous {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` inside its range.
    fn resolve(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (&base, (len, device)) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < *len).then_some((device, offset))
    }

    /// Dispatches a guest read; returns false when no device covers `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a guest write and says what it asks of the vCPU; `None` when no device
    /// covers `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<WriteEffect> {
        let (device, offset) = self.resolve(addr)?;
        Some(lock(device).write_effect(offset, data))
    }
}

/// Locks a device even if another vCPU thread panicked while holding it: device state is plain
/// data, and a poisoned lock must not take the whole VMM down with it.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access and answers reads with the offset it was given.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_with_offset_into_range() {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let mut bus = Bus::new();
        bus.insert(probe.clone(), 0x3f8, 8).unwrap();

        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert_eq!(bus.write(0x3ff, &[0xab]), Some(WriteEffect::Continue));
        assert_eq!(probe.lock().unwrap().last_write, Some((7, vec![0xab])));
    }

    #[test]
    fn addresses_outside_every_range_are_not_dispatched() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x3f8, 8)
            .unwrap();
        let mut data = [0xffu8; 1];
        assert!(!bus.read(0x3f7, &mut data));
        assert!(!bus.read(0x400, &mut data));
        assert_eq!(bus.write(0, &[1]), None);
        assert_eq!(data, [0xff]);
    }

    /// Asks for a reset on every write.
    struct ResetLine;

    impl BusDevice for ResetLine {
        fn read(&mut self, _offset: u64, _data: &mut [u8]) {}
        fn write(&mut self, _offset: u64, _data: &[u8]) {}
        fn write_effect(&mut self, _offset: u64, _data: &[u8]) -> WriteEffect {
            WriteEffect::Reset
        }
    }

    #[test]
    fn a_write_that_resets_the_machine_says_so() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(ResetLine)), 0x64, 1)
            .unwrap();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x60, 1)
            .unwrap();
        assert_eq!(bus.write(0x64, &[0xfe]), Some(WriteEffect::Reset));
        assert_eq!(bus.write(0x60, &[0xfe]), Some(WriteEffect::Continue));
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Probe::default()));
        bus.insert(dev(), 0x60, 5).unwrap();
        assert_eq!(
            bus.insert(dev(), 0x64, 1),
            Err(BusError::Overlap { base: 0x64, len: 1 })
        );
        assert_eq!(
            bus.insert(dev(), 0x5f, 2),
            Err(BusError::Overlap { base: 0x5f, len: 2 })
        );
        assert_eq!(
            bus.insert(dev(), 0x70, 0),
            Err(BusError::BadRange { base: 0x70 })
        );
        assert_eq!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::BadRange { base: u64::MAX })
        );
        // Adjacent ranges are fine.
        bus.insert(dev(), 0x65, 1).unwrap();
        bus.insert(dev(), 0x5f, 1).unwrap();
    }
}
