//! virtio-vsock (virtio 1.2, section 5.10) with Firecracker's hybrid unix-socket backend.
//!
//! The guest talks stream sockets to the host (CID 2). On the host side every connection is a
//! unix stream: a host process connects to `uds_path` and writes `CONNECT <port>\n` to reach
//! guest port `port` (and reads `OK <local port>\n` once the guest accepted); a guest connection
//! to host port P is a connection to the listener at `<uds_path>_P`.
//!
//! Queues: rx (0) carries packets to the guest, tx (1) packets from it, event (2) is unused (no
//! transport resets: the device does not migrate). The config space is the guest's CID.

mod connection;
mod muxer;
mod packet;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::metrics::bump;
use super::{
    drain_queue, read_config_bytes, ActivateError, Activation, GuestMemory, Served, VirtioDevice,
    VirtioInterrupt,
};
use muxer::{Muxer, STREAM_TOKEN};
use packet::{read_packet, HDR_LEN, MAX_PAYLOAD};

const QUEUE_SIZES: [u16; 3] = [256; 3];
const RXQ: usize = 0;
const TXQ: usize = 1;
/// Event data for the listener and the timer; queues use their index, streams STREAM_TOKEN.
const LISTENER_TOKEN: u32 = 3;
const TIMER_TOKEN: u32 = 4;
/// How soon the device checks for host processes and guests that keep it waiting.
const SWEEP_DELAY: Duration = Duration::from_millis(500);

/// How the VMM configures the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID: 3 or more (0-2 are reserved), below 2^32 - 1.
    pub guest_cid: u64,
    /// Where the device listens for host connections.
    pub uds_path: PathBuf,
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum VsockError {
    /// vsock guest CID {0} is invalid: use a value from 3 to 4294967294
    InvalidCid(u64),
    /// vsock socket path {0} already exists; Tessera does not delete files it did not create, so remove it yourself if no other VM uses it
    PathExists(PathBuf),
    /// cannot listen on the vsock socket {path}: {source}
    Bind { path: PathBuf, source: io::Error },
    /// cannot create the vsock device's event fds: {0}
    Fds(io::Error),
}

device_metrics! {
    /// What the device carried and refused since it was created. Bytes are payload bytes,
    /// without the 44-byte packet headers; packets count every op (RW, credit, control).
    pub struct VsockMetrics {
        /// Packets put in the guest's RX buffers.
        pub rx_packets,
        pub rx_bytes,
        /// RX buffers returned empty: smaller than a packet header or unusable.
        pub rx_bad_buffers,
        /// Packets taken from the guest's TX queue.
        pub tx_packets,
        pub tx_bytes,
        /// TX chains that held no readable packet (short header, bad length, bad buffers).
        pub tx_bad_packets,
        /// Guest packets dropped for their addresses (not from the guest's CID or not to the
        /// host).
        pub tx_dropped,
        /// Connections taken on: guest requests that reached a host listener, host streams
        /// with a valid CONNECT line (counted before the guest answers).
        pub conns_opened,
        /// Connections that ended without an RST to the guest: the guest sent one, or the
        /// device was reset.
        pub conns_closed,
        /// Connections that ended with an RST to the guest: the normal end after the guest
        /// shut both directions down, and aborts (timeouts, credit overruns, host errors).
        pub conns_reset,
        /// Connection attempts turned down: guest requests to a host port nobody listens on
        /// (or over the connection cap), host streams with no valid CONNECT line in time.
        pub conns_refused,
        /// RSTs dropped because the guest was not taking them.
        pub rst_dropped,
    }
}

/// What the device holds between activation and reset.
struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// The virtio-vsock device.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    /// Device and inode of the socket we bound, so Drop removes nothing else.
    uds_id: (u64, u64),
    queue_evts: Vec<EventFd>,
    muxer: Muxer,
    timer: TimerFd,
    timer_armed: bool,
    active: Option<Active>,
    /// TX processing paused until the guest takes the RSTs it caused.
    tx_stalled: bool,
    /// One packet's payload.
    scratch: Vec<u8>,
}

