//! The process's logger: one line per record with timestamp, level and thread, on stderr until
//! `PUT /logger` (or the config file's `logger`) sends it to a file or FIFO.
//!
//! Lines are written with a single `write` each, so concurrent threads never interleave within
//! a line; a FIFO nobody drains loses lines (counted) rather than stalling the VMM.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LoggerBody;
use log::{LevelFilter, Log, Metadata, Record};

/// Crates whose logs are never shown: virtio-queue logs each malformed ring at error level,
/// which would let a guest flood the log.
const SILENCED_TARGETS: &[&str] = &["virtio_queue"];

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum LoggerError {
    /// logger level {0:?} is not one of Off, Error, Warning, Info, Debug, Trace
    BadLevel(String),
    /// cannot open log_path {path}: {source}
    Open { path: String, source: io::Error },
    /// the logger is not initialised
    NotInitialised,
}

/// Firecracker's level names (and Rust's `Warn`), any case.
pub fn parse_level(text: &str) -> Result<LevelFilter, LoggerError> {
    match text.to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warning" | "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(LoggerError::BadLevel(text.to_string())),
    }
}

struct Output {
    target: Box<dyn Write + Send>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

struct Logger {
    output: Mutex<Output>,
    dropped: AtomicU64,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger writing to stderr at `level`. Later calls only change the level.
pub fn init(level: LevelFilter) {
    let logger = LOGGER.get_or_init(|| Logger {
        output: Mutex::new(Output {
            target: Box::new(io::stderr()),
            show_level: true,
            show_origin: false,
            module: None,
        }),
        dropped: AtomicU64::new(0),
    });
    // Fails only when another logger is installed (a test harness's): keep that one.
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}

/// A checked logger configuration with its destination open, not yet in use.
pub struct PreparedLogger {
    config: LoggerBody,
    level: Option<LevelFilter>,
    target: Option<File>,
    /// The log file, when opening it created it.
    created: Option<PathBuf>,
}

impl PreparedLogger {
    /// Checks `config` and opens its destination; nothing changes until [`Self::apply`].
    pub fn open(config: &LoggerBody) -> Result<Self, LoggerError> {
        let level = config.level.as_deref().map(parse_level).transpose()?;
        let (target, created) = match &config.log_path {
            Some(path) => {
                let existed = path.exists();
                let file = OpenOptions::new()
                    // Read access lets a FIFO open without a reader; append keeps files whole.
                    .read(true)
                    .append(true)
                    .create(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(path)
                    .map_err(|source| LoggerError::Open {
                        path: path.display().to_string(),
                        source,
                    })?;
                (Some(file), (!existed).then(|| path.clone()))
            }
            None => (None, None),
        };
        Ok(Self {
            config: config.clone(),
            level,
            target,
            created,
        })
    }

    /// Gives up on this configuration, removing the log file if opening it created it.
    pub fn discard(self) {
        if let Some(path) = self.created {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Sends the process's log lines where this configuration says.
    pub fn apply(self) -> Result<(), LoggerError> {
        let logger = LOGGER.get().ok_or(LoggerError::NotInitialised)?;
        let mut output = logger.output.lock().unwrap_or_else(|p| p.into_inner());
        let config = self.config;
        if let Some(target) = self.target {
            RAW_FD.store(target.as_raw_fd(), Ordering::Relaxed);
            output.target = Box::new(target);
        }
        if let Some(show) = config.show_level {
            output.show_level = show;
        }
        if let Some(show) = config.show_log_origin {
            output.show_origin = show;
        }
        if config.module.is_some() {
            output.module = config.module.clone();
        }
        if let Some(level) = self.level {
            log::set_max_level(level);
        }
        Ok(())
    }
}

/// Applies `config`: the destination is opened first, so an error changes nothing.
pub fn configure(config: &LoggerBody) -> Result<(), LoggerError> {
    PreparedLogger::open(config)?.apply()
}

/// Where the log goes, for [`write_raw`]: stderr until a log file is configured.
static RAW_FD: AtomicI32 = AtomicI32::new(libc::STDERR_FILENO);

/// Writes a whole line to the log's destination, and to stderr too when the log goes elsewhere,
/// with no lock and no allocation: for a signal handler, which may have interrupted the logger.
pub fn write_raw(line: &[u8]) {
    let fd = RAW_FD.load(Ordering::Relaxed);
    write_fd(fd, line);
    if fd != libc::STDERR_FILENO {
        write_fd(libc::STDERR_FILENO, line);
    }
}

fn write_fd(fd: RawFd, bytes: &[u8]) {
    // SAFETY: writes from a valid buffer to a descriptor this process owns (a log file stays
    // open while it is the destination); a failure only loses the line.
    let _ = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

/// Lines lost because the destination was full or failing.
pub fn dropped_lines() -> u64 {
    LOGGER
        .get()
        .map_or(0, |l| l.dropped.load(Ordering::Relaxed))
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
            && !SILENCED_TARGETS
                .iter()
                .any(|t| metadata.target().starts_with(t))
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut output = self.output.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(module) = &output.module {
            if !record
                .module_path()
                .unwrap_or("")
                .starts_with(module.as_str())
            {
                return;
            }
        }
        // humantime cannot format a clock before 1970 (and errs past 9999): fall back to the
        // epoch and ignore a formatting error rather than panic in the logger.
        let now = SystemTime::now().max(UNIX_EPOCH);
        let mut line = String::with_capacity(128);
        let _ = write!(line, "{}", humantime::format_rfc3339_micros(now));
        if output.show_level {
            line.push_str(&format!(" {:<5}", record.level()));
        }
        let thread = std::thread::current();
        line.push_str(&format!(" [{}]", thread.name().unwrap_or("?")));
        if output.show_origin {
            line.push_str(&format!(
                " {}:{}",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            ));
        }
        line.push_str(&format!(" {}\n", record.args()));
        if output.target.write_all(line.as_bytes()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self) {
        let mut output = self.output.lock().unwrap_or_else(|p| p.into_inner());
        let _ = output.target.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_use_firecracker_names() {
        assert_eq!(parse_level("Warning").unwrap(), LevelFilter::Warn);
        assert_eq!(parse_level("warn").unwrap(), LevelFilter::Warn);
        assert_eq!(parse_level("TRACE").unwrap(), LevelFilter::Trace);
        assert_eq!(parse_level("Off").unwrap(), LevelFilter::Off);
        let err = parse_level("loud").unwrap_err().to_string();
        assert!(err.starts_with("logger level \"loud\""), "{err}");
    }

    #[test]
    fn configured_file_gets_lines_with_level_thread_and_time() {
        init(LevelFilter::Info);
        let path = std::env::temp_dir().join(format!("tessera-logger-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let bad = LoggerBody {
            log_path: Some("/nonexistent/dir/x.log".into()),
            level: None,
            show_level: None,
            show_log_origin: None,
            module: None,
        };
        assert!(configure(&bad)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/dir/x.log"));
        configure(&LoggerBody {
            log_path: Some(path.clone()),
            level: Some("Debug".into()),
            ..bad
        })
        .unwrap();
        std::thread::Builder::new()
            .name("logtest".into())
            .spawn(|| log::debug!("hello from the logger test"))
            .unwrap()
            .join()
            .unwrap();
        log::logger().flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("hello from the logger test"))
            .unwrap_or_else(|| panic!("no line in {text:?}"));
        assert!(line.contains(" DEBUG [logtest] "), "{line}");
        assert!(line.starts_with("20") && line.contains('T'), "{line}");
        std::fs::remove_file(path).unwrap();
    }
}
