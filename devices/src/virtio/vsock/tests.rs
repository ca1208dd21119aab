//! The device on the real event loop, with real unix sockets in a temporary directory and a
//! mocked guest driving the queues.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::connection::BUF_ALLOC;
use super::packet::{op, Header, HDR_LEN, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::virtio::fuzzing;
use crate::virtio::interrupt::RecordingInterrupt;

const CID: u64 = 3;
const MEM_SIZE: u64 = 0x40_0000;
const BUF_START: u64 = 0x10_0000;

/// A directory removed with everything in it.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tessera-vsock-{}-{seq}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A guest driver plus the VMM's event loop around one vsock device.
struct Harness {
    _dir: TempDir,
    uds: PathBuf,
    mem: &'static GuestMemory,
    queues: Vec<MockSplitQueue<'static, GuestMemory>>,
    dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    next_desc: [u16; 2],
    next_buf: u64,
    /// Buffer address of each RX chain head.
    rx_bufs: HashMap<u16, u64>,
    seen: [u16; 2],
}

fn guest_hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
}

impl Harness {
    fn new() -> Self {
        let dir = TempDir::new();
        let uds = dir.0.join("v.sock");
        let mem: &'static GuestMemory = Box::leak(Box::new(
            GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap(),
        ));
        let queues = (0..3)
            .map(|i| MockSplitQueue::create(mem, GuestAddress(i * 0x1_0000), 256))
            .collect();
        let config = VsockConfig {
            guest_cid: CID,
            uds_path: uds.clone(),
        };
        let dev = Arc::new(Mutex::new(Vsock::new(config).unwrap()));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        Self {
            _dir: dir,
            uds,
            mem,
            queues,
            dev,
            em,
            next_desc: [0; 2],
            next_buf: BUF_START,
            rx_bufs: HashMap::new(),
            seen: [0; 2],
        }
    }

    fn activated() -> Self {
        let mut h = Self::new();
        h.activate();
        h
    }

    fn activate(&mut self) {
        let queues: Vec<Queue> = self
            .queues
            .iter()
            .map(|q| q.create_queue().unwrap())
            .collect();
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: Arc::new(RecordingInterrupt::default()),
            acked_features: crate::virtio::VIRTIO_F_VERSION_1,
        };
        self.dev.lock().unwrap().activate(activation).unwrap();
        self.pump();
    }

    fn alloc(&mut self, len: u64) -> u64 {
        if self.next_buf + len > MEM_SIZE {
            self.next_buf = BUF_START;
        }
        let addr = self.next_buf;
        self.next_buf += len.next_multiple_of(16);
        addr
    }

    /// Puts a chain on queue `q` (its `next` fields relative to the chain) and returns its head.
    fn add_chain(&mut self, q: usize, descs: &[RawDescriptor]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc[q] + n > 256 {
            self.next_desc[q] = 0;
        }
        let head = self.next_desc[q];
        let descs: Vec<RawDescriptor> = descs
            .iter()
            .map(|d| {
                let d = Descriptor::from(*d);
                let next = if d.flags() & VRING_DESC_F_NEXT as u16 != 0 {
                    head + d.next()
                } else {
                    0
                };
                RawDescriptor::from(Descriptor::new(d.addr().0, d.len(), d.flags(), next))
            })
            .collect();
        self.queues[q].add_desc_chains(&descs, head).unwrap();
        self.next_desc[q] += n;
        head
    }

    fn kick(&mut self, q: usize) {
        self.dev.lock().unwrap().queue_events()[q].write(1).unwrap();
        self.pump();
    }

    /// Runs the event loop until it goes quiet; a device that keeps it busy fails the test.
    fn pump(&mut self) {
        for _ in 0..200 {
            if self.em.run_with_timeout(10).unwrap() == 0 {
                return;
            }
        }
        panic!("the vsock device keeps the event loop busy");
    }

    /// Sends a guest packet (header and payload in separate descriptors, as Linux does).
    fn send(&mut self, mut hdr: Header, payload: &[u8]) {
        hdr.len = payload.len() as u32;
        let addr = self.alloc(HDR_LEN as u64 + payload.len() as u64);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(addr))
            .unwrap();
        let data = addr + HDR_LEN as u64;
        self.mem.write_slice(payload, GuestAddress(data)).unwrap();
        if payload.is_empty() {
            self.add_chain(TXQ, &[desc(addr, HDR_LEN as u32, 0, 0)]);
        } else {
            let len = payload.len() as u32;
            let chain = [desc(addr, 44, VRING_DESC_F_NEXT, 1), desc(data, len, 0, 0)];
            self.add_chain(TXQ, &chain);
        }
        self.kick(TXQ);
    }

    /// Gives the device `count` RX buffers of `size` bytes.
    fn give_rx(&mut self, count: usize, size: u32) {
        for _ in 0..count {
            let addr = self.alloc(u64::from(size));
            let head = self.add_chain(RXQ, &[desc(addr, size, VRING_DESC_F_WRITE, 0)]);
            self.rx_bufs.insert(head, addr);
        }
        self.kick(RXQ);
    }

    /// New used entries of queue `q` as (head, len).
    fn used(&mut self, q: usize) -> Vec<(u16, u32)> {
        let used = self.queues[q].used();
        let idx = used.idx().load();
        let mut out = Vec::new();
        while self.seen[q] != idx {
            let slot = usize::from(self.seen[q] % 256);
            let elem = used.ring().ref_at(slot).unwrap().load();
            out.push((elem.id() as u16, elem.len()));
            self.seen[q] = self.seen[q].wrapping_add(1);
        }
        out
    }

    /// Packets the device put in RX buffers since the last call.
    fn rx(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.used(RXQ)
            .into_iter()
            .map(|(head, len)| {
                let addr = self.rx_bufs[&head];
                let mut raw = [0u8; HDR_LEN];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let hdr = Header::from_bytes(&raw);
                assert_eq!(len as usize, HDR_LEN + hdr.len as usize);
                let mut payload = vec![0u8; hdr.len as usize];
                let data = GuestAddress(addr + HDR_LEN as u64);
                self.mem.read_slice(&mut payload, data).unwrap();
                (hdr, payload)
            })
            .collect()
    }

    /// The one packet the device sent since the last call.
    fn rx_one(&mut self) -> Header {
        let packets = self.rx();
        assert_eq!(packets.len(), 1, "{packets:?}");
        packets[0].0
    }

    fn host_connect(&self, line: &[u8]) -> UnixStream {
        let mut host = UnixStream::connect(&self.uds).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        host.write_all(line).unwrap();
        host
    }

    /// A host-initiated connection to guest port 1234, established; returns the host stream
    /// and the device's local port.
    fn establish_host(&mut self, guest_buf_alloc: u32) -> (UnixStream, u32) {
        let mut host = self.host_connect(b"CONNECT 1234\n");
        self.give_rx(8, 4096);
        let req = self.rx_one();
        assert_eq!(
            (req.op, req.dst_port, req.dst_cid),
            (op::REQUEST, 1234, CID)
        );
        let local = req.src_port;
        let mut resp = guest_hdr(op::RESPONSE, 1234, local);
        resp.buf_alloc = guest_buf_alloc;
        self.send(resp, &[]);
        let mut line = [0u8; 32];
        let n = host.read(&mut line).unwrap();
        assert_eq!(&line[..n], format!("OK {local}\n").as_bytes());
        (host, local)
    }

    fn connections(&self) -> usize {
        self.dev.lock().unwrap().muxer.connection_count()
    }
}

