//! The vCPU threads: spawned with the VM (before `InstanceStart` when the API prebuilds it),
//! each blocks the process's signals and installs its seccomp filter, then parks until the boot
//! hands it its vCPU. Installing a filter costs 0.1-0.4 ms here, which this keeps off the path
//! to the guest's first instruction; and no vCPU enters the guest before every vCPU thread has
//! its filter.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use vmm_sys_util::eventfd::EventFd;

use crate::runtime::exit::VmExit;
use crate::runtime::pause::{self, PauseGate};
use crate::seccomp::{Filters, ThreadKind};
use crate::vcpu::{Buses, Vcpu};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum VcpuThreadError {
    /// cannot start a vCPU thread: {0}
    Spawn(std::io::Error),
    /// cannot clone an eventfd: {0}
    EventFd(std::io::Error),
    /// {0}
    Failed(String),
}

/// A vCPU thread's last word: why its vCPU stopped, and the buses it ran with. The buses
/// travel back so that the devices on them are dropped on the VMM thread, whose filter allows
/// what their `Drop` does (the vsock device checks and removes its socket file), never on a
/// vCPU thread whose vCPU ended before the VMM did.
pub struct VcpuEnded {
    pub exit: VmExit,
    pub buses: Buses,
}

/// What a parked thread needs to run its vCPU.
struct VcpuStart {
    vcpu: Vcpu,
    buses: Buses,
    gate: Arc<PauseGate>,
    exit_tx: Sender<VcpuEnded>,
    exit_evt: EventFd,
}

/// vCPU threads waiting for their vCPUs. Dropped before [`ParkedVcpus::start`], they end
/// without entering the guest and are joined.
pub struct ParkedVcpus {
    threads: Vec<(JoinHandle<()>, Sender<VcpuStart>)>,
    ready: Receiver<Result<(), String>>,
}

impl ParkedVcpus {
    /// Spawns `count` threads named `vcpu0`...
    pub fn spawn(count: usize, filters: &Filters) -> Result<Self, VcpuThreadError> {
        // Installed now: sigaction is in no filter.
        if let Err(e) = pause::install_kick_handler() {
            log::warn!("{e}; pausing this VM will be refused");
        }
        let (ready_tx, ready) = mpsc::channel();
        let mut parked = ParkedVcpus {
            threads: Vec::with_capacity(count),
            ready,
        };
        for index in 0..count {
            let (start_tx, start_rx) = mpsc::channel();
            let (filters, ready_tx) = (filters.clone(), ready_tx.clone());
            let thread = thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || park_then_run(&filters, ready_tx, &start_rx))
                .map_err(VcpuThreadError::Spawn)?;
            parked.threads.push((thread, start_tx));
        }
        Ok(parked)
    }

    /// Once every thread has its filter, hands each its vCPU (in order) and returns the
    /// running threads, leaving none parked; on an error they stay parked until dropped, and
    /// end without entering the guest.
    pub fn start(
        &mut self,
        vcpus: impl Iterator<Item = Vcpu>,
        buses: &Buses,
        gate: &Arc<PauseGate>,
        exit_tx: &Sender<VcpuEnded>,
        exit_evt: &EventFd,
    ) -> Result<Vec<JoinHandle<()>>, VcpuThreadError> {
        for _ in 0..self.threads.len() {
            self.ready
                .recv()
                .unwrap_or_else(|_| Err("a vCPU thread ended before it was ready".into()))
                .map_err(VcpuThreadError::Failed)?;
        }
        let mut starts = Vec::with_capacity(self.threads.len());
        for vcpu in vcpus {
            starts.push(VcpuStart {
                vcpu,
                buses: buses.clone(),
                gate: gate.clone(),
                exit_tx: exit_tx.clone(),
                exit_evt: exit_evt.try_clone().map_err(VcpuThreadError::EventFd)?,
            });
        }
        if starts.len() != self.threads.len() {
            return Err(VcpuThreadError::Failed(format!(
                "{} vCPUs for {} vCPU threads",
                starts.len(),
                self.threads.len()
            )));
        }
        let mut running = Vec::with_capacity(starts.len());
        for ((thread, start_tx), start) in std::mem::take(&mut self.threads).into_iter().zip(starts)
        {
            // A thread that is gone has reported ready, so it cannot be: its vCPU is dropped.
            let _ = start_tx.send(start);
            running.push(thread);
        }
        Ok(running)
    }
}

impl Drop for ParkedVcpus {
    fn drop(&mut self) {
        for (thread, start_tx) in self.threads.drain(..) {
            drop(start_tx);
            let _ = thread.join();
        }
    }
}

fn park_then_run(
    filters: &Filters,
    ready_tx: Sender<Result<(), String>>,
    start_rx: &Receiver<VcpuStart>,
) {
    let ready = filters.confine_worker(ThreadKind::Vcpu);
    let failed = ready.is_err();
    let _ = ready_tx.send(ready);
    // Gone before the wait, so that a thread that dies first is seen as gone.
    drop(ready_tx);
    if failed {
        return;
    }
    // The boot was abandoned when the sender goes without a start.
    let Ok(VcpuStart {
        mut vcpu,
        buses,
        gate,
        exit_tx,
        exit_evt,
    }) = start_rx.recv()
    else {
        return;
    };
    let exit = vcpu.run(&buses, &gate);
    // The vCPU stays open until the process ends: closing it here would leave the VMM thread's
    // drop of the VM to destroy it, synchronously on the way to `exit` (KVM's teardown costs
    // milliseconds to tens of milliseconds on some hosts); the exit tears it down either way.
    std::mem::forget(vcpu);
    gate.vcpu_exited();
    // The receiver is gone only when the VMM is already exiting: then the buses are never
    // dropped here (the process ends without their cleanup, as it would have a moment later).
    if let Err(unsent) = exit_tx.send(VcpuEnded { exit, buses }) {
        std::mem::forget(unsent.0.buses);
    }
    let _ = exit_evt.write(1);
}
