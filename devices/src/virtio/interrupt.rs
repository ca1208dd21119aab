//! How a device tells the driver something happened, without knowing its transport.
//!
//! A device says *what* happened in virtio terms ([`InterruptKind`]: queue `n` has used
//! buffers, or the configuration changed); the transport decides *how* the driver hears it. The
//! MMIO transport ([`MmioInterrupt`](super::transport::mmio::MmioInterrupt)) sets a bit in its
//! InterruptStatus register and raises one shared irqfd; a PCI transport with MSI-X would look
//! the queue up in its vector table and raise that vector's irqfd (or set its pending bit while
//! it is masked). Devices hold an `Arc<dyn VirtioInterrupt>` from their
//! [`Activation`](super::Activation) and never see which.

use std::sync::Mutex;

use virtio_queue::{Queue, QueueT};

use super::GuestMemory;

/// What a device wants the driver to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterruptKind {
    /// The queue with this index (the device's queue order, as in [`Activation::queues`]) has
    /// new used buffers.
    ///
    /// [`Activation::queues`]: super::Activation::queues
    Queue(u16),
    /// The device configuration space changed.
    Config,
}

/// A device's interrupt, as the transport implements it.
///
/// Shared between the transport (vCPU threads: status reads, acks, resets) and the device (the
/// event loop thread), hence `Send + Sync` and `&self`. Raising cannot fail from the device's
/// point of view: there is nothing a device could do about a failed irqfd write, so an
/// implementation logs its own errors.
pub trait VirtioInterrupt: Send + Sync {
    /// Tells the driver about `kind`, unconditionally.
    fn trigger(&self, kind: InterruptKind);

    /// Tells the driver that queue `queue_index` has used buffers, if the driver asked to be told:
    /// with event index, when the used index passed the driver's `used_event`; without it, always
    /// (virtio-queue does not read VRING_AVAIL_F_NO_INTERRUPT). `queue` must be that queue.
    fn notify_queue(&self, queue_index: u16, queue: &mut Queue, mem: &GuestMemory) {
        // A guest that corrupted its own ring gets the interrupt anyway: it is the safe side.
        if queue.needs_notification(mem).unwrap_or(true) {
            self.trigger(InterruptKind::Queue(queue_index));
        }
    }
}

/// A [`VirtioInterrupt`] that only records what it was asked to raise, in order: for running a
/// device with no transport at all (unit tests, the fuzzers).
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct RecordingInterrupt {
    triggered: Mutex<Vec<InterruptKind>>,
}

impl RecordingInterrupt {
    /// Takes the interrupts raised since the last call.
    pub fn take(&self) -> Vec<InterruptKind> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<InterruptKind>> {
        self.triggered.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl VirtioInterrupt for RecordingInterrupt {
    fn trigger(&self, kind: InterruptKind) {
        self.lock().push(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    #[test]
    fn notify_queue_asks_the_ring_and_names_the_queue() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        let desc = |addr| {
            RawDescriptor::from(SplitDescriptor::new(addr, 16, VRING_DESC_F_WRITE as u16, 0))
        };
        q.build_multiple_desc_chains(&[desc(0x8000), desc(0x9000)])
            .unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        queue.set_event_idx(true);
        // The mock's used ring overlaps the avail ring's used_event field: give it its own page.
        queue.set_used_ring_address(Some(0x4000), Some(0));
        let irq = RecordingInterrupt::default();
        let serve_one = |queue: &mut Queue| {
            let chain = queue.pop_descriptor_chain(&mem).unwrap();
            queue.add_used(&mem, chain.head_index(), 16).unwrap();
            irq.notify_queue(3, queue, &mem);
        };

        // used_event is 0 (the driver wants to hear about the first used buffer).
        serve_one(&mut queue);
        assert_eq!(irq.take(), vec![InterruptKind::Queue(3)]);
        // The second one moves the used index past used_event + 1: the driver did not ask.
        serve_one(&mut queue);
        assert_eq!(irq.take(), vec![]);

        irq.trigger(InterruptKind::Config);
        assert_eq!(irq.take(), vec![InterruptKind::Config]);
    }
}
