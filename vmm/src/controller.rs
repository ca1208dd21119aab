//! The VMM thread's side of the API: it holds the configuration until `InstanceStart`, then the
//! running VM, and answers each [`VmmAction`] with Firecracker's pre-boot / runtime rules.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use devices::timer::nonblocking_timer;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::builder;
use crate::config::{ConsoleOutput, MachineConfig};
use crate::config::{DriveUpdateBody, NetworkInterfaceUpdateBody, VmConfigBody};
use crate::logger::{self, PreparedLogger};
use crate::metrics::{ApiCounters, MetricsSink, Snapshot, FLUSH_PERIOD};
use crate::resources::VmResources;
use crate::rpc::{
    poll_recv, ActionError, ActionResult, InstanceInfo, VmmAction, VmmData, VmmEnd, HANDOFF_POLL,
};
use crate::runtime::exit::VmExit;
use crate::runtime::signals::PrebootSignals;
use crate::runtime::{RunningVm, VmHandle};
use crate::seccomp::Filters;
use crate::vm::{Vm, VmError};

/// The name `GET /` reports.
pub const APP_NAME: &str = "tessera";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum RunError {
    /// {0}
    Start(ActionError),
    /// {0}
    Vm(#[from] VmError),
    /// the API server stopped before the microVM was started
    ApiStopped,
    /// cannot set up the metrics timer: {0}
    Timer(io::Error),
    /// cannot install a signal handler: {0}
    SignalHandler(io::Error),
    /// stopped by signal {0} before the microVM was started
    Signal(i32),
}

/// How often the pre-boot loop looks at the signal flags while it waits for requests.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// How long the API must have been quiet before the VM prebuild starts: the build takes the
/// CPU (and, on a 2-CPU host, the other CPU's kernel time) that the next request's answer
/// needs, so it waits for a gap in the client's requests (or for `InstanceStart`).
const PREBUILD_QUIET: Duration = Duration::from_millis(1);

/// A KVM VM being created on a helper thread for the machine config as it stood.
struct Prebuild {
    machine: MachineConfig,
    vm: JoinHandle<Result<Vm, VmError>>,
}

/// The VMM: configuration, metrics, and the VM once it runs.
pub struct Vmm {
    id: String,
    resources: VmResources,
    metrics: Option<MetricsSink>,
    api_counters: ApiCounters,
    process_start: Instant,
    prebuild: Option<Prebuild>,
    /// The config changed since the last prebuild: start one at the next quiet moment.
    prebuild_wanted: bool,
    vm: Option<VmHandle>,
    filters: Filters,
}

impl Vmm {
    pub fn new(
        id: String,
        api_counters: ApiCounters,
        console: ConsoleOutput,
        process_start: Instant,
        filters: Filters,
    ) -> Self {
        Self {
            id,
            resources: VmResources {
                console,
                ..VmResources::default()
            },
            metrics: None,
            api_counters,
            process_start,
            prebuild: None,
            prebuild_wanted: false,
            vm: None,
            filters,
        }
    }

    /// Applies a whole config file: everything is checked, and the metrics file opened,
    /// before anything changes.
    pub fn configure(&mut self, config: &VmConfigBody) -> Result<(), ActionError> {
        let resources = VmResources::from_config(config)?;
        let logger = resources
            .logger
            .as_ref()
            .map(PreparedLogger::open)
            .transpose()?;
        let metrics = match resources.metrics.as_ref().map(MetricsSink::open) {
            Some(Err(e)) => {
                if let Some(logger) = logger {
                    logger.discard();
                }
                return Err(e.into());
            }
            metrics => metrics.transpose()?,
        };
        if let Some(logger) = logger {
            logger.apply()?;
        }
        self.resources = VmResources {
            console: self.resources.console.clone(),
            ..resources
        };
        self.metrics = metrics;
        Ok(())
    }

    /// Answers one action (except `InstanceStart`, which [`run`] handles).
    pub fn handle(&mut self, action: VmmAction) -> ActionResult {
        match action {
            VmmAction::GetInstanceInfo => Ok(VmmData::InstanceInfo(self.instance_info())),
            VmmAction::GetVmConfig => Ok(VmmData::VmConfig(Box::new(self.resources.to_config()))),
            VmmAction::GetMachineConfig => Ok(VmmData::MachineConfig(
                crate::config::MachineConfigBody::from_config(&self.resources.machine),
            )),
            VmmAction::FlushMetrics => self.flush_metrics().map(|()| VmmData::Empty),
            action => match self.vm.clone() {
                None => self.handle_preboot(action),
                Some(vm) => self.handle_runtime(&vm, action),
            },
        }
        .inspect_err(|e| log::debug!("API action refused: {e}"))
    }

    fn handle_preboot(&mut self, action: VmmAction) -> ActionResult {
        let r = &mut self.resources;
        match action {
            VmmAction::PutMachineConfig(body) => {
                r.set_machine_config(&body, true)?;
                self.prebuild_wanted = true;
            }
            VmmAction::PatchMachineConfig(body) => {
                r.set_machine_config(&body, false)?;
                self.prebuild_wanted = true;
            }
            VmmAction::PutBootSource(body) => {
                r.set_boot_source(&body)?;
                self.prebuild_wanted = true;
            }
            VmmAction::PutDrive(drive) => r.put_drive(&drive)?,
            VmmAction::PutNetworkInterface(iface) => r.put_network_interface(&iface)?,
            VmmAction::PutVsock(vsock) => r.set_vsock(&vsock)?,
            VmmAction::PutEntropy(entropy) => r.set_entropy(&entropy)?,
            VmmAction::PutWorkload(spec) => r.set_workload(*spec)?,
            VmmAction::PutLogger(config) => {
                logger::configure(&config)?;
                // The live logger keeps what a later body leaves out: record the same.
                r.logger = Some(match r.logger.take() {
                    Some(old) => config.over(old),
                    None => config,
                });
            }
            VmmAction::PutMetrics(config) => {
                if self.metrics.is_some() {
                    return Err(ActionError::MetricsAlreadySet);
                }
                self.metrics = Some(MetricsSink::open(&config)?);
                r.metrics = Some(config);
            }
            // Runtime-only actions. (The getters and FlushMetrics are answered by `handle`,
            // InstanceStart by `serve_until_started`.)
            _ => return Err(ActionError::NotBeforeStart),
        }
        Ok(VmmData::Empty)
    }

    fn handle_runtime(&mut self, vm: &VmHandle, action: VmmAction) -> ActionResult {
        match action {
            VmmAction::PatchDrive(update) => self.update_drive(vm, &update)?,
            VmmAction::PatchNetworkInterface(update) => self.update_interface(vm, &update)?,
            VmmAction::SendCtrlAltDel => vm.send_ctrl_alt_del().map_err(ActionError::CtrlAltDel)?,
            VmmAction::Pause if !vm.is_paused() => {
                vm.pause()?;
                log::info!("VM paused");
            }
            VmmAction::Resume if vm.is_paused() => {
                vm.resume();
                log::info!("VM resumed");
            }
            // Already in the state asked for: nothing to do, as in Firecracker.
            VmmAction::Pause | VmmAction::Resume => {}
            _ => return Err(ActionError::NotAfterStart),
        }
        Ok(VmmData::Empty)
    }

    /// Swaps a running drive's backing file and/or rate limiter; the file is checked (opened)
    /// before anything changes.
    fn update_drive(&mut self, vm: &VmHandle, update: &DriveUpdateBody) -> Result<(), ActionError> {
        let drive = self.resources.drive(&update.drive_id)?;
        let (_, block) = vm
            .devices
            .drives
            .iter()
            .find(|(id, _)| *id == drive.drive_id)
            .ok_or_else(|| {
                crate::resources::ResourcesError::UnknownDrive(update.drive_id.clone())
            })?;
        let mut block = block.lock().unwrap_or_else(|p| p.into_inner());
        let drive_err = |source| ActionError::Drive {
            id: update.drive_id.clone(),
            source,
        };
        // (Zero buckets become "no bucket", so a patched limiter is always valid and cannot
        // fail after the file swap.)
        let limiter = update
            .rate_limiter
            .map(|l| l.patched(drive.rate_limiter).to_config());
        if let Some(path) = &update.path_on_host {
            block.set_backing_file(path).map_err(drive_err)?;
        }
        if let Some(limiter) = limiter {
            block.set_rate_limiter(limiter).map_err(drive_err)?;
        }
        self.resources.update_drive(update)?;
        Ok(())
    }

    fn update_interface(
        &mut self,
        vm: &VmHandle,
        update: &NetworkInterfaceUpdateBody,
    ) -> Result<(), ActionError> {
        let iface = self.resources.network_interface(&update.iface_id)?;
        let rx = update
            .rx_rate_limiter
            .map(|l| l.patched(iface.rx_rate_limiter).to_config());
        let tx = update
            .tx_rate_limiter
            .map(|l| l.patched(iface.tx_rate_limiter).to_config());
        let (_, net) = vm
            .devices
            .nets
            .iter()
            .find(|(id, _)| *id == update.iface_id)
            .ok_or_else(|| {
                crate::resources::ResourcesError::UnknownInterface(update.iface_id.clone())
            })?;
        net.lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_rate_limiters(rx, tx)
            .map_err(|source| ActionError::Net {
                id: update.iface_id.clone(),
                source,
            })?;
        self.resources.update_network_interface(update)?;
        Ok(())
    }

    fn instance_info(&self) -> InstanceInfo {
        let state = match &self.vm {
            None => "Not started",
            Some(vm) if vm.is_paused() => "Paused",
            Some(_) => "Running",
        };
        InstanceInfo {
            id: self.id.clone(),
            state,
            vmm_version: VERSION,
            app_name: APP_NAME,
        }
    }

    /// Starts creating the KVM VM, its memory and vCPUs for the current machine config on a
    /// helper thread, so that `InstanceStart` finds them ready (the first memslot alone costs
    /// milliseconds on some hosts). A VM built for a config that changed since is dropped.
    /// Called by the pre-boot loop once the API has been quiet for [`PREBUILD_QUIET`].
    fn prebuild(&mut self) {
        let machine = self.resources.machine;
        match &self.prebuild {
            Some(p) if p.machine == machine => {
                self.prebuild_wanted = false;
                return;
            }
            // One build at a time: a client changing the config faster than a VM builds must
            // not pile up threads. Still wanted: the next quiet moment tries again (and
            // `take_vm` builds afresh if the config changed meanwhile).
            Some(p) if !p.vm.is_finished() => return,
            _ => self.prebuild_wanted = false,
        }
        // A replaced build has finished; its VM (and its parked vCPU threads) is dropped with
        // the handle.
        let filters = self.filters.clone();
        self.prebuild = thread::Builder::new()
            .name("vm-prebuild".into())
            .spawn(move || Vm::create(machine, &filters))
            .inspect_err(|e| log::debug!("cannot start the VM prebuild thread: {e}"))
            .ok()
            .map(|vm| Prebuild { machine, vm });
    }

    /// The prebuilt VM if it matches the machine config and was built; otherwise one built
    /// now (a failed prebuild is retried, so its error is the one reported).
    fn take_vm(&mut self) -> Result<Vm, VmError> {
        let machine = self.resources.machine;
        match self.prebuild.take() {
            Some(p) if p.machine == machine => match p.vm.join() {
                Ok(Ok(vm)) => Ok(vm),
                _ => Vm::create(machine, &self.filters),
            },
            Some(stale) => {
                // Joined, not left behind: no unfiltered thread may outlive the boot.
                let _ = stale.vm.join();
                Vm::create(machine, &self.filters)
            }
            None => Vm::create(machine, &self.filters),
        }
    }

    /// Creates and boots the VM from the current configuration. On failure nothing is left
    /// behind and the configuration can be fixed and the start retried.
    pub fn start(&mut self) -> Result<RunningVm, ActionError> {
        let started = Instant::now();
        if self.resources.boot_source.is_none() {
            return Err(ActionError::MissingBootSource);
        }
        let vm = self.take_vm()?;
        let running = builder::boot(vm, &self.resources, self.process_start)?;
        self.vm = Some(running.handle());
        log::info!("microVM started in {:?}", started.elapsed());
        Ok(running)
    }

    fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::new();
        self.api_counters.add_to(&mut snapshot);
        if let Some(vm) = &self.vm {
            vm.add_device_metrics(&mut snapshot);
        }
        let metrics_dropped = self.metrics.as_ref().map_or(0, MetricsSink::dropped_lines);
        snapshot.insert(
            "vmm".into(),
            [
                ("log_lines_dropped".to_string(), logger::dropped_lines()),
                ("metrics_lines_dropped".to_string(), metrics_dropped),
            ]
            .into(),
        );
        snapshot
    }

    fn flush_metrics(&mut self) -> Result<(), ActionError> {
        let snapshot = self.snapshot();
        let sink = self.metrics.as_mut().ok_or(ActionError::NoMetrics)?;
        sink.write(snapshot)?;
        Ok(())
    }

    /// A flush nobody asked for: configured or not, failures are only logged.
    fn flush_metrics_quietly(&mut self) {
        if self.metrics.is_some() {
            if let Err(e) = self.flush_metrics() {
                log::warn!("{e}");
            }
        }
    }
}

