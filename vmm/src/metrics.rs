//! Metrics: counters grouped per device and per API route, written as one JSON line per flush
//! to the file or FIFO `PUT /metrics` names (on `FlushMetrics` and every [`FLUSH_PERIOD`]).
//!
//! As in Firecracker, each counter in a line is the count since the previous line, so a
//! collector sums lines and a lost line loses only its own interval.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::MetricsBody;

/// How often metrics are flushed without being asked (Firecracker's period).
pub const FLUSH_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum MetricsError {
    /// cannot open metrics_path {path}: {source}
    Open { path: String, source: io::Error },
    /// cannot write metrics to {path}: {source}
    Write { path: String, source: io::Error },
    /// cannot write metrics to {path}: {source}; the line was dropped
    Dropped { path: String, source: io::Error },
}

/// Cumulative counters: group (`api_requests`, `block_rootfs`, `vmm` ...) -> name -> value.
pub type Snapshot = BTreeMap<String, BTreeMap<String, u64>>;

/// The open metrics destination and the values last written, to report deltas.
pub struct MetricsSink {
    path: PathBuf,
    file: File,
    last: Snapshot,
    /// The unwritten tail of a line a full FIFO or disk took only part of: written before
    /// the next line, so lines stay whole.
    pending: Vec<u8>,
    /// Lines dropped because nothing of them could be written.
    dropped_lines: u64,
}

impl MetricsSink {
    pub fn open(config: &MetricsBody) -> Result<Self, MetricsError> {
        let path = config.metrics_path.clone();
        let file = OpenOptions::new()
            // Read access lets a FIFO open without a reader; append keeps files whole.
            .read(true)
            .append(true)
            .create(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| MetricsError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self {
            path,
            file,
            last: Snapshot::new(),
            pending: Vec::new(),
            dropped_lines: 0,
        })
    }

    /// Writes one line with each counter's change since the previous line.
    ///
    /// One rule for every destination (file, FIFO; a full disk, a reader that is not keeping
    /// up, any other error): the flush succeeds when the line is written whole, or when only
    /// its tail is left over (kept, and written before the next line, so a line is never
    /// torn); it fails when nothing of the line can be written, and then the line is dropped
    /// whole and counted ([`MetricsSink::dropped_lines`]). The file is non-blocking: a slow
    /// reader never stalls the VMM.
    pub fn write(&mut self, snapshot: Snapshot) -> Result<(), MetricsError> {
        let line = self.line(&snapshot);
        self.last = snapshot;
        // An earlier line's tail goes first.
        if let Err(e) = self.send_pending() {
            return Err(self.drop_line(e));
        }
        if !self.pending.is_empty() {
            return Err(self.drop_line(io::Error::other(
                "the reader is not keeping up (the previous line is still being written)",
            )));
        }
        self.pending = line.into_bytes();
        let whole = self.pending.len();
        match self.send_pending() {
            Ok(()) if self.pending.len() < whole => Ok(()),
            Ok(()) => {
                self.pending.clear();
                Err(self.drop_line(io::Error::other(
                    "the reader is not keeping up (its FIFO is full)",
                )))
            }
            Err(e) if self.pending.len() < whole => {
                // The head is out: keep the tail, so the line can still be finished.
                log::warn!("{}", self.write_error(e));
                Ok(())
            }
            Err(e) => {
                self.pending.clear();
                Err(self.drop_line(e))
            }
        }
    }

