//! The API socket server: one thread, one epoll, many keep-alive connections.
//!
//! [`ApiServer::run`] accepts connections on a unix socket, cuts each connection's bytes
//! into requests with [`RequestReader`], hands every request in order to the caller's
//! handler and writes the responses back, until a shutdown `EventFd` is written.
//!
//! Everything is non-blocking, so no client can stall the others: a client that trickles
//! a request gets 408 once [`Limits::request_timeout`] passes, a client that stops reading
//! stops being read from once [`Limits::max_pending_output`] bytes of responses wait for
//! it and is dropped after [`Limits::write_timeout`] without progress, and connections
//! past [`Limits::max_connections`] are answered 503 and closed.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::debug;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::message::{HttpError, Method, Request, RequestReader, Response, CONTINUE_RESPONSE};

/// Connections served at once; the next ones get 503 and are closed. The API has one
/// user (the orchestrator), so this only bounds what a misbehaving one can hold.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Time from a request's first byte to its last; past it the client gets 408 and the
/// connection closes (slowloris protection).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a keep-alive connection with no request in progress stays open. Long, since
/// an orchestrator may hold one connection open between sparse requests; it exists so
/// that abandoned connections eventually give their slot back.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long queued responses may wait without the client reading any of them before the
/// connection is dropped.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Response bytes queued for one connection past which its further requests are not
/// handled (and its socket not read) until the client reads. One response may overshoot
/// it, so a connection holds at most this plus one response.
pub const DEFAULT_MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// Bytes read from a connection per wake-up; connections take turns at this grain.
const READ_CHUNK: usize = 16 * 1024;

/// Connections accepted per wake-up of the listener, so a burst of connects cannot starve
/// connections already open.
const MAX_ACCEPTS_PER_WAKE: usize = 16;

/// Pause after an accept error such as EMFILE: the listener stays readable while the
/// error lasts, and retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Unread bytes discarded from a connection before closing it. Closing a unix socket with
/// unread data makes the peer's next read fail with ECONNRESET instead of seeing EOF after
/// our last response; draining what is already there avoids that in the usual cases.
const MAX_DISCARD_ON_CLOSE: usize = 64 * 1024;

/// Epoll events taken per wait.
const EVENT_BATCH: usize = 64;

const LISTENER_TOKEN: u64 = 0;
const SHUTDOWN_TOKEN: u64 = 1;
const FIRST_CONNECTION_TOKEN: u64 = 2;

/// The server's limits; [`Limits::default`] has the `DEFAULT_*` values. Tests shorten the
/// timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// See [`DEFAULT_IDLE_TIMEOUT`]; `None` keeps idle keep-alive connections open until
    /// the client closes them.
    pub idle_timeout: Option<Duration>,
    /// See [`DEFAULT_WRITE_TIMEOUT`].
    pub write_timeout: Duration,
    /// See [`DEFAULT_MAX_PENDING_OUTPUT`].
    pub max_pending_output: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_pending_output: DEFAULT_MAX_PENDING_OUTPUT,
        }
    }
}

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ServerError {
    /// API socket {path} is in use by another process
    InUse { path: PathBuf },
    /// API socket path {path} exists and is not a unix socket; not replacing it
    NotASocket { path: PathBuf },
    /// cannot inspect API socket path {path}: {source}
    Inspect { path: PathBuf, source: io::Error },
    /// cannot tell whether API socket {path} is in use: {source}
    Probe { path: PathBuf, source: io::Error },
    /// cannot remove stale API socket {path}: {source}
    RemoveStale { path: PathBuf, source: io::Error },
    /// cannot bind API socket {path}: {source}
    Bind { path: PathBuf, source: io::Error },
    /// cannot make the API socket non-blocking: {0}
    Nonblocking(#[source] io::Error),
    /// API server epoll failed: {0}
    Epoll(#[source] io::Error),
}

/// The REST API's listening socket and limits; [`ApiServer::run`] serves it.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    path: Option<PathBuf>,
    /// (device, inode) of the socket file [`ApiServer::bind`] created, removed on drop if
    /// it is still the file at `path`.
    created: Option<(u64, u64)>,
    limits: Limits,
}

impl ApiServer {
    /// Listens on a unix socket at `path`.
    ///
    /// A socket file nobody listens on (left by a run that crashed) is replaced; a socket
    /// someone listens on, or a path that is not a socket, is an error and left alone.
    /// The socket file is removed again when the server is dropped. The check and the
    /// removal are not atomic: two servers started at the same instant on one path can
    /// still race, which is the caller's configuration error to avoid.
    pub fn bind(path: &Path) -> Result<ApiServer, ServerError> {
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
            path: path.to_owned(),
            source,
        })?;
        let created = fs::symlink_metadata(path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        // Built before the last fallible step, so that its drop removes the socket file.
        let server = ApiServer {
            listener,
            path: Some(path.to_owned()),
            created,
            limits: Limits::default(),
        };
        server
            .listener
            .set_nonblocking(true)
            .map_err(ServerError::Nonblocking)?;
        Ok(server)
    }

    /// Serves a listener bound elsewhere (by tests, or handed over by a supervisor). Its
    /// socket file, if any, is the caller's to remove.
    pub fn from_listener(listener: UnixListener) -> Result<ApiServer, ServerError> {
        listener
            .set_nonblocking(true)
            .map_err(ServerError::Nonblocking)?;
        let path = listener
            .local_addr()
            .ok()
            .and_then(|addr| addr.as_pathname().map(Path::to_owned));
        Ok(ApiServer {
            listener,
            path,
            created: None,
            limits: Limits::default(),
        })
    }

    /// Replaces the limits (all of them; start from [`Limits::default`]).
    pub fn with_limits(mut self, limits: Limits) -> ApiServer {
        self.limits = limits;
        self
    }

    /// The socket's path; `None` for an unnamed or abstract socket.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Serves connections, calling `handler` for each request in the order each connection
    /// sent them, until `shutdown` becomes readable (someone wrote to it).
    ///
    /// `shutdown` is not read, so other loops watching the same `EventFd` see it too.
    /// On shutdown, queued responses get one non-blocking attempt to be written, then all
    /// connections close. Without `shutdown`, `run` returns only if epoll fails.
    pub fn run(
        self,
        mut handler: impl FnMut(Request) -> Response,
        shutdown: Option<&EventFd>,
    ) -> Result<(), ServerError> {
        let mut event_loop = EventLoop::new(&self.listener, self.limits, shutdown)?;
        event_loop.run(&mut handler)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let (Some(path), Some(created)) = (&self.path, self.created) else {
            return;
        };
        // Only our own socket: another process may have replaced the file since.
        let still_ours = fs::symlink_metadata(path)
            .map(|meta| (meta.dev(), meta.ino()) == created)
            .unwrap_or(false);
        if still_ours {
            let _ = fs::remove_file(path);
        }
    }
}

