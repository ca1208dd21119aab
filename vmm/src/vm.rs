//! The VM: built in two steps so that everything the machine config decides (KVM VM, memory,
//! memslots, vCPUs) exists before the boot source is known or the start is asked for.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use devices::legacy::{
    ConsoleSink, ConsoleSinkHandle, GuestReport, PanicReason, PanicWatch, ReportedStatus,
    SerialConsole, CONSOLE_QUEUE_BYTES, GUEST_REPORT_LEN, GUEST_REPORT_PORT, I8042,
    I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};
use devices::{Bus, BusError};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{self as vm_config, BootSource, ConfigError, ConsoleOutput, MachineConfig};
use crate::console_input::ConsoleInput;
use crate::device_config::{DeviceConfigError, DeviceSettings, DevicesConfig};
use crate::device_manager::{DeviceManager, DeviceManagerError, Subscriber, VirtioDevices};
use crate::exit::VmExit;
use crate::kvm::{self, KvmError};
use crate::loader::{self, LoaderError};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::metrics::Snapshot;
use crate::pause::{PauseError, PauseGate};
use crate::seccomp::{Filters, ThreadKind};
use crate::vcpu::{Buses, Vcpu, VcpuError};
use crate::vcpu_threads::ParkedVcpus;
use crate::x86_64::boot_params::{self, BootInfo, BootParamsError};
use crate::x86_64::layout::{KEYBOARD_IRQ, SERIAL_IRQ};
use crate::x86_64::mptable::{self, MpTableError};
use crate::x86_64::regs::{self, EntryPoint, RegsError};

type EventLoop = EventManager<Subscriber>;