fn read_exactly(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

fn assert_closed(stream: &mut UnixStream) {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("host stream still open: {other:?}"),
    }
}

#[test]
fn host_initiated_connection_carries_data_both_ways() {
    let mut h = Harness::activated();
    let (mut host, local) = h.establish_host(64 * 1024);
    assert!(local >= 1 << 30);

    host.write_all(b"hello").unwrap();
    h.pump();
    let packets = h.rx();
    assert_eq!(packets.len(), 1);
    let (hdr, payload) = &packets[0];
    assert_eq!(
        (hdr.op, hdr.src_cid, hdr.src_port, hdr.dst_port),
        (op::RW, 2, local, 1234)
    );
    assert_eq!(
        (hdr.buf_alloc, payload.as_slice()),
        (BUF_ALLOC, &b"hello"[..])
    );

    h.send(guest_hdr(op::RW, 1234, local), b"world");
    assert_eq!(read_exactly(&mut host, 5), b"world");

    // The guest closes: the device answers RST and closes the host stream.
    let mut shutdown = guest_hdr(op::SHUTDOWN, 1234, local);
    shutdown.flags = SHUTDOWN_BOTH;
    h.send(shutdown, &[]);
    let rst = h.rx_one();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, local, 1234));
    assert_closed(&mut host);
    assert_eq!(h.connections(), 0);

    let m = h.dev.lock().unwrap().counters();
    assert_eq!((m.rx_bytes, m.tx_bytes), (5, 5));
    // REQUEST, RW, RST out; RESPONSE, RW, SHUTDOWN in.
    assert_eq!((m.rx_packets, m.tx_packets), (3, 3));
    assert_eq!((m.conns_opened, m.conns_reset, m.conns_closed), (1, 1, 0));
    let pairs = VirtioDevice::metrics(&*h.dev.lock().unwrap());
    assert!(pairs.contains(&("conns_opened", 1)), "{pairs:?}");
}

