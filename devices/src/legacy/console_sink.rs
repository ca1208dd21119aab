//! Console output that never blocks the guest.
//!
//! The serial console writes into a bounded queue that a writer thread (`console`) drains to
//! the real output, stdout or a file. A vCPU writing a byte only takes a short lock: when the
//! output is slow or stuck (a pipe nobody reads, a paused terminal) the queue fills up and
//! further bytes are dropped and counted, instead of stalling the vCPU and, with it, the VM's
//! stop. Stdout keeps its blocking mode: setting `O_NONBLOCK` would change the file description
//! it shares with other processes (a terminal, the parent's pipe). The writer writes to a
//! duplicate of descriptor 1 ([`stdout_writer`]), not through Rust's `io::stdout()`, so that a
//! write stuck on a full pipe holds no lock anyone else needs (the final `stdout().flush()`).
//!
//! As the VM ends, [`ConsoleSinkHandle::flush`] waits until what was queued has been written,
//! for as long as the writer makes progress: nothing is lost when the reader keeps up, and a
//! reader that stopped costs the stop a bounded wait.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes the queue holds before guest output is dropped.
pub const CONSOLE_QUEUE_BYTES: usize = 256 << 10;
/// Most bytes the writer hands to one `write`.
const CHUNK: usize = 16 << 10;

/// Stdout for the console writer: a duplicate of descriptor 1 (same file description, same
/// blocking mode). A process without a stdout gets a sink that discards.
pub fn stdout_writer() -> Box<dyn Write + Send> {
    match io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(File::from(fd)),
        Err(e) => {
            log::warn!("serial: cannot duplicate stdout ({e}); console output is discarded");
            Box::new(io::sink())
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// The queue got bytes while the writer waited.
    queued: Condvar,
    /// The writer finished a write (or gave up).
    written: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<u8>,
    capacity: usize,
    /// Bytes taken into the queue, ever.
    enqueued: u64,
    /// Bytes written to the output, ever.
    written: u64,
    /// Bytes dropped: no room in the queue, or the output failed.
    dropped: u64,
    /// The writer waits for bytes.
    writer_idle: bool,
    /// The output failed or the writer could not start: everything is dropped from now on.
    broken: bool,
    /// The guest's side is gone (the VM was dropped, say after a failed start): the writer
    /// ends once the queue is empty.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The guest's side: a writer that takes every byte at once, queueing what fits.
pub struct ConsoleSink {
    shared: Arc<Shared>,
}

/// The VMM's side: flushes the queue as the VM ends and counts what was dropped.
#[derive(Clone)]
pub struct ConsoleSinkHandle {
    shared: Arc<Shared>,
}

/// A console writer thread that has run its `confine` and waits for its output: spawned
/// with the machine, before the boot, so that neither the thread nor its seccomp filter is on
/// the path to the guest's first instruction. Dropped unstarted, the thread ends.
pub struct ParkedConsoleWriter {
    shared: Arc<Shared>,
    out_tx: mpsc::Sender<Box<dyn Write + Send>>,
}

impl ParkedConsoleWriter {
    /// Hands the thread its output: from now on it writes what the guest's side queues.
    pub fn start(self, out: Box<dyn Write + Send>) -> (ConsoleSink, ConsoleSinkHandle) {
        if self.out_tx.send(out).is_err() {
            // The thread is gone (its confine failed and it gave up): everything is dropped.
            self.shared.give_up(0);
        }
        (
            ConsoleSink {
                shared: self.shared.clone(),
            },
            ConsoleSinkHandle {
                shared: self.shared,
            },
        )
    }
}

impl ConsoleSink {
    /// Starts the writer thread, which runs `confine` (its seccomp filter, signal mask) before
    /// it writes anything; if that fails, it writes nothing and every byte is dropped.
    /// `capacity` bounds the queue.
    pub fn spawn(
        out: Box<dyn Write + Send>,
        capacity: usize,
        confine: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> io::Result<(ConsoleSink, ConsoleSinkHandle)> {
        Ok(Self::park(capacity, confine)?.start(out))
    }

    /// Starts the writer thread without its output: it runs `confine`, then waits for
    /// [`ParkedConsoleWriter::start`].
    pub fn park(
        capacity: usize,
        confine: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> io::Result<ParkedConsoleWriter> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                capacity,
                ..State::default()
            }),
            queued: Condvar::new(),
            written: Condvar::new(),
        });
        let writer = shared.clone();
        let (out_tx, out_rx) = mpsc::channel::<Box<dyn Write + Send>>();
        thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                if let Err(e) = confine() {
                    log::error!(
                        "serial: the console writer cannot start ({e}); console output is dropped"
                    );
                    writer.give_up(0);
                    return;
                }
                // No output means the machine was dropped before its boot.
                if let Ok(mut out) = out_rx.recv() {
                    writer.write_until_broken(&mut *out);
                }
            })?;
        Ok(ParkedConsoleWriter { shared, out_tx })
    }
}

