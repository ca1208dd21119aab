//! The limits a module runs under: its memory (a store limiter that stops the run when the module
//! asks for more, so that it ends with its own exit code instead of a failed `memory.grow` it
//! may ignore) and its wall time (epoch interruption: a timer thread bumps the engine's epoch
//! at the deadline). Fuel is wasmtime's own (`Store::set_fuel`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Engine, ResourceLimiter};

/// Tables and instances a module may make: generous for real programs, bounded for a hostile
/// one (wasmtime's defaults are unbounded).
const MAX_TABLE_ELEMENTS: usize = 10_000_000;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
/// the module asked for {desired} bytes of memory; its limit is {limit}
pub struct MemoryOverLimit {
    pub desired: usize,
    pub limit: u64,
}

/// The store's limiter.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimiter {
    /// Bytes of linear memory, per memory; none: only wasmtime's own bounds.
    pub limit: Option<u64>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match self.limit {
            Some(limit) if desired as u64 > limit => Err(MemoryOverLimit { desired, limit }.into()),
            _ => Ok(true),
        }
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The wall-time deadline of one run: at `limit` after [`Deadline::start`], the engine's epoch
/// moves on, which interrupts the module at its next loop or call.
pub struct Deadline {
    passed: Arc<AtomicBool>,
}

impl Deadline {
    /// Starts the timer (none without a limit). The store must have an epoch deadline of 1.
    pub fn start(engine: &Engine, limit: Option<Duration>) -> Deadline {
        let passed = Arc::new(AtomicBool::new(false));
        if let Some(limit) = limit {
            let (engine, flag) = (engine.clone(), passed.clone());
            std::thread::spawn(move || {
                std::thread::sleep(limit);
                flag.store(true, Ordering::SeqCst);
                engine.increment_epoch();
            });
        }
        Deadline { passed }
    }

    /// Whether the deadline has passed.
    pub fn passed(&self) -> bool {
        self.passed.load(Ordering::SeqCst)
    }
}