#[test]
fn guest_rst_to_request_closes_the_host_stream() {
    let mut h = Harness::activated();
    let mut host = h.host_connect(b"CONNECT 77\n");
    h.give_rx(1, 4096);
    let req = h.rx_one();
    h.send(guest_hdr(op::RST, 77, req.src_port), &[]);
    assert_closed(&mut host);
    assert!(h.rx().is_empty(), "no RST answers an RST");
    let m = h.dev.lock().unwrap().counters();
    assert_eq!((m.conns_opened, m.conns_closed, m.conns_reset), (1, 1, 0));
}

#[test]
fn guest_initiated_connection_reaches_the_port_listener() {
    let mut h = Harness::activated();
    let listener = UnixListener::bind(format!("{}_5000", h.uds.display())).unwrap();
    h.give_rx(8, 4096);
    h.send(guest_hdr(op::REQUEST, 999, 5000), &[]);
    let resp = h.rx_one();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (op::RESPONSE, 5000, 999)
    );
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

    h.send(guest_hdr(op::RW, 999, 5000), b"ping");
    assert_eq!(read_exactly(&mut host, 4), b"ping");
    host.write_all(b"pong").unwrap();
    h.pump();
    let packets = h.rx();
    assert_eq!(packets[0].1, b"pong");

    // The host hangs up: the guest hears that the host neither sends nor receives.
    drop(host);
    h.pump();
    let shutdown = h.rx_one();
    assert_eq!((shutdown.op, shutdown.flags), (op::SHUTDOWN, SHUTDOWN_BOTH));
    h.send(guest_hdr(op::RST, 999, 5000), &[]);
    assert_eq!(h.connections(), 0);
}

#[test]
fn guest_half_close_shuts_the_host_write_side() {
    let mut h = Harness::activated();
    let (mut host, local) = h.establish_host(64 * 1024);
    h.send(guest_hdr(op::RW, 1234, local), b"last");
    let mut shutdown = guest_hdr(op::SHUTDOWN, 1234, local);
    shutdown.flags = SHUTDOWN_SEND;
    h.send(shutdown, &[]);
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"last");
    // The other direction still works.
    host.write_all(b"reply").unwrap();
    h.pump();
    assert_eq!(h.rx()[0].1, b"reply");
}

#[test]
fn guest_connection_to_a_missing_listener_is_reset() {
    let mut h = Harness::activated();
    h.give_rx(1, 4096);
    h.send(guest_hdr(op::REQUEST, 999, 6000), &[]);
    let rst = h.rx_one();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port, rst.dst_cid),
        (op::RST, 6000, 999, CID)
    );
    assert_eq!(h.connections(), 0);
    let m = h.dev.lock().unwrap().counters();
    assert_eq!((m.conns_refused, m.conns_opened), (1, 0));
}

#[test]
fn host_data_never_exceeds_guest_credit() {
    let mut h = Harness::activated();
    let (mut host, local) = h.establish_host(100);
    host.write_all(&[7u8; 1000]).unwrap();
    h.pump();
    let packets = h.rx();
    let sent: usize = packets
        .iter()
        .filter(|(p, _)| p.op == op::RW)
        .map(|(_, d)| d.len())
        .sum();
    assert_eq!(sent, 100);
    assert_eq!(packets.last().unwrap().0.op, op::CREDIT_REQUEST);
    // Asked once, not again while the guest stays silent.
    h.give_rx(4, 4096);
    assert!(h.rx().is_empty());

    // The guest read 60 bytes: exactly 60 more may come.
    let mut update = guest_hdr(op::CREDIT_UPDATE, 1234, local);
    (update.buf_alloc, update.fwd_cnt) = (100, 60);
    h.send(update, &[]);
    let packets = h.rx();
    let sent: usize = packets
        .iter()
        .filter(|(p, _)| p.op == op::RW)
        .map(|(_, d)| d.len())
        .sum();
    assert_eq!(sent, 60);
}