impl Vsock {
    /// Listens on `config.uds_path`, which must not exist yet.
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        let VsockConfig {
            guest_cid,
            uds_path,
        } = config;
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        if uds_path.symlink_metadata().is_ok() {
            return Err(VsockError::PathExists(uds_path));
        }
        let bind_err = |source| VsockError::Bind {
            path: uds_path.clone(),
            source,
        };
        let listener = UnixListener::bind(&uds_path).map_err(bind_err)?;
        let uds_id = match listener
            .set_nonblocking(true)
            .and_then(|()| fs::metadata(&uds_path))
        {
            Ok(meta) => (meta.dev(), meta.ino()),
            Err(e) => {
                let _ = fs::remove_file(&uds_path);
                return Err(bind_err(e));
            }
        };
        let queue_evts = (0..QUEUE_SIZES.len())
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>();
        let fds = queue_evts.and_then(|evts| Ok((evts, crate::timer::nonblocking_timer()?)));
        let (queue_evts, timer) = match fds {
            Ok(fds) => fds,
            Err(e) => {
                let _ = fs::remove_file(&uds_path);
                return Err(VsockError::Fds(e));
            }
        };
        Ok(Self {
            guest_cid,
            muxer: Muxer::new(guest_cid, uds_path.clone(), listener),
            uds_path,
            uds_id,
            queue_evts,
            timer,
            timer_armed: false,
            active: None,
            tx_stalled: false,
            scratch: vec![0; MAX_PAYLOAD],
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// What the device carried and refused so far.
    pub fn counters(&self) -> VsockMetrics {
        self.muxer.metrics
    }

    /// Does the device's share of work after an event: accepts, TX, RX.
    fn run_queues(&mut self, tx_kicked: bool, now: Instant) {
        if self.active.is_none() {
            return;
        }
        self.muxer.accept(now);
        if tx_kicked || self.tx_stalled {
            self.process_tx();
        }
        self.process_rx(now);
        if self.tx_stalled && !self.muxer.tx_backlogged() {
            self.process_tx();
            self.process_rx(now);
        }
    }

    /// Takes the guest's packets off the TX queue.
    fn process_tx(&mut self) {
        let Some(Active {
            mem,
            queues,
            interrupt,
        }) = self.active.as_mut()
        else {
            return;
        };
        let queue = &mut queues[TXQ];
        let (muxer, scratch, stalled) = (&mut self.muxer, &mut self.scratch, &mut self.tx_stalled);
        *stalled = false;
        let kick = &self.queue_evts[TXQ];
        let label = &"vsock: tx queue";
        drain_queue(queue, TXQ as u16, mem, label, &**interrupt, kick, |chain| {
            // Every packet may need an RST: take none while the guest leaves those queued.
            if muxer.tx_backlogged() {
                *stalled = true;
                return Served::PutBack;
            }
            match read_packet(mem, chain, scratch) {
                Ok((hdr, len)) => {
                    bump(&mut muxer.metrics.tx_packets, 1);
                    bump(&mut muxer.metrics.tx_bytes, len as u64);
                    muxer.on_guest_packet(&hdr, &scratch[..len]);
                }
                Err(e) => {
                    bump(&mut muxer.metrics.tx_bad_packets, 1);
                    crate::guest_debug!("{e}");
                }
            }
            Served::Used(0)
        });
    }

    /// Fills the guest's RX buffers with pending packets.
    fn process_rx(&mut self, now: Instant) {
        let Some(Active {
            mem,
            queues,
            interrupt,
        }) = self.active.as_mut()
        else {
            return;
        };
        let queue = &mut queues[RXQ];
        let mut used = false;
        let mut idle_rounds = 0;
        'outer: loop {
            if let Err(e) = queue.disable_notification(mem) {
                crate::guest_debug!("vsock: rx queue: {e}");
                break;
            }
            idle_rounds += 1;
            while self.muxer.has_rx() {
                let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                    break;
                };
                idle_rounds = 0;
                let head = chain.head_index();
                let len = match chain.writer(mem) {
                    Ok(mut w) if w.available_bytes() >= HDR_LEN => {
                        match self.muxer.write_rx(&mut w, &mut self.scratch, now) {
                            Some(len) => {
                                let metrics = &mut self.muxer.metrics;
                                bump(&mut metrics.rx_packets, 1);
                                bump(&mut metrics.rx_bytes, u64::from(len) - HDR_LEN as u64);
                                len
                            }
                            None => {
                                // Nothing fits this buffer now: leave it to the guest.
                                queue.go_to_previous_position();
                                break 'outer;
                            }
                        }
                    }
                    Ok(_) => {
                        crate::guest_debug!("vsock: rx buffer smaller than a packet header");
                        bump(&mut self.muxer.metrics.rx_bad_buffers, 1);
                        0
                    }
                    Err(e) => {
                        crate::guest_debug!("vsock: rx buffer: {e}");
                        bump(&mut self.muxer.metrics.rx_bad_buffers, 1);
                        0
                    }
                };
                if let Err(e) = queue.add_used(mem, head, len) {
                    crate::guest_debug!("vsock: rx queue: {e}");
                }
                used = true;
            }
            // Out of work, or out of buffers: then wait for more unless some just arrived (a
            // ring that claims buffers we cannot pop twice in a row is broken).
            let more_buffers = queue.enable_notification(mem);
            if !self.muxer.has_rx() || !matches!(more_buffers, Ok(true)) || idle_rounds >= 2 {
                break;
            }
        }
        if used {
            interrupt.notify_queue(RXQ as u16, queue, mem);
        }
    }

