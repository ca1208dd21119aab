//! Pausing and resuming the vCPU threads (`PATCH /vm`).
//!
//! A vCPU thread checks the gate before every `KVM_RUN`. To pause, the VMM closes the gate and
//! kicks each thread out of `KVM_RUN` with a real-time signal whose handler does nothing, then
//! waits until every live vCPU has parked. A kick can land between a thread's check and its
//! `KVM_RUN` and be lost, so the VMM kicks again until all have parked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// How long a pause waits for the vCPUs to leave the guest before giving up.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a pause re-kicks vCPUs that have not parked yet.
const KICK_INTERVAL: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum PauseError {
    /// {parked} of {live} vCPUs stopped within {PAUSE_TIMEOUT:?}; the VM keeps running
    Timeout { parked: usize, live: usize },
    /// cannot install the vCPU kick signal handler: {0}
    Signal(String),
}

#[derive(Debug)]
struct GateState {
    paused: bool,
    /// vCPU threads waiting at the gate.
    parked: usize,
    /// vCPU threads still running their loop.
    live: usize,
}

/// Shared by the VMM thread (which pauses and resumes) and the vCPU threads (which wait).
#[derive(Debug)]
pub struct PauseGate {
    /// Read on every vCPU exit without taking the lock.
    closed: AtomicBool,
    state: Mutex<GateState>,
    changed: Condvar,
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the kick handler once per process; without one the signal would kill it, so a
/// failure is remembered and every later pause refuses to kick.
pub fn install_kick_handler() -> Result<(), PauseError> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.to_string()))
        .clone()
        .map_err(PauseError::Signal)
}

impl PauseGate {
    /// An open gate for `vcpus` threads.
    pub fn new(vcpus: usize) -> Self {
        Self {
            closed: AtomicBool::new(false),
            state: Mutex::new(GateState {
                paused: false,
                parked: 0,
                live: vcpus,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by a vCPU thread before entering the guest: blocks while the VM is paused.
    pub fn wait_while_paused(&self) {
        if !self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if !state.paused {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
    }

    /// Called by a vCPU thread whose loop has ended: a pause no longer waits for it.
    pub fn vcpu_exited(&self) {
        let mut state = self.lock();
        state.live = state.live.saturating_sub(1);
        self.changed.notify_all();
    }

    /// Stops every vCPU thread at the gate; returns once all live ones have parked.
    pub fn pause<T>(&self, threads: &[JoinHandle<T>]) -> Result<(), PauseError> {
        install_kick_handler()?;
        let mut state = self.lock();
        state.paused = true;
        self.closed.store(true, Ordering::Release);
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        while state.parked < state.live {
            if Instant::now() >= deadline {
                let error = PauseError::Timeout {
                    parked: state.parked,
                    live: state.live,
                };
                drop(state);
                self.resume();
                return Err(error);
            }
            for thread in threads.iter().filter(|t| !t.is_finished()) {
                // A thread that ends meanwhile just misses its kick.
                let _ = thread.kill(kick_signal());
            }
            state = self
                .changed
                .wait_timeout(state, KICK_INTERVAL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets the vCPU threads run again.
    pub fn resume(&self) {
        let mut state = self.lock();
        state.paused = false;
        self.closed.store(false, Ordering::Release);
        self.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// Threads that spin like vCPUs (a long "guest run" that only a kick interrupts is
    /// modelled by a sleep the signal cuts short) and count their loops.
    #[test]
    fn pause_parks_every_thread_and_resume_releases_them() {
        install_kick_handler().unwrap();
        let gate = Arc::new(PauseGate::new(3));
        let loops = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (gate, loops, stop) = (gate.clone(), loops.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        gate.wait_while_paused();
                        loops.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    gate.vcpu_exited();
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        gate.pause(&threads).unwrap();
        assert!(gate.is_paused());
        let before = loops.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        // Each thread may finish the iteration it was in when it parked: none goes further.
        assert_eq!(loops.load(Ordering::Relaxed), before);
        gate.resume();
        std::thread::sleep(Duration::from_millis(20));
        assert!(loops.load(Ordering::Relaxed) > before);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        // With no live vCPUs left, a pause succeeds at once.
        gate.pause::<()>(&[]).unwrap();
    }

    #[test]
    fn a_vcpu_that_never_parks_times_out_and_the_gate_reopens() {
        let gate = PauseGate::new(1);
        let err = gate.pause::<()>(&[]).unwrap_err();
        assert_eq!(err, PauseError::Timeout { parked: 0, live: 1 });
        assert!(!gate.is_paused());
    }
}
