//! One stream connection between a guest socket and a host unix stream: its state machine
//! (virtio 1.2, 5.10.6.3) and credit accounting (5.10.6.3.1).
//!
//! Guest data the host stream cannot take now waits in a buffer bounded by the [`BUF_ALLOC`] we
//! advertise; a guest that sends past its credit is reset. Host data goes to the guest only
//! within the guest's credit; out of credit, the connection asks for more once and stops
//! watching the stream until the guest reports progress.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use event_manager::EventSet;

use super::packet::{
    op, Header, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Receive buffer advertised to the guest: the most guest data we hold for a slow host.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Tell the guest about forwarded bytes once this many went unreported.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// How long the guest has to answer our REQUEST, or our full SHUTDOWN with an RST.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: our REQUEST is waiting for the guest's RESPONSE.
    Connecting {
        request_sent: bool,
    },
    /// Guest-initiated: the host stream is connected, our RESPONSE is not sent yet.
    Responding,
    Established,
}

/// What the muxer does with a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Drop it without telling the guest (it already knows, or never knew).
    Close,
    /// Drop it and send the guest an RST.
    Reset,
}

/// The connection's next packet for the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum Rx {
    /// `len` payload bytes were placed at the start of the scratch buffer.
    Packet {
        op: u16,
        flags: u32,
        len: usize,
    },
    Nothing,
    Reset,
}

