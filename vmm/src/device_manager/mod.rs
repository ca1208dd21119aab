//! Where devices sit: the legacy port-I/O devices ([`legacy`]) and virtio devices on the MMIO
//! transport ([`mmio`]); a `pci` manager for full VMs goes beside them.

pub mod legacy;
pub mod mmio;

pub use mmio::{
    DeviceManager, DeviceManagerError, Placement, SharedVirtioDevice, Subscriber, VirtioDevices,
};
