//! The boot-done port: a guest byte written to port 0x3f0 is logged with the time since the VMM
//! process started. Benchmarks use it to mark "guest init reached".

use std::time::Instant;

use crate::clock::monotonic_us;
use crate::BusDevice;

/// The port the guest writes to.
pub const BOOT_DONE_PORT: u64 = 0x3f0;

/// Logs each byte the guest writes, with the time since `process_start`.
pub struct BootDonePort {
    process_start: Instant,
}

impl BootDonePort {
    pub fn new(process_start: Instant) -> Self {
        Self { process_start }
    }
}

impl BusDevice for BootDonePort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let value = data.first().copied().unwrap_or(0);
        let elapsed = self.process_start.elapsed();
        log::info!(
            "guest boot-done: value {value:#04x} at {:.3} ms since VMM start (monotonic_us={})",
            elapsed.as_secs_f64() * 1e3,
            monotonic_us()
        );
    }
}
