//! Places virtio-mmio devices: an MMIO window and an IRQ each, KVM ioeventfds for their queue
//! notifications and an irqfd for their interrupt, and the `virtio_mmio.device=` entries that
//! tell the guest kernel where they are.

use std::io;
use std::sync::{Arc, Mutex};

use devices::virtio::block::{Block, BlockError};
use devices::virtio::net::{Net, NetError};
use devices::virtio::rng::{Rng, RngError};
use devices::virtio::vsock::{Vsock, VsockError};
use devices::virtio::{
    GuestMemory, MmioTransport, VirtioDevice, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET,
};
use devices::{Bus, BusError};
use event_manager::MutEventSubscriber;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::hypervisor::{self, NotifyAddress, Vm};
use crate::resources::DeviceSettings;
use crate::x86_64::layout::{VIRTIO_IRQ_FIRST, VIRTIO_IRQ_LAST, VIRTIO_MMIO_START};

/// An event-loop subscriber, as the VMM's `EventManager` holds them.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;
/// A virtio device as the VMM keeps it to shut it down.
pub type SharedVirtioDevice = Arc<Mutex<dyn VirtioDevice>>;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum DeviceManagerError {
    /// too many virtio devices: IRQs {first} to {last} are all taken
    OutOfIrqs { first: u32, last: u32 },
    /// cannot create an eventfd for a virtio device: {0}
    EventFd(io::Error),
    /// cannot register the interrupt (irqfd) of a virtio device on IRQ {irq}: {source}
    Irqfd { irq: u32, source: hypervisor::Error },
    /// cannot register queue {queue} notifications (ioeventfd) at {addr:#x}: {source}
    Ioeventfd {
        queue: usize,
        addr: u64,
        source: hypervisor::Error,
    },
    /// cannot place a virtio device: {0}
    Bus(#[from] BusError),
    /// {0}
    Block(#[from] BlockError),
    /// {0}
    Net(#[from] NetError),
    /// {0}
    Vsock(#[from] VsockError),
    /// {0}
    Rng(#[from] RngError),
}

/// One placed device, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub device_type: u32,
    pub base: u64,
    pub irq: u32,
}

impl Placement {
    /// The kernel command-line entry that makes Linux probe this device.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            MMIO_WINDOW_SIZE >> 10,
            self.base,
            self.irq
        )
    }
}

/// The running virtio devices, as the VMM reaches them after boot: by id for the API's
/// runtime updates, and all of them (with their metrics group name) for metrics and shutdown.
#[derive(Default, Clone)]
pub struct VirtioDevices {
    pub drives: Vec<(String, Arc<Mutex<Block>>)>,
    pub nets: Vec<(String, Arc<Mutex<Net>>)>,
    pub all: Vec<(String, SharedVirtioDevice)>,
}

/// The MMIO bus with the virtio devices on it, and the subscribers the event loop must run.
#[derive(Default)]
pub struct DeviceManager {
    mmio_bus: Bus,
    placements: Vec<Placement>,
    subscribers: Vec<Subscriber>,
    devices: VirtioDevices,
}

impl DeviceManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wires `device` to the VM: window, IRQ, irqfd, one ioeventfd per queue, transport.
    /// `name` is the device's metrics group.
    pub fn add_virtio<D>(
        &mut self,
        vm: &dyn Vm,
        mem: &GuestMemory,
        name: String,
        device: D,
    ) -> Result<Arc<Mutex<D>>, DeviceManagerError>
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let index = self.placements.len() as u32;
        let irq = VIRTIO_IRQ_FIRST + index;
        if irq > VIRTIO_IRQ_LAST {
            return Err(DeviceManagerError::OutOfIrqs {
                first: VIRTIO_IRQ_FIRST,
                last: VIRTIO_IRQ_LAST,
            });
        }
        let base = VIRTIO_MMIO_START + u64::from(index) * MMIO_WINDOW_SIZE;

        let irqfd = EventFd::new(EFD_NONBLOCK).map_err(DeviceManagerError::EventFd)?;
        vm.register_irqfd(&irqfd, irq)
            .map_err(|source| DeviceManagerError::Irqfd { irq, source })?;
        let notify = base + QUEUE_NOTIFY_OFFSET;
        for (queue, evt) in device.queue_events().iter().enumerate() {
            vm.register_notifier(evt, NotifyAddress::Mmio(notify), queue as u32)
                .map_err(|source| DeviceManagerError::Ioeventfd {
                    queue,
                    addr: notify,
                    source,
                })?;
        }

        let device_type = device.device_type();
        let device = Arc::new(Mutex::new(device));
        let transport = MmioTransport::new(mem.clone(), device.clone(), irqfd);
        self.mmio_bus
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW_SIZE)?;
        self.devices.all.push((name, device.clone()));
        self.subscribers.push(device.clone());
        self.placements.push(Placement {
            device_type,
            base,
            irq,
        });
        log::debug!("virtio device type {device_type} at {base:#x}, IRQ {irq}");
        Ok(device)
    }

    /// Creates and wires every configured device: drives, network interfaces, vsock, entropy.
    pub fn add_configured(
        &mut self,
        vm: &dyn Vm,
        mem: &GuestMemory,
        settings: &DeviceSettings,
    ) -> Result<(), DeviceManagerError> {
        for drive in &settings.drives {
            let id = drive.serial.clone();
            let block = Block::new(drive.clone())?;
            let block = self.add_virtio(vm, mem, format!("block_{id}"), block)?;
            self.devices.drives.push((id, block));
        }
        for (id, net) in &settings.nets {
            let net = Net::new(net.clone())?;
            let net = self.add_virtio(vm, mem, format!("net_{id}"), net)?;
            self.devices.nets.push((id.clone(), net));
        }
        if let Some(vsock) = &settings.vsock {
            self.add_virtio(vm, mem, "vsock".into(), Vsock::new(vsock.clone())?)?;
        }
        if let Some(limits) = settings.entropy {
            self.add_virtio(vm, mem, "entropy".into(), Rng::new(limits)?)?;
        }
        Ok(())
    }

    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    /// The kernel command-line entries for every device, space-separated and led by a space.
    pub fn cmdline_suffix(&self) -> String {
        self.placements
            .iter()
            .map(|p| format!(" {}", p.cmdline_entry()))
            .collect()
    }

    /// Hands over the MMIO bus, the subscribers for the event loop, and the devices.
    pub fn into_parts(self) -> (Bus, Vec<Subscriber>, VirtioDevices) {
        (self.mmio_bus, self.subscribers, self.devices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_entry_matches_the_kernel_syntax() {
        let p = Placement {
            device_type: 2,
            base: 0xd000_1000,
            irq: 6,
        };
        assert_eq!(p.cmdline_entry(), "virtio_mmio.device=4K@0xd0001000:6");
    }
}
