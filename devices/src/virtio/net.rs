//! virtio-net (virtio 1.2, section 5.1) over a host TAP interface.
//!
//! One RX and one TX queue, no control queue and no mergeable RX buffers: each RX chain takes one
//! whole frame behind its 12-byte `virtio_net_hdr_v1`, each TX chain holds one. Frames move
//! between guest memory and the backend with readv/writev, never through a bounce buffer.
//! Checksum and segmentation offloads are offered only when the TAP accepted them at open, and
//! the TAP is told on activation which of them the driver took.
//!
//! RX follows the backend (edge-triggered): the device reads until it is empty or the guest has
//! no buffer left. Frames the guest has no room for stay in the backend until it adds buffers
//! (the RX queue event) or the rate limiter lets traffic through again (its timer).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_bindings::virtio_net as vnet;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::bump;
use super::tap::{Tap, TapError, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO, VNET_HDR_LEN};
use super::{
    drain_queue, read_config_bytes, ActivateError, Activation, GuestMemory, Served, VirtioDevice,
    VirtioInterrupt, MAX_CHAINS_PER_PASS, TYPE_NET,
};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterError};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Largest size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
/// Longest frame a TX chain may carry after its header: a whole TSO/UFO super-frame.
pub const MAX_FRAME_LEN: usize = 65536;
/// Room behind an RX chain for the part of a frame that does not fit it, so an oversized frame
/// is seen as oversized and dropped whole instead of being cut short.
const SPILL_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN + 256;
/// Buffers one chain may spread over: IOV_MAX less the spill buffer.
const MAX_CHAIN_BUFFERS: usize = 1023;
/// The spec's floor for the MTU the device reports.
const MIN_MTU: u16 = 68;
/// `struct virtio_net_config` up to `mtu`: mac, status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;
/// Where `num_buffers` sits in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

const fn bit(b: u32) -> u64 {
    1 << b
}

pub const VIRTIO_NET_F_CSUM: u64 = bit(vnet::VIRTIO_NET_F_CSUM);
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = bit(vnet::VIRTIO_NET_F_GUEST_CSUM);
pub const VIRTIO_NET_F_MTU: u64 = bit(vnet::VIRTIO_NET_F_MTU);
pub const VIRTIO_NET_F_MAC: u64 = bit(vnet::VIRTIO_NET_F_MAC);
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = bit(vnet::VIRTIO_NET_F_GUEST_TSO4);
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = bit(vnet::VIRTIO_NET_F_GUEST_TSO6);
pub const VIRTIO_NET_F_GUEST_UFO: u64 = bit(vnet::VIRTIO_NET_F_GUEST_UFO);
pub const VIRTIO_NET_F_HOST_TSO4: u64 = bit(vnet::VIRTIO_NET_F_HOST_TSO4);
pub const VIRTIO_NET_F_HOST_TSO6: u64 = bit(vnet::VIRTIO_NET_F_HOST_TSO6);
pub const VIRTIO_NET_F_HOST_UFO: u64 = bit(vnet::VIRTIO_NET_F_HOST_UFO);
pub const VIRTIO_NET_F_STATUS: u64 = bit(vnet::VIRTIO_NET_F_STATUS);

// Event-loop tokens.
const EV_RX_QUEUE: u32 = 0;
const EV_TX_QUEUE: u32 = 1;
const EV_BACKEND: u32 = 2;
const EV_RX_LIMITER: u32 = 3;
const EV_TX_LIMITER: u32 = 4;

/// A network interface as the config file and API describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// Host TAP interface name (created if missing).
    pub tap: String,
    /// The guest's MAC address; without one the guest picks a random one.
    pub mac: Option<[u8; 6]>,
    /// MTU advertised to the guest.
    pub mtu: Option<u16>,
    pub rx_rate_limiter: RateLimiterConfig,
    pub tx_rate_limiter: RateLimiterConfig,
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum NetError {
    /// {0}
    Tap(#[from] TapError),
    /// net {tap}: MAC address {mac} is multicast or all zeros
    InvalidMac { tap: String, mac: String },
    /// net {tap}: MTU {mtu} is below the minimum of 68
    InvalidMtu { tap: String, mtu: u16 },
    /// net {tap}: {direction} rate limiter: {source}
    RateLimiter {
        tap: String,
        direction: &'static str,
        source: RateLimiterError,
    },
    /// net {tap}: cannot create a queue eventfd: {source}
    EventFd { tap: String, source: io::Error },
    /// net {tap}: cannot make the backend non-blocking: {source}
    NonBlocking { tap: String, source: io::Error },
}

/// Where frames go and come from: one frame per read or write, each behind a
/// `virtio_net_hdr_v1`, on a file descriptor the device makes non-blocking. [`Tap`] in
/// production; a datagram socket (which keeps frame boundaries) in tests and fuzzing.
pub trait NetBackend: AsRawFd + Send {
    /// TUN_F_* offloads the backend can hand to the guest; none unless it says so.
    fn supported_offloads(&self) -> u32 {
        0
    }

    /// Tells the backend which offloads the guest takes on RX.
    fn set_offload(&mut self, _flags: u32) -> Result<(), TapError> {
        Ok(())
    }
}

impl NetBackend for Tap {
    fn supported_offloads(&self) -> u32 {
        self.offloads()
    }

    fn set_offload(&mut self, flags: u32) -> Result<(), TapError> {
        Tap::set_offload(self, flags)
    }
}

impl NetBackend for UnixDatagram {}

device_metrics! {
    /// Counters for what the device moved and what it refused. Bytes are frame bytes, without
    /// the virtio-net header.
    pub struct NetMetrics {
        pub rx_frames,
        pub rx_bytes,
        /// Frames read from the backend but not delivered: larger than the guest's chain or
        /// shorter than a header.
        pub rx_dropped,
        /// RX chains returned unused: malformed, read-only, outside memory or shorter than a
        /// header.
        pub rx_bad_chains,
        /// Reads from the backend that failed (other than "nothing to read").
        pub rx_errors,
        /// Times the RX rate limiter stopped delivery until its timer.
        pub rx_rate_limited,
        pub tx_frames,
        pub tx_bytes,
        /// TX chains dropped unsent: malformed, write-only, outside memory or too long.
        pub tx_bad_chains,
        /// Frames the backend refused.
        pub tx_errors,
        /// Times the TX rate limiter deferred a frame (one frame may be deferred again).
        pub tx_rate_limited,
    }
}

/// Why a descriptor chain cannot carry a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, displaydoc::Display)]
enum ChainError {
    /// a descriptor points the wrong way for this queue
    Direction,
    /// the chain is cut short (a loop, a bad next index or an unreadable descriptor)
    Broken,
    /// a buffer lies outside guest memory
    OutsideMemory,
    /// the chain holds more than {0} bytes
    TooLong(usize),
    /// the chain spreads over more than 1023 buffers
    TooManyBuffers,
    /// the chain cannot hold a 12-byte header
    TooShort,
}

/// A chain's buffers as host memory, in order, and their total length.
struct Buffers<'m> {
    slices: Vec<VolatileSlice<'m>>,
    len: usize,
}

