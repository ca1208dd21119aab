//! virtio-rng (virtio 1.2, section 5.4): fills the guest's buffers from the host's getrandom.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::metrics::bump;
use super::{
    drain_queue, ActivateError, Activation, GuestMemory, Served, VirtioDevice, VirtioInterrupt,
    TYPE_RNG,
};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};

const QUEUE_SIZE: u16 = 256;
/// The one queue: requests.
const REQUEST_QUEUE: u16 = 0;
/// The most entropy one request gets; Linux asks for at most a page or so at a time.
const MAX_REQUEST: usize = 64 << 10;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum RngError {
    /// entropy device: {0}
    RateLimiter(#[from] RateLimiterError),
    /// entropy device: cannot create an eventfd: {0}
    EventFd(io::Error),
}

device_metrics! {
    /// What the device handed out and refused since it was created.
    pub struct RngMetrics {
        /// Requests filled, and the random bytes they got.
        pub requests,
        pub bytes,
        /// Chains returned empty: unusable descriptors (a loop, outside memory) or no
        /// device-writable byte.
        pub bad_chains,
        /// Requests that failed on the host (getrandom or the copy into guest memory).
        pub errors,
        /// Times the rate limiter deferred a request (one request may be deferred again).
        pub rate_limited,
    }
}

struct Active {
    mem: GuestMemory,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// The entropy device.
pub struct Rng {
    queue_events: [EventFd; 1],
    rate_limiter: RateLimiter,
    active: Option<Active>,
    buffer: Vec<u8>,
    metrics: RngMetrics,
}

impl Rng {
    pub fn new(rate_limiter: RateLimiterConfig) -> Result<Self, RngError> {
        Ok(Self {
            queue_events: [EventFd::new(EFD_NONBLOCK).map_err(RngError::EventFd)?],
            rate_limiter: RateLimiter::new(rate_limiter)?,
            active: None,
            buffer: Vec::new(),
            metrics: RngMetrics::default(),
        })
    }

    /// What the device handed out and refused so far.
    pub fn counters(&self) -> RngMetrics {
        self.metrics
    }

    /// Serves every available request the rate limiter allows.
    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (limiter, buffer, metrics) =
            (&mut self.rate_limiter, &mut self.buffer, &mut self.metrics);
        let mem = &active.mem;
        let (queue, interrupt, kick) =
            (&mut active.queue, &*active.interrupt, &self.queue_events[0]);
        let label = &"virtio-rng";
        drain_queue(queue, REQUEST_QUEUE, mem, label, interrupt, kick, |chain| {
            let mut writer = match chain.writer(mem) {
                Ok(w) => w,
                Err(e) => {
                    crate::guest_debug!("virtio-rng: bad descriptor chain: {e}");
                    bump(&mut metrics.bad_chains, 1);
                    return Served::Used(0);
                }
            };
            let want = writer.available_bytes().min(MAX_REQUEST);
            if want == 0 {
                // Nothing device-writable: the chain cannot carry entropy.
                bump(&mut metrics.bad_chains, 1);
                return Served::Used(0);
            }
            if !limiter.consume(want as u64) {
                bump(&mut metrics.rate_limited, 1);
                return Served::PutBack;
            }
            let written = fill_random(buffer, want)
                .and_then(|bytes| writer.write_all(bytes))
                .map(|()| writer.bytes_written());
            match written {
                Ok(n) => {
                    bump(&mut metrics.requests, 1);
                    bump(&mut metrics.bytes, n as u64);
                    Served::Used(n as u32)
                }
                Err(e) => {
                    crate::guest_debug!("virtio-rng: request not served: {e}");
                    bump(&mut metrics.errors, 1);
                    Served::Used(0)
                }
            }
        });
    }

    /// Activates the device on `queue` with the MMIO transport's interrupt (so tests can read
    /// its irqfd), without the transport.
    #[cfg(test)]
    fn activate_for_test(&mut self, mem: GuestMemory, queue: Queue) -> EventFd {
        use super::transport::mmio::MmioInterrupt;
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let interrupt = MmioInterrupt::new(irq.try_clone().expect("clone eventfd"));
        self.active = Some(Active {
            mem,
            queue,
            interrupt: Arc::new(interrupt),
        });
        irq
    }
}

/// `len` bytes from getrandom(2), in a buffer reused across requests.
fn fill_random(buffer: &mut Vec<u8>, len: usize) -> io::Result<&[u8]> {
    buffer.resize(len, 0);
    let mut filled = 0;
    while filled < len {
        let rest = &mut buffer[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into the valid, owned `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(&buffer[..len])
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn avail_features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let got = activation.queues.len();
        let queue = activation
            .queues
            .into_iter()
            .next()
            .filter(|_| got == 1)
            .ok_or(ActivateError::QueueCount { got, want: 1 })?;
        self.active = Some(Active {
            mem: activation.mem,
            queue,
            interrupt: activation.interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        self.metrics.pairs()
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            self.queue_events[0].as_raw_fd(),
            self.rate_limiter.as_raw_fd(),
        ];
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("virtio-rng: cannot watch fd {fd}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.queue_events[0].as_raw_fd() {
            let _ = self.queue_events[0].read();
            if !self.rate_limiter.is_blocked() {
                self.process_queue();
            }
        } else if events.fd() == self.rate_limiter.as_raw_fd() {
            self.rate_limiter.timer_fired();
            self.process_queue();
        }
    }
}

#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    use super::fuzzing;
    let mem = fuzzing::guest_memory();
    let mut bytes = fuzzing::FuzzBytes::new(data);
    let queue = fuzzing::fuzzed_queue(&mem, &mut bytes, 0, 16);
    fuzzing::fill_data(&mem, &mut bytes);
    let Ok(mut rng) = Rng::new(RateLimiterConfig::default()) else {
        return;
    };
    rng.active = Some(Active {
        mem,
        queue,
        interrupt: Arc::new(super::interrupt::RecordingInterrupt::default()),
    });
    rng.process_queue();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limiter::TokenBucketConfig;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    fn used_len(mem: &GuestMemory, q: &MockSplitQueue<GuestMemory>, slot: u64) -> u32 {
        // Used ring: flags u16, idx u16, then (id u32, len u32) entries.
        mem.read_obj(q.used_addr().unchecked_add(4 + slot * 8 + 4))
            .unwrap()
    }

    #[test]
    fn fills_a_writable_buffer_with_random_bytes() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        q.build_desc_chain(&[desc(0x8000, 64, VRING_DESC_F_WRITE, 0)])
            .unwrap();
        let mut rng = Rng::new(RateLimiterConfig::default()).unwrap();
        let irq = rng.activate_for_test(mem.clone(), q.create_queue().unwrap());
        rng.process_queue();
        assert_eq!(used_len(&mem, &q, 0), 64);
        let mut buf = [0u8; 64];
        mem.read_slice(&mut buf, GuestAddress(0x8000)).unwrap();
        assert!(buf.iter().any(|&b| b != 0));
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(
            VirtioDevice::metrics(&rng),
            vec![
                ("requests", 1),
                ("bytes", 64),
                ("bad_chains", 0),
                ("errors", 0),
                ("rate_limited", 0)
            ]
        );
    }

    #[test]
    fn read_only_or_out_of_memory_buffers_get_nothing() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        q.build_multiple_desc_chains(&[
            desc(0x8000, 64, 0, 0),
            desc(0xfff_0000, 64, VRING_DESC_F_WRITE, 0),
            desc(0x8000, u32::MAX, VRING_DESC_F_WRITE, 0),
        ])
        .unwrap();
        let mut rng = Rng::new(RateLimiterConfig::default()).unwrap();
        rng.activate_for_test(mem.clone(), q.create_queue().unwrap());
        rng.process_queue();
        let used_idx: u16 = mem.read_obj(q.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 3);
        for slot in 0..3 {
            assert_eq!(used_len(&mem, &q, slot), 0, "chain {slot}");
        }
        let m = rng.counters();
        assert_eq!((m.requests, m.bad_chains, m.errors), (0, 3, 0));
    }

    #[test]
    fn a_looping_chain_is_returned_without_hanging() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        // Two descriptors pointing at each other.
        q.add_desc_chains(
            &[
                desc(0x8000, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
                desc(0x9000, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0),
            ],
            0,
        )
        .unwrap();
        let mut rng = Rng::new(RateLimiterConfig::default()).unwrap();
        rng.activate_for_test(mem.clone(), q.create_queue().unwrap());
        rng.process_queue();
        let used_idx: u16 = mem.read_obj(q.used_addr().unchecked_add(2)).unwrap();
        assert_eq!(used_idx, 1);
    }

    #[test]
    fn an_avail_index_far_ahead_does_not_spin() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        q.build_desc_chain(&[desc(0x8000, 64, VRING_DESC_F_WRITE, 0)])
            .unwrap();
        // avail.idx = 1000 with a 16-entry ring: nothing valid to pop, ever.
        mem.write_obj(1000u16, q.avail_addr().unchecked_add(2))
            .unwrap();
        let mut rng = Rng::new(RateLimiterConfig::default()).unwrap();
        rng.activate_for_test(mem.clone(), q.create_queue().unwrap());
        rng.process_queue();
    }

    #[test]
    fn rate_limiter_defers_requests() {
        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        q.build_multiple_desc_chains(&[
            desc(0x8000, 1000, VRING_DESC_F_WRITE, 0),
            desc(0x9000, 1000, VRING_DESC_F_WRITE, 0),
        ])
        .unwrap();
        let limit = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1000,
                one_time_burst: 0,
                refill_time_ms: 50,
            }),
            ops: None,
        };
        let mut rng = Rng::new(limit).unwrap();
        rng.activate_for_test(mem.clone(), q.create_queue().unwrap());
        rng.process_queue();
        let used_idx =
            |mem: &GuestMemory| -> u16 { mem.read_obj(q.used_addr().unchecked_add(2)).unwrap() };
        assert_eq!(used_idx(&mem), 1);
        assert!(rng.rate_limiter.is_blocked());
        std::thread::sleep(std::time::Duration::from_millis(60));
        rng.rate_limiter.timer_fired();
        rng.process_queue();
        assert_eq!(used_idx(&mem), 2);
        let m = rng.counters();
        assert_eq!((m.requests, m.bytes, m.rate_limited), (2, 2000, 1));
    }

    /// The device alone: activated through `VirtioDevice::activate` with an interrupt that only
    /// records, no transport anywhere. It names its one queue when it returns buffers the driver
    /// asked to hear about (event index), and stays quiet otherwise.
    #[test]
    fn runs_without_a_transport_and_names_its_queue() {
        use crate::virtio::interrupt::RecordingInterrupt;
        use crate::virtio::{InterruptKind, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
        use virtio_queue::QueueT;

        let mem = memory();
        let q = MockSplitQueue::new(&mem, 16);
        let mut rng = Rng::new(RateLimiterConfig::default()).unwrap();
        let irq = Arc::new(RecordingInterrupt::default());
        let mut queue: Queue = q.create_queue().unwrap();
        queue.set_event_idx(true);
        // The mock's used ring overlaps the avail ring's used_event field: move it to a page of
        // its own so the event index means what the driver wrote.
        queue.set_used_ring_address(Some(0x4000), Some(0));
        rng.activate(Activation {
            mem: mem.clone(),
            queues: vec![queue],
            interrupt: irq.clone(),
            acked_features: VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
        })
        .unwrap();
        // used_event sits after the avail ring's 16 entries.
        let used_event = q.avail_addr().unchecked_add(4 + 16 * 2);

        // The driver wants to hear once the used index passes 5: one buffer back, no interrupt.
        mem.write_obj(5u16, used_event).unwrap();
        q.add_desc_chains(&[desc(0x8000, 32, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();
        rng.process_queue();
        assert_eq!(rng.counters().requests, 1);
        assert_eq!(irq.take(), vec![]);

        // Now once it passes 1: the second buffer back raises exactly one, for queue 0.
        mem.write_obj(1u16, used_event).unwrap();
        q.add_desc_chains(&[desc(0x9000, 32, VRING_DESC_F_WRITE, 0)], 1)
            .unwrap();
        rng.process_queue();
        assert_eq!(rng.counters().requests, 2);
        assert_eq!(irq.take(), vec![InterruptKind::Queue(0)]);

        // After a reset the device raises nothing at all.
        rng.reset();
        q.add_desc_chains(&[desc(0xa000, 32, VRING_DESC_F_WRITE, 0)], 2)
            .unwrap();
        rng.process_queue();
        assert_eq!(rng.counters().requests, 2);
        assert_eq!(irq.take(), vec![]);
    }

    #[test]
    fn fuzz_replay() {
        for input in crate::virtio::fuzzing::seeded_inputs(4, 3000, 512) {
            fuzz_one(&input);
        }
    }
}
