//! `iotool`: a small static stream tool for the test host and its guests (busybox's nc speaks
//! neither AF_VSOCK nor Firecracker's hybrid vsock handshake, and does not time transfers).
//!
//! ```text
//! iotool send ADDR BYTES      connect, send BYTES of a fixed pseudo-random stream, then
//!                             half-close and wait for the peer to close
//! iotool recv ADDR            listen, take one connection, read to EOF
//! iotool echo ADDR [COUNT]    listen, echo COUNT connections (default 1) until each closes
//! iotool call ADDR TEXT       connect, send TEXT, half-close, print what comes back
//! iotool disk read|write PATH MIB      sequential 1 MiB O_DIRECT reads or writes
//! iotool disk randread PATH COUNT      COUNT random 4 KiB O_DIRECT reads
//! ADDR: tcp:HOST:PORT | vsock:CID:PORT | unix:PATH | hybrid:PATH:PORT (unix + "CONNECT PORT")
//! ```
//! `send` and `recv` print `bytes=N hash=H secs=S mib_s=R`, so two ends can be compared;
//! `disk` prints `ops=N bytes=N secs=S mib_s=R iops=R`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::time::Instant;

const CHUNK: usize = 64 << 10;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match argv.as_slice() {
        ["send", addr, bytes] => bytes
            .parse()
            .map_err(|_| format!("BYTES {bytes:?} is not a number"))
            .and_then(|n| send(addr, n)),
        ["recv", addr] => recv(addr),
        ["echo", addr] => echo(addr, 1),
        ["echo", addr, count] => count
            .parse()
            .map_err(|_| format!("COUNT {count:?} is not a number"))
            .and_then(|n| echo(addr, n)),
        ["call", addr, text] => call(addr, text),
        ["disk", mode, path, n] => n
            .parse()
            .map_err(|_| format!("{n:?} is not a number"))
            .and_then(|n| disk(mode, path, n)),
        _ => Err("usage: iotool send ADDR BYTES | recv ADDR | echo ADDR [COUNT] | call ADDR TEXT | disk read|write|randread PATH N".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iotool: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A connected stream of any of the address families.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Vsock(std::fs::File),
}

impl Stream {
    fn half_close(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
            // SAFETY: shutdown(2) on a socket fd we own.
            Stream::Vsock(f) => match unsafe { libc::shutdown(f.as_raw_fd(), libc::SHUT_WR) } {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            },
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Vsock(f) => f.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Vsock(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Addr<'a> {
    Tcp(&'a str),
    Unix(&'a str),
    Vsock(u32, u32),
    Hybrid(&'a str, u32),
}

fn parse_addr(addr: &str) -> Result<Addr<'_>, String> {
    let bad = || format!("bad address {addr:?}");
    let number = |s: &str| s.parse::<u32>().map_err(|_| bad());
    match addr.split_once(':').ok_or_else(bad)? {
        ("tcp", rest) => Ok(Addr::Tcp(rest)),
        ("unix", path) => Ok(Addr::Unix(path)),
        ("vsock", rest) => {
            let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
            Ok(Addr::Vsock(number(cid)?, number(port)?))
        }
        ("hybrid", rest) => {
            let (path, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            Ok(Addr::Hybrid(path, number(port)?))
        }
        _ => Err(bad()),
    }
}

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    sa.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    sa.svm_cid = cid;
    sa.svm_port = port;
    sa
}

fn check(ret: libc::c_int, what: &str) -> Result<(), String> {
    if ret < 0 {
        Err(format!("{what}: {}", io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn connect(addr: &str) -> Result<Stream, String> {
    let ctx = |e: io::Error| format!("connect {addr}: {e}");
    match parse_addr(addr)? {
        Addr::Tcp(a) => TcpStream::connect(a).map(Stream::Tcp).map_err(ctx),
        Addr::Unix(p) => UnixStream::connect(p).map(Stream::Unix).map_err(ctx),
        Addr::Vsock(cid, port) => {
            let fd = vsock_socket().map_err(ctx)?;
            let sa = vsock_addr(cid, port);
            // SAFETY: sa is a valid sockaddr_vm of the size passed.
            let ret = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_vm).cast(),
                    std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                )
            };
            check(ret, &format!("connect {addr}"))?;
            Ok(Stream::Vsock(std::fs::File::from(fd)))
        }
        Addr::Hybrid(path, port) => {
            let mut s = UnixStream::connect(path).map_err(ctx)?;
            s.write_all(format!("CONNECT {port}\n").as_bytes())
                .map_err(ctx)?;
            // Read the reply a byte at a time so no stream data is swallowed.
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while line.last() != Some(&b'\n') && line.len() < 64 {
                match s.read(&mut byte).map_err(ctx)? {
                    0 => break,
                    _ => line.push(byte[0]),
                }
            }
            let line = String::from_utf8_lossy(&line);
            if !line.starts_with("OK ") {
                return Err(format!("connect {addr}: handshake answered {line:?}"));
            }
            eprintln!("iotool: {}", line.trim_end());
            Ok(Stream::Unix(s))
        }
    }
}

/// Accepts one connection at a time on `addr`.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
    Vsock(OwnedFd),
}

fn listen(addr: &str) -> Result<Listener, String> {
    let ctx = |e: io::Error| format!("listen {addr}: {e}");
    match parse_addr(addr)? {
        Addr::Tcp(a) => TcpListener::bind(a).map(Listener::Tcp).map_err(ctx),
        Addr::Unix(p) => UnixListener::bind(p).map(Listener::Unix).map_err(ctx),
        Addr::Vsock(cid, port) => {
            let fd = vsock_socket().map_err(ctx)?;
            let sa = vsock_addr(cid, port);
            // SAFETY: sa is a valid sockaddr_vm of the size passed.
            let ret = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_vm).cast(),
                    std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                )
            };
            check(ret, &format!("bind {addr}"))?;
            // SAFETY: listen(2) on a bound socket we own.
            check(
                unsafe { libc::listen(fd.as_raw_fd(), 16) },
                &format!("listen {addr}"),
            )?;
            Ok(Listener::Vsock(fd))
        }
        Addr::Hybrid(..) => Err(format!("cannot listen on {addr}")),
    }
}

impl Listener {
    fn accept(&self) -> Result<Stream, String> {
        let ctx = |e: io::Error| format!("accept: {e}");
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)).map_err(ctx),
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)).map_err(ctx),
            Listener::Vsock(fd) => {
                // SAFETY: accept4(2) on a listening socket we own; no peer address wanted.
                let conn = unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                check(conn, "accept")?;
                // SAFETY: conn is a fresh descriptor nobody else owns.
                Ok(Stream::Vsock(std::fs::File::from(unsafe {
                    OwnedFd::from_raw_fd(conn)
                })))
            }
        }
    }
}

