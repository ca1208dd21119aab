//! A raw HTTP/1.1 client for Tessera's REST API socket, and a `tessera --api-sock` process
//! whose console output is collected while it runs.
//!
//! The client keeps ONE connection open for all its requests, as Firecracker's clients do, so
//! tests exercise keep-alive; [`ApiClient::send_raw`] and [`ApiClient::read_response`] let a
//! test send malformed, partial or pipelined requests and read what comes back.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::{tessera_bin, Finished};

/// How long a response may take before the client gives up and fails the test.
pub const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a fresh `tessera` may take to bind its socket.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Most header fields a response may have.
const MAX_RESPONSE_HEADERS: usize = 32;

/// One response, as read off the socket.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    /// Header fields in the order sent, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl ApiResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; fails the test when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self}"))
    }

    /// Firecracker's `fault_message`; fails the test when the body has none.
    pub fn fault_message(&self) -> String {
        match self.json().get("fault_message").and_then(|m| m.as_str()) {
            Some(message) => message.to_owned(),
            None => panic!("no fault_message in {self}"),
        }
    }
}

impl std::fmt::Display for ApiResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        for (name, value) in &self.headers {
            write!(f, " | {name}: {value}")?;
        }
        write!(f, " | {}", self.body)
    }
}

/// One kept-alive connection to the API socket.
pub struct ApiClient {
    stream: UnixStream,
    /// Bytes read but not yet returned as a response (pipelined answers).
    buf: Vec<u8>,
    /// The response being read answers a HEAD request: it has no body.
    head_only: bool,
}

impl ApiClient {
    /// Connects to `path`, retrying until `timeout` passes (the server needs a moment to
    /// bind); fails the test after that.
    pub fn connect(path: &Path, timeout: Duration) -> ApiClient {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => return ApiClient::from_stream(stream),
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!(
                    "cannot connect to {} within {timeout:?}: {e}",
                    path.display()
                ),
            }
        }
    }

    fn from_stream(stream: UnixStream) -> ApiClient {
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set a read timeout");
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .expect("set a write timeout");
        ApiClient {
            stream,
            buf: Vec::new(),
            head_only: false,
        }
    }

    /// Sends one request and reads its response. A body goes with `Content-Length` and
    /// `Content-Type: application/json`. The answer to `HEAD` is read without a body,
    /// whatever its `Content-Length` says.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> ApiResponse {
        self.send_raw(&request_bytes(method, path, body));
        self.head_only = method == "HEAD";
        let response = self.read_response();
        self.head_only = false;
        response
    }

    pub fn get(&mut self, path: &str) -> ApiResponse {
        self.request("GET", path, None)
    }

    pub fn put(&mut self, path: &str, body: &str) -> ApiResponse {
        self.request("PUT", path, Some(body))
    }

    pub fn patch(&mut self, path: &str, body: &str) -> ApiResponse {
        self.request("PATCH", path, Some(body))
    }

    /// `GET /vm/config` as JSON, asserting a 200.
    pub fn vm_config(&mut self) -> serde_json::Value {
        let response = self.get("/vm/config");
        assert_eq!(response.status, 200, "GET /vm/config: {response}");
        response.json()
    }

    /// `GET /`'s `state`, asserting a 200.
    pub fn state(&mut self) -> String {
        let response = self.get("/");
        assert_eq!(response.status, 200, "GET /: {response}");
        response.json()["state"]
            .as_str()
            .unwrap_or_else(|| panic!("no state in {response}"))
            .to_owned()
    }

    /// Writes `bytes` as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes)
            .unwrap_or_else(|e| panic!("cannot write to the API socket: {e}"));
    }

    /// Writes `bytes`; an error (the server closed the connection) is returned.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// A second handle on the connection, e.g. for a thread that trickles bytes while this
    /// one waits for the response.
    pub fn writer(&self) -> UnixStream {
        self.stream.try_clone().expect("clone the API connection")
    }

    /// Reads the next response; fails the test on EOF, a timeout or a malformed response.
    pub fn read_response(&mut self) -> ApiResponse {
        match self.try_read_response() {
            Ok(Some(response)) => response,
            Ok(None) => panic!(
                "the server closed the connection instead of answering (buffered: {:?})",
                String::from_utf8_lossy(&self.buf)
            ),
            Err(e) => panic!("no response: {e}"),
        }
    }

    /// The next response; `Ok(None)` if the server closed the connection cleanly first.
    pub fn try_read_response(&mut self) -> io::Result<Option<ApiResponse>> {
        loop {
            if let Some(response) = self.parse_buffered()? {
                return Ok(Some(response));
            }
            if !self.fill()? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed inside a response: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Asserts that the server closes the connection without sending anything more.
    pub fn expect_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread bytes before the close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        match self.fill() {
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Ok(true) => panic!(
                "expected the connection to close, got {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Err(e) => panic!("expected the connection to close: {e}"),
        }
    }

    /// Reads once into the buffer; false on EOF.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// A complete response from the front of the buffer, if one is there.
    fn parse_buffered(&mut self) -> io::Result<Option<ApiResponse>> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        let head_len = match parsed.parse(&self.buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => {
                return Err(invalid(format!(
                    "malformed response ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                )))
            }
        };
        let status = parsed.code.unwrap_or(0);
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_owned(),
                    String::from_utf8_lossy(h.value).trim().to_owned(),
                )
            })
            .collect();
        let lengths: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.as_str())
            .collect();
        let body_len = match lengths.as_slice() {
            _ if self.head_only => 0,
            // 1xx, 204 and 304 end at the blank line; the server sends Content-Length
            // with everything else (a test asserts that where it matters).
            [] => 0,
            [one] => one
                .parse::<usize>()
                .map_err(|_| invalid(format!("bad Content-Length {one:?}")))?,
            more => return Err(invalid(format!("several Content-Length fields: {more:?}"))),
        };
        if self.buf.len() < head_len + body_len {
            return Ok(None);
        }
        let body = String::from_utf8_lossy(&self.buf[head_len..head_len + body_len]).into_owned();
        self.buf.drain(..head_len + body_len);
        Ok(Some(ApiResponse {
            status,
            headers,
            body,
        }))
    }
}

