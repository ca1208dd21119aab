//! What the API thread asks of the VMM thread: typed actions in, one result out per action.
//!
//! The API thread sends an action, wakes the VMM thread through an `EventFd` (which the event
//! loop watches once the VM runs; before that the VMM thread blocks on the channel itself) and
//! waits for the reply. One request is in flight at a time, so a single reply channel suffices.
//!
//! Each side polls for the other's message for a moment before it sleeps: waking a sleeping
//! thread costs tens of microseconds on a virtualised host (the futex wake becomes an IPI and
//! a vCPU wake-up), more than a whole request's work, and a client configuring a VM sends its
//! requests back to back, so the poll nearly always catches the next one.

use std::io;
use std::sync::mpsc::{self, Receiver, RecvError, Sender, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use devices::virtio::block::BlockError;
use devices::virtio::net::NetError;
use serde::Serialize;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{
    BootSourceBody, DriveBody, DriveUpdateBody, EntropyBody, LoggerBody, MachineConfigBody,
    MetricsBody, NetworkInterfaceBody, NetworkInterfaceUpdateBody, VmConfigBody, VsockBody,
};
use crate::logger::LoggerError;
use crate::metrics::MetricsError;
use crate::resources::ResourcesError;
use crate::runtime::pause::PauseError;
use crate::vm::VmError;

/// One request for the VMM, as the REST API and the config file express them.
#[derive(Debug)]
pub enum VmmAction {
    GetInstanceInfo,
    GetVmConfig,
    GetMachineConfig,
    PutMachineConfig(MachineConfigBody),
    PatchMachineConfig(MachineConfigBody),
    PutBootSource(BootSourceBody),
    PutDrive(DriveBody),
    PatchDrive(DriveUpdateBody),
    PutNetworkInterface(NetworkInterfaceBody),
    PatchNetworkInterface(NetworkInterfaceUpdateBody),
    PutVsock(VsockBody),
    PutEntropy(EntropyBody),
    PutLogger(LoggerBody),
    PutMetrics(MetricsBody),
    /// Tessera's extension: the workload spec for tessera-init.
    PutWorkload(Box<guest_init::spec::WorkloadSpec>),
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
    Pause,
    Resume,
}

/// `GET /`: Firecracker's instance-info shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: &'static str,
    pub vmm_version: &'static str,
    pub app_name: &'static str,
}

/// What a successful action returns.
#[derive(Debug)]
pub enum VmmData {
    Empty,
    InstanceInfo(InstanceInfo),
    VmConfig(Box<VmConfigBody>),
    MachineConfig(MachineConfigBody),
}

/// Why an action was refused. Each is answered with 400 and this message; none changes the
/// VM's configuration or state.
#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum ActionError {
    /// The requested operation is not supported after starting the microVM.
    NotAfterStart,
    /// The requested operation is not supported before starting the microVM.
    NotBeforeStart,
    /// Cannot start microvm without kernel configuration: set the boot-source first.
    MissingBootSource,
    /// {0}
    Resources(#[from] ResourcesError),
    /// cannot start the microVM: {0}
    Start(#[from] VmError),
    /// {0}
    Logger(#[from] LoggerError),
    /// {0}
    Metrics(#[from] MetricsError),
    /// metrics are not configured: PUT /metrics first
    NoMetrics,
    /// metrics are already configured; they can be set once
    MetricsAlreadySet,
    /// {0}
    Pause(#[from] PauseError),
    /// cannot send Ctrl-Alt-Del: {0}
    CtrlAltDel(&'static str),
    /// drive {id}: {source}
    Drive { id: String, source: BlockError },
    /// network interface {id}: {source}
    Net { id: String, source: NetError },
    /// the VMM thread has stopped
    VmmGone,
}

pub type ActionResult = Result<VmmData, ActionError>;

/// How long a side polls before it sleeps (see the module comment).
pub const HANDOFF_POLL: Duration = Duration::from_micros(200);

/// The next message if one arrives within `poll`; `Empty` if none did. Yields between tries,
/// so a poller never keeps a runnable thread (the client, the other side) off a CPU.
pub fn poll_recv<T>(rx: &Receiver<T>, poll: Duration) -> Result<T, TryRecvError> {
    let deadline = Instant::now() + poll;
    loop {
        match rx.try_recv() {
            Err(TryRecvError::Empty) if Instant::now() < deadline => thread::yield_now(),
            other => return other,
        }
    }
}

/// The API thread's end: sends actions and waits for their results.
pub struct ApiEnd {
    actions: Sender<VmmAction>,
    results: Receiver<ActionResult>,
    wake: EventFd,
}

/// The VMM thread's end.
pub struct VmmEnd {
    pub actions: Receiver<VmmAction>,
    pub results: Sender<ActionResult>,
    /// Written once per action; the event loop watches it after the VM starts.
    pub wake: EventFd,
}

pub fn channel() -> io::Result<(ApiEnd, VmmEnd)> {
    let (action_tx, action_rx) = mpsc::channel();
    let (result_tx, result_rx) = mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK)?;
    Ok((
        ApiEnd {
            actions: action_tx,
            results: result_rx,
            wake: wake.try_clone()?,
        },
        VmmEnd {
            actions: action_rx,
            results: result_tx,
            wake,
        },
    ))
}

impl ApiEnd {
    /// Hands `action` to the VMM thread and waits for its result.
    pub fn call(&self, action: VmmAction) -> ActionResult {
        self.actions
            .send(action)
            .map_err(|_| ActionError::VmmGone)?;
        // Only the event loop reads the eventfd; a full counter still wakes it.
        let _ = self.wake.write(1);
        match poll_recv(&self.results, HANDOFF_POLL) {
            Ok(result) => result,
            Err(TryRecvError::Disconnected) => Err(ActionError::VmmGone),
            Err(TryRecvError::Empty) => self
                .results
                .recv()
                .map_err(|RecvError| ActionError::VmmGone)?,
        }
    }
}