    /// Keeps a one-shot sweep timer running while anything has a deadline.
    fn update_timer(&mut self) {
        if self.timer_armed || !self.muxer.has_deadlines() {
            return;
        }
        match self.timer.reset(SWEEP_DELAY, None) {
            Ok(()) => self.timer_armed = true,
            Err(e) => crate::guest_warn!("vsock: cannot arm the timeout timer: {e}"),
        }
    }

    fn kick(&self) {
        if let Err(e) = self.queue_evts[RXQ].write(1) {
            crate::guest_warn!("vsock: cannot wake the event loop: {e}");
        }
    }
}

/// A timerfd whose read never blocks the event loop.
impl Drop for Vsock {
    fn drop(&mut self) {
        self.remove_socket_file();
    }
}

impl Vsock {
    /// Removes the listening socket's file if it is still the one this device bound.
    fn remove_socket_file(&mut self) {
        let ours =
            fs::symlink_metadata(&self.uds_path).is_ok_and(|m| (m.dev(), m.ino()) == self.uds_id);
        if ours {
            if let Err(e) = fs::remove_file(&self.uds_path) {
                log::warn!("vsock: cannot remove {}: {e}", self.uds_path.display());
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        super::TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn shutdown(&mut self) {
        self.remove_socket_file();
    }

    fn avail_features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if activation.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount {
                got: activation.queues.len(),
                want: QUEUE_SIZES.len(),
            });
        }
        self.active = Some(Active {
            mem: activation.mem,
            queues: activation.queues,
            interrupt: activation.interrupt,
        });
        self.tx_stalled = false;
        self.muxer.needs_accept = true;
        self.kick();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.tx_stalled = false;
        self.muxer.reset();
        // The event loop takes the closed streams off its watch list.
        self.kick();
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        self.muxer.metrics.pairs()
    }
}

impl MutEventSubscriber for Vsock {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let now = Instant::now();
        let mut tx_kicked = false;
        match events.data() {
            token @ 0..=2 => {
                let _ = self.queue_evts[token as usize].read();
                tx_kicked = token as usize == TXQ;
            }
            LISTENER_TOKEN => self.muxer.needs_accept = true,
            TIMER_TOKEN => {
                let _ = self.timer.wait();
                self.timer_armed = false;
                self.muxer.sweep(now);
            }
            STREAM_TOKEN => self
                .muxer
                .on_stream_event(events.fd(), events.event_set(), now),
            other => log::warn!("vsock: unexpected event {other}"),
        }
        self.run_queues(tx_kicked, now);
        self.muxer.sync_epoll(ops);
        self.update_timer();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let queues = self.queue_evts.iter().enumerate();
        let mut events: Vec<Events> = queues
            .map(|(i, evt)| Events::with_data(evt, i as u32, EventSet::IN))
            .collect();
        events.push(Events::with_data(
            self.muxer.listener(),
            LISTENER_TOKEN,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        ));
        events.push(Events::with_data(&self.timer, TIMER_TOKEN, EventSet::IN));
        for event in events {
            if let Err(e) = ops.add(event) {
                log::error!("vsock: cannot register with the event loop: {e:?}");
            }
        }
    }
}

/// Runs one fuzz input through the device: TX chains from the input, then RX chains carrying
/// whatever the TX packets (plus one bogus packet of ours) made the device answer.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    use super::fuzzing::{self, FuzzBytes};
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);

    let mem = fuzzing::guest_memory();
    let mut bytes = FuzzBytes::new(data);
    let queues = (0..3)
        .map(|i| fuzzing::fuzzed_queue(&mem, &mut bytes, i, 16))
        .collect();
    fuzzing::fill_data(&mem, &mut bytes);
    let uds_path = std::env::temp_dir().join(format!(
        "tessera-vsock-fuzz-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let Ok(mut vsock) = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path,
    }) else {
        return;
    };
    let activation = Activation {
        mem,
        queues,
        interrupt: Arc::new(super::interrupt::RecordingInterrupt::default()),
        acked_features: super::VIRTIO_F_VERSION_1,
    };
    if vsock.activate(activation).is_err() {
        return;
    }
    // A packet for no connection, so the RX chains get an RST to carry.
    let stray = packet::Header {
        src_cid: 3,
        dst_cid: packet::HOST_CID,
        type_: packet::TYPE_STREAM,
        op: packet::op::RW,
        ..Default::default()
    };
    vsock.muxer.on_guest_packet(&stray, &[]);
    vsock.run_queues(true, Instant::now());
}