/// Runs the VMM thread to the end: serves actions until `InstanceStart` (or starts at once
/// with `start_now`, the config-file path), then runs the VM, still serving actions, until it
/// ends.
pub fn run(mut vmm: Vmm, end: Option<VmmEnd>, start_now: bool) -> Result<VmExit, RunError> {
    let signals = PrebootSignals::register().map_err(RunError::SignalHandler)?;
    let started = start(&mut vmm, end.as_ref(), start_now, &signals);
    // The running VM has its own SIGINT/SIGTERM handling by now: hand it a signal that came
    // while it was being built.
    if let (Ok(_), Some(signal)) = (&started, signals.received()) {
        let _ = signal_hook::low_level::raise(signal);
    }
    drop(signals);
    let (mut running, metrics_timer) = match started {
        Ok(started) => started,
        Err(e) => {
            vmm.flush_metrics_quietly();
            return Err(e);
        }
    };
    let vmm = Arc::new(Mutex::new(vmm));
    running.add_subscriber(Arc::new(Mutex::new(RuntimeEvents {
        vmm: vmm.clone(),
        end,
        metrics_timer,
    })));
    let exit = running.wait();
    lock(&vmm).flush_metrics_quietly();
    Ok(exit?)
}

/// The running VM and its metrics timer (made first, so that nothing can fail once the VM
/// runs and the client has been told so).
fn start(
    vmm: &mut Vmm,
    end: Option<&VmmEnd>,
    start_now: bool,
    signals: &PrebootSignals,
) -> Result<(RunningVm, TimerFd), RunError> {
    let mut metrics_timer = nonblocking_timer().map_err(RunError::Timer)?;
    metrics_timer
        .reset(FLUSH_PERIOD, Some(FLUSH_PERIOD))
        .map_err(|e| RunError::Timer(io::Error::from_raw_os_error(e.errno())))?;
    let running = match (end, start_now) {
        (_, true) => vmm.start().map_err(RunError::Start)?,
        (Some(end), false) => serve_until_started(vmm, end, signals)?,
        (None, false) => return Err(RunError::ApiStopped),
    };
    Ok((running, metrics_timer))
}