#[test]
fn device_reports_credit() {
    let mut h = Harness::activated();
    let (mut host, local) = h.establish_host(64 * 1024);
    h.send(guest_hdr(op::CREDIT_REQUEST, 1234, local), &[]);
    let update = h.rx_one();
    assert_eq!(
        (update.op, update.fwd_cnt, update.buf_alloc),
        (op::CREDIT_UPDATE, 0, BUF_ALLOC)
    );

    // After a quarter of the buffer went to the host, the guest hears of it unasked.
    let chunk = vec![1u8; 16 * 1024];
    for _ in 0..4 {
        h.send(guest_hdr(op::RW, 1234, local), &chunk);
    }
    assert_eq!(read_exactly(&mut host, 64 * 1024).len(), 64 * 1024);
    let update = h.rx_one();
    assert_eq!((update.op, update.fwd_cnt), (op::CREDIT_UPDATE, 64 * 1024));
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let mut h = Harness::activated();
    let (mut host, local) = h.establish_host(64 * 1024);
    // The host does not read: its socket buffer fills, then ours, then the guest is over.
    let chunk = vec![2u8; 60 * 1024];
    let mut reset = false;
    for _ in 0..40 {
        h.send(guest_hdr(op::RW, 1234, local), &chunk);
        if h.rx().iter().any(|(p, _)| p.op == op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "the device kept buffering past its buf_alloc");
    assert_eq!(h.connections(), 0);
    let mut sink = Vec::new();
    host.read_to_end(&mut sink).unwrap();
}

#[test]
fn malformed_tx_chains_are_dropped() {
    let mut h = Harness::activated();
    h.give_rx(8, 4096);
    let addr = h.alloc(4096);
    let bytes = guest_hdr(op::REQUEST, 1, 6000).to_bytes();
    h.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
    let mut long = guest_hdr(op::RW, 1, 6000);
    long.len = 1000;
    h.mem
        .write_slice(&long.to_bytes(), GuestAddress(addr + 64))
        .unwrap();
    let chains: [&[RawDescriptor]; 6] = [
        // Short header.
        &[desc(addr, 10, 0, 0)],
        // Header in a write-only descriptor.
        &[desc(addr, 44, VRING_DESC_F_WRITE, 0)],
        // Payload length beyond the chain.
        &[desc(addr + 64, 44 + 100, 0, 0)],
        // Outside guest memory.
        &[desc(MEM_SIZE + 0x1000, 44, 0, 0)],
        // A descriptor whose next is itself (over zeroes: it reads as a packet from CID 0).
        &[desc(addr + 2048, 16, VRING_DESC_F_NEXT, 0)],
        // Length overflowing guest memory's end.
        &[desc(MEM_SIZE - 8, u32::MAX, 0, 0)],
    ];
    for chain in chains {
        h.add_chain(TXQ, chain);
    }
    h.kick(TXQ);
    let used = h.used(TXQ);
    assert_eq!(used.len(), 6);
    assert!(used.iter().all(|&(_, len)| len == 0));
    assert!(h.rx().is_empty(), "malformed packets got an answer");
    // The looping one reads as a packet (from CID 0) and is dropped for its address.
    let m = h.dev.lock().unwrap().counters();
    assert_eq!((m.tx_bad_packets, m.tx_dropped, m.tx_packets), (5, 1, 1));

    // Wrong CIDs are dropped, a wrong type or an unknown connection gets an RST.
    let mut wrong_cid = guest_hdr(op::RW, 1, 2);
    wrong_cid.src_cid = 4;
    h.send(wrong_cid, b"x");
    let mut to_guest = guest_hdr(op::REQUEST, 1, 2);
    to_guest.dst_cid = CID;
    h.send(to_guest, &[]);
    assert!(h.rx().is_empty());
    let mut dgram = guest_hdr(op::REQUEST, 1, 2);
    dgram.type_ = 2;
    h.send(dgram, &[]);
    assert_eq!(h.rx_one().op, op::RST);
    h.send(guest_hdr(op::RW, 5, 6), b"stray");
    assert_eq!(h.rx_one().op, op::RST);
    h.send(guest_hdr(op::RST, 5, 6), &[]);
    assert!(h.rx().is_empty());
}

#[test]
fn small_rx_buffers_are_returned_empty() {
    let mut h = Harness::activated();
    let addr = h.alloc(64);
    let head = h.add_chain(RXQ, &[desc(addr, 20, VRING_DESC_F_WRITE, 0)]);
    h.give_rx(1, 4096);
    h.send(guest_hdr(op::RW, 5, 6), b"stray");
    let used = h.used(RXQ);
    assert_eq!(used[0], (head, 0));
    assert_eq!(used[1].1, HDR_LEN as u32);
    let m = h.dev.lock().unwrap().counters();
    assert_eq!((m.rx_bad_buffers, m.rx_packets, m.rx_bytes), (1, 1, 0));
}

#[test]
fn bad_connect_lines_close_the_host_stream() {
    let mut h = Harness::activated();
    h.give_rx(4, 4096);
    let mut garbage = h.host_connect(b"HELLO 5\n");
    let mut too_long = h.host_connect(&[b'1'; 100]);
    let mut bad_port = h.host_connect(b"CONNECT 99999999999\n");
    h.pump();
    assert_closed(&mut garbage);
    assert_closed(&mut too_long);
    assert_closed(&mut bad_port);
    assert!(h.rx().is_empty());

    // A host process that never finishes its line is dropped after the timeout.
    let mut silent = h.host_connect(b"CONN");
    h.pump();
    h.dev
        .lock()
        .unwrap()
        .muxer
        .sweep(Instant::now() + Duration::from_secs(3));
    h.kick(RXQ);
    assert_closed(&mut silent);
    assert_eq!(h.dev.lock().unwrap().counters().conns_refused, 4);
}

#[test]
fn unanswered_request_times_out() {
    let mut h = Harness::activated();
    let mut host = h.host_connect(b"CONNECT 1234\n");
    h.give_rx(1, 4096);
    assert_eq!(h.rx_one().op, op::REQUEST);
    h.dev
        .lock()
        .unwrap()
        .muxer
        .sweep(Instant::now() + Duration::from_secs(3));
    h.give_rx(1, 4096);
    assert_eq!(h.rx_one().op, op::RST);
    assert_closed(&mut host);
}

#[test]
fn host_connections_wait_for_activation_and_die_on_reset() {
    let mut h = Harness::new();
    let mut host = h.host_connect(b"CONNECT 42\n");
    h.pump();
    assert_eq!(h.connections(), 0);
    h.activate();
    h.give_rx(1, 4096);
    let req = h.rx_one();
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 42));

    h.dev.lock().unwrap().reset();
    h.pump();
    assert_closed(&mut host);
    assert_eq!(h.connections(), 0);
    let m = h.dev.lock().unwrap().counters();
    assert_eq!((m.conns_opened, m.conns_closed), (1, 1));
}

