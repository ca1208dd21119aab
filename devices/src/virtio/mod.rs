//! Virtio 1.x devices, and the transports that put them in front of a driver.
//!
//! Two seams keep devices and transports apart; neither side names the other's types:
//!
//! * [`VirtioDevice`] is what a transport needs from a device: type, queue sizes and eventfds,
//!   features, config space, [`activate`](VirtioDevice::activate) and
//!   [`reset`](VirtioDevice::reset). A device model also implements
//!   `event_manager::MutEventSubscriber` (how it runs: it registers its queue eventfds and backend
//!   fds once, in `init`, and does its work in `process` on the VMM event loop thread).
//! * [`VirtioInterrupt`] is what a device needs from a transport: it says in virtio terms what
//!   happened ([`InterruptKind::Queue`] with its queue index, or [`InterruptKind::Config`]) and
//!   the transport decides how the driver hears it (a status register and one irqfd for MMIO, a
//!   vector per queue for MSI-X). A device gets it as an `Arc<dyn VirtioInterrupt>` in its
//!   [`Activation`] and returns used buffers through [`drain_queue`] or
//!   [`VirtioInterrupt::notify_queue`], which honour event index.
//!
//! Transports live in [`transport`]: today [`transport::mmio`] ([`MmioTransport`] on the MMIO
//! bus, driven by vCPU threads, and its [`MmioInterrupt`](transport::mmio::MmioInterrupt)). A
//! transport keeps the driver's feature and queue choices, hands the device its queues with
//! [`Activation`] when the driver sets DRIVER_OK and calls [`VirtioDevice::reset`] when the
//! driver resets the device. Queue notifications reach the device through its queue eventfds
//! (bound to the transport's notify address with KVM ioeventfds), never through the transport's
//! code on the hot path.
//!
//! A device can therefore run with no transport at all: activate it directly with queues and a
//! recording interrupt ([`interrupt::RecordingInterrupt`]), as the unit tests and fuzzers do.

// First: its `device_metrics!` macro is used by the devices below.
#[macro_use]
mod metrics;
pub mod block;
#[doc(hidden)]
pub mod fuzzing;
pub mod interrupt;
pub mod net;
pub mod rng;
pub mod tap;
pub mod transport;
pub mod vsock;

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it (defined once, at the crate root).
pub use crate::GuestMemory;
pub use interrupt::{InterruptKind, VirtioInterrupt};
pub use transport::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};

/// Device IDs (virtio 1.2, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;

/// Feature bits every device offers through the transport.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// The most chains a device serves in one event-loop pass before re-kicking itself, so a guest
/// that keeps its ring full cannot hold the loop (and every other device, and signals) forever.
pub const MAX_CHAINS_PER_PASS: usize = 256;

/// What a device did with one descriptor chain, for [`drain_queue`].
pub enum Served {
    /// Done: return the chain to the guest with `len` bytes written into it.
    Used(u32),
    /// Not now (rate limit, backlog): leave the chain in the ring and stop draining.
    PutBack,
}

/// How a [`drain_queue`] pass ended (already acted on: for tests and logs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Chains went back to the guest, which was notified if it asked to be.
    pub used_any: bool,
    /// [`MAX_CHAINS_PER_PASS`] chains were served and more may wait: the queue's eventfd was
    /// kicked so the loop comes back after serving everything else.
    pub budget_spent: bool,
}

/// Serves the chains the guest made available, the event-index-safe way (notifications off
/// while draining, then on and a re-check for chains that raced in), at most
/// [`MAX_CHAINS_PER_PASS`] per call. A ring that keeps claiming chains it cannot yield (a bad
/// avail index) ends the pass instead of spinning. Ring errors are the guest's: logged at debug
/// level, led by `label`. Afterwards the guest is notified of used chains (if it asked) as queue
/// `queue_index`, and `queue_evt` is kicked when the budget ran out.
pub fn drain_queue(
    queue: &mut Queue,
    queue_index: u16,
    mem: &GuestMemory,
    label: &dyn std::fmt::Display,
    interrupt: &dyn VirtioInterrupt,
    queue_evt: &EventFd,
    serve: impl FnMut(DescriptorChain<&GuestMemory>) -> Served,
) -> Drained {
    let drained = serve_available(queue, mem, label, serve);
    if drained.used_any {
        interrupt.notify_queue(queue_index, queue, mem);
    }
    if drained.budget_spent {
        if let Err(e) = queue_evt.write(1) {
            crate::guest_error!("{label}: cannot re-kick the queue: {e}");
        }
    }
    drained
}

fn serve_available(
    queue: &mut Queue,
    mem: &GuestMemory,
    label: &dyn std::fmt::Display,
    mut serve: impl FnMut(DescriptorChain<&GuestMemory>) -> Served,
) -> Drained {
    let mut drained = Drained::default();
    let mut served = 0;
    let mut first_pass = true;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            crate::guest_debug!("{label}: {e}");
            break;
        }
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            if served == MAX_CHAINS_PER_PASS {
                queue.go_to_previous_position();
                drained.budget_spent = true;
                return drained;
            }
            popped = true;
            let head = chain.head_index();
            match serve(chain) {
                Served::Used(len) => {
                    if let Err(e) = queue.add_used(mem, head, len) {
                        crate::guest_debug!("{label}: {e}");
                    }
                    drained.used_any = true;
                    served += 1;
                }
                Served::PutBack => {
                    queue.go_to_previous_position();
                    return drained;
                }
            }
        }
        // `true`: chains raced in while notifications were off, serve them. A second pass in a
        // row that pops nothing means the ring lies about its avail index.
        match queue.enable_notification(mem) {
            Ok(true) if popped || first_pass => first_pass = false,
            Ok(_) => break,
            Err(e) => {
                crate::guest_debug!("{label}: {e}");
                break;
            }
        }
    }
    drained
}