    /// How many lines were dropped so far.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped_lines
    }

    fn drop_line(&mut self, source: io::Error) -> MetricsError {
        self.dropped_lines += 1;
        MetricsError::Dropped {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Writes what is pending until it is all out or the destination would block.
    fn send_pending(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            match self.file.write(&self.pending) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_error(&self, source: io::Error) -> MetricsError {
        MetricsError::Write {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn line(&self, snapshot: &Snapshot) -> String {
        let mut object = serde_json::Map::new();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        object.insert("utc_timestamp_ms".into(), now_ms.into());
        for (group, counters) in snapshot {
            let previous = self.last.get(group);
            let deltas: serde_json::Map<String, serde_json::Value> = counters
                .iter()
                .map(|(name, value)| {
                    let before = previous.and_then(|p| p.get(name)).copied().unwrap_or(0);
                    // A counter that went down was recreated (a swapped device): report it whole.
                    let delta = value.checked_sub(before).unwrap_or(*value);
                    (name.clone(), delta.into())
                })
                .collect();
            object.insert(group.clone(), deltas.into());
        }
        let mut line = serde_json::Value::Object(object).to_string();
        line.push('\n');
        line
    }
}

/// Requests and failures per API route, counted by the API thread and read at each flush.
#[derive(Debug, Clone, Default)]
pub struct ApiCounters(Arc<Mutex<BTreeMap<String, (u64, u64)>>>);

impl ApiCounters {
    /// Counts one request to `route` (e.g. `PUT /drives/{id}`), failed or not.
    pub fn record(&self, route: &str, failed: bool) {
        let mut routes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = match routes.get_mut(route) {
            Some(entry) => entry,
            None => routes.entry(route.to_string()).or_default(),
        };
        entry.0 = entry.0.saturating_add(1);
        entry.1 = entry.1.saturating_add(u64::from(failed));
    }

    /// The `api_requests` and `api_fails` groups.
    pub fn add_to(&self, snapshot: &mut Snapshot) {
        let routes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let requests = routes.iter().map(|(r, c)| (r.clone(), c.0)).collect();
        let fails = routes.iter().map(|(r, c)| (r.clone(), c.1)).collect();
        snapshot.insert("api_requests".into(), requests);
        snapshot.insert("api_fails".into(), fails);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn lines_carry_deltas_since_the_previous_line() {
        let path =
            std::env::temp_dir().join(format!("tessera-metrics-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut sink = MetricsSink::open(&MetricsBody {
            metrics_path: path.clone(),
        })
        .unwrap();
        let api = ApiCounters::default();
        api.record("PUT /machine-config", false);
        api.record("PUT /machine-config", true);
        let mut snapshot = Snapshot::new();
        api.add_to(&mut snapshot);
        snapshot.insert(
            "block_rootfs".into(),
            BTreeMap::from([("read_count".to_string(), 10)]),
        );
        sink.write(snapshot.clone()).unwrap();
        api.record("PUT /machine-config", false);
        api.add_to(&mut snapshot);
        snapshot.insert(
            "block_rootfs".into(),
            BTreeMap::from([("read_count".to_string(), 15)]),
        );
        sink.write(snapshot).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["api_requests"]["PUT /machine-config"], 2);
        assert_eq!(lines[0]["api_fails"]["PUT /machine-config"], 1);
        assert_eq!(lines[0]["block_rootfs"]["read_count"], 10);
        assert_eq!(lines[1]["api_requests"]["PUT /machine-config"], 1);
        assert_eq!(lines[1]["api_fails"]["PUT /machine-config"], 0);
        assert_eq!(lines[1]["block_rootfs"]["read_count"], 5);
        assert!(lines[1]["utc_timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn unopenable_path_is_named() {
        let err = MetricsSink::open(&MetricsBody {
            metrics_path: "/nonexistent/dir/m.json".into(),
        })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("/nonexistent/dir/m.json"), "{err}");
    }

    fn snapshot_with(n: u64) -> Snapshot {
        Snapshot::from([(
            "block_rootfs".to_string(),
            BTreeMap::from([("read_count".to_string(), n)]),
        )])
    }

    /// A full disk and a full FIFO follow one rule: a line nothing of which can be written is
    /// dropped whole, counted, and the flush fails saying so; lines that reach the reader are
    /// whole.
    #[test]
    fn a_line_that_cannot_be_written_is_dropped_whole_and_counted_everywhere() {
        let mut full_disk = MetricsSink::open(&MetricsBody {
            metrics_path: "/dev/full".into(),
        })
        .unwrap();
        let err = full_disk.write(snapshot_with(1)).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot write metrics to /dev/full: "),
            "{err}"
        );
        assert!(err.ends_with("; the line was dropped"), "{err}");
        assert_eq!(full_disk.dropped_lines(), 1);

        let fifo =
            std::env::temp_dir().join(format!("tessera-metrics-{}.fifo", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path; the result is checked.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let mut sink = MetricsSink::open(&MetricsBody {
            metrics_path: fifo.clone(),
        })
        .unwrap();
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut written = 0u64;
        let err = loop {
            written += 1;
            assert!(written < 100_000, "a FIFO nobody reads never filled");
            if let Err(e) = sink.write(snapshot_with(written)) {
                break e.to_string();
            }
        };
        assert!(err.contains("the reader is not keeping up"), "{err}");
        assert!(err.ends_with("; the line was dropped"), "{err}");
        assert_eq!(sink.dropped_lines(), 1);
        let mut text = Vec::new();
        let _ = (&reader).take(16 << 20).read_to_end(&mut text);
        // Whatever the reader got is whole lines, except a tail the sink still holds.
        let text = String::from_utf8(text).unwrap();
        let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
        if lines.last().is_some_and(|l| !l.ends_with('\n')) {
            lines.pop();
            assert!(!sink.pending.is_empty());
        }
        for line in lines {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        std::fs::remove_file(&fifo).unwrap();
    }
}
