//! The one builder: a checked [`VmResources`] (from the CLI, the REST API, a config file, and
//! later a workload spec, the shim or a snapshot) becomes a running VM.
//!
//! [`build`] does it in one go; the API path calls [`Vm::create`] early (the prebuild, while the
//! client is still configuring) and [`boot`] at `InstanceStart`.

use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventManager, SubscriberOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::{self, LaunchBackend, LoaderError, Plain};
use crate::config::{BootSource, ConsoleOutput};
use crate::console_input::ConsoleInput;
use crate::device_manager::legacy::LegacyDevices;
use crate::device_manager::{DeviceManager, Subscriber};
use crate::hypervisor::kvm::{self, KvmError};
use crate::kernel_cmdline;
use crate::resources::VmResources;
use crate::runtime::control::VmControl;
use crate::runtime::pause::PauseGate;
use crate::runtime::{RunningVm, VmHandle};
use crate::seccomp::{Filters, ThreadKind};
use crate::vcpu::Buses;
use crate::vm::{io_err, Vm, VmError};
use crate::x86_64::regs::{self, EntryPoint};

/// Creates the machine for `resources` and boots it.
pub fn build(
    resources: &VmResources,
    filters: &Filters,
    process_start: Instant,
) -> Result<RunningVm, VmError> {
    let vm = Vm::create(resources.machine, filters)?;
    boot(vm, resources, process_start)
}

/// Builds the devices, loads the boot source and starts the vCPU threads of a created `vm`;
/// the calling thread ends up under the VMM's seccomp filter.
pub fn boot(
    mut vm: Vm,
    resources: &VmResources,
    process_start: Instant,
) -> Result<RunningVm, VmError> {
    let started = Instant::now();
    let (_, boot) = resources
        .boot_source
        .as_ref()
        .ok_or(VmError::NoBootSource)?;
    let console = &resources.console;
    let settings = resources.devices.settings()?;
    let mut device_manager = DeviceManager::new();
    device_manager.add_configured(vm.vm_fd.as_ref(), &vm.ram.memory, &settings)?;
    let mut boot = kernel_cmdline::with_device_args(boot, &device_manager, &settings)?;
    if let Some(spec) = &resources.workload {
        boot.initrd_append = guest_init::protocol::spec_archive(spec)?;
    }
    let entry = load(&vm, &boot)?;
    log::debug!(
        "devices built, boot source loaded in {:?}",
        started.elapsed()
    );
    regs::setup_boot_vcpu(vm.vcpus[0].fd.as_ref(), &entry)?;
    let console_writer = vm.console_writer.take().ok_or(VmError::AlreadyBooted)?;
    let devices = LegacyDevices::new(vm.vm_fd.as_ref(), console, process_start, console_writer)?;
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
    let mut event_manager = EventManager::new().map_err(VmError::EventLoop)?;
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

    let gate = Arc::new(PauseGate::new(vm.vcpus.len()));
    let vcpus: Vec<_> = vm.vcpus.drain(..).collect();
    let vcpu_threads =
        vm.vcpu_threads
            .start(vcpus.into_iter(), &buses, &gate, &exit_tx, &exit_evt)?;
    // While the guest starts: this thread handles nothing the guest can influence until it
    // reaches the event loop, after this. Installing the filter costs 0.2-0.5 ms here, kept
    // off the path to the guest's first instruction.
    if let Err(e) = vm.filters.apply(ThreadKind::Vmm) {
        // The guest runs and cannot be taken back: stop rather than run it with an
        // unfiltered VMM thread.
        log::error!("{e}; tessera stops");
        std::process::exit(1);
    }
    log::debug!(
        "devices and vCPU threads started at {:?}",
        started.elapsed()
    );
    let handle = VmHandle::new(
        virtio_devices,
        i8042,
        console_sink.clone(),
        gate,
        vcpu_threads,
    );
    Ok(RunningVm::new(
        vm,
        event_manager,
        control,
        guest_report,
        console_sink,
        handle,
    ))
}

/// Plans the boot (kernel, initrd, command line, boot structures) and writes it into guest
/// memory with the plain launch backend.
fn load(vm: &Vm, boot: &BootSource) -> Result<EntryPoint, VmError> {
    let info = boot::inspect_kernel(&boot.kernel_image_path)?;
    if info.is_linux && kvm::is_pvm_host() {
        return Err(KvmError::PvmCannotBootLinux.into());
    }
    let plan = boot::plan(&info, boot, &vm.machine)?;
    Plain
        .apply(&plan, &vm.ram.memory)
        .map_err(LoaderError::from)?;
    Ok(plan.entry)
}
