//! The machine a launch builds first, before the boot source is known or the start is asked
//! for: the hypervisor VM, guest memory and its slots, the in-kernel IRQ chip and PIT, and the
//! vCPUs with their CPUID, MSRs, FPU and LAPIC state, each on a parked, filtered thread.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::thread;
use std::time::Instant;

use crate::boot::LoaderError;
use crate::config::{ConfigError, MachineConfig};
use crate::device_manager::DeviceManagerError;
use crate::hypervisor::kvm::{self, KvmError};
use crate::hypervisor::{self, Hypervisor, VmType};
use crate::memory::{self, GuestMemory, GuestRam, MemoryBackend, MemoryError};
use crate::resources::DeviceConfigError;
use crate::seccomp::{Filters, ThreadKind};
use crate::vcpu::threads::{ParkedVcpus, VcpuThreadError};
use crate::vcpu::{Vcpu, VcpuError};
use crate::x86_64::boot_params::BootParamsError;
use crate::x86_64::cpuid;
use crate::x86_64::mptable::MpTableError;
use crate::x86_64::regs::RegsError;
use devices::legacy::{ConsoleSink, ParkedConsoleWriter, CONSOLE_QUEUE_BYTES};
use devices::BusError;

/// Three pages KVM needs for the real-mode TSS on Intel, inside the MMIO gap.
const TSS_ADDRESS: u64 = 0xfffb_d000;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum VmError {
    /// {0}
    Kvm(#[from] KvmError),
    /// cannot set up {what}: {source}
    Setup {
        what: &'static str,
        source: hypervisor::Error,
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
    VcpuThread(#[from] VcpuThreadError),
    /// no boot source: configure a kernel first
    NoBootSource,
    /// this VM has been booted already
    AlreadyBooted,
    /// cannot pass the workload to the guest: {0}
    Workload(#[from] guest_init::protocol::TransportError),
    /// VMM event loop failed: {0}
    EventLoop(event_manager::Error),
    /// {0}
    DeviceConfig(#[from] DeviceConfigError),
    /// {0}
    Devices(#[from] DeviceManagerError),
    /// with the virtio devices added, {0}
    Cmdline(#[from] ConfigError),
}

pub(crate) fn setup(what: &'static str) -> impl FnOnce(hypervisor::Error) -> VmError {
    move |source| VmError::Setup { what, source }
}

pub(crate) fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// A VM with its memory and vCPUs, not yet booted.
///
/// Fields drop in declaration order: every descriptor that keeps the hypervisor's VM alive
/// (the parked threads, the vCPUs, the VM itself) is closed before `ram` unmaps the memory
/// its slots point at.
pub struct Vm {
    pub(crate) machine: MachineConfig,
    /// One thread per vCPU, filtered and waiting for the boot.
    pub(crate) vcpu_threads: ParkedVcpus,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) vm_fd: Box<dyn hypervisor::Vm>,
    /// Guest RAM with whatever backs it (a guest_memfd lives as long as the VM).
    pub(crate) ram: GuestRam,
    pub(crate) filters: Filters,
    /// The console's writer thread, filtered and waiting for the boot to give it its output.
    pub(crate) console_writer: Option<ParkedConsoleWriter>,
}

impl Vm {
    /// Creates the KVM VM, guest memory and memslots, the in-kernel IRQ chip and PIT, and the
    /// vCPUs with their CPUID, MSRs, FPU and LAPIC state; and the vCPU threads, which install
    /// their `filters` now so that the boot does not wait for it.
    pub fn create(machine: MachineConfig, filters: &Filters) -> Result<Self, VmError> {
        let started = Instant::now();
        // First, so that its filter is compiled while KVM builds the VM below, not at the same
        // time as the vCPU threads' (they would contend for the kernel's BPF JIT). The writer
        // only writes: the vCPU filter fits it.
        let writer_filters = filters.clone();
        let console_writer = ConsoleSink::park(CONSOLE_QUEUE_BYTES, move || {
            writer_filters.confine_worker(ThreadKind::Vcpu)
        })
        .map_err(io_err("start the console writer thread"))?;
        let kvm = kvm::open()?;
        // KVM_GET_SUPPORTED_CPUID takes ~0.3 ms here: ask for it while the VM and its memory
        // are being built.
        let (vm_fd, ram, supported) = thread::scope(|scope| {
            let cpuid = scope.spawn(|| kvm.supported_cpuid().map(cpuid::with_host_brand));
            let (vm_fd, ram) = create_vm_and_memory(&kvm, machine.mem_size_mib)?;
            let supported = cpuid
                .join()
                .map_err(|_| io_err("query CPUID")(io::Error::other("helper thread panicked")))?
                .map_err(setup("CPUID (KVM_GET_SUPPORTED_CPUID)"))?;
            Ok::<_, VmError>((vm_fd, ram, supported))
        })?;
        log::debug!(
            "KVM VM, memory and IRQ chip ready at {:?}",
            started.elapsed()
        );

        let count = machine.vcpu_count;
        let vcpus: Vec<Vcpu> = (0..count)
            .map(|index| Vcpu::new(vm_fd.as_ref(), index, count, &supported))
            .collect::<Result<_, _>>()?;
        let vcpu_threads = ParkedVcpus::spawn(vcpus.len(), filters)?;
        log::debug!("{count} vCPUs ready at {:?}", started.elapsed());
        Ok(Self {
            machine,
            vm_fd,
            ram,
            vcpus,
            vcpu_threads,
            filters: filters.clone(),
            console_writer: Some(console_writer),
        })
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.ram.memory
    }

    /// The descriptors whose last close frees the VM and its memory: the hypervisor VM and
    /// any `guest_memfd` (mapped memory stays with the address space).
    pub(crate) fn teardown_fds(&self) -> Vec<RawFd> {
        std::iter::once(self.vm_fd.descriptor())
            .chain(self.ram.guest_memfds().iter().map(|f| f.as_raw_fd()))
            .collect()
    }
}

/// The KVM VM with guest memory, memslots, in-kernel IRQ chip and PIT.
fn create_vm_and_memory(
    kvm: &dyn Hypervisor,
    mem_size_mib: u64,
) -> Result<(Box<dyn hypervisor::Vm>, GuestRam), VmError> {
    let vm = kvm.create_vm(VmType::Plain).map_err(setup("the KVM VM"))?;
    let mut ram = memory::create(mem_size_mib, MemoryBackend::Anonymous)?;
    // SAFETY: the memory goes into the Vm next to `vm`, whose field order closes every
    // descriptor that holds the KVM VM (vCPUs, the VM) before `ram` is unmapped.
    unsafe { ram.register_slots(vm.as_ref()) }?;
    // Memslots go in before the IRQ chip: on this host (PVM) a memslot added after
    // KVM_CREATE_IRQCHIP costs 6-10 ms instead of ~0.1 ms.
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(setup("the TSS address"))?;
    vm.create_irq_chip()
        .map_err(setup("the in-kernel IRQ chip"))?;
    vm.create_pit().map_err(setup("the in-kernel PIT"))?;
    Ok((vm, ram))
}
