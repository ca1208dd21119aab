//! The connection map behind the vsock device, in Firecracker's hybrid unix-socket shape: host
//! processes connect to the device's socket and write `CONNECT <port>\n`; guest connections to
//! port P reach a host listener at `<uds_path>_P`.
//!
//! The muxer owns every host stream. Streams are watched on the VMM event loop with the interest
//! their connection asks for; a closed stream stays open until [`Muxer::sync_epoll`] took it off
//! the loop, so a reused fd number never meets a stale registration. Packets for the guest are
//! pending per connection (bounded by the connection cap) plus a bounded queue of RSTs.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::Writer;

use super::connection::{Connection, Rx, Verdict};
use super::packet::{op, write_packet, Header, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::VsockMetrics;
use crate::virtio::metrics::bump;

/// The most connections (established or being set up) the device keeps.
pub const MAX_CONNS: usize = 1024;
/// The most host streams that have not sent their CONNECT line yet.
const MAX_PENDING: usize = 64;
/// Longest CONNECT line: "CONNECT 4294967295\n" is 19 bytes.
const MAX_LINE: usize = 32;
/// How long a host process has to send its CONNECT line.
const LINE_TIMEOUT: Duration = Duration::from_secs(2);
/// TX processing pauses while this many RSTs wait for guest buffers...
const RST_BACKLOG: usize = 256;
/// ...and RSTs beyond this many (host-side churn the guest does not drain) are dropped.
const RST_QUEUE_MAX: usize = RST_BACKLOG + MAX_CONNS;
/// Where the local ports of host-initiated connections start.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Event data for host streams on the event loop.
pub const STREAM_TOKEN: u32 = 5;

/// (local port, peer port).
type Key = (u32, u32);

/// A host stream that has not said which guest port it wants yet.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<Key, Connection>,
    fd_conn: HashMap<RawFd, Key>,
    pending: HashMap<RawFd, PendingHost>,
    rst_queue: VecDeque<Header>,
    rx_ready: VecDeque<Key>,
    /// Closed streams still registered with the event loop.
    graveyard: Vec<UnixStream>,
    registered: HashMap<RawFd, EventSet>,
    next_port: u32,
    /// The listener may hold connections we have not accepted.
    pub needs_accept: bool,
    /// The device's counters (the device bumps the packet ones).
    pub metrics: VsockMetrics,
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> Self {
        Self {
            guest_cid,
            uds_path,
            listener,
            conns: HashMap::new(),
            fd_conn: HashMap::new(),
            pending: HashMap::new(),
            rst_queue: VecDeque::new(),
            rx_ready: VecDeque::new(),
            graveyard: Vec::new(),
            registered: HashMap::new(),
            next_port: FIRST_LOCAL_PORT,
            needs_accept: false,
            metrics: VsockMetrics::default(),
        }
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    pub fn has_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_ready.is_empty()
    }

    /// Whether the guest must drain RX before we take more TX packets (each may need an RST).
    pub fn tx_backlogged(&self) -> bool {
        self.rst_queue.len() >= RST_BACKLOG
    }

    pub fn has_deadlines(&self) -> bool {
        !self.pending.is_empty() || self.conns.values().any(|c| c.deadline().is_some())
    }

    /// Accepts waiting host connections while there is room.
    pub fn accept(&mut self, now: Instant) {
        while self.needs_accept
            && self.conns.len() + self.pending.len() < MAX_CONNS
            && self.pending.len() < MAX_PENDING
        {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::warn!("vsock: cannot make a host connection non-blocking: {e}");
                        continue;
                    }
                    let pending = PendingHost {
                        stream,
                        line: Vec::with_capacity(MAX_LINE),
                        deadline: now + LINE_TIMEOUT,
                    };
                    self.pending.insert(pending.stream.as_raw_fd(), pending);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    }
                    self.needs_accept = false;
                }
            }
        }
    }

    /// Handles epoll `events` on host stream `fd`.
    pub fn on_stream_event(&mut self, fd: RawFd, events: EventSet, now: Instant) {
        if self.pending.contains_key(&fd) {
            self.read_connect_line(fd, now);
        } else if let Some(&key) = self.fd_conn.get(&fd) {
            let verdict = self.conns.get_mut(&key).map(|c| c.on_host(events));
            self.apply(key, verdict.unwrap_or(Verdict::Close));
        }
    }

    /// Reads `CONNECT <port>\n` a byte at a time, so data behind it stays in the stream.
    fn read_connect_line(&mut self, fd: RawFd, now: Instant) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let port = loop {
            let mut byte = [0u8; 1];
            match (&p.stream).read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&p.line),
                Ok(1) if p.line.len() < MAX_LINE => p.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EOF, an error or a line too long.
                _ => break None,
            }
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let Some(peer_port) = port.filter(|_| self.conns.len() < MAX_CONNS) else {
            log::debug!("vsock: closing a host connection without a valid CONNECT line");
            bump(&mut self.metrics.conns_refused, 1);
            self.retire(p.stream);
            return;
        };
        let local_port = self.alloc_port(peer_port);
        let conn = Connection::host_initiated(p.stream, local_port, peer_port, now);
        self.insert(conn);
    }

    /// A local port that, with `peer_port`, names no live connection.
    fn alloc_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            // At most MAX_CONNS keys are taken, so this ends.
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    fn insert(&mut self, conn: Connection) {
        bump(&mut self.metrics.conns_opened, 1);
        let key = (conn.local_port, conn.peer_port);
        self.fd_conn.insert(conn.fd(), key);
        self.conns.insert(key, conn);
        self.touch(key);
    }

    /// Handles a packet from the guest (`payload` is empty unless it is OP_RW).
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            bump(&mut self.metrics.tx_dropped, 1);
            crate::guest_debug!(
                "vsock: dropped a packet from cid {} to cid {}",
                hdr.src_cid,
                hdr.dst_cid
            );
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ == TYPE_STREAM {
            if let Some(conn) = self.conns.get_mut(&key) {
                let verdict = conn.on_guest(hdr, payload);
                self.apply(key, verdict);
                return;
            }
            if hdr.op == op::REQUEST {
                self.connect_to_host(hdr);
                return;
            }
        }
        if hdr.op != op::RST {
            self.push_rst(key);
        }
    }

    /// The guest connects to port P: we connect to `<uds_path>_P`.
    fn connect_to_host(&mut self, hdr: &Header) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.len() + self.pending.len() >= MAX_CONNS {
            crate::guest_debug!(
                "vsock: refusing a guest connection: {MAX_CONNS} connections are open"
            );
            bump(&mut self.metrics.conns_refused, 1);
            self.push_rst(key);
            return;
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => self.insert(Connection::guest_initiated(stream, hdr)),
            Err(e) => {
                crate::guest_debug!(
                    "vsock: guest connection to {}: {e}",
                    Path::new(&path).display()
                );
                bump(&mut self.metrics.conns_refused, 1);
                self.push_rst(key);
            }
        }
    }

    /// Writes the next packet for the guest into `writer`; `None` if there is none (or the
    /// buffer is too small for it). `scratch` holds a packet's payload.
    pub fn write_rx(
        &mut self,
        writer: &mut Writer,
        scratch: &mut [u8],
        now: Instant,
    ) -> Option<u32> {
        let room = writer
            .available_bytes()
            .checked_sub(HDR_LEN)?
            .min(scratch.len());
        let mut idle = Vec::new();
        let written = loop {
            if let Some(hdr) = self.rst_queue.pop_front() {
                break write_packet(writer, &hdr, &[]).ok();
            }
            let Some(key) = self.rx_ready.pop_front() else {
                break None;
            };
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            match conn.next_rx(&mut scratch[..room], now) {
                Rx::Packet { op, flags, len } => {
                    let hdr = conn.header(self.guest_cid, op, flags, len);
                    self.touch(key);
                    break write_packet(writer, &hdr, &scratch[..len]).ok();
                }
                // It may still want to send, but not into this buffer: retry on the next one.
                Rx::Nothing => idle.push(key),
                Rx::Reset => self.kill(key, true),
            }
        };
        for key in idle {
            self.touch(key);
        }
        written
    }

    /// Gives up on host processes and guests that kept us waiting.
    pub fn sweep(&mut self, now: Instant) {
        let expired: Vec<RawFd> = (self.pending.iter())
            .filter(|(_, p)| p.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            if let Some(p) = self.pending.remove(&fd) {
                bump(&mut self.metrics.conns_refused, 1);
                self.retire(p.stream);
            }
        }
        let verdicts: Vec<(Key, Verdict)> = (self.conns.iter_mut())
            .map(|(key, c)| (*key, c.expire(now)))
            .filter(|(_, v)| *v != Verdict::Keep)
            .collect();
        for (key, verdict) in verdicts {
            self.apply(key, verdict);
        }
    }

    /// Closes every host stream and forgets every packet (device reset).
    pub fn reset(&mut self) {
        let conns: Vec<Connection> = self.conns.drain().map(|(_, c)| c).collect();
        bump(&mut self.metrics.conns_closed, conns.len() as u64);
        for conn in conns {
            self.retire(conn.into_stream());
        }
        let pending: Vec<PendingHost> = self.pending.drain().map(|(_, p)| p).collect();
        for p in pending {
            self.retire(p.stream);
        }
        self.fd_conn.clear();
        self.rst_queue.clear();
        self.rx_ready.clear();
    }

    /// Brings the event loop's view of the host streams in line with what they want.
    pub fn sync_epoll(&mut self, ops: &mut EventOps) {
        for stream in self.graveyard.drain(..) {
            let fd = stream.as_raw_fd();
            if self.registered.remove(&fd).is_some() {
                if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                    crate::guest_warn!("vsock: cannot unwatch a host stream: {e:?}");
                }
            }
        }
        let wanted = (self.conns.values().map(|c| (c.fd(), c.interest())))
            .chain(self.pending.keys().map(|fd| (*fd, EventSet::IN)));
        for (fd, want) in wanted {
            let have = self.registered.get(&fd).copied();
            let events = Events::with_data_raw(fd, STREAM_TOKEN, want);
            let result = match have {
                Some(h) if h == want => continue,
                None if want.is_empty() => continue,
                None => ops.add(events),
                Some(_) if want.is_empty() => ops.remove(events),
                Some(_) => ops.modify(events),
            };
            match result {
                Ok(()) if want.is_empty() => drop(self.registered.remove(&fd)),
                Ok(()) => drop(self.registered.insert(fd, want)),
                Err(e) => crate::guest_warn!("vsock: cannot watch a host stream: {e:?}"),
            }
        }
    }

    fn apply(&mut self, key: Key, verdict: Verdict) {
        match verdict {
            Verdict::Keep => self.touch(key),
            Verdict::Close => self.kill(key, false),
            Verdict::Reset => self.kill(key, true),
        }
    }

    /// Queues the connection for RX if it has something to send.
    fn touch(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.queued && conn.wants_rx() {
                conn.queued = true;
                self.rx_ready.push_back(key);
            }
        }
    }

    fn kill(&mut self, key: Key, rst: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        self.fd_conn.remove(&conn.fd());
        if conn.queued {
            self.rx_ready.retain(|k| *k != key);
        }
        self.retire(conn.into_stream());
        if rst {
            bump(&mut self.metrics.conns_reset, 1);
            self.push_rst(key);
        } else {
            bump(&mut self.metrics.conns_closed, 1);
        }
        self.needs_accept = true;
    }

    fn push_rst(&mut self, (local_port, peer_port): Key) {
        if self.rst_queue.len() >= RST_QUEUE_MAX {
            crate::guest_debug!("vsock: the guest is not taking packets; dropped an RST");
            bump(&mut self.metrics.rst_dropped, 1);
            return;
        }
        self.rst_queue.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        });
    }

    /// Closes a host stream now; its fd stays open until the event loop stops watching it.
    fn retire(&mut self, stream: UnixStream) {
        let _ = stream.shutdown(Shutdown::Both);
        if self.registered.contains_key(&stream.as_raw_fd()) {
            self.graveyard.push(stream);
        }
    }
}

/// `CONNECT <port>` (the newline already stripped) to the port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"CONNECT ")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Connects to a unix stream listener without blocking the event loop: a listener whose backlog
/// is full refuses (EAGAIN) instead of stalling us.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT +5"), None);
        assert_eq!(parse_connect(b"CONNECT "), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(b"CONNECT 5 "), None);
    }

    #[test]
    fn connect_refuses_long_and_missing_paths() {
        let long = PathBuf::from("/tmp/".to_string() + &"x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let missing = Path::new("/nonexistent-tessera-vsock-test");
        assert!(connect_nonblocking(missing).is_err());
    }
}