/// What a device gets when the driver sets DRIVER_OK: guest memory, its configured queues (in
/// queue index order, event index already set as negotiated), the interrupt and the features
/// the driver accepted.
pub struct Activation {
    pub mem: GuestMemory,
    pub queues: Vec<Queue>,
    /// How the device tells the driver about used buffers (by queue index, the position in
    /// `queues`) and config changes; the transport's implementation, shared with it.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub acked_features: u64,
}

/// Why a device refused to start; the transport then sets DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ActivateError {
    /// the driver configured {got} queues; the device needs {want}
    QueueCount { got: usize, want: usize },
    /// {0}
    Backend(String),
}

/// A virtio device model, as a transport sees it.
///
/// Implementors are also `event_manager::MutEventSubscriber`s: they register their
/// [`queue_events`](Self::queue_events) and backend fds in `init` (backends edge-triggered, so an
/// inactive device is not woken in a loop) and ignore events while not activated.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; the driver may pick smaller powers of two.
    fn queue_max_sizes(&self) -> &[u16];
    /// One eventfd per queue, written when the driver notifies that queue.
    fn queue_events(&self) -> &[EventFd];
    /// Device feature bits; the transport adds `VIRTIO_F_VERSION_1` and event index.
    fn avail_features(&self) -> u64;
    /// Reads the device configuration space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space; read-only by default.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        crate::guest_debug!(
            "virtio device type {}: ignored a {}-byte config write at {offset:#x}",
            self.device_type(),
            data.len()
        );
    }
    /// Starts the device with the queues the driver set up.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device and drops its queues; it can be activated again afterwards.
    fn reset(&mut self);
    /// The VM is ending: release what would outlive the process (socket files). The VMM exits
    /// without dropping devices that vCPU threads still reach, so `Drop` is not enough.
    fn shutdown(&mut self) {}
    /// The device's counters for the metrics file, as (snake_case name, value): cumulative since
    /// the device was created (a reset keeps them), saturating rather than wrapping. Every
    /// device model here reports its own; the empty default is for test doubles.
    fn metrics(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Copies `src` into `data` as if `src` were a config space read at `offset`: out-of-range
/// bytes read as zero. Shared by the devices' `read_config`.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if let Some(tail) = src.get(offset..) {
        let n = tail.len().min(data.len());
        data[..n].copy_from_slice(&tail[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::transport::mmio::{MmioInterrupt, INTERRUPT_USED_RING};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    /// A guest that re-posts every chain as soon as it is served never lets a pass end on its
    /// own: the budget must end it.
    fn irq_and_evt() -> (MmioInterrupt, EventFd) {
        let irq = MmioInterrupt::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap());
        (
            irq,
            EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
        )
    }

    #[test]
    fn a_guest_that_refills_forever_meets_the_budget() {
        let (irq, evt) = irq_and_evt();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let desc = SplitDescriptor::new(0x8000, 16, VRING_DESC_F_WRITE as u16, 0);
        q.build_desc_chain(&[RawDescriptor::from(desc)]).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        let avail = q.avail_addr();
        let mut served = 0u16;
        let drained = drain_queue(&mut queue, 0, &mem, &"test", &irq, &evt, |chain| {
            served += 1;
            // Post the same head again in the next avail slot and publish it.
            let slot = avail.unchecked_add(4 + u64::from(served % 16) * 2);
            mem.write_obj(chain.head_index(), slot).unwrap();
            mem.write_obj(served + 1, avail.unchecked_add(2)).unwrap();
            Served::Used(16)
        });
        assert_eq!(usize::from(served), MAX_CHAINS_PER_PASS);
        assert!(drained.used_any && drained.budget_spent);
        assert_eq!(evt.read().unwrap(), 1, "the queue re-kicked itself");
        assert_eq!(irq.status(), INTERRUPT_USED_RING);
    }

    #[test]
    fn put_back_leaves_the_chain_for_the_next_pass() {
        let (irq, evt) = irq_and_evt();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let desc = SplitDescriptor::new(0x8000, 16, VRING_DESC_F_WRITE as u16, 0);
        q.build_desc_chain(&[RawDescriptor::from(desc)]).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        let drained = drain_queue(&mut queue, 0, &mem, &"test", &irq, &evt, |_| {
            Served::PutBack
        });
        assert_eq!(drained, Drained::default());
        let drained = drain_queue(&mut queue, 0, &mem, &"test", &irq, &evt, |_| {
            Served::Used(1)
        });
        assert!(drained.used_any && !drained.budget_spent);
        assert_eq!(queue.next_used(), 1);
    }
}