pub struct Connection {
    pub local_port: u32,
    pub peer_port: u32,
    stream: UnixStream,
    state: State,
    /// When the guest's silence makes us give up (see [`PEER_TIMEOUT`]).
    deadline: Option<Instant>,
    /// Guest data the host stream has not taken yet.
    tx_buf: VecDeque<u8>,
    /// Guest bytes handed to the host, and the value the guest last heard.
    fwd_cnt: Wrapping<u32>,
    fwd_reported: Wrapping<u32>,
    /// Host bytes sent to the guest, and the guest's view of its receive buffer.
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    credit_update: bool,
    credit_request_sent: bool,
    /// SHUTDOWN flags to send, and those the guest sent.
    shutdown_pending: u32,
    peer_shutdown: u32,
    host_readable: bool,
    host_eof: bool,
    host_hup: bool,
    host_write_shut: bool,
    /// In the muxer's RX queue.
    pub queued: bool,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            local_port,
            peer_port,
            stream,
            state,
            deadline: None,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_reported: Wrapping(0),
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            credit_update: false,
            credit_request_sent: false,
            shutdown_pending: 0,
            peer_shutdown: 0,
            host_readable: false,
            host_eof: false,
            host_hup: false,
            host_write_shut: false,
            queued: false,
        }
    }

    /// A host process asked for guest port `peer_port`; we are `local_port`.
    pub fn host_initiated(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        now: Instant,
    ) -> Self {
        let mut conn = Self::new(
            stream,
            local_port,
            peer_port,
            State::Connecting {
                request_sent: false,
            },
        );
        conn.deadline = Some(now + PEER_TIMEOUT);
        conn
    }

    /// The guest's REQUEST `hdr` reached a host listener over `stream`.
    pub fn guest_initiated(stream: UnixStream, hdr: &Header) -> Self {
        let mut conn = Self::new(stream, hdr.dst_port, hdr.src_port, State::Responding);
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        conn
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Bytes the guest can still take from us.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wants_host_data(&self) -> bool {
        self.state == State::Established && !self.host_eof && self.peer_shutdown & SHUTDOWN_RCV == 0
    }

    /// Whether [`next_rx`](Self::next_rx) has something to send.
    pub fn wants_rx(&self) -> bool {
        matches!(
            self.state,
            State::Connecting {
                request_sent: false
            } | State::Responding
        ) || self.shutdown_pending != 0
            || self.credit_update
            || (self.wants_host_data()
                && self.host_readable
                && (self.peer_credit() > 0 || !self.credit_request_sent))
    }

    /// The epoll events to watch on the host stream; empty means "not registered". Reading is
    /// watched only when we could forward what arrives, so a level-triggered fd never spins.
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.host_hup {
            return set;
        }
        if self.wants_host_data() && !self.host_readable && self.peer_credit() > 0 {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// A header from us to the guest; it carries our current credit.
    pub fn header(&mut self, guest_cid: u64, op: u16, flags: u32, len: usize) -> Header {
        self.fwd_reported = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            // Payloads are bounded by MAX_PAYLOAD.
            len: len as u32,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Produces the next packet for the guest, reading host data into `scratch` (whose length
    /// is the room left in the guest's buffer).
    pub fn next_rx(&mut self, scratch: &mut [u8], now: Instant) -> Rx {
        let packet = |op, flags| Rx::Packet { op, flags, len: 0 };
        match self.state {
            State::Connecting {
                request_sent: false,
            } => {
                self.state = State::Connecting { request_sent: true };
                return packet(op::REQUEST, 0);
            }
            State::Responding => {
                self.state = State::Established;
                return packet(op::RESPONSE, 0);
            }
            _ => {}
        }
        if self.shutdown_pending != 0 {
            let flags = std::mem::take(&mut self.shutdown_pending);
            if flags == SHUTDOWN_BOTH {
                self.deadline = Some(now + PEER_TIMEOUT);
            }
            return packet(op::SHUTDOWN, flags);
        }
        if self.credit_update {
            self.credit_update = false;
            return packet(op::CREDIT_UPDATE, 0);
        }
        if !self.wants_host_data() || !self.host_readable {
            return Rx::Nothing;
        }
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            if self.credit_request_sent {
                return Rx::Nothing;
            }
            self.credit_request_sent = true;
            return packet(op::CREDIT_REQUEST, 0);
        }
        let max = scratch.len().min(credit);
        match (&self.stream).read(&mut scratch[..max]) {
            Ok(0) if max > 0 => {
                // The host will send no more; if it is gone altogether it cannot receive either.
                self.host_eof = true;
                let flags = SHUTDOWN_SEND | if self.host_hup { SHUTDOWN_RCV } else { 0 };
                self.shutdown_pending = flags;
                self.next_rx(scratch, now)
            }
            Ok(len) if len > 0 => {
                self.tx_cnt += len as u32;
                Rx::Packet {
                    op: op::RW,
                    flags: 0,
                    len,
                }
            }
            Ok(_) => Rx::Nothing,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                self.host_readable = false;
                Rx::Nothing
            }
            Err(e) => {
                crate::guest_debug!("vsock: host stream of port {} failed: {e}", self.local_port);
                Rx::Reset
            }
        }
    }

    /// Handles a packet the guest sent on this connection.
    pub fn on_guest(&mut self, hdr: &Header, payload: &[u8]) -> Verdict {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_request_sent = false;
        }
        match (self.state, hdr.op) {
            (_, op::RST) => Verdict::Close,
            (State::Connecting { request_sent: true }, op::RESPONSE) => {
                self.state = State::Established;
                self.deadline = None;
                let line = format!("OK {}\n", self.local_port);
                // A fresh stream's send buffer is empty: a short write means the host is gone.
                match send(&self.stream, line.as_bytes()) {
                    Ok(n) if n == line.len() => Verdict::Keep,
                    _ => Verdict::Reset,
                }
            }
            (State::Established, op::RW) if self.peer_shutdown & SHUTDOWN_SEND == 0 => {
                self.push(payload)
            }
            (State::Established, op::CREDIT_UPDATE) => Verdict::Keep,
            (State::Established, op::CREDIT_REQUEST) => {
                self.credit_update = true;
                Verdict::Keep
            }
            (State::Established, op::SHUTDOWN) => {
                self.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                self.settle()
            }
            _ => Verdict::Reset,
        }
    }

    /// Handles epoll events on the host stream.
    pub fn on_host(&mut self, events: EventSet) -> Verdict {
        if events.contains(EventSet::ERROR) {
            return Verdict::Reset;
        }
        if events.contains(EventSet::HANG_UP) {
            // The host is gone: what it wrote can still go to the guest, nothing can go to it.
            self.host_hup = true;
            self.tx_buf.clear();
            return match self.state {
                State::Established if self.wants_host_data() => {
                    self.host_readable = true;
                    Verdict::Keep
                }
                State::Established => {
                    self.shutdown_pending = SHUTDOWN_BOTH;
                    Verdict::Keep
                }
                State::Connecting {
                    request_sent: false,
                } => Verdict::Close,
                _ => Verdict::Reset,
            };
        }
        if events.contains(EventSet::IN) {
            self.host_readable = true;
        }
        if events.contains(EventSet::OUT) {
            return self.flush();
        }
        Verdict::Keep
    }

    /// Gives up on a guest that did not answer in time.
    pub fn expire(&mut self, now: Instant) -> Verdict {
        match (self.deadline, self.state) {
            (
                Some(t),
                State::Connecting {
                    request_sent: false,
                },
            ) if t <= now => Verdict::Close,
            (Some(t), _) if t <= now => Verdict::Reset,
            _ => Verdict::Keep,
        }
    }

    /// Takes guest data: straight to the host when nothing waits before it, the rest buffered.
    fn push(&mut self, data: &[u8]) -> Verdict {
        if self.tx_buf.len() + data.len() > BUF_ALLOC as usize {
            crate::guest_debug!(
                "vsock: guest overran its credit on port {}",
                self.local_port
            );
            return Verdict::Reset;
        }
        let mut written = 0;
        if self.tx_buf.is_empty() && !data.is_empty() {
            match send(&self.stream, data) {
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Verdict::Reset,
            }
        }
        self.tx_buf.extend(&data[written..]);
        self.forwarded(written);
        Verdict::Keep
    }

    /// Writes buffered guest data to the host stream while it takes it.
    fn flush(&mut self) -> Verdict {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match send(&self.stream, front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Verdict::Reset,
            }
        }
        self.settle()
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += n as u32;
        if (self.fwd_cnt - self.fwd_reported).0 >= CREDIT_UPDATE_THRESHOLD {
            self.credit_update = true;
        }
    }

    /// Applies the guest's shutdown once its data reached the host: a guest done sending gets
    /// the host stream's write side closed; a guest done with both directions gets an RST.
    fn settle(&mut self) -> Verdict {
        if !self.tx_buf.is_empty() {
            return Verdict::Keep;
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            return Verdict::Reset;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Verdict::Keep
    }
}

/// Writes to a host stream without raising SIGPIPE when the host has gone.
fn send(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes and `stream` keeps the fd open.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