#[test]
fn config_and_construction_errors() {
    let dir = TempDir::new();
    let uds = dir.0.join("v.sock");
    let config = |guest_cid, uds_path| VsockConfig {
        guest_cid,
        uds_path,
    };
    let dev = Vsock::new(config(CID, uds.clone())).unwrap();
    let mut cfg = [0u8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), CID);
    assert_eq!((dev.device_type(), dev.avail_features()), (19, 0));
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);

    let msg = Vsock::new(config(CID, uds.clone()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("v.sock") && msg.contains("does not delete"),
        "{msg}"
    );
    assert!(uds.exists(), "the existing socket was deleted");

    let missing = dir.0.join("no/such/dir/v.sock");
    let msg = Vsock::new(config(CID, missing)).err().unwrap().to_string();
    assert!(msg.contains("no/such/dir/v.sock"), "{msg}");
    for cid in [0, 2, u64::from(u32::MAX)] {
        let err = Vsock::new(config(cid, dir.0.join("other.sock")));
        assert!(matches!(err, Err(VsockError::InvalidCid(c)) if c == cid));
    }

    drop(dev);
    assert!(!uds.exists(), "the socket outlived the device");
}

#[test]
fn fuzz_replay() {
    for input in fuzzing::seeded_inputs(0x5eed_0019, 3000, 512) {
        fuzz_one(&input);
    }
}