/// Collects the buffers of `chain`, all of which must be device-writable (`writable`) or all
/// device-readable, inside guest memory and at most `max_len` bytes together. A chain whose last
/// descriptor still points onward was cut short by the queue (a loop or a bad index) and is
/// refused.
fn gather<'m>(
    mem: &'m GuestMemory,
    chain: DescriptorChain<&'m GuestMemory>,
    writable: bool,
    max_len: usize,
) -> Result<Buffers<'m>, ChainError> {
    let mut slices = Vec::new();
    let mut len = 0usize;
    let mut ended = false;
    for desc in chain {
        if desc.is_write_only() != writable {
            return Err(ChainError::Direction);
        }
        let desc_len = desc.len() as usize;
        len = len
            .checked_add(desc_len)
            .filter(|&l| l <= max_len)
            .ok_or(ChainError::TooLong(max_len))?;
        for slice in GuestMemoryBackend::get_slices(mem, desc.addr(), desc_len) {
            let slice = slice.map_err(|_| ChainError::OutsideMemory)?;
            if slices.len() == MAX_CHAIN_BUFFERS {
                return Err(ChainError::TooManyBuffers);
            }
            slices.push(slice);
        }
        ended = !desc.has_next();
    }
    if !ended {
        return Err(ChainError::Broken);
    }
    if len < VNET_HDR_LEN {
        return Err(ChainError::TooShort);
    }
    Ok(Buffers { slices, len })
}