/// FNV-1a over the stream, so both ends can compare what crossed.
struct Hash(u64);

impl Hash {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn report(bytes: u64, hash: &Hash, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    let mib_s = bytes as f64 / (1 << 20) as f64 / secs.max(1e-9);
    println!(
        "bytes={bytes} hash={:016x} secs={secs:.3} mib_s={mib_s:.1}",
        hash.0
    );
}

fn send(addr: &str, total: u64) -> Result<(), String> {
    let mut stream = connect(addr)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; CHUNK];
    let (mut hash, mut sent) = (Hash::new(), 0u64);
    let started = Instant::now();
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        for b in &mut buf[..n] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("send to {addr}: {e}"))?;
        hash.update(&buf[..n]);
        sent += n as u64;
    }
    stream
        .half_close()
        .map_err(|e| format!("shutdown {addr}: {e}"))?;
    // Wait for the receiver to finish and close, so the timing covers delivery.
    let mut sink = [0u8; 256];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    report(sent, &hash, started);
    Ok(())
}

fn recv(addr: &str) -> Result<(), String> {
    let listener = listen(addr)?;
    println!("listening");
    let mut stream = listener.accept()?;
    let mut buf = vec![0u8; CHUNK];
    let (mut hash, mut got) = (Hash::new(), 0u64);
    let started = Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                got += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    report(got, &hash, started);
    Ok(())
}

fn echo(addr: &str, count: u32) -> Result<(), String> {
    let listener = listen(addr)?;
    println!("listening");
    for _ in 0..count {
        let mut stream = listener.accept()?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = stream
                .read(&mut buf)
                .map_err(|e| format!("echo read: {e}"))?;
            if n == 0 {
                break;
            }
            stream
                .write_all(&buf[..n])
                .map_err(|e| format!("echo write: {e}"))?;
        }
        stream
            .half_close()
            .map_err(|e| format!("echo shutdown: {e}"))?;
    }
    Ok(())
}

fn call(addr: &str, text: &str) -> Result<(), String> {
    let mut stream = connect(addr)?;
    stream
        .write_all(text.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    stream
        .half_close()
        .map_err(|e| format!("shutdown {addr}: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut out = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => out.push_str(&line),
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

/// A page-aligned buffer, as O_DIRECT needs.
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> Result<Self, String> {
        let layout = std::alloc::Layout::from_size_align(len, 4096).map_err(|e| e.to_string())?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err("out of memory".into());
        }
        Ok(Self { ptr, layout })
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

fn disk(mode: &str, path: &str, n: u64) -> Result<(), String> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(mode == "write")
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("open {path}: {e}"))?;
    let size = file
        .metadata()
        .map(|m| m.len())
        .ok()
        .filter(|&s| s > 0)
        .or_else(|| {
            let mut f = &file;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)).ok()
        })
        .unwrap_or(0);
    let (block, ops) = match mode {
        "read" | "write" => (1u64 << 20, n),
        "randread" => (4096, n),
        _ => {
            return Err(format!(
                "unknown disk mode {mode:?} (read, write, randread)"
            ))
        }
    };
    if size < block {
        return Err(format!("{path} is too small ({size} bytes)"));
    }
    let mut buf = AlignedBuf::new(block as usize)?;
    buf.as_mut_slice().fill(0x5a);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let started = Instant::now();
    for i in 0..ops {
        let offset = if mode == "randread" {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % (size / block)) * block
        } else {
            (i * block) % (size / block * block)
        };
        let result = if mode == "write" {
            file.write_all_at(buf.as_mut_slice(), offset)
        } else {
            file.read_exact_at(buf.as_mut_slice(), offset)
        };
        result.map_err(|e| format!("{mode} {path} at {offset}: {e}"))?;
    }
    if mode == "write" {
        file.sync_data().map_err(|e| format!("sync {path}: {e}"))?;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let bytes = ops * block;
    println!(
        "ops={ops} bytes={bytes} secs={secs:.3} mib_s={:.1} iops={:.0}",
        bytes as f64 / (1 << 20) as f64 / secs,
        ops as f64 / secs
    );
    Ok(())
}
