//! The running VM: its VMM event loop, what ends it and why, pausing, and every signal the
//! VMM handles (the running VM's SIGINT/SIGTERM in [`control`], the pre-boot ones and the
//! per-thread signal masks in [`signals`], the vCPU kick in [`pause`]).

pub mod control;
pub mod exit;
pub mod pause;
pub mod signals;
pub mod teardown;

use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::legacy::{ConsoleSinkHandle, PanicReason, ReportedStatus, I8042};
use event_manager::{EventManager, SubscriberOps};

use self::control::VmControl;
use self::exit::VmExit;
use self::pause::{PauseError, PauseGate};
use crate::device_manager::{Subscriber, VirtioDevices};
use crate::metrics::Snapshot;
use crate::vm::{Vm, VmError};

type EventLoop = EventManager<Subscriber>;

/// As the VM ends, the console's queued output is written while the writer makes progress;
/// after this long without any, the rest is dropped (a reader that stopped reading).
const CONSOLE_FLUSH_STALL: std::time::Duration = std::time::Duration::from_millis(500);

/// A booted VM whose vCPU threads are running.
pub struct RunningVm {
    /// Keeps the KVM VM and guest memory alive while vCPU threads use them; not dropped once
    /// the teardown keeper holds them (`detached`).
    vm: ManuallyDrop<Vm>,
    detached: bool,
    event_manager: EventLoop,
    control: Arc<Mutex<VmControl>>,
    reported_status: ReportedStatus,
    panic_reason: PanicReason,
    console_sink: ConsoleSinkHandle,
    handle: VmHandle,
}

/// What the API's runtime actions reach in a running VM: its devices, its keyboard, its
/// console's counters, and the gate its vCPUs pause at.
#[derive(Clone)]
pub struct VmHandle {
    pub devices: VirtioDevices,
    i8042: Arc<Mutex<I8042>>,
    /// The console's queue, for its dropped-bytes counter.
    console: ConsoleSinkHandle,
    gate: Arc<PauseGate>,
    vcpu_threads: Arc<Vec<JoinHandle<()>>>,
}

impl VmHandle {
    pub(crate) fn new(
        devices: VirtioDevices,
        i8042: Arc<Mutex<I8042>>,
        console: ConsoleSinkHandle,
        gate: Arc<PauseGate>,
        vcpu_threads: Vec<JoinHandle<()>>,
    ) -> Self {
        Self {
            devices,
            i8042,
            console,
            gate,
            vcpu_threads: Arc::new(vcpu_threads),
        }
    }

    /// Stops every vCPU; devices keep serving what is already queued.
    pub fn pause(&self) -> Result<(), PauseError> {
        self.gate.pause(&self.vcpu_threads)
    }

    pub fn resume(&self) {
        self.gate.resume();
    }

    pub fn is_paused(&self) -> bool {
        self.gate.is_paused()
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) -> Result<(), &'static str> {
        self.i8042
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send_ctrl_alt_del()
    }

    /// Adds each device's counters to `snapshot`, one group per device.
    pub fn add_device_metrics(&self, snapshot: &mut Snapshot) {
        snapshot.insert(
            "serial".into(),
            [(
                "output_bytes_dropped".to_string(),
                self.console.dropped_bytes(),
            )]
            .into(),
        );
        for (name, device) in &self.devices.all {
            let device = device.lock().unwrap_or_else(|p| p.into_inner());
            let counters = device
                .metrics()
                .into_iter()
                .map(|(counter, value)| (counter.to_string(), value))
                .collect();
            snapshot.insert(name.clone(), counters);
        }
    }
}

impl RunningVm {
    pub(crate) fn new(
        vm: Vm,
        event_manager: EventLoop,
        control: Arc<Mutex<VmControl>>,
        (reported_status, panic_reason): (ReportedStatus, PanicReason),
        console_sink: ConsoleSinkHandle,
        handle: VmHandle,
    ) -> Self {
        Self {
            vm: ManuallyDrop::new(vm),
            detached: false,
            event_manager,
            control,
            reported_status,
            panic_reason,
            console_sink,
            handle,
        }
    }

    /// A handle on the running VM for the API's runtime actions.
    pub fn handle(&self) -> VmHandle {
        self.handle.clone()
    }

    /// Adds a subscriber to the VMM event loop (the API's action channel, a metrics timer).
    pub fn add_subscriber(&mut self, subscriber: Subscriber) {
        self.event_manager.add_subscriber(subscriber);
    }

    /// Refines a guest-initiated ending with what the guest reported: a kernel panic seen on
    /// the console, or the exit status tessera-init wrote before rebooting.
    fn explain(&self, exit: VmExit) -> VmExit {
        if !matches!(
            exit,
            VmExit::Reset | VmExit::TripleFault { .. } | VmExit::Halted { .. }
        ) {
            return exit;
        }
        if let Some(message) = self.panic_reason.get() {
            return VmExit::GuestPanic { message };
        }
        match (exit, self.reported_status.get()) {
            (VmExit::Reset, Some(status)) => VmExit::CommandExited { status },
            (exit, _) => exit,
        }
    }

    /// Runs the VMM event loop until the VM ends, and says why it ended.
    ///
    /// vCPU threads are still inside KVM_RUN when this returns; the caller ends the process.
    pub fn wait(mut self) -> Result<VmExit, VmError> {
        let result = loop {
            if let Err(e) = self.event_manager.run() {
                break Err(VmError::EventLoop(e));
            }
            let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(exit) = control.exit.take() {
                break Ok(exit);
            }
        };
        for (_, device) in &self.handle.devices.all {
            device.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
        }
        // What the guest printed, unless the console's reader has stopped reading.
        self.console_sink.flush(CONSOLE_FLUSH_STALL);
        let result = result.map(|exit| self.explain(exit));
        self.hand_off_teardown();
        result
    }

    /// Leaves the VM's teardown to a keeper process (see [`teardown`]), so that the process
    /// can exit without waiting for the host to free the VM.
    fn hand_off_teardown(&mut self) {
        if !self.vm.filters.allow_teardown_keeper() {
            return;
        }
        match teardown::detach(&self.vm.teardown_fds()) {
            Ok(()) => self.detached = true,
            Err(e) => {
                log::debug!("VM teardown stays in this process: cannot clone its keeper: {e}")
            }
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if !self.detached {
            // SAFETY: dropped once, here; nothing uses `vm` after this.
            unsafe { ManuallyDrop::drop(&mut self.vm) };
        }
    }
}