/// Makes way for a new socket at `path` if what is there is a dead socket.
fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Inspect {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse {
            path: path.to_owned(),
        }),
        Err(error) if error.raw_os_error() == Some(libc::ECONNREFUSED) => fs::remove_file(path)
            .map_err(|source| ServerError::RemoveStale {
                path: path.to_owned(),
                source,
            }),
        Err(source) => Err(ServerError::Probe {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes without SIGPIPE. A client that closes before reading its response makes the
/// write fail with EPIPE; a plain `write` would also raise SIGPIPE, which kills the whole
/// VMM unless something set it to be ignored. `MSG_DONTWAIT` keeps even a socket still in
/// blocking mode (the 503 path) from blocking the loop.
fn send_nosignal(stream: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `stream` owns an open socket descriptor for the whole call, and the pointer
    // and length describe the initialised `bytes` slice, which the kernel only reads.
    let sent = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

/// Whether a connection is done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Open,
    Close,
}

/// Which deadline a connection is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// A request has started and must complete: 408.
    Request,
    /// Responses wait and the client is not reading them: drop.
    Write,
    /// Nothing in progress: drop.
    Idle,
}

/// One client connection.
struct Connection {
    stream: UnixStream,
    reader: RequestReader,
    /// Serialised responses; `output[written..]` is still to be sent.
    output: Vec<u8>,
    written: usize,
    /// Close once `output` is sent: after `Connection: close`, an error or the client's EOF.
    closing: bool,
    /// When the request now in progress started, while one is and the client is not
    /// waiting on us to read its responses.
    request_started: Option<Instant>,
    last_read: Instant,
    /// Last time a write made progress, or when output was queued onto an empty queue.
    last_write: Instant,
    /// What the connection is registered in epoll for.
    interest: EventSet,
}

impl Connection {
    fn new(stream: UnixStream, now: Instant) -> Connection {
        Connection {
            stream,
            reader: RequestReader::new(),
            output: Vec::new(),
            written: 0,
            closing: false,
            request_started: None,
            last_read: now,
            last_write: now,
            interest: EventSet::IN,
        }
    }

    fn pending_output(&self) -> usize {
        self.output.len() - self.written
    }

    /// Too many responses wait for the client: handle no more of its requests.
    fn backpressured(&self, limits: &Limits) -> bool {
        self.pending_output() > limits.max_pending_output
    }

    fn wants_read(&self, limits: &Limits) -> bool {
        !self.closing && !self.backpressured(limits)
    }

    fn desired_interest(&self, limits: &Limits) -> EventSet {
        let mut interest = EventSet::empty();
        if self.wants_read(limits) {
            interest |= EventSet::IN;
        }
        if self.pending_output() > 0 {
            interest |= EventSet::OUT;
        }
        interest
    }

    /// Handles what epoll reported: reads once, handles the complete requests, writes.
    fn on_event(
        &mut self,
        events: EventSet,
        handler: &mut dyn FnMut(Request) -> Response,
        limits: &Limits,
    ) -> Flow {
        if events.contains(EventSet::ERROR) {
            debug!("API connection: socket error");
            return Flow::Close;
        }
        if events.contains(EventSet::HANG_UP) {
            return self.finish_after_hang_up(handler, limits);
        }
        if events.contains(EventSet::IN) && self.wants_read(limits) && self.read() == Flow::Close {
            return Flow::Close;
        }
        self.serve(handler, limits)
    }

    /// The client closed its socket: nothing we write can be read any more, but requests
    /// that arrived whole before it closed (a fire-and-forget `PUT`) are still handled,
    /// so that whether they take effect does not depend on when epoll noticed the close.
    /// The data left to read is finite, since nobody can add to it.
    fn finish_after_hang_up(
        &mut self,
        handler: &mut dyn FnMut(Request) -> Response,
        limits: &Limits,
    ) -> Flow {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            while self.handle_requests(handler, limits) {
                self.discard_output();
            }
            self.discard_output();
            if self.closing {
                break;
            }
            match self.stream.read(&mut chunk) {
                Ok(n) if n > 0 => self.reader.feed(&chunk[..n]),
                _ => break,
            }
        }
        debug!("API connection: client hung up");
        Flow::Close
    }

    fn discard_output(&mut self) {
        self.output.clear();
        self.written = 0;
    }

    /// Reads what is available (one chunk) into the reader.
    fn read(&mut self) -> Flow {
        let mut chunk = [0u8; READ_CHUNK];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                // The client sent all it will; answer what it asked, then close.
                self.closing = true;
                self.request_started = None;
                Flow::Open
            }
            Ok(n) => {
                self.last_read = Instant::now();
                self.reader.feed(&chunk[..n]);
                Flow::Open
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Flow::Open
            }
            Err(error) => {
                debug!("API connection: read failed: {error}");
                Flow::Close
            }
        }
    }

    /// Handles complete requests and writes responses, alternating while writing makes
    /// room for requests held back by backpressure.
    fn serve(&mut self, handler: &mut dyn FnMut(Request) -> Response, limits: &Limits) -> Flow {
        loop {
            let held_back = self.handle_requests(handler, limits);
            if self.flush() == Flow::Close {
                return Flow::Close;
            }
            if !held_back || self.backpressured(limits) {
                break;
            }
        }
        if self.closing && self.pending_output() == 0 {
            return Flow::Close;
        }
        self.update_request_timer(limits);
        Flow::Open
    }

    /// Handles complete requests in order, queueing their responses. Returns whether it
    /// stopped because of backpressure with requests possibly still buffered.
    fn handle_requests(
        &mut self,
        handler: &mut dyn FnMut(Request) -> Response,
        limits: &Limits,
    ) -> bool {
        while !self.closing {
            if self.backpressured(limits) {
                return true;
            }
            match self.reader.next_request() {
                Ok(Some(request)) => {
                    self.request_started = None;
                    self.respond(request, handler);
                }
                Ok(None) => {
                    if self.reader.take_continue() {
                        self.queue(CONTINUE_RESPONSE);
                    }
                    break;
                }
                Err(error) => self.fail(&error),
            }
        }
        false
    }

    fn respond(&mut self, request: Request, handler: &mut dyn FnMut(Request) -> Response) {
        let keep_alive = request.keep_alive && !self.closing;
        let head_only = request.method == Method::Head;
        let response = handler(request);
        let mut bytes = Vec::new();
        if head_only {
            response.write_head_to(&mut bytes, keep_alive);
        } else {
            response.write_to(&mut bytes, keep_alive);
        }
        self.queue(&bytes);
        if !keep_alive {
            self.closing = true;
        }
    }

    /// Answers a request that cannot be served, and closes after that answer.
    fn fail(&mut self, error: &HttpError) {
        debug!("API connection: {error}");
        let mut bytes = Vec::new();
        Response::fault(error.status(), error).write_to(&mut bytes, false);
        self.queue(&bytes);
        self.closing = true;
        self.request_started = None;
    }

    fn queue(&mut self, bytes: &[u8]) {
        if self.pending_output() == 0 {
            self.last_write = Instant::now();
        }
        self.output.extend_from_slice(bytes);
    }

    /// Writes queued output until done or the socket is full.
    fn flush(&mut self) -> Flow {
        while self.written < self.output.len() {
            match send_nosignal(&self.stream, &self.output[self.written..]) {
                Ok(0) => return Flow::Close,
                Ok(n) => {
                    self.written += n;
                    self.last_write = Instant::now();
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    debug!("API connection: write failed: {error}");
                    return Flow::Close;
                }
            }
        }
        self.compact_output();
        Flow::Open
    }

    /// Drops sent bytes: all of them when everything is sent, otherwise once they are the
    /// larger part, so the copy is paid at most once per byte on average.
    fn compact_output(&mut self) {
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        } else if self.written > self.output.len() / 2 {
            self.output.drain(..self.written);
            self.written = 0;
        }
    }

    /// Starts the request deadline when part of a request is buffered and we are reading;
    /// stops it otherwise (a client waiting for us to write is under the write deadline).
    fn update_request_timer(&mut self, limits: &Limits) {
        if self.wants_read(limits) && self.reader.has_partial_request() {
            self.request_started.get_or_insert_with(Instant::now);
        } else {
            self.request_started = None;
        }
    }

    fn deadline(&self, limits: &Limits) -> Option<(Instant, Deadline)> {
        if self.pending_output() > 0 {
            Some((self.last_write + limits.write_timeout, Deadline::Write))
        } else if let Some(started) = self.request_started {
            Some((started + limits.request_timeout, Deadline::Request))
        } else {
            let idle = limits.idle_timeout?;
            Some((self.last_read.max(self.last_write) + idle, Deadline::Idle))
        }
    }

    /// Acts on a passed deadline.
    fn expire(&mut self, deadline: Deadline, limits: &Limits) -> Flow {
        match deadline {
            Deadline::Request => {
                let millis = limits.request_timeout.as_millis();
                self.fail(&HttpError::RequestTimeout { millis });
                match self.flush() {
                    Flow::Open if self.pending_output() > 0 => Flow::Open,
                    _ => Flow::Close,
                }
            }
            Deadline::Write => {
                debug!(
                    "API connection: client read nothing for {:?}",
                    limits.write_timeout
                );
                Flow::Close
            }
            Deadline::Idle => Flow::Close,
        }
    }

    /// Discards unread input so the client sees our last response and EOF, not a reset.
    fn discard_unread(&mut self) {
        let mut chunk = [0u8; READ_CHUNK];
        let mut discarded = 0;
        while discarded < MAX_DISCARD_ON_CLOSE {
            match self.stream.read(&mut chunk) {
                Ok(n) if n > 0 => discarded += n,
                _ => break,
            }
        }
    }
}