/// Three pages KVM needs for the real-mode TSS on Intel, inside the MMIO gap.
const TSS_ADDRESS: usize = 0xfffb_d000;
/// As the VM ends, the console's queued output is written while the writer makes progress;
/// after this long without any, the rest is dropped (a reader that stopped reading).
const CONSOLE_FLUSH_STALL: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum VmError {
    /// {0}
    Kvm(#[from] KvmError),
    /// cannot set up {what}: {source}
    Setup {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// {0}
    Memory(#[from] MemoryError),
    /// {0}
    Vcpu(#[from] VcpuError),
    /// {0}
    Loader(#[from] LoaderError),
    /// {0}
    BootParams(#[from] BootParamsError),
    /// {0}
    MpTable(#[from] MpTableError),
    /// {0}
    Regs(#[from] RegsError),
    /// cannot place a device: {0}
    Bus(#[from] BusError),
    /// cannot open console output {path}: {source}
    ConsoleFile { path: String, source: io::Error },
    /// cannot {what}: {source}
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// {0}
    VcpuThread(String),
    /// VMM event loop failed: {0}
    EventLoop(event_manager::Error),
    /// {0}
    DeviceConfig(#[from] DeviceConfigError),
    /// {0}
    Devices(#[from] DeviceManagerError),
    /// with the virtio devices added, {0}
    Cmdline(#[from] ConfigError),
}

fn setup(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Setup { what, source }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// A VM with its memory and vCPUs, not yet booted.
pub struct Vm {
    machine: MachineConfig,
    vm_fd: VmFd,
    memory: GuestMemory,
    vcpus: Vec<Vcpu>,
    /// One thread per vCPU, filtered and waiting for the boot.
    vcpu_threads: ParkedVcpus,
    filters: Filters,
}

impl Vm {
    /// Creates the KVM VM, guest memory and memslots, the in-kernel IRQ chip and PIT, and the
    /// vCPUs with their CPUID, MSRs, FPU and LAPIC state; and the vCPU threads, which install
    /// their `filters` now so that the boot does not wait for it.
    pub fn create(machine: MachineConfig, filters: &Filters) -> Result<Self, VmError> {
        let started = Instant::now();
        let kvm = kvm::open()?;
        // KVM_GET_SUPPORTED_CPUID takes ~0.3 ms here: ask for it while the VM and its memory
        // are being built.
        let (vm_fd, memory, supported) = thread::scope(|scope| {
            let cpuid = scope.spawn(|| kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES));
            let (vm_fd, memory) = create_vm_and_memory(&kvm, machine.mem_size_mib)?;
            let supported = cpuid
                .join()
                .map_err(|_| io_err("query CPUID")(io::Error::other("helper thread panicked")))?
                .map_err(setup("CPUID (KVM_GET_SUPPORTED_CPUID)"))?;
            Ok::<_, VmError>((vm_fd, memory, supported))
        })?;
        log::debug!(
            "KVM VM, memory and IRQ chip ready at {:?}",
            started.elapsed()
        );

        let count = machine.vcpu_count;
        let vcpus: Vec<Vcpu> = (0..count)
            .map(|index| Vcpu::new(&vm_fd, index, count, &supported))
            .collect::<Result<_, _>>()?;
        let vcpu_threads = ParkedVcpus::spawn(vcpus.len(), filters)?;
        log::debug!("{count} vCPUs ready at {:?}", started.elapsed());
        Ok(Self {
            machine,
            vm_fd,
            memory,
            vcpus,
            vcpu_threads,
            filters: filters.clone(),
        })
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Builds the devices, loads the boot source and starts the vCPU threads; the calling
    /// thread ends up under the VMM's seccomp filter.
    pub fn boot(
        mut self,
        boot: &BootSource,
        virtio: &DevicesConfig,
        console: &ConsoleOutput,
        process_start: Instant,
    ) -> Result<RunningVm, VmError> {
        let started = Instant::now();
        let settings = virtio.settings()?;
        let mut device_manager = DeviceManager::new();
        device_manager.add_configured(&self.vm_fd, &self.memory, &settings)?;
        let boot = with_device_args(boot, &device_manager, &settings)?;
        let entry = self.load(&boot)?;
        log::debug!(
            "devices built, boot source loaded in {:?}",
            started.elapsed()
        );
        regs::setup_boot_vcpu(&self.vcpus[0].fd, &self.memory, &entry)?;
        let devices = LegacyDevices::new(&self.vm_fd, console, process_start, &self.filters)?;
        let (mmio_bus, virtio_subscribers, virtio_devices) = device_manager.into_parts();
        let buses = Buses {
            pio: Arc::new(devices.pio_bus()?),
            mmio: Arc::new(mmio_bus),
        };

        let guest_report = (
            devices.reported_status.clone(),
            devices.panic_reason.clone(),
        );
        let i8042 = devices.i8042.clone();
        let console_sink = devices.console_sink.clone();
        let mut event_manager: EventLoop = EventManager::new().map_err(VmError::EventLoop)?;
        let (exit_tx, exit_rx) = mpsc::channel();
        let exit_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("create an eventfd"))?;
        let control = Arc::new(Mutex::new(VmControl::new(
            exit_rx,
            exit_evt.try_clone().map_err(io_err("clone an eventfd"))?,
            devices.reset_evt,
            devices.i8042,
        )?));
        event_manager.add_subscriber(control.clone() as Subscriber);
        for subscriber in virtio_subscribers {
            event_manager.add_subscriber(subscriber);
        }
        if *console == ConsoleOutput::Stdio {
            let input = ConsoleInput::new(io::stdin(), devices.serial, devices.input_room_evt);
            event_manager.add_subscriber(Arc::new(Mutex::new(input)) as Subscriber);
        }

        let gate = Arc::new(PauseGate::new(self.vcpus.len()));
        let vcpu_threads =
            self.vcpu_threads
                .start(self.vcpus.drain(..), &buses, &gate, &exit_tx, &exit_evt)?;
        // While the guest starts: this thread handles nothing the guest can influence until it
        // reaches the event loop, after this. Installing the filter costs 0.2-0.5 ms here, kept
        // off the path to the guest's first instruction.
        if let Err(e) = self.filters.apply(ThreadKind::Vmm) {
            // The guest runs and cannot be taken back: stop rather than run it with an
            // unfiltered VMM thread.
            log::error!("{e}; tessera stops");
            std::process::exit(1);
        }
        log::debug!(
            "devices and vCPU threads started at {:?}",
            started.elapsed()
        );
        Ok(RunningVm {
            _vm: self,
            event_manager,
            control,
            reported_status: guest_report.0,
            panic_reason: guest_report.1,
            console_sink,
            handle: VmHandle {
                devices: virtio_devices,
                i8042,
                gate,
                vcpu_threads: Arc::new(vcpu_threads),
            },
        })
    }

    /// Puts kernel, initrd, command line and boot structures into guest memory.
    fn load(&self, boot: &BootSource) -> Result<EntryPoint, VmError> {
        let info = loader::inspect_kernel(&boot.kernel_image_path)?;
        if info.is_linux && kvm::is_pvm_host() {
            return Err(KvmError::PvmCannotBootLinux.into());
        }
        let mem = &self.memory;
        let mem_size = self.machine.mem_size_mib << 20;
        let kernel = loader::load_kernel(mem, &boot.kernel_image_path, info.format)?;
        let initrd = match &boot.initrd_path {
            Some(path) => {
                let top = loader::initrd_top(mem_size, kernel.setup_header.as_ref());
                Some(loader::load_initrd(mem, path, kernel.end, top)?)
            }
            None => None,
        };
        loader::load_cmdline(mem, &boot.boot_args)?;
        mptable::write(mem, self.machine.vcpu_count)?;

        let e820 = boot_params::e820_map(mem_size);
        let info = BootInfo {
            cmdline_len: boot.boot_args.len(),
            initrd,
        };
        match kernel.entry {
            EntryPoint::Linux64(_) => {
                let params = boot_params::zero_page(kernel.setup_header, &info, &e820)?;
                boot_params::write_zero_page(mem, &params)?;
            }
            EntryPoint::Pvh(_) => boot_params::write_pvh_start_info(mem, &info, &e820)?,
        }
        Ok(kernel.entry)
    }
}

/// The boot source with the virtio devices' `virtio_mmio.device=` entries (and `root=` for a
/// root drive) added before any ` -- ` that starts init's arguments.
fn with_device_args(
    boot: &BootSource,
    devices: &DeviceManager,
    settings: &DeviceSettings,
) -> Result<BootSource, VmError> {
    let mut extra = devices.cmdline_suffix();
    if let Some((disk, read_only)) = &settings.root_device {
        extra.push_str(&format!(
            " root={disk} {}",
            if *read_only { "ro" } else { "rw" }
        ));
    }
    if extra.is_empty() {
        return Ok(boot.clone());
    }
    let boot_args = insert_kernel_args(&boot.boot_args, &extra);
    vm_config::validate_cmdline(&boot_args)?;
    Ok(BootSource {
        boot_args,
        ..boot.clone()
    })
}

/// `args` with `extra` (led by a space) added at the end of the kernel's parameters: before the
/// first `--` word, after which the kernel passes everything to init.
fn insert_kernel_args(args: &str, extra: &str) -> String {
    let mut offset = 0;
    for word in args.split(' ') {
        if word == "--" {
            return format!("{}{extra} {}", args[..offset].trim_end(), &args[offset..]);
        }
        offset += word.len() + 1;
    }
    format!("{args}{extra}")
}

/// The KVM VM with guest memory, memslots, in-kernel IRQ chip and PIT.
fn create_vm_and_memory(
    kvm: &kvm_ioctls::Kvm,
    mem_size_mib: u64,
) -> Result<(VmFd, GuestMemory), VmError> {
    let vm_fd = kvm.create_vm().map_err(setup("the KVM VM"))?;
    let memory = memory::create(mem_size_mib)?;
    for (slot, region) in memory.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| io_err("map guest memory")(io::Error::other("no host address")))?;
        let memslot = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the range is a live mapping owned by `memory`, which the Vm keeps for as long
        // as the KVM VM exists; slots do not overlap because regions do not.
        unsafe { vm_fd.set_user_memory_region(memslot) }.map_err(setup("guest memory slots"))?;
    }
    // Memslots go in before the IRQ chip: on this host (PVM) a memslot added after
    // KVM_CREATE_IRQCHIP costs 6-10 ms instead of ~0.1 ms.
    vm_fd
        .set_tss_address(TSS_ADDRESS)
        .map_err(setup("the TSS address"))?;
    vm_fd
        .create_irq_chip()
        .map_err(setup("the in-kernel IRQ chip"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm_fd.create_pit2(pit).map_err(setup("the in-kernel PIT"))?;
    Ok((vm_fd, memory))
}

/// Serial console (watched for kernel panics), i8042 and guest report ports, with the eventfds that connect them to KVM and to
/// the VMM loop.
struct LegacyDevices {
    serial: Arc<Mutex<SerialConsole>>,
    i8042: Arc<Mutex<I8042>>,
    guest_report: Arc<Mutex<GuestReport>>,
    reported_status: ReportedStatus,
    panic_reason: PanicReason,
    reset_evt: EventFd,
    input_room_evt: EventFd,
    console_sink: ConsoleSinkHandle,
}

impl LegacyDevices {
    fn new(
        vm_fd: &VmFd,
        console: &ConsoleOutput,
        process_start: Instant,
        filters: &Filters,
    ) -> Result<Self, VmError> {
        let irq = |gsi| -> Result<EventFd, VmError> {
            let evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("create an eventfd"))?;
            vm_fd
                .register_irqfd(&evt, gsi)
                .map_err(setup("a device interrupt"))?;
            Ok(evt)
        };
        let out: Box<dyn Write + Send> = match console {
            ConsoleOutput::Stdio => devices::legacy::stdout_writer(),
            ConsoleOutput::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| VmError::ConsoleFile {
                        path: path.display().to_string(),
                        source,
                    })?,
            ),
        };
        // A writer thread under the vCPU filter (it only writes) drains the console: guest
        // output never blocks a vCPU or the VM's stop.
        let filters = filters.clone();
        let (out, console_sink) = ConsoleSink::spawn(out, CONSOLE_QUEUE_BYTES, move || {
            filters.confine_worker(ThreadKind::Vcpu)
        })
        .map_err(io_err("start the console writer thread"))?;
        let panic_reason = PanicReason::default();
        let out = Box::new(PanicWatch::new(out, panic_reason.clone()));
        let input_room_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("create an eventfd"))?;
        let serial = SerialConsole::new(
            irq(SERIAL_IRQ)?,
            input_room_evt
                .try_clone()
                .map_err(io_err("clone an eventfd"))?,
            out,
        );
        let reported_status = ReportedStatus::default();
        let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("create an eventfd"))?;
        let i8042 = I8042::new(
            reset_evt.try_clone().map_err(io_err("clone an eventfd"))?,
            irq(KEYBOARD_IRQ)?,
        );
        Ok(Self {
            serial: Arc::new(Mutex::new(serial)),
            i8042: Arc::new(Mutex::new(i8042)),
            guest_report: Arc::new(Mutex::new(GuestReport::new(
                process_start,
                reported_status.clone(),
            ))),
            reported_status,
            panic_reason,
            reset_evt,
            input_room_evt,
            console_sink,
        })
    }

    fn pio_bus(&self) -> Result<Bus, BusError> {
        let mut bus = Bus::new();
        bus.insert(self.serial.clone(), SERIAL_PORT_BASE, SERIAL_PORT_LEN)?;
        bus.insert(self.i8042.clone(), I8042_PORT_BASE, I8042_PORT_LEN)?;
        bus.insert(
            self.guest_report.clone(),
            GUEST_REPORT_PORT,
            GUEST_REPORT_LEN,
        )?;
        Ok(bus)
    }
}

/// Decides when the VM ends: a vCPU exit, an i8042 reset, or a signal to the VMM.
///
/// SIGTERM presses Ctrl-Alt-Del so the guest can shut down cleanly (as `docker stop` asks PID 1);
/// a second SIGTERM, or SIGINT, stops the VM at once.
struct VmControl {
    exit_rx: Receiver<VmExit>,
    exit_evt: EventFd,
    reset_evt: EventFd,
    sigint: UnixStream,
    sigterm: UnixStream,
    signal_ids: [signal_hook::SigId; 2],
    i8042: Arc<Mutex<I8042>>,
    asked_guest_to_stop: bool,
    exit: Option<VmExit>,
}

/// A socket that receives a byte each time `signal` arrives, with the handler's id (to
/// unregister it when the VM is dropped, say after a failed start).
fn signal_stream(signal: i32) -> Result<(UnixStream, signal_hook::SigId), VmError> {
    let (read, write) = UnixStream::pair().map_err(io_err("create a signal socket"))?;
    read.set_nonblocking(true)
        .map_err(io_err("configure a signal socket"))?;
    let id = signal_hook::low_level::pipe::register(signal, write)
        .map_err(io_err("install a signal handler"))?;
    Ok((read, id))
}

impl VmControl {
    fn new(
        exit_rx: Receiver<VmExit>,
        exit_evt: EventFd,
        reset_evt: EventFd,
        i8042: Arc<Mutex<I8042>>,
    ) -> Result<Self, VmError> {
        let (sigint, sigint_id) = signal_stream(signal_hook::consts::SIGINT)?;
        let (sigterm, sigterm_id) = signal_stream(signal_hook::consts::SIGTERM)?;
        Ok(Self {
            exit_rx,
            exit_evt,
            reset_evt,
            sigint,
            sigterm,
            signal_ids: [sigint_id, sigterm_id],
            i8042,
            asked_guest_to_stop: false,
            exit: None,
        })
    }

    fn on_sigterm(&mut self) {
        if self.asked_guest_to_stop {
            self.exit = Some(VmExit::Signal {
                signal: signal_hook::consts::SIGTERM,
            });
            return;
        }
        self.asked_guest_to_stop = true;
        let mut i8042 = self.i8042.lock().unwrap_or_else(|p| p.into_inner());
        match i8042.send_ctrl_alt_del() {
            Ok(()) => log::info!(
                "SIGTERM: sent Ctrl-Alt-Del to the guest; send SIGTERM again to stop at once"
            ),
            Err(why) => {
                log::warn!("SIGTERM: cannot send Ctrl-Alt-Del ({why}); stopping the VM");
                self.exit = Some(VmExit::Signal {
                    signal: signal_hook::consts::SIGTERM,
                });
            }
        }
    }
}

impl Drop for VmControl {
    fn drop(&mut self) {
        for id in self.signal_ids {
            signal_hook::low_level::unregister(id);
        }
    }
}

fn drain(stream: &mut UnixStream) {
    let mut buf = [0u8; 16];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

impl MutEventSubscriber for VmControl {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            self.exit_evt.as_raw_fd(),
            self.reset_evt.as_raw_fd(),
            self.sigint.as_raw_fd(),
            self.sigterm.as_raw_fd(),
        ];
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("VMM loop: cannot watch fd {fd}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.exit_evt.as_raw_fd() {
            let _ = self.exit_evt.read();
            if let Ok(exit) = self.exit_rx.try_recv() {
                self.exit.get_or_insert(exit);
            }
        } else if fd == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            self.exit.get_or_insert(VmExit::Reset);
        } else if fd == self.sigint.as_raw_fd() {
            drain(&mut self.sigint);
            self.exit.get_or_insert(VmExit::Signal {
                signal: signal_hook::consts::SIGINT,
            });
        } else if fd == self.sigterm.as_raw_fd() {
            drain(&mut self.sigterm);
            self.on_sigterm();
        }
    }
}

/// A booted VM whose vCPU threads are running.
pub struct RunningVm {
    /// Keeps the KVM VM and guest memory alive while vCPU threads use them.
    _vm: Vm,
    event_manager: EventLoop,
    control: Arc<Mutex<VmControl>>,
    reported_status: ReportedStatus,
    panic_reason: PanicReason,
    console_sink: ConsoleSinkHandle,
    handle: VmHandle,
}

/// What the API's runtime actions reach in a running VM: its devices, its keyboard, and the
/// gate its vCPUs pause at.
#[derive(Clone)]
pub struct VmHandle {
    pub devices: VirtioDevices,
    i8042: Arc<Mutex<I8042>>,
    gate: Arc<PauseGate>,
    vcpu_threads: Arc<Vec<JoinHandle<()>>>,
}

impl VmHandle {
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
        result.map(|exit| self.explain(exit))
    }
}

#[cfg(test)]
mod tests {
    use super::insert_kernel_args;

    #[test]
    fn device_args_go_before_init_arguments() {
        let extra = " virtio_mmio.device=4K@0xd0000000:5";
        assert_eq!(
            insert_kernel_args("console=ttyS0 quiet", extra),
            "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5"
        );
        assert_eq!(
            insert_kernel_args("console=ttyS0 -- init-arg", extra),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 -- init-arg"
        );
        assert_eq!(
            insert_kernel_args("console=ttyS0 --", extra),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 --"
        );
        assert_eq!(
            insert_kernel_args("-- a", extra),
            " virtio_mmio.device=4K@0xd0000000:5 -- a"
        );
        // A `--` inside a word is not the separator; spacing is kept.
        assert_eq!(
            insert_kernel_args("a=--  b", extra),
            "a=--  b virtio_mmio.device=4K@0xd0000000:5"
        );
    }
}