fn lock(vmm: &Mutex<Vmm>) -> MutexGuard<'_, Vmm> {
    vmm.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pre-boot loop: the VMM thread waits on the channel itself (no event loop exists yet),
/// polling a moment after each answer for the client's next request.
fn serve_until_started(
    vmm: &mut Vmm,
    end: &VmmEnd,
    signals: &PrebootSignals,
) -> Result<RunningVm, RunError> {
    let mut next_flush = Instant::now() + FLUSH_PERIOD;
    // Poll only right after answering, when the client's next request is likely near, and at
    // the start, when a client that saw the socket appear sends its first one; an idle VMM
    // just sleeps between signal checks.
    let mut answered = true;
    loop {
        if let Some(signal) = signals.received() {
            return Err(RunError::Signal(signal));
        }
        if Instant::now() >= next_flush {
            vmm.flush_metrics_quietly();
            next_flush += FLUSH_PERIOD;
        }
        let poll = if answered {
            HANDOFF_POLL
        } else {
            Duration::ZERO
        };
        let quiet = match vmm.prebuild_wanted {
            true => PREBUILD_QUIET,
            false => SIGNAL_CHECK,
        };
        let next = match poll_recv(&end.actions, poll) {
            Err(TryRecvError::Empty) => end.actions.recv_timeout(quiet),
            Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            Ok(action) => Ok(action),
        };
        if vmm.prebuild_wanted && matches!(next, Err(RecvTimeoutError::Timeout)) {
            vmm.prebuild();
        }
        answered = next.is_ok();
        match next {
            Ok(VmmAction::InstanceStart) => match vmm.start() {
                Ok(running) => {
                    let _ = end.results.send(Ok(VmmData::Empty));
                    return Ok(running);
                }
                Err(e) => {
                    log::error!("{e}");
                    let _ = end.results.send(Err(e));
                }
            },
            Ok(action) => {
                let _ = end.results.send(vmm.handle(action));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(RunError::ApiStopped),
        }
    }
}

/// The running VM's API actions and metrics timer, on the VMM event loop.
struct RuntimeEvents {
    vmm: Arc<Mutex<Vmm>>,
    end: Option<VmmEnd>,
    metrics_timer: TimerFd,
}

impl MutEventSubscriber for RuntimeEvents {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fds = vec![self.metrics_timer.as_raw_fd()];
        fds.extend(self.end.as_ref().map(|end| end.wake.as_raw_fd()));
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("VMM loop: cannot watch fd {fd}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.metrics_timer.as_raw_fd() {
            let _ = self.metrics_timer.wait();
            lock(&self.vmm).flush_metrics_quietly();
            return;
        }
        if let Some(end) = &self.end {
            let _ = end.wake.read();
            while let Ok(action) = end.actions.try_recv() {
                let result = lock(&self.vmm).handle(action);
                let _ = end.results.send(result);
            }
        }
    }
}