impl Shared {
    /// The writer thread's loop: takes what is queued, writes it, until the output fails or
    /// the guest's side is gone and everything is written.
    fn write_until_broken(&self, out: &mut dyn Write) {
        let mut chunk = Vec::with_capacity(CHUNK);
        loop {
            {
                let mut state = self.lock();
                while state.queue.is_empty() {
                    if state.closed {
                        return;
                    }
                    state.writer_idle = true;
                    state = self.queued.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                state.writer_idle = false;
                let n = state.queue.len().min(CHUNK);
                chunk.extend(state.queue.drain(..n));
            }
            match out.write_all(&chunk).and_then(|()| out.flush()) {
                Ok(()) => {
                    let mut state = self.lock();
                    state.written += chunk.len() as u64;
                    self.written.notify_all();
                }
                Err(e) => {
                    log::warn!("serial: console output failed ({e}); console output is dropped from now on");
                    self.give_up(chunk.len());
                    return;
                }
            }
            chunk.clear();
        }
    }

    /// Drops what is queued (and `in_flight` bytes taken from it) and everything to come.
    fn give_up(&self, in_flight: usize) {
        let mut state = self.lock();
        state.broken = true;
        let lost = (in_flight + state.queue.len()) as u64;
        state.dropped = state.dropped.saturating_add(lost);
        state.queue.clear();
        self.written.notify_all();
    }
}

impl Write for ConsoleSink {
    /// Always takes all of `buf`: what does not fit in the queue is dropped and counted.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        let room = match state.broken {
            true => 0,
            false => state.capacity.saturating_sub(state.queue.len()),
        };
        let take = room.min(buf.len());
        state.queue.extend(&buf[..take]);
        state.enqueued += take as u64;
        let lost = (buf.len() - take) as u64;
        state.dropped = state.dropped.saturating_add(lost);
        if take > 0 && state.writer_idle {
            state.writer_idle = false;
            self.shared.queued.notify_one();
        }
        let (dropped, broken) = (state.dropped, state.broken);
        // Not under the lock: the log's own output may be slow.
        drop(state);
        if lost > 0 && !broken {
            crate::guest_warn!(
                "serial: the console output is not read fast enough; {dropped} bytes of guest output dropped so far"
            );
        }
        Ok(buf.len())
    }

    /// The writer thread flushes after each write; nothing to wait for here.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleSink {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.queued.notify_one();
    }
}