/// Reads one frame from `fd` into `bufs`, then `spill`; returns its length.
fn read_frame(fd: RawFd, bufs: &[VolatileSlice<'_>], spill: &mut [u8]) -> io::Result<usize> {
    let guards: Vec<_> = bufs.iter().map(|s| s.ptr_guard_mut()).collect();
    let mut iov: Vec<libc::iovec> = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast(),
            iov_len: g.len(),
        })
        .collect();
    iov.push(libc::iovec {
        iov_base: spill.as_mut_ptr().cast(),
        iov_len: spill.len(),
    });
    loop {
        // SAFETY: each iovec covers exactly a guest buffer kept mapped by `guards` (and the
        // memory borrowed by `bufs`) or `spill`; readv writes only inside them. At most 1024.
        let n = unsafe { libc::readv(fd, iov.as_ptr(), iov.len() as libc::c_int) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Writes one frame gathered from `bufs` to `fd`.
fn write_frame(fd: RawFd, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    let guards: Vec<_> = bufs.iter().map(|s| s.ptr_guard()).collect();
    let iov: Vec<libc::iovec> = guards
        .iter()
        .map(|g| libc::iovec {
            iov_base: g.as_ptr().cast_mut().cast(),
            iov_len: g.len(),
        })
        .collect();
    loop {
        // SAFETY: each iovec covers exactly a guest buffer kept mapped by `guards` (and the
        // memory borrowed by `bufs`); writev only reads them. At most 1023.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Writes `data` at byte `offset` of the buffers taken together.
fn write_at(bufs: &[VolatileSlice<'_>], mut offset: usize, mut data: &[u8]) {
    for slice in bufs {
        if data.is_empty() {
            break;
        }
        if offset >= slice.len() {
            offset -= slice.len();
            continue;
        }
        let n = (slice.len() - offset).min(data.len());
        // In bounds by construction; the slice is guest memory we hold.
        let _ = slice.write_slice(&data[..n], offset);
        data = &data[n..];
        offset = 0;
    }
}

/// What became of one RX chain.
enum RxOutcome {
    /// A frame of this many bytes (header included) is in the chain.
    Delivered(usize),
    /// A frame of this many bytes was read but did not fit, or was shorter than a header.
    Dropped(usize),
    /// The backend has no frame waiting.
    Empty,
    /// The backend failed.
    Failed(io::Error),
}

/// Reads one frame from the backend into an RX chain.
fn receive(
    fd: RawFd,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    spill: &mut [u8],
) -> Result<RxOutcome, ChainError> {
    let bufs = gather(mem, chain, true, usize::MAX)?;
    let n = match read_frame(fd, &bufs.slices, spill) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(RxOutcome::Empty),
        Err(e) => return Ok(RxOutcome::Failed(e)),
    };
    // A zero-length read is a closed backend, not a frame: stop rather than spin on it.
    if n == 0 {
        return Ok(RxOutcome::Empty);
    }
    if n > bufs.len || n < VNET_HDR_LEN {
        return Ok(RxOutcome::Dropped(n));
    }
    // The TAP leaves num_buffers alone; without MRG_RXBUF it must read 1.
    write_at(&bufs.slices, NUM_BUFFERS_OFFSET, &1u16.to_le_bytes());
    Ok(RxOutcome::Delivered(n))
}

/// Offload features the guest may take when the backend accepts `tun` offloads.
fn offload_features(tun: u32) -> u64 {
    if tun & TUN_F_CSUM == 0 {
        return 0;
    }
    let mut features = VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM;
    if tun & (TUN_F_TSO4 | TUN_F_TSO6) == TUN_F_TSO4 | TUN_F_TSO6 {
        features |= VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_GUEST_TSO6
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6;
    }
    if tun & TUN_F_UFO != 0 {
        features |= VIRTIO_NET_F_GUEST_UFO | VIRTIO_NET_F_HOST_UFO;
    }
    features
}

/// The TUN_F_* flags matching the GUEST_* features the driver accepted; segmentation offloads
/// need checksum offload, so without GUEST_CSUM there are none.
fn tun_offloads(acked: u64) -> u32 {
    if acked & VIRTIO_NET_F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    for (feature, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, TUN_F_UFO),
    ] {
        if acked & feature != 0 {
            flags |= flag;
        }
    }
    flags
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on a descriptor we hold; it touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a descriptor we hold; it touches no memory.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The avail index says chains are waiting but none can be popped (an index running past the
/// queue size, or a ring outside memory): a broken driver. Stop instead of spinning on it.
fn warn_unreadable_ring(name: &str, queue: &str) {
    crate::guest_debug!("net {name}: {queue} avail ring announces chains that cannot be popped");
}

/// What the device holds while the driver runs it.
struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio-net device.
pub struct Net {
    name: String,
    backend: Box<dyn NetBackend>,
    avail_features: u64,
    config_space: [u8; CONFIG_LEN],
    queue_events: [EventFd; 2],
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    /// Bytes of a frame already delivered that the RX limiter has not charged yet: RX cannot
    /// know a frame's size before reading it, so it pays afterwards.
    rx_debt: u64,
    spill: Vec<u8>,
    active: Option<Active>,
    metrics: NetMetrics,
}

impl Net {
    /// A device on TAP interface `config.tap`.
    pub fn new(config: NetConfig) -> Result<Net, NetError> {
        let tap = Tap::open(&config.tap)?;
        Self::with_backend(tap, config)
    }

    /// A device on any frame-preserving backend (`config.tap` then only names it in logs).
    pub fn with_backend(
        backend: impl NetBackend + 'static,
        config: NetConfig,
    ) -> Result<Net, NetError> {
        let name = config.tap.clone();
        if let Some(mac) = config.mac {
            // Bit 0 of the first byte marks a group address; a NIC cannot own one.
            if mac[0] & 1 != 0 || mac == [0; 6] {
                return Err(NetError::InvalidMac {
                    tap: name,
                    mac: format_mac(&mac),
                });
            }
        }
        if let Some(mtu) = config.mtu.filter(|&m| m < MIN_MTU) {
            return Err(NetError::InvalidMtu { tap: name, mtu });
        }
        let limiter = |cfg, direction| {
            RateLimiter::new(cfg).map_err(|source| NetError::RateLimiter {
                tap: name.clone(),
                direction,
                source,
            })
        };
        let rx_limiter = limiter(config.rx_rate_limiter, "rx")?;
        let tx_limiter = limiter(config.tx_rate_limiter, "tx")?;
        let event = || {
            EventFd::new(libc::EFD_NONBLOCK).map_err(|source| NetError::EventFd {
                tap: name.clone(),
                source,
            })
        };
        let queue_events = [event()?, event()?];
        set_nonblocking(backend.as_raw_fd()).map_err(|source| NetError::NonBlocking {
            tap: name.clone(),
            source,
        })?;

        let mut avail_features =
            VIRTIO_NET_F_STATUS | offload_features(backend.supported_offloads());
        let mut config_space = [0u8; CONFIG_LEN];
        if let Some(mac) = config.mac {
            avail_features |= VIRTIO_NET_F_MAC;
            config_space[0..6].copy_from_slice(&mac);
        }
        config_space[6..8].copy_from_slice(&(vnet::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config_space[8..10].copy_from_slice(&1u16.to_le_bytes());
        if let Some(mtu) = config.mtu {
            avail_features |= VIRTIO_NET_F_MTU;
            config_space[10..12].copy_from_slice(&mtu.to_le_bytes());
        }

        Ok(Net {
            name,
            backend: Box::new(backend),
            avail_features,
            config_space,
            queue_events,
            rx_limiter,
            tx_limiter,
            rx_debt: 0,
            spill: vec![0; SPILL_LEN],
            active: None,
            metrics: NetMetrics::default(),
        })
    }

    /// The backend's name (the TAP interface).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the device moved and refused so far.
    pub fn counters(&self) -> NetMetrics {
        self.metrics
    }

    /// The current (rx, tx) rate limiter settings.
    pub fn rate_limiter_configs(&self) -> (RateLimiterConfig, RateLimiterConfig) {
        (self.rx_limiter.config(), self.tx_limiter.config())
    }

    /// Changes the rate limits while the VM runs; `None` leaves that direction as it is. Both
    /// settings are checked before either is applied, so an error changes nothing. Changed
    /// buckets start full and `None` buckets are unlimited (see [`RateLimiter::update`]); traffic
    /// the old limits held back resumes at once through the limiters' timers.
    pub fn set_rate_limiters(
        &mut self,
        rx: Option<RateLimiterConfig>,
        tx: Option<RateLimiterConfig>,
    ) -> Result<(), NetError> {
        for (config, direction) in [(rx, "rx"), (tx, "tx")] {
            if let Some(config) = config {
                config
                    .validate()
                    .map_err(|e| self.limiter_error(direction, e))?;
            }
        }
        // Validated above, so neither update can fail half way.
        if let Some(config) = rx {
            let updated = self.rx_limiter.update(config);
            updated.map_err(|e| self.limiter_error("rx", e))?;
        }
        if let Some(config) = tx {
            let updated = self.tx_limiter.update(config);
            updated.map_err(|e| self.limiter_error("tx", e))?;
        }
        Ok(())
    }

    fn limiter_error(&self, direction: &'static str, source: RateLimiterError) -> NetError {
        NetError::RateLimiter {
            tap: self.name.clone(),
            direction,
            source,
        }
    }

    fn kick(&self, queue: usize) {
        if let Err(e) = self.queue_events[queue].write(1) {
            crate::guest_error!("net {}: cannot re-kick queue {queue}: {e}", self.name);
        }
    }

    fn handle_event(&mut self, token: u32) {
        match token {
            EV_RX_QUEUE | EV_TX_QUEUE => {
                let queue = token as usize;
                // Level-triggered: the count is irrelevant, reading clears readiness.
                let _ = self.queue_events[queue].read();
                if queue == RX_QUEUE {
                    self.process_rx();
                } else {
                    self.process_tx();
                }
            }
            EV_BACKEND => self.process_rx(),
            EV_RX_LIMITER => {
                self.rx_limiter.timer_fired();
                self.process_rx();
            }
            EV_TX_LIMITER => {
                self.tx_limiter.timer_fired();
                self.process_tx();
            }
            other => log::warn!("net {}: unexpected event token {other}", self.name),
        }
    }

    /// Moves frames from the backend into the guest's RX chains until the backend is empty, the
    /// guest has no chain left or the rate limiter says stop.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self.rx_limiter.is_blocked() {
            return;
        }
        if self.rx_debt > 0 {
            if !self.rx_limiter.consume(self.rx_debt) {
                bump(&mut self.metrics.rx_rate_limited, 1);
                return;
            }
            self.rx_debt = 0;
        }
        let fd = self.backend.as_raw_fd();
        let mem = &active.mem;
        let queue = &mut active.rx;
        let mut used = false;
        let mut frames = 0;
        let mut rekick = false;
        let mut first_round = true;
        'notify: loop {
            if let Err(e) = queue.disable_notification(mem) {
                crate::guest_debug!("net {}: rx queue: {e}", self.name);
                break;
            }
            let mut popped = false;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                if frames == MAX_CHAINS_PER_PASS {
                    queue.go_to_previous_position();
                    rekick = true;
                    break 'notify;
                }
                frames += 1;
                popped = true;
                let head = chain.head_index();
                match receive(fd, mem, chain, &mut self.spill) {
                    Err(e) => {
                        crate::guest_debug!("net {}: rx chain {head} unusable: {e}", self.name);
                        bump(&mut self.metrics.rx_bad_chains, 1);
                        if let Err(e) = queue.add_used(mem, head, 0) {
                            crate::guest_debug!("net {}: rx queue: {e}", self.name);
                        }
                        used = true;
                    }
                    Ok(RxOutcome::Delivered(n)) => {
                        if let Err(e) = queue.add_used(mem, head, n as u32) {
                            crate::guest_debug!("net {}: rx queue: {e}", self.name);
                        }
                        used = true;
                        let frame = (n - VNET_HDR_LEN) as u64;
                        bump(&mut self.metrics.rx_frames, 1);
                        bump(&mut self.metrics.rx_bytes, frame);
                        if !self.rx_limiter.consume(frame) {
                            self.rx_debt = frame;
                            bump(&mut self.metrics.rx_rate_limited, 1);
                            break 'notify;
                        }
                    }
                    Ok(RxOutcome::Dropped(n)) => {
                        // The frame is gone; the chain waits for the next one.
                        queue.go_to_previous_position();
                        bump(&mut self.metrics.rx_dropped, 1);
                        crate::guest_debug!(
                            "net {}: dropped a {n}-byte rx frame: the guest's buffer is smaller \
                             or it lacks a header",
                            self.name
                        );
                    }
                    Ok(RxOutcome::Empty) => {
                        queue.go_to_previous_position();
                        break 'notify;
                    }
                    Ok(RxOutcome::Failed(e)) => {
                        queue.go_to_previous_position();
                        bump(&mut self.metrics.rx_errors, 1);
                        crate::guest_warn!("net {}: rx read failed: {e}", self.name);
                        break 'notify;
                    }
                }
            }
            // Out of chains: ask the guest to kick when it adds some, unless it just did.
            match queue.enable_notification(mem) {
                Ok(true) if popped || first_round => first_round = false,
                Ok(true) => {
                    warn_unreadable_ring(&self.name, "rx");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    crate::guest_debug!("net {}: rx queue: {e}", self.name);
                    break;
                }
            }
        }
        if used {
            active.interrupt.notify_queue(RX_QUEUE as u16, queue, mem);
        }
        if rekick {
            self.kick(RX_QUEUE);
        }
    }

    /// Sends the guest's TX chains to the backend until the queue is empty or the rate limiter
    /// says stop.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        // Its timer brings us back; until then every chain would only be put back.
        if self.tx_limiter.is_blocked() {
            return;
        }
        let fd = self.backend.as_raw_fd();
        let mem = &active.mem;
        let queue = &mut active.tx;
        let (name, limiter, metrics) = (&self.name, &mut self.tx_limiter, &mut self.metrics);
        let kick = &self.queue_events[TX_QUEUE];
        let label = format_args!("net {name}: tx queue");
        let (index, interrupt) = (TX_QUEUE as u16, &*active.interrupt);
        drain_queue(queue, index, mem, &label, interrupt, kick, |chain| {
            let head = chain.head_index();
            match gather(mem, chain, false, VNET_HDR_LEN + MAX_FRAME_LEN) {
                Ok(bufs) => {
                    let frame = (bufs.len - VNET_HDR_LEN) as u64;
                    if !limiter.consume(frame) {
                        bump(&mut metrics.tx_rate_limited, 1);
                        return Served::PutBack;
                    }
                    match write_frame(fd, &bufs.slices) {
                        Ok(_) => {
                            bump(&mut metrics.tx_frames, 1);
                            bump(&mut metrics.tx_bytes, frame);
                        }
                        Err(e) => {
                            bump(&mut metrics.tx_errors, 1);
                            crate::guest_debug!("net {name}: tx frame dropped: {e}");
                        }
                    }
                }
                Err(e) => {
                    bump(&mut metrics.tx_bad_chains, 1);
                    crate::guest_debug!("net {name}: tx chain {head} dropped: {e}");
                }
            }
            // The device writes nothing into a TX chain.
            Served::Used(0)
        });
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let got = activation.queues.len();
        let mut queues = activation.queues.into_iter();
        let (Some(rx), Some(tx), None) = (queues.next(), queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount { got, want: 2 });
        };
        let flags = tun_offloads(activation.acked_features & self.avail_features);
        self.backend
            .set_offload(flags)
            .map_err(|e| ActivateError::Backend(e.to_string()))?;
        self.rx_debt = 0;
        self.active = Some(Active {
            mem: activation.mem,
            rx,
            tx,
            interrupt: activation.interrupt,
        });
        // Frames may have waited in the backend while the device was down.
        self.kick(RX_QUEUE);
        self.kick(TX_QUEUE);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_debt = 0;
        if let Err(e) = self.backend.set_offload(0) {
            crate::guest_warn!("net {}: {e}", self.name);
        }
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        self.metrics.pairs()
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let events = [
            Events::with_data(&self.queue_events[RX_QUEUE], EV_RX_QUEUE, EventSet::IN),
            Events::with_data(&self.queue_events[TX_QUEUE], EV_TX_QUEUE, EventSet::IN),
            Events::with_data_raw(
                self.backend.as_raw_fd(),
                EV_BACKEND,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            ),
            Events::with_data(&self.rx_limiter, EV_RX_LIMITER, EventSet::IN),
            Events::with_data(&self.tx_limiter, EV_TX_LIMITER, EventSet::IN),
        ];
        for event in events {
            if let Err(e) = ops.add(event) {
                log::error!(
                    "net {}: cannot register event {}: {e}",
                    self.name,
                    event.data()
                );
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        self.handle_event(events.data());
    }
}

/// Runs one fuzz input through both queues on a socket backend holding fuzzed frames.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    use super::fuzzing::{self, FuzzBytes};

    let mut bytes = FuzzBytes::new(data);
    let Ok((backend, peer)) = UnixDatagram::pair() else {
        return;
    };
    let config = NetConfig {
        tap: "fuzz".into(),
        mac: Some([0x02, 0, 0, 0, 0, 1]),
        mtu: Some(1500),
        ..NetConfig::default()
    };
    let Ok(mut net) = Net::with_backend(backend, config) else {
        return;
    };
    let mem = fuzzing::guest_memory();
    let sizes = [1, 2, 4, 8, 16];
    let rx_size = sizes[usize::from(bytes.u8()) % sizes.len()];
    let tx_size = sizes[usize::from(bytes.u8()) % sizes.len()];
    let rx = fuzzing::fuzzed_queue(&mem, &mut bytes, RX_QUEUE as u64, rx_size);
    let tx = fuzzing::fuzzed_queue(&mem, &mut bytes, TX_QUEUE as u64, tx_size);
    for _ in 0..bytes.u8() % 4 {
        let len = usize::from(bytes.u16() % 2048);
        let _ = peer.send(bytes.take(len));
    }
    let acked_features = bytes.u64() & net.avail_features();
    fuzzing::fill_data(&mem, &mut bytes);
    let activation = Activation {
        mem,
        queues: vec![rx, tx],
        interrupt: Arc::new(super::interrupt::RecordingInterrupt::default()),
        acked_features,
    };
    if net.activate(activation).is_err() {
        return;
    }
    net.process_tx();
    net.process_rx();
    // A second round sees the rings as the first left them.
    net.handle_event(EV_RX_QUEUE);
    net.handle_event(EV_TX_QUEUE);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use super::super::fuzzing;
    use super::super::transport::mmio::MmioInterrupt;
    use super::*;
    use crate::rate_limiter::TokenBucketConfig;

    const MEM_SIZE: u64 = 0x20_0000;
    const RXQ: u64 = 0;
    const TXQ: u64 = 0x4000;
    const NEXT: u32 = VRING_DESC_F_NEXT;
    const WRITE: u32 = VRING_DESC_F_WRITE;

    fn guest() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    fn config() -> NetConfig {
        NetConfig {
            tap: "test0".into(),
            mac: Some([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]),
            mtu: Some(1500),
            ..NetConfig::default()
        }
    }

    fn net_with(config: NetConfig) -> (Net, UnixDatagram) {
        let (backend, peer) = UnixDatagram::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        (Net::with_backend(backend, config).unwrap(), peer)
    }

    /// A header whose num_buffers holds garbage the device must overwrite.
    fn header(tag: u8) -> [u8; VNET_HDR_LEN] {
        let mut hdr = [tag; VNET_HDR_LEN];
        hdr[NUM_BUFFERS_OFFSET..].copy_from_slice(&0xabcdu16.to_le_bytes());
        hdr
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    /// A guest driving `net` through mock queues.
    struct Guest<'m> {
        mem: &'m GuestMemory,
        rx: MockSplitQueue<'m, GuestMemory>,
        tx: MockSplitQueue<'m, GuestMemory>,
        irq: EventFd,
    }

    impl<'m> Guest<'m> {
        fn new(mem: &'m GuestMemory) -> Self {
            Guest {
                mem,
                rx: MockSplitQueue::create(mem, GuestAddress(RXQ), 16),
                tx: MockSplitQueue::create(mem, GuestAddress(TXQ), 16),
                irq: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            }
        }

        fn activation(&self, acked_features: u64) -> Activation {
            Activation {
                mem: self.mem.clone(),
                queues: vec![
                    self.rx.create_queue().unwrap(),
                    self.tx.create_queue().unwrap(),
                ],
                interrupt: Arc::new(MmioInterrupt::new(self.irq.try_clone().unwrap())),
                acked_features,
            }
        }

        fn start(&self, net: &mut Net) {
            net.activate(self.activation(net.avail_features())).unwrap();
        }

        fn used(q: &MockSplitQueue<'m, GuestMemory>) -> Vec<(u32, u32)> {
            let n = q.used().idx().load();
            (0..n)
                .map(|i| {
                    let e = q.used().ring().ref_at(usize::from(i)).unwrap().load();
                    (e.id(), e.len())
                })
                .collect()
        }

        fn rx_used(&self) -> Vec<(u32, u32)> {
            Self::used(&self.rx)
        }

        fn tx_used(&self) -> Vec<(u32, u32)> {
            Self::used(&self.tx)
        }

        fn read(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0; len];
            self.mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            buf
        }

        fn write(&self, addr: u64, data: &[u8]) {
            self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        }

        /// Puts a TX frame split into header and body at `addr` and chains it at `index`.
        fn send(&self, index: u16, addr: u64, hdr: &[u8], body: &[u8]) {
            self.write(addr, hdr);
            self.write(addr + 0x1000, body);
            self.tx
                .add_desc_chains(
                    &[
                        desc(addr, hdr.len() as u32, NEXT, index + 1),
                        desc(addr + 0x1000, body.len() as u32, 0, 0),
                    ],
                    index,
                )
                .unwrap();
        }
    }

    fn recv(peer: &UnixDatagram) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; SPILL_LEN];
        let n = peer.recv(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn packet(hdr: &[u8], body: &[u8]) -> Vec<u8> {
        [hdr, body].concat()
    }

    #[test]
    fn tx_frame_reaches_the_backend_intact_with_its_header() {
        let mem = guest();
        let g = Guest::new(&mem);
        let (mut net, peer) = net_with(config());
        g.start(&mut net);
        let (hdr, body) = (header(0x5a), frame(1000, 3));
        g.send(0, 0x10_0000, &hdr, &body);

        net.process_tx();

        assert_eq!(recv(&peer).unwrap(), packet(&hdr, &body));
        assert_eq!(g.tx_used(), vec![(0, 0)]);
        assert_eq!(g.irq.read().unwrap(), 1);
        assert_eq!(net.counters().tx_frames, 1);
        assert_eq!(net.counters().tx_bytes, 1000);
        let pairs = VirtioDevice::metrics(&net);
        assert!(pairs.contains(&("tx_bytes", 1000)), "{pairs:?}");
        assert!(pairs.contains(&("rx_frames", 0)), "{pairs:?}");
    }

    #[test]
    fn rx_frame_lands_in_the_guest_chain_with_its_length() {
        let mem = guest();
        let g = Guest::new(&mem);
        let (mut net, peer) = net_with(config());
        g.start(&mut net);
        // Header and frame split across two descriptors, the split not on the header boundary.
        g.rx.add_desc_chains(
            &[
                desc(0x10_0000, 8, WRITE | NEXT, 1),
                desc(0x11_0000, 2000, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let (hdr, body) = (header(0x11), frame(500, 9));
        peer.send(&packet(&hdr, &body)).unwrap();

        net.process_rx();

        assert_eq!(g.rx_used(), vec![(0, 512)]);
        let mut want_hdr = hdr;
        want_hdr[NUM_BUFFERS_OFFSET..].copy_from_slice(&1u16.to_le_bytes());
        let mut got = g.read(0x10_0000, 8);
        got.extend(g.read(0x11_0000, 504));
        assert_eq!(got, packet(&want_hdr, &body));
        assert_eq!(g.irq.read().unwrap(), 1);
        assert_eq!(net.counters().rx_frames, 1);
        assert_eq!(net.counters().rx_bytes, 500);
    }

    #[test]
    fn rx_waits_for_buffers_and_resumes_when_the_guest_adds_them() {
        let mem = guest();
        let g = Guest::new(&mem);
        let (net, peer) = net_with(config());
        let net = Arc::new(Mutex::new(net));
        let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
        em.add_subscriber(net.clone());
        g.start(&mut net.lock().unwrap());
        em.run_with_timeout(0).unwrap();

        let (hdr, body) = (header(1), frame(100, 1));
        peer.send(&packet(&hdr, &body)).unwrap();
        em.run_with_timeout(50).unwrap();
        assert!(g.rx_used().is_empty());
        assert_eq!(net.lock().unwrap().counters().rx_frames, 0);

        // The guest adds a buffer and kicks: the waiting frame is delivered.
        g.rx.add_desc_chains(&[desc(0x10_0000, 1526, WRITE, 0)], 0)
            .unwrap();
        net.lock().unwrap().queue_events()[RX_QUEUE]
            .write(1)
            .unwrap();
        em.run_with_timeout(50).unwrap();
        assert_eq!(g.rx_used(), vec![(0, 112)]);
        assert_eq!(g.read(0x10_0000 + 12, 100), body);

        // With a buffer waiting, a new frame is picked up from the backend's edge alone.
        g.rx.add_desc_chains(&[desc(0x10_1000, 1526, WRITE, 0)], 1)
            .unwrap();
        peer.send(&packet(&header(2), &frame(60, 2))).unwrap();
        em.run_with_timeout(50).unwrap();
        assert_eq!(g.rx_used(), vec![(0, 112), (1, 72)]);
        assert_eq!(g.read(0x10_1000 + 12, 60), frame(60, 2));
    }

    #[test]
    fn oversized_rx_frame_is_dropped_and_the_chain_kept_for_the_next() {
        let mem = guest();
        let g = Guest::new(&mem);
        let (mut net, peer) = net_with(config());
        g.start(&mut net);
        g.rx.add_desc_chains(&[desc(0x10_0000, 12 + 100, WRITE, 0)], 0)
            .unwrap();
        peer.send(&packet(&header(1), &frame(101, 1))).unwrap();
        peer.send(&packet(&header(2), &frame(100, 2))).unwrap();

        net.process_rx();

        assert_eq!(g.rx_used(), vec![(0, 112)]);
        assert_eq!(g.read(0x10_0000 + 12, 100), frame(100, 2));
        assert_eq!(net.counters().rx_dropped, 1);
        assert_eq!(net.counters().rx_frames, 1);
    }

    #[test]
    fn short_or_read_only_rx_chains_come_back_empty_and_the_frame_waits() {
        let mem = guest();
        let g = Guest::new(&mem);
        let (mut net, peer) = net_with(config());
        g.start(&mut net);
        g.rx.add_desc_chains(
            &[
                // Shorter than a header.
                desc(0x10_0000, 11, WRITE, 0),
                // Read-only.
                desc(0x10_1000, 1526, 0, 0),
                // Writable, then read-only.
                desc(0x10_2000, 12, WRITE | NEXT, 3),
                desc(0x10_3000, 1514, 0, 0),
            ],
            0,
        )
        .unwrap();
        peer.send(&packet(&header(1), &frame(64, 1))).unwrap();

        net.process_rx();

        assert_eq!(g.rx_used(), vec![(0, 0), (1, 0), (2, 0)]);
        assert_eq!(net.counters().rx_bad_chains, 3);
        assert_eq!(net.counters().rx_frames, 0);
        // The frame stayed in the backend for the next good buffer.
        g.rx.add_desc_chains(&[desc(0x10_4000, 1526, WRITE, 0)], 4)
            .unwrap();
        net.process_rx();
        assert_eq!(g.rx_used()[3], (4, 76));
    }

    #[test]
    fn tx_chain_with_a_write_only_descriptor_is_dropped() {
        let mem = guest();
        let g = Guest::new(&mem);
        let (mut net, peer) = net_with(config());
        g.start(&mut net);
        g.tx.add_desc_chains(
            &[desc(0x10_0000, 12, NEXT, 1), desc(0x10_1000, 100, WRITE, 0)],
            0,
        )
        .unwrap();
        g.send(2, 0x12_0000, &header(3), &frame(50, 3));

        net.process_tx();

        assert_eq!(g.tx_used(), vec![(0, 0), (2, 0)]);
        // Only the good frame went out.
        assert_eq!(recv(&peer).unwrap(), packet(&header(3), &frame(50, 3)));
        assert_eq!(recv(&peer).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(net.counters().tx_bad_chains, 1);
        assert_eq!(net.counters().tx_frames, 1);
    }

    #[test]
    fn descriptors_outside_memory_are_refused_in_both_directions() {
        let mem = guest();
        let g = Guest::new(&mem);
        let (mut net, peer) = net_with(config());
        g.start(&mut net);
        g.tx.add_desc_chains(
            &[
                desc(0x10_0000, 12, NEXT, 1),
                desc(0xffff_ffff_ffff_f000, 100, 0, 0),
                // Straddles the end of memory.
                desc(MEM_SIZE - 20, 100, 0, 0),
            ],
            0,
        )
        .unwrap();
        g.rx.add_desc_chains(&[desc(MEM_SIZE, 1526, WRITE, 0)], 0)
            .unwrap();
        peer.send(&packet(&header(1), &frame(64, 1))).unwrap();

        net.process_tx();
        net.process_rx();

        assert_eq!(g.tx_used(), vec![(0, 0), (2, 0)]);
        assert_eq!(net.counters().tx_bad_chains, 2);
        assert_eq!(recv(&peer).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(g.rx_used(), vec![(0, 0)]);
        assert_eq!(net.counters().rx_bad_chains, 1);
        assert_eq!(net.counters().rx_frames, 0);
    }

    #[test]
    fn looping_chains_are_refused() {
        let mem = guest();
        let g = Guest::new(&mem);
        let (mut net, peer) = net_with(config());
        g.start(&mut net);
        g.tx.add_desc_chains(
            &[desc(0x10_0000, 100, NEXT, 1), desc(0x10_1000, 100, NEXT, 0)],
            0,
        )
        .unwrap();
        g.rx.add_desc_chains(
            &[
                desc(0x10_2000, 100, WRITE | NEXT, 1),
                desc(0x10_3000, 100, WRITE | NEXT, 0),
            ],
            0,
        )
        .unwrap();
        peer.send(&packet(&header(1), &frame(64, 1))).unwrap();

        net.process_tx();
        net.process_rx();

        assert_eq!(g.tx_used(), vec![(0, 0)]);
        assert_eq!(g.rx_used(), vec![(0, 0)]);
        assert_eq!(net.counters().tx_frames, 0);
        assert_eq!(net.counters().rx_frames, 0);
        assert_eq!(recv(&peer).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn tx_chain_over_64k_is_refused_and_indirect_chains_work() {
        let mem = guest();
        let g = Guest::new(&mem);
        let (mut net, peer) = net_with(config());
        g.start(&mut net);
        // Header plus one byte more than the largest frame.
        g.send(0, 0x10_0000, &header(1), &frame(MAX_FRAME_LEN + 1, 1));
        // An indirect table holding header and body.
        let table = 0x1f_0000;
        g.write(
            table,
            vm_memory::ByteValued::as_slice(&desc(0x1e_0000, 12, NEXT, 1)),
        );
        g.write(
            table + 16,
            vm_memory::ByteValued::as_slice(&desc(0x1e_1000, 30, 0, 0)),
        );
        g.write(0x1e_0000, &header(2));
        g.write(0x1e_1000, &frame(30, 2));
        g.tx.add_desc_chains(&[desc(table, 32, VRING_DESC_F_INDIRECT, 0)], 2)
            .unwrap();

        net.process_tx();

        assert_eq!(g.tx_used(), vec![(0, 0), (2, 0)]);
        assert_eq!(recv(&peer).unwrap(), packet(&header(2), &frame(30, 2)));
        assert_eq!(net.counters().tx_bad_chains, 1);
    }

    #[test]
    fn mac_mtu_and_status_are_in_config_space_and_features() {
        let (net, _peer) = net_with(config());
        let f = net.avail_features();
        assert_eq!(f & VIRTIO_NET_F_MAC, VIRTIO_NET_F_MAC);
        assert_eq!(f & VIRTIO_NET_F_MTU, VIRTIO_NET_F_MTU);
        assert_eq!(f & VIRTIO_NET_F_STATUS, VIRTIO_NET_F_STATUS);
        assert_eq!(net.device_type(), TYPE_NET);
        assert_eq!(net.queue_max_sizes(), &[256, 256]);
        let mut cfg = [0u8; 16];
        net.read_config(0, &mut cfg);
        assert_eq!(
            cfg,
            [0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 1, 0, 1, 0, 0xdc, 0x05, 0, 0, 0, 0]
        );
        let mut mtu = [0u8; 2];
        net.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 1500);

        let (net, _peer) = net_with(NetConfig {
            mac: None,
            mtu: None,
            ..config()
        });
        assert_eq!(
            net.avail_features() & (VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU),
            0
        );
        let mut mac = [0xffu8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, [0; 6]);
    }

    #[test]
    fn bad_mac_and_mtu_are_refused_with_the_interface_named() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let err = Net::with_backend(
            a,
            NetConfig {
                mac: Some([0x01, 0, 0x5e, 0, 0, 1]),
                ..config()
            },
        )
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "net test0: MAC address 01:00:5e:00:00:01 is multicast or all zeros"
        );
        let (a, _b) = UnixDatagram::pair().unwrap();
        let err = Net::with_backend(
            a,
            NetConfig {
                mtu: Some(67),
                ..config()
            },
        )
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "net test0: MTU 67 is below the minimum of 68"
        );
    }

    /// A socket backend that claims offloads and records what it is told.
    struct OffloadingBackend {
        socket: UnixDatagram,
        offloads: u32,
        set: Arc<Mutex<Vec<u32>>>,
    }

    impl AsRawFd for OffloadingBackend {
        fn as_raw_fd(&self) -> RawFd {
            self.socket.as_raw_fd()
        }
    }

    impl NetBackend for OffloadingBackend {
        fn supported_offloads(&self) -> u32 {
            self.offloads
        }
        fn set_offload(&mut self, flags: u32) -> Result<(), TapError> {
            self.set.lock().unwrap().push(flags);
            Ok(())
        }
    }

    const OFFLOAD_FEATURES: u64 = VIRTIO_NET_F_CSUM
        | VIRTIO_NET_F_GUEST_CSUM
        | VIRTIO_NET_F_GUEST_TSO4
        | VIRTIO_NET_F_GUEST_TSO6
        | VIRTIO_NET_F_HOST_TSO4
        | VIRTIO_NET_F_HOST_TSO6
        | VIRTIO_NET_F_GUEST_UFO
        | VIRTIO_NET_F_HOST_UFO;

    #[test]
    fn offload_features_follow_the_probe() {
        let (net, _peer) = net_with(config());
        assert_eq!(net.avail_features() & OFFLOAD_FEATURES, 0);
        assert_eq!(net.avail_features() & VIRTIO_NET_F_MRG_RXBUF_BIT, 0);

        let set = Arc::new(Mutex::new(Vec::new()));
        let (socket, _peer) = UnixDatagram::pair().unwrap();
        let backend = OffloadingBackend {
            socket,
            offloads: TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
            set: set.clone(),
        };
        let mut net = Net::with_backend(backend, config()).unwrap();
        let want = OFFLOAD_FEATURES & !(VIRTIO_NET_F_GUEST_UFO | VIRTIO_NET_F_HOST_UFO);
        assert_eq!(net.avail_features() & OFFLOAD_FEATURES, want);

        // The TAP is told exactly the GUEST_* offloads the driver took.
        let mem = guest();
        let g = Guest::new(&mem);
        net.activate(g.activation(
            VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_HOST_TSO6,
        ))
        .unwrap();
        net.reset();
        // Segmentation without checksum offload is not something the TAP can do.
        net.activate(g.activation(VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6))
            .unwrap();
        // UFO was not offered, so a driver claiming it does not get it.
        net.reset();
        net.activate(g.activation(VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_UFO))
            .unwrap();
        assert_eq!(
            *set.lock().unwrap(),
            // Each reset also switches the offloads back off.
            vec![TUN_F_CSUM | TUN_F_TSO4, 0, 0, 0, TUN_F_CSUM]
        );
    }

    const VIRTIO_NET_F_MRG_RXBUF_BIT: u64 = 1 << vnet::VIRTIO_NET_F_MRG_RXBUF;

    #[test]
    fn activation_needs_two_queues_and_reset_allows_a_new_start() {
        let mem = guest();
        let g = Guest::new(&mem);
        let (mut net, peer) = net_with(config());
        let mut activation = g.activation(0);
        activation.queues.pop();
        assert!(matches!(
            net.activate(activation),
            Err(ActivateError::QueueCount { got: 1, want: 2 })
        ));
        g.start(&mut net);
        net.reset();
        // Reset: chains are left alone.
        g.send(0, 0x10_0000, &header(1), &frame(10, 1));
        net.process_tx();
        assert!(g.tx_used().is_empty());
        g.start(&mut net);
        net.process_tx();
        assert_eq!(g.tx_used(), vec![(0, 0)]);
        assert_eq!(recv(&peer).unwrap(), packet(&header(1), &frame(10, 1)));
    }

    fn wait_readable(fd: RawFd) {
        let mut fds = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, length 1.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 2000) };
        assert_eq!(n, 1, "timer never fired");
    }

    fn limited(bytes: u64) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: bytes,
                one_time_burst: 0,
                refill_time_ms: 20,
            }),
            ops: None,
        }
    }

    #[test]
    fn tx_rate_limiter_defers_until_its_timer_fires() {
        let mem = guest();
        let g = Guest::new(&mem);
        let (mut net, peer) = net_with(NetConfig {
            tx_rate_limiter: limited(100),
            ..config()
        });
        g.start(&mut net);
        g.send(0, 0x10_0000, &header(1), &frame(100, 1));
        g.send(2, 0x12_0000, &header(2), &frame(100, 2));

        net.process_tx();
        assert_eq!(g.tx_used(), vec![(0, 0)]);
        assert_eq!(recv(&peer).unwrap(), packet(&header(1), &frame(100, 1)));
        assert_eq!(recv(&peer).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        // A kick while blocked changes nothing.
        net.handle_event(EV_TX_QUEUE);
        assert_eq!(g.tx_used().len(), 1);

        wait_readable(net.tx_limiter.as_raw_fd());
        net.handle_event(EV_TX_LIMITER);
        assert_eq!(g.tx_used(), vec![(0, 0), (2, 0)]);
        assert_eq!(recv(&peer).unwrap(), packet(&header(2), &frame(100, 2)));
        assert_eq!(net.counters().tx_rate_limited, 1);
        assert_eq!(net.counters().tx_frames, 2);
    }

    #[test]
    fn rate_limits_change_at_run_time_and_release_held_frames() {
        let mem = guest();
        let g = Guest::new(&mem);
        let slow = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 100,
                one_time_burst: 0,
                refill_time_ms: 60_000,
            }),
            ops: None,
        };
        let (mut net, peer) = net_with(NetConfig {
            rx_rate_limiter: slow,
            tx_rate_limiter: slow,
            ..config()
        });
        let tx_fd = net.tx_limiter.as_raw_fd();
        g.start(&mut net);
        g.send(0, 0x10_0000, &header(1), &frame(100, 1));
        g.send(2, 0x12_0000, &header(2), &frame(100, 2));
        net.process_tx();
        assert_eq!(g.tx_used(), vec![(0, 0)]);

        // A bad tx setting refuses the whole change, rx included.
        let bad = RateLimiterConfig {
            ops: Some(TokenBucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time_ms: 0,
            }),
            ..RateLimiterConfig::default()
        };
        let err = net
            .set_rate_limiters(Some(RateLimiterConfig::default()), Some(bad))
            .unwrap_err();
        assert!(
            err.to_string().starts_with("net test0: tx rate limiter"),
            "{err}"
        );
        assert_eq!(net.rate_limiter_configs(), (slow, slow));

        // Lifting the tx limit (rx left alone) sends the held frame on the timer path.
        net.set_rate_limiters(None, Some(RateLimiterConfig::default()))
            .unwrap();
        assert_eq!(
            net.rate_limiter_configs(),
            (slow, RateLimiterConfig::default())
        );
        assert_eq!(net.tx_limiter.as_raw_fd(), tx_fd);
        wait_readable(tx_fd);
        net.handle_event(EV_TX_LIMITER);
        assert_eq!(g.tx_used(), vec![(0, 0), (2, 0)]);
        recv(&peer).unwrap();
        assert_eq!(recv(&peer).unwrap(), packet(&header(2), &frame(100, 2)));
    }

    #[test]
    fn rx_rate_limiter_charges_delivered_frames_and_resumes_on_its_timer() {
        let mem = guest();
        let g = Guest::new(&mem);
        let (mut net, peer) = net_with(NetConfig {
            rx_rate_limiter: limited(100),
            ..config()
        });
        g.start(&mut net);
        for i in 0..4u16 {
            let addr = 0x10_0000 + u64::from(i) * 0x1000;
            g.rx.add_desc_chains(&[desc(addr, 1526, WRITE, 0)], i)
                .unwrap();
            peer.send(&packet(&header(1), &frame(100, i as u8)))
                .unwrap();
        }

        // The first frame empties the bucket; the second is delivered before the device learns
        // its size and is owed.
        net.process_rx();
        assert_eq!(g.rx_used(), vec![(0, 112), (1, 112)]);
        assert!(net.rx_limiter.is_blocked());
        net.handle_event(EV_BACKEND);
        assert_eq!(g.rx_used().len(), 2);

        // Each refill pays the debt and lets one more frame through, which is owed in turn.
        wait_readable(net.rx_limiter.as_raw_fd());
        net.handle_event(EV_RX_LIMITER);
        assert_eq!(g.rx_used().len(), 3);
        assert!(net.rx_limiter.is_blocked());
        wait_readable(net.rx_limiter.as_raw_fd());
        net.handle_event(EV_RX_LIMITER);
        assert_eq!(g.rx_used(), vec![(0, 112), (1, 112), (2, 112), (3, 112)]);
        assert_eq!(g.read(0x10_3000 + 12, 100), frame(100, 3));
        assert_eq!(net.counters().rx_frames, 4);
        assert!(net.counters().rx_rate_limited >= 3);
    }

    #[test]
    fn new_on_a_real_tap_offers_what_the_probe_found() {
        let net = match Net::new(NetConfig {
            tap: "tsrtest1".into(),
            ..config()
        }) {
            Ok(net) => net,
            Err(e) => {
                println!("SKIPPED: new_on_a_real_tap_offers_what_the_probe_found: {e}");
                return;
            }
        };
        let f = net.avail_features();
        assert_eq!(
            f & (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_HOST_TSO6),
            VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_HOST_TSO6
        );
        assert_eq!(net.name(), "tsrtest1");
    }

    #[test]
    fn fuzz_inputs_replay_without_panics() {
        for input in fuzzing::seeded_inputs(0x6e65_7400, 3000, 512) {
            fuzz_one(&input);
        }
    }

    #[test]
    fn read_config_past_the_end_is_zero() {
        let (net, _peer) = net_with(config());
        let mut data = [0xffu8; 4];
        net.read_config(u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
