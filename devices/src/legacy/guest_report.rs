//! The guest report ports, written by tessera-init (or any guest):
//!
//! | port | written | VMM does |
//! |---|---|---|
//! | 0x3f0 | any byte: "boot done" | logs the first write of a boot with the time since the VMM process started |
//! | 0x3f1 | the command's exit status (0-255) | keeps it; the VMM exits with it after the guest resets |
//!
//! Benchmarks read the boot-done log line to time "guest init reached". Later boot-done writes
//! are only counted at the debug level (rate-limited): a guest cannot flood the log with them.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use guest_init::protocol::{BOOT_DONE_PORT, EXIT_STATUS_PORT, REPORT_PORT_COUNT};

use crate::clock::monotonic_us;
use crate::BusDevice;

/// The first port of the device (`guest_init::protocol::report` defines the ports).
pub const GUEST_REPORT_PORT: u64 = BOOT_DONE_PORT as u64;
/// How many ports it spans.
pub const GUEST_REPORT_LEN: u64 = REPORT_PORT_COUNT as u64;

const BOOT_DONE_OFFSET: u64 = 0;
const EXIT_STATUS_OFFSET: u64 = (EXIT_STATUS_PORT - BOOT_DONE_PORT) as u64;

/// The exit status the guest reported, shared with whoever ends the VM.
#[derive(Debug, Clone, Default)]
pub struct ReportedStatus(Arc<Mutex<Option<u8>>>);

impl ReportedStatus {
    pub fn get(&self) -> Option<u8> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, status: u8) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }
}

/// Logs boot-done writes and keeps the reported exit status.
pub struct GuestReport {
    process_start: Instant,
    status: ReportedStatus,
    /// Boot-done writes so far.
    boot_done_writes: u64,
}

impl GuestReport {
    pub fn new(process_start: Instant, status: ReportedStatus) -> Self {
        Self {
            process_start,
            status,
            boot_done_writes: 0,
        }
    }
}

impl BusDevice for GuestReport {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let value = data.first().copied().unwrap_or(0);
        match offset {
            BOOT_DONE_OFFSET => {
                self.boot_done_writes = self.boot_done_writes.saturating_add(1);
                if self.boot_done_writes > 1 {
                    crate::guest_debug!(
                        "guest boot-done again: value {value:#04x} (write {} of this boot)",
                        self.boot_done_writes
                    );
                    return;
                }
                let elapsed = self.process_start.elapsed();
                log::info!(
                    "guest boot-done: value {value:#04x} at {:.3} ms since VMM start (monotonic_us={})",
                    elapsed.as_secs_f64() * 1e3,
                    monotonic_us()
                );
            }
            EXIT_STATUS_OFFSET => {
                crate::guest_debug!("guest reported exit status {value}");
                self.status.set(value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_reported_status() {
        let status = ReportedStatus::default();
        let mut port = GuestReport::new(Instant::now(), status.clone());
        assert_eq!(status.get(), None);
        port.write(BOOT_DONE_OFFSET, &[1]);
        assert_eq!(status.get(), None);
        port.write(EXIT_STATUS_OFFSET, &[3]);
        port.write(EXIT_STATUS_OFFSET, &[137]);
        assert_eq!(status.get(), Some(137));
        let mut byte = [0];
        port.read(EXIT_STATUS_OFFSET, &mut byte);
        assert_eq!(byte, [0xff]);
    }
}