impl ConsoleSinkHandle {
    /// Waits until every byte queued before this call is written, giving up when the writer
    /// made no progress for `stall`; then logs how many bytes of guest output were dropped in
    /// all (bytes still queued count as dropped), if any, and returns that count.
    pub fn flush(&self, stall: Duration) -> u64 {
        let mut state = self.shared.lock();
        let target = state.enqueued;
        let mut progress = (state.written, Instant::now());
        while !state.broken && state.written < target {
            let now = Instant::now();
            if state.written != progress.0 {
                progress = (state.written, now);
            }
            let Some(left) = (progress.1 + stall).checked_duration_since(now) else {
                break;
            };
            if left.is_zero() {
                break;
            }
            state = self
                .shared
                .written
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        // A broken output already counted what it had queued as dropped.
        let unwritten = match state.broken {
            true => 0,
            false => target.saturating_sub(state.written),
        };
        let dropped = state.dropped.saturating_add(unwritten);
        drop(state);
        if dropped > 0 {
            log::warn!(
                "serial: {dropped} bytes of guest console output were dropped (serial.output_bytes_dropped): the console was not read fast enough"
            );
        }
        dropped
    }

    /// Bytes of guest output dropped so far (`serial.output_bytes_dropped`).
    pub fn dropped_bytes(&self) -> u64 {
        self.shared.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::mpsc;

    /// A pipe: (read end, write end as a writer).
    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        (File::from(read), File::from(write))
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl Write for Collect {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn everything_arrives_in_order_when_the_reader_keeps_up() {
        let out = Collect::default();
        let (mut sink, handle) = ConsoleSink::spawn(Box::new(out.clone()), 64, || Ok(())).unwrap();
        let mut expected = Vec::new();
        for i in 0..10_000u32 {
            let byte = (i % 251) as u8;
            expected.push(byte);
            sink.write_all(&[byte]).unwrap();
            // Slower than the writer, so the small queue never overflows.
            if i % 32 == 0 {
                while handle.shared.lock().queue.len() > 16 {
                    thread::yield_now();
                }
            }
        }
        assert_eq!(handle.flush(Duration::from_secs(5)), 0);
        assert_eq!(*out.0.lock().unwrap(), expected);
    }

    #[test]
    fn the_writer_ends_after_the_last_byte_once_the_sink_is_dropped() {
        let out = Collect::default();
        let (mut sink, handle) = ConsoleSink::spawn(Box::new(out.clone()), 64, || Ok(())).unwrap();
        sink.write_all(b"last words").unwrap();
        drop(sink);
        let deadline = Instant::now() + Duration::from_secs(5);
        // The writer's clone of the shared state goes when its thread ends.
        while Arc::strong_count(&handle.shared) > 1 {
            assert!(Instant::now() < deadline, "the writer thread did not end");
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(handle.flush(Duration::from_millis(100)), 0);
        assert_eq!(*out.0.lock().unwrap(), b"last words");
    }

    #[test]
    fn a_stuck_reader_never_blocks_the_guest_and_the_loss_is_counted() {
        let (read, write) = pipe();
        let (mut sink, handle) = ConsoleSink::spawn(Box::new(write), 4096, || Ok(())).unwrap();
        // Far more than the pipe (64 KiB) and the queue hold; each write returns at once.
        let (done_tx, done_rx) = mpsc::channel();
        let guest = thread::spawn(move || {
            for _ in 0..1024 {
                sink.write_all(&[b'x'; 1024]).unwrap();
            }
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the guest's writes blocked");
        guest.join().unwrap();
        let started = Instant::now();
        let dropped = handle.flush(Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(5));
        // SAFETY: F_GETPIPE_SZ on an open pipe descriptor.
        let pipe_size = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_GETPIPE_SZ) };
        let most_written = u64::try_from(pipe_size).unwrap() + 4096 + CHUNK as u64;
        assert!(
            dropped >= 1024 * 1024 - most_written && dropped < 1024 * 1024,
            "dropped {dropped}"
        );
        assert!(handle.dropped_bytes() <= dropped);
        drop(read);
    }

    #[test]
    fn a_closed_output_drops_everything_after_the_failure() {
        let (read, write) = pipe();
        drop(read);
        let (mut sink, handle) = ConsoleSink::spawn(Box::new(write), 4096, || Ok(())).unwrap();
        // SIGPIPE is ignored in Rust programs (and so in this test binary): EPIPE instead.
        sink.write_all(b"lost").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !handle.shared.lock().broken {
            assert!(Instant::now() < deadline, "the writer never saw EPIPE");
            thread::sleep(Duration::from_millis(1));
        }
        sink.write_all(b"more").unwrap();
        assert_eq!(handle.flush(Duration::from_millis(100)), 8);
    }

    #[test]
    fn a_writer_that_cannot_be_confined_writes_nothing() {
        let out = Collect::default();
        let (mut sink, handle) =
            ConsoleSink::spawn(Box::new(out.clone()), 4096, || Err("no filter".to_string()))
                .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !handle.shared.lock().broken {
            assert!(Instant::now() < deadline, "the writer never gave up");
            thread::sleep(Duration::from_millis(1));
        }
        sink.write_all(b"secret").unwrap();
        assert_eq!(handle.flush(Duration::from_millis(100)), 6);
        assert!(out.0.lock().unwrap().is_empty());
    }
}