/// The state of one [`ApiServer::run`].
struct EventLoop<'a> {
    epoll: Epoll,
    listener: &'a UnixListener,
    limits: Limits,
    connections: HashMap<u64, Connection>,
    next_token: u64,
    /// Accepting is paused (the listener unregistered) until then, after an accept error.
    accept_paused_until: Option<Instant>,
}

impl<'a> EventLoop<'a> {
    fn new(
        listener: &'a UnixListener,
        limits: Limits,
        shutdown: Option<&EventFd>,
    ) -> Result<EventLoop<'a>, ServerError> {
        let epoll = Epoll::new().map_err(ServerError::Epoll)?;
        let listen = EpollEvent::new(EventSet::IN, LISTENER_TOKEN);
        epoll
            .ctl(ControlOperation::Add, listener.as_raw_fd(), listen)
            .map_err(ServerError::Epoll)?;
        if let Some(shutdown) = shutdown {
            let event = EpollEvent::new(EventSet::IN, SHUTDOWN_TOKEN);
            epoll
                .ctl(ControlOperation::Add, shutdown.as_raw_fd(), event)
                .map_err(ServerError::Epoll)?;
        }
        Ok(EventLoop {
            epoll,
            listener,
            limits,
            connections: HashMap::new(),
            next_token: FIRST_CONNECTION_TOKEN,
            accept_paused_until: None,
        })
    }

    fn run(&mut self, handler: &mut dyn FnMut(Request) -> Response) -> Result<(), ServerError> {
        let mut events = vec![EpollEvent::default(); EVENT_BATCH];
        loop {
            let timeout = self.wait_timeout_ms(Instant::now());
            let count = match self.epoll.wait(timeout, &mut events) {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(ServerError::Epoll(error)),
            };
            for event in &events[..count] {
                match event.data() {
                    LISTENER_TOKEN => self.accept_ready(),
                    SHUTDOWN_TOKEN => {
                        self.shut_down();
                        return Ok(());
                    }
                    token => self.connection_ready(token, event.event_set(), handler),
                }
            }
            self.expire_deadlines(Instant::now());
            self.resume_accepting(Instant::now());
        }
    }

    /// Milliseconds until the earliest deadline (rounded up, so the wait never ends just
    /// before it and spins), or -1 for none.
    fn wait_timeout_ms(&self, now: Instant) -> i32 {
        let earliest = self
            .connections
            .values()
            .filter_map(|connection| connection.deadline(&self.limits))
            .map(|(at, _)| at)
            .chain(self.accept_paused_until)
            .min();
        match earliest {
            None => -1,
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                let millis = wait.as_micros().div_ceil(1000);
                i32::try_from(millis).unwrap_or(i32::MAX)
            }
        }
    }

    fn accept_ready(&mut self) {
        for _ in 0..MAX_ACCEPTS_PER_WAKE {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(stream),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(error) => {
                    debug!("API server: accept failed: {error}; pausing accepts");
                    self.pause_accepting();
                    return;
                }
            }
        }
    }

    fn pause_accepting(&mut self) {
        let none = EpollEvent::new(EventSet::empty(), LISTENER_TOKEN);
        let fd = self.listener.as_raw_fd();
        if self.epoll.ctl(ControlOperation::Modify, fd, none).is_ok() {
            self.accept_paused_until = Some(Instant::now() + ACCEPT_ERROR_PAUSE);
        }
    }

    fn resume_accepting(&mut self, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| until <= now) {
            let listen = EpollEvent::new(EventSet::IN, LISTENER_TOKEN);
            let fd = self.listener.as_raw_fd();
            if self.epoll.ctl(ControlOperation::Modify, fd, listen).is_ok() {
                self.accept_paused_until = None;
            }
        }
    }

    /// Registers a new connection, or answers 503 and closes it when at the limit.
    fn admit(&mut self, stream: UnixStream) {
        if self.connections.len() >= self.limits.max_connections {
            debug!("API server: connection limit reached, refusing a connection");
            let mut bytes = Vec::new();
            let message = format!(
                "too many API connections: at most {} at once",
                self.limits.max_connections
            );
            Response::fault(503, message).write_to(&mut bytes, false);
            let _ = send_nosignal(&stream, &bytes);
            return;
        }
        if let Err(error) = stream.set_nonblocking(true) {
            debug!("API server: cannot make a connection non-blocking: {error}");
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let event = EpollEvent::new(EventSet::IN, token);
        if let Err(error) = self
            .epoll
            .ctl(ControlOperation::Add, stream.as_raw_fd(), event)
        {
            debug!("API server: cannot watch a connection: {error}");
            return;
        }
        self.connections
            .insert(token, Connection::new(stream, Instant::now()));
    }

    fn connection_ready(
        &mut self,
        token: u64,
        events: EventSet,
        handler: &mut dyn FnMut(Request) -> Response,
    ) {
        // An event for a connection closed earlier in this batch finds nothing.
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        let flow = connection.on_event(events, handler, &self.limits);
        self.settle(token, flow);
    }

    /// Closes the connection, or brings its epoll interest up to date.
    fn settle(&mut self, token: u64, flow: Flow) {
        let Some(connection) = self.connections.get_mut(&token) else {
            return;
        };
        if flow == Flow::Close {
            self.close(token);
            return;
        }
        let interest = connection.desired_interest(&self.limits);
        if interest == connection.interest {
            return;
        }
        let event = EpollEvent::new(interest, token);
        let fd = connection.stream.as_raw_fd();
        match self.epoll.ctl(ControlOperation::Modify, fd, event) {
            Ok(()) => connection.interest = interest,
            Err(error) => {
                debug!("API server: cannot update a connection's events: {error}");
                self.close(token);
            }
        }
    }

    fn close(&mut self, token: u64) {
        if let Some(mut connection) = self.connections.remove(&token) {
            let fd = connection.stream.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            connection.discard_unread();
        }
    }

    fn expire_deadlines(&mut self, now: Instant) {
        let expired: Vec<(u64, Deadline)> = self
            .connections
            .iter()
            .filter_map(|(&token, connection)| {
                let (at, deadline) = connection.deadline(&self.limits)?;
                (at <= now).then_some((token, deadline))
            })
            .collect();
        for (token, deadline) in expired {
            if let Some(connection) = self.connections.get_mut(&token) {
                let flow = connection.expire(deadline, &self.limits);
                self.settle(token, flow);
            }
        }
    }

    /// One non-blocking attempt to send what is queued, then every connection closes.
    fn shut_down(&mut self) {
        let tokens: Vec<u64> = self.connections.keys().copied().collect();
        for token in tokens {
            if let Some(connection) = self.connections.get_mut(&token) {
                let _ = connection.flush();
            }
            self.close(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::thread::{self, JoinHandle};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    /// Long enough for any response on a loaded test machine; tests never wait this long
    /// when things work.
    const TEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("tessera-api-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("api.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Echoes the request as JSON.
    fn echo(request: Request) -> Response {
        let body = serde_json::json!({
            "method": request.method.to_string(),
            "path": request.path,
            "query": request.query,
            "body": String::from_utf8_lossy(&request.body),
        });
        Response::json(200, &body)
    }

    /// A server on a thread; stopped and joined on drop.
    struct TestServer {
        dir: TempDir,
        stop: EventFd,
        thread: Option<JoinHandle<Result<(), ServerError>>>,
    }

    impl TestServer {
        fn start(limits: Limits) -> TestServer {
            let dir = TempDir::new();
            let server = ApiServer::bind(&dir.socket()).unwrap().with_limits(limits);
            TestServer::spawn(dir, server)
        }

        fn spawn(dir: TempDir, server: ApiServer) -> TestServer {
            TestServer::spawn_with(dir, server, echo)
        }

        fn spawn_with(
            dir: TempDir,
            server: ApiServer,
            handler: impl FnMut(Request) -> Response + Send + 'static,
        ) -> TestServer {
            let stop = EventFd::new(EFD_NONBLOCK).unwrap();
            let stop_for_run = stop.try_clone().unwrap();
            let thread = thread::spawn(move || server.run(handler, Some(&stop_for_run)));
            TestServer {
                dir,
                stop,
                thread: Some(thread),
            }
        }

        fn connect(&self) -> Client {
            Client::connect(&self.dir.socket())
        }

        /// Stops the server and returns what `run` returned, failing if it does not
        /// return promptly.
        fn stop(&mut self) -> Result<(), ServerError> {
            self.stop.write(1).unwrap();
            let thread = self.thread.take().unwrap();
            let (done_tx, done_rx) = mpsc::channel();
            thread::spawn(move || {
                let _ = done_tx.send(thread.join());
            });
            done_rx
                .recv_timeout(TEST_READ_TIMEOUT)
                .expect("run did not return after shutdown")
                .unwrap()
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            if self.thread.is_some() {
                let _ = self.stop();
            }
        }
    }

    /// A parsed response.
    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    /// A raw-bytes client that reads responses one at a time, keeping what follows.
    struct Client {
        stream: UnixStream,
        buf: Vec<u8>,
    }

    impl Client {
        fn connect(path: &Path) -> Client {
            let stream = UnixStream::connect(path).unwrap();
            stream.set_read_timeout(Some(TEST_READ_TIMEOUT)).unwrap();
            Client {
                stream,
                buf: Vec::new(),
            }
        }

        fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).unwrap();
        }

        /// Reads more bytes; false at EOF (or a reset, which also ends the connection).
        fn fill(&mut self) -> bool {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    true
                }
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => false,
                Err(error) => panic!("read failed: {error}"),
            }
        }

        fn reply(&mut self) -> Reply {
            loop {
                if let Some(reply) = self.take_reply() {
                    return reply;
                }
                assert!(self.fill(), "connection closed before a full response");
            }
        }

        fn take_reply(&mut self) -> Option<Reply> {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Response::new(&mut headers);
            let head_len = match parsed.parse(&self.buf).unwrap() {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial => return None,
            };
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8(h.value.to_vec()).unwrap();
                    (h.name.to_owned(), value)
                })
                .collect();
            let status = parsed.code.unwrap();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse().unwrap());
            if status == 100 {
                self.buf.drain(..head_len);
                return Some(Reply {
                    status,
                    headers,
                    body: Vec::new(),
                });
            }
            if self.buf.len() < head_len + length {
                return None;
            }
            let body = self.buf[head_len..head_len + length].to_vec();
            self.buf.drain(..head_len + length);
            Some(Reply {
                status,
                headers,
                body,
            })
        }

        fn expect_closed(&mut self) {
            while self.fill() {}
            assert!(self.buf.is_empty(), "unexpected bytes: {:?}", self.buf);
        }
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
    }

    fn short_limits() -> Limits {
        Limits {
            request_timeout: Duration::from_millis(500),
            ..Limits::default()
        }
    }

    #[test]
    fn keep_alive_serves_several_requests_on_one_connection() {
        let server = TestServer::start(Limits::default());
        let mut client = server.connect();
        for i in 0..5 {
            let path = format!("/req/{i}");
            client.send(&get(&path));
            let reply = client.reply();
            assert_eq!(reply.status, 200);
            assert_eq!(reply.header("Connection"), Some("keep-alive"));
            assert_eq!(reply.header("Server"), Some("tessera"));
            assert_eq!(reply.json()["path"], path.as_str());
        }
        client.send(b"PUT /last HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi");
        let reply = client.reply();
        assert_eq!(reply.json()["body"], "hi");
        assert_eq!(reply.header("Connection"), Some("close"));
        client.expect_closed();
    }

    #[test]
    fn pipelined_requests_are_answered_in_order() {
        let server = TestServer::start(Limits::default());
        let mut client = server.connect();
        let mut batch = Vec::new();
        for i in 0..20 {
            batch.extend(get(&format!("/p/{i}")));
        }
        batch.extend_from_slice(b"PUT /p/body HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz");
        client.send(&batch);
        for i in 0..20 {
            assert_eq!(client.reply().json()["path"], format!("/p/{i}"));
        }
        assert_eq!(client.reply().json()["body"], "xyz");
    }

    #[test]
    fn slow_client_gets_408_and_does_not_delay_others() {
        let limits = short_limits();
        let server = TestServer::start(limits);
        let mut slow = server.connect();
        let started = Instant::now();
        slow.send(b"GET /slow HTTP/1.1\r\nHost: loc");

        let mut fast = server.connect();
        fast.send(&get("/fast"));
        assert_eq!(fast.reply().json()["path"], "/fast");
        assert!(
            started.elapsed() < limits.request_timeout,
            "the fast client waited for the slow one"
        );

        let reply = slow.reply();
        assert_eq!(reply.status, 408);
        assert_eq!(reply.header("Connection"), Some("close"));
        assert!(reply.json()["fault_message"]
            .as_str()
            .unwrap()
            .contains("500 ms"));
        assert!(started.elapsed() >= limits.request_timeout);
        slow.expect_closed();

        // The fast client's connection is idle, not slow: still served.
        fast.send(&get("/again"));
        assert_eq!(fast.reply().status, 200);
    }

    #[test]
    fn trickled_request_that_completes_in_time_is_served() {
        let server = TestServer::start(short_limits());
        let mut client = server.connect();
        for piece in [&b"GET /tr"[..], b"ickle HTTP/1.1\r\n", b"\r\n"] {
            client.send(piece);
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(client.reply().json()["path"], "/trickle");
    }

    #[test]
    fn idle_connection_is_closed_after_the_idle_timeout() {
        let limits = Limits {
            idle_timeout: Some(Duration::from_millis(200)),
            ..Limits::default()
        };
        let server = TestServer::start(limits);
        let mut client = server.connect();
        client.send(&get("/"));
        assert_eq!(client.reply().status, 200);
        let idle_since = Instant::now();
        client.expect_closed();
        assert!(idle_since.elapsed() >= Duration::from_millis(150));
    }

    #[test]
    fn bad_request_gets_a_fault_and_close() {
        let server = TestServer::start(Limits::default());
        let mut client = server.connect();
        client.send(b"GET nope HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        let reply = client.reply();
        assert_eq!(reply.status, 400);
        assert_eq!(reply.header("Content-Type"), Some("application/json"));
        let message = reply.json()["fault_message"].as_str().unwrap().to_owned();
        assert!(message.contains("nope"), "{message}");
        client.expect_closed();
    }

    #[test]
    fn oversized_body_gets_413_without_reading_it() {
        let server = TestServer::start(Limits::default());
        let mut client = server.connect();
        client.send(b"PUT /x HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n");
        assert_eq!(client.reply().status, 413);
        client.expect_closed();
    }

    #[test]
    fn expect_100_continue_gets_an_interim_response() {
        let server = TestServer::start(Limits::default());
        let mut client = server.connect();
        client.send(b"PUT /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(client.reply().status, 100);
        client.send(b"data");
        let reply = client.reply();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["body"], "data");
    }

    #[test]
    fn head_request_gets_no_body() {
        let server = TestServer::start(Limits::default());
        let mut client = server.connect();
        client.send(b"HEAD /h HTTP/1.1\r\n\r\n");
        client.send(&get("/after"));
        let first = client.reply();
        assert_eq!(first.status, 200);
        // Our reader takes Content-Length bytes as the body, so a HEAD reply that carried
        // one would show up here as the body and break the next reply.
        let mut raw = first.body;
        raw.extend_from_slice(&client.buf);
        assert!(raw.starts_with(b"HTTP/1.1 200 OK\r\n"), "{raw:?}");
    }

    #[test]
    fn http10_connection_closes_after_the_response() {
        let server = TestServer::start(Limits::default());
        let mut client = server.connect();
        client.send(b"GET /old HTTP/1.0\r\n\r\n");
        let reply = client.reply();
        assert_eq!(reply.header("Connection"), Some("close"));
        client.expect_closed();
    }

    #[test]
    fn half_closed_client_still_gets_its_responses() {
        let server = TestServer::start(Limits::default());
        let mut client = server.connect();
        let mut batch = get("/a");
        batch.extend(get("/b"));
        client.send(&batch);
        client.stream.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(client.reply().json()["path"], "/a");
        assert_eq!(client.reply().json()["path"], "/b");
        client.expect_closed();
    }

    #[test]
    fn requests_sent_before_the_client_hung_up_are_handled() {
        let dir = TempDir::new();
        let server = ApiServer::bind(&dir.socket()).unwrap();
        let (seen_tx, seen_rx) = mpsc::channel();
        let handler = move |request: Request| {
            let _ = seen_tx.send(request.path.clone());
            echo(request)
        };
        let server = TestServer::spawn_with(dir, server, handler);
        let path = server.dir.socket();
        for round in 0..20 {
            let mut client = Client::connect(&path);
            let mut batch = Vec::new();
            for i in 0..3 {
                batch.extend(
                    format!("PUT /fire/{round}/{i} HTTP/1.1\r\nContent-Length: 0\r\n\r\n").bytes(),
                );
            }
            batch.extend_from_slice(b"PUT /partial HTTP/1.1\r\nContent-Le");
            client.send(&batch);
            drop(client);
            for i in 0..3 {
                let seen = seen_rx.recv_timeout(TEST_READ_TIMEOUT).unwrap();
                assert_eq!(seen, format!("/fire/{round}/{i}"));
            }
        }
        assert!(seen_rx.try_recv().is_err());
    }

    #[test]
    fn connections_over_the_limit_get_503() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let server = TestServer::start(limits);
        let mut first = server.connect();
        let mut second = server.connect();
        for client in [&mut first, &mut second] {
            client.send(&get("/"));
            assert_eq!(client.reply().status, 200);
        }
        let mut third = server.connect();
        let reply = third.reply();
        assert_eq!(reply.status, 503);
        third.expect_closed();

        drop(first);
        // The server notices the close on its next wake-up; retry until a slot is free.
        let deadline = Instant::now() + TEST_READ_TIMEOUT;
        loop {
            let mut fourth = server.connect();
            fourth.send(&get("/"));
            if fourth.reply().status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "slot never freed");
            thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn client_that_never_reads_does_not_block_others() {
        let limits = Limits {
            write_timeout: Duration::from_secs(1),
            ..Limits::default()
        };
        let server = TestServer::start(limits);
        let mut hog = server.connect();
        let sent = pipeline_until_server_stops_reading(&mut hog.stream);
        assert!(
            sent > limits.max_pending_output / 8,
            "only {sent} bytes sent"
        );

        let mut other = server.connect();
        other.send(&get("/other"));
        assert_eq!(other.reply().json()["path"], "/other");

        // Unread past the write timeout, the hog is dropped: reading now finds the
        // responses that fitted in its socket, then the end of the connection.
        thread::sleep(limits.write_timeout + Duration::from_millis(500));
        let mut received = 0;
        while hog.fill() {
            received += hog.buf.len();
            hog.buf.clear();
        }
        assert!(received > 0);
    }

    /// Writes one endless stream of pipelined requests without reading, until writes have
    /// blocked for a while (the server stopped reading) or fail (it closed). Returns the
    /// bytes written.
    fn pipeline_until_server_stops_reading(stream: &mut UnixStream) -> usize {
        let batch = get("/hog").repeat(1000);
        stream.set_nonblocking(true).unwrap();
        let mut sent = 0;
        let mut blocked_since: Option<Instant> = None;
        loop {
            assert!(sent < 256 * 1024 * 1024, "the server never stopped reading");
            match stream.write(&batch[sent % batch.len()..]) {
                Ok(n) => {
                    sent += n;
                    blocked_since = None;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    let since = *blocked_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(200) {
                        break;
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                Err(_) => break,
            }
        }
        stream.set_nonblocking(false).unwrap();
        sent
    }

    /// Drives one connection directly: however much a client that never reads pipelines,
    /// queued output stays within the cap plus one response and buffered input within a
    /// read chunk plus a partial request.
    #[test]
    fn buffers_stay_bounded_when_the_client_never_reads() {
        let (server_end, mut client_end) = UnixStream::pair().unwrap();
        server_end.set_nonblocking(true).unwrap();
        client_end.set_nonblocking(true).unwrap();
        let limits = Limits::default();
        let mut connection = Connection::new(server_end, Instant::now());
        let mut handler = echo;
        let batch = get("/bounded").repeat(1000);
        let mut sent = 0;
        for _ in 0..2000 {
            if let Ok(n) = client_end.write(&batch[sent % batch.len()..]) {
                sent += n;
            }
            let events = EventSet::IN | EventSet::OUT;
            assert_eq!(
                connection.on_event(events, &mut handler, &limits),
                Flow::Open
            );
            assert!(connection.pending_output() <= limits.max_pending_output + 512);
            assert!(connection.reader.buffered_len() <= READ_CHUNK + 64);
        }
        assert!(connection.backpressured(&limits));
        assert_eq!(connection.desired_interest(&limits), EventSet::OUT);
        assert!(connection.request_started.is_none());
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = TempDir::new();
        let path = dir.socket();
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = ApiServer::bind(&path).unwrap();
        assert_eq!(server.path(), Some(path.as_path()));
        let mut server = TestServer::spawn(dir, server);
        let mut client = server.connect();
        client.send(&get("/fresh"));
        assert_eq!(client.reply().status, 200);
        server.stop().unwrap();
    }

    #[test]
    fn live_socket_is_refused() {
        let dir = TempDir::new();
        let path = dir.socket();
        let _live = UnixListener::bind(&path).unwrap();
        let error = ApiServer::bind(&path).unwrap_err();
        assert!(matches!(error, ServerError::InUse { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("in use by another process"), "{message}");
        assert!(path.exists());
    }

    #[test]
    fn non_socket_file_is_refused_and_kept() {
        let dir = TempDir::new();
        let path = dir.socket();
        fs::write(&path, b"precious").unwrap();
        let error = ApiServer::bind(&path).unwrap_err();
        assert!(matches!(error, ServerError::NotASocket { .. }), "{error:?}");
        assert!(error.to_string().contains(&path.display().to_string()));
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn bind_error_names_the_path() {
        let dir = TempDir::new();
        let path = dir.0.join("missing-dir").join("api.sock");
        let error = ApiServer::bind(&path).unwrap_err();
        assert!(matches!(error, ServerError::Bind { .. }), "{error:?}");
        assert!(error.to_string().contains("missing-dir"));
    }

    #[test]
    fn shutdown_makes_run_return_and_removes_the_socket() {
        let mut server = TestServer::start(Limits::default());
        let mut client = server.connect();
        client.send(&get("/"));
        assert_eq!(client.reply().status, 200);
        let mut partial = server.connect();
        partial.send(b"GET / HT");
        server.stop().unwrap();
        assert!(!server.dir.socket().exists());
        client.expect_closed();
        partial.expect_closed();
    }

    #[test]
    fn from_listener_serves_and_leaves_the_file() {
        let dir = TempDir::new();
        let path = dir.socket();
        let server = ApiServer::from_listener(UnixListener::bind(&path).unwrap()).unwrap();
        assert_eq!(server.path(), Some(path.as_path()));
        let mut server = TestServer::spawn(dir, server);
        let mut client = server.connect();
        client.send(&get("/"));
        assert_eq!(client.reply().status, 200);
        server.stop().unwrap();
        assert!(path.exists());
    }
}
