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

use serde::{Deserialize, Serialize};

/// How often metrics are flushed without being asked (Firecracker's period).
pub const FLUSH_PERIOD: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum MetricsError {
    /// cannot open metrics_path {path}: {source}
    Open { path: String, source: io::Error },
    /// cannot write metrics to {path}: {source}
    Write { path: String, source: io::Error },
}

/// `PUT /metrics` and the config file's `metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: PathBuf,
}

/// Cumulative counters: group (`api_requests`, `block_rootfs`, `vmm` ...) -> name -> value.
pub type Snapshot = BTreeMap<String, BTreeMap<String, u64>>;

/// Most bytes kept for a FIFO that is not being read; lines beyond it are dropped whole.
const MAX_PENDING: usize = 1 << 20;

/// The open metrics destination and the values last written, to report deltas.
pub struct MetricsSink {
    path: PathBuf,
    file: File,
    last: Snapshot,
    /// What a full FIFO has not taken yet: sent before the next line, so lines stay whole.
    pending: Vec<u8>,
}

impl MetricsSink {
    pub fn open(config: &MetricsConfig) -> Result<Self, MetricsError> {
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
        })
    }

    /// Writes one line with each counter's change since the previous line. A FIFO that is
    /// full keeps the rest for the next write (the file is non-blocking: a slow reader must
    /// not stall the VMM).
    pub fn write(&mut self, snapshot: Snapshot) -> Result<(), MetricsError> {
        let line = self.line(&snapshot);
        self.last = snapshot;
        if self.pending.len() + line.len() > MAX_PENDING {
            return Err(self.write_error(io::Error::other(
                "the reader is not keeping up; line dropped",
            )));
        }
        self.pending.extend_from_slice(line.as_bytes());
        while !self.pending.is_empty() {
            match self.file.write(&self.pending) {
                Ok(0) => break,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(self.write_error(e)),
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
    use super::*;

    #[test]
    fn lines_carry_deltas_since_the_previous_line() {
        let path =
            std::env::temp_dir().join(format!("tessera-metrics-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut sink = MetricsSink::open(&MetricsConfig {
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
        let err = MetricsSink::open(&MetricsConfig {
            metrics_path: "/nonexistent/dir/m.json".into(),
        })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("/nonexistent/dir/m.json"), "{err}");
    }
}
