//! Virtio transports: how a driver finds a device, negotiates with it, hands it queues and hears
//! from it.
//!
//! A transport owns everything bus-specific about a device (its registers, the status state
//! machine, the queues' configuration until DRIVER_OK, and how interrupts reach the guest) and
//! talks to the device only through [`VirtioDevice`](super::VirtioDevice) and the
//! [`VirtioInterrupt`](super::VirtioInterrupt) it puts into the device's
//! [`Activation`](super::Activation). Today there is one, [`mmio`]; a `pci` module (virtio-pci
//! with MSI-X, one vector per queue) sits beside it.

pub mod mmio;