/// A well-formed HTTP/1.1 request.
pub fn request_bytes(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let mut bytes =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(body) = body {
        bytes.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    bytes.push_str("\r\n");
    bytes.push_str(body.unwrap_or(""));
    bytes.into_bytes()
}

/// A directory of its own under the system temp dir (pid + counter), removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Short: a unix socket path has at most 107 bytes.
        let path = std::env::temp_dir().join(format!("tsr-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory (not created).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A file of `len` zero bytes named `name`, e.g. a drive's backing file.
    pub fn file(&self, name: &str, len: u64) -> PathBuf {
        let path = self.join(name);
        let file = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        file.set_len(len)
            .unwrap_or_else(|e| panic!("cannot size {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Output collected from a pipe by a background thread.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    fn spawn(mut pipe: impl Read + Send + 'static) -> (Collected, JoinHandle<()>) {
        let collected = Collected::default();
        let sink = collected.clone();
        let thread = thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => sink
                        .0
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
        (collected, thread)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// A running `tessera` (the Firecracker-style process), its stdout (the guest console) and
/// stderr collected in the background. Dropping it kills the process and removes the
/// socket file.
pub struct Tessera {
    child: Option<Child>,
    socket: Option<PathBuf>,
    stdout: Collected,
    stderr: Collected,
    readers: Vec<JoinHandle<()>>,
}

impl Tessera {
    /// `tessera --api-sock SOCKET --log-level debug`: a VMM waiting for API calls.
    pub fn spawn_api(socket: &Path) -> Tessera {
        Tessera::spawn_with(Some(socket), &["--log-level", "debug"])
    }

    /// `tessera [--api-sock SOCKET] ARGS...`, stdin null, stdout and stderr collected.
    pub fn spawn_with(socket: Option<&Path>, args: &[&str]) -> Tessera {
        let mut cmd = Command::new(tessera_bin());
        if let Some(socket) = socket {
            cmd.arg("--api-sock").arg(socket);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tessera");
        let out: ChildStdout = child.stdout.take().expect("piped stdout");
        let err: ChildStderr = child.stderr.take().expect("piped stderr");
        let (stdout, out_thread) = Collected::spawn(out);
        let (stderr, err_thread) = Collected::spawn(err);
        Tessera {
            child: Some(child),
            socket: socket.map(Path::to_owned),
            stdout,
            stderr,
            readers: vec![out_thread, err_thread],
        }
    }

    /// A new connection to the API socket (retried while the process starts).
    pub fn client(&mut self) -> ApiClient {
        let socket = self
            .socket
            .clone()
            .expect("this tessera serves no API socket");
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match UnixStream::connect(&socket) {
                Ok(stream) => return ApiClient::from_stream(stream),
                Err(e) => {
                    if let Some(code) = self.exit_code() {
                        panic!(
                            "tessera exited with {code:?} before serving {}: {e}\n{}",
                            socket.display(),
                            self.output_so_far()
                        );
                    }
                    if Instant::now() > deadline {
                        panic!(
                            "cannot connect to {} within {CONNECT_TIMEOUT:?}: {e}\n{}",
                            socket.display(),
                            self.output_so_far()
                        );
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        let child = self.child.as_ref().expect("tessera is running");
        i32::try_from(child.id()).expect("pid fits an i32")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process, which has not been reaped.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// The guest console so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// The VMM's messages so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// How many console lines so far are exactly `line`.
    pub fn count_lines(&self, line: &str) -> usize {
        self.stdout().lines().filter(|l| *l == line).count()
    }

    /// How many "tick" lines the guest has printed.
    pub fn ticks(&self) -> usize {
        self.count_lines("tick")
    }

    /// Waits until `done(stdout)` holds; fails the test (with the output) after `timeout`
    /// or when the process exits first.
    pub fn wait_for_stdout(&mut self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.stdout()) {
                return;
            }
            if let Some(code) = self.exit_code() {
                // Output written just before the exit may still be in the pipe.
                self.join_readers();
                if done(&self.stdout()) {
                    return;
                }
                panic!(
                    "tessera exited with {code:?} while waiting for {what}\n{}",
                    self.output_so_far()
                );
            }
            if Instant::now() > deadline {
                panic!("no {what} within {timeout:?}\n{}", self.output_so_far());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the guest has printed at least `n` ticks.
    pub fn wait_for_ticks(&mut self, n: usize, timeout: Duration) {
        self.wait_for_stdout(&format!("{n} ticks"), timeout, |out| {
            out.lines().filter(|l| *l == "tick").count() >= n
        });
    }

    /// `Some(exit code)` once the process has exited (`Some(None)` for a signal).
    pub fn exit_code(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        child
            .try_wait()
            .expect("wait for tessera")
            .map(|status| status.code())
    }

    /// Waits for the process to exit; kills it and fails the test (with the output
    /// collected so far) after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.exit_code() {
                self.join_readers();
                self.child = None;
                return Finished {
                    code,
                    stdout: self.stdout(),
                    stderr: self.stderr(),
                };
            }
            if Instant::now() > deadline {
                let _ = self.kill();
                panic!(
                    "tessera did not exit within {timeout:?}\n{}",
                    self.output_so_far()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stdout and stderr so far, for failure messages.
    pub fn output_so_far(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }

    /// Kills the process if it still runs; true if it did.
    fn kill(&mut self) -> bool {
        let mut killed = false;
        if let Some(child) = self.child.as_mut() {
            killed = matches!(child.try_wait(), Ok(None));
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = None;
        self.join_readers();
        killed
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Tessera {
    fn drop(&mut self) {
        // A killed tessera cannot remove its socket file; one that exited by itself did, or
        // (refused to start) never owned the file at that path.
        if self.kill() {
            if let Some(socket) = &self.socket {
                let _ = std::fs::remove_file(socket);
            }
        }
    }
}
