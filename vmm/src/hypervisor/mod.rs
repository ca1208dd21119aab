//! The hypervisor seam: what the VMM asks of a hypervisor, in terms that do not name its
//! ioctls. A [`Hypervisor`] makes [`Vm`]s; a VM takes memory slots, interrupt and notification
//! eventfds, and makes [`Vcpu`]s; a vCPU has registers and a run loop that returns a
//! [`VcpuExit`]. KVM ([`kvm`]) is the one implementation and the only module that names
//! `kvm_ioctls`; register state travels in `kvm_bindings`' plain data types, which carry no
//! behaviour.
//!
//! What a confidential launch needs later is part of the seam now, so SEV-SNP and TDX backends
//! plug in without `cfg` scattering: the VM type at creation ([`VmType`]), private memory
//! (`guest_memfd` slots and memory attributes) and the encryption command channel. A hypervisor
//! that lacks one of them answers `ENOTSUP` ([`unsupported`]).

pub mod kvm;

use std::fs::File;
use std::os::fd::{BorrowedFd, RawFd};

pub use kvm_bindings::{
    kvm_fpu as Fpu, kvm_lapic_state as LapicState, kvm_msr_entry as MsrEntry, kvm_regs as Regs,
    kvm_sev_cmd as SevCommand, kvm_sregs as SpecialRegs, CpuId, Msrs,
};
/// A hypervisor call's failure: the errno it returned.
pub use vmm_sys_util::errno::Error;
use vmm_sys_util::eventfd::EventFd;

pub type Result<T> = std::result::Result<T, Error>;

/// The error a hypervisor gives for an operation it does not offer.
pub fn unsupported() -> Error {
    Error::new(libc::ENOTSUP)
}

/// The kind of VM to create: plain, or with memory encryption and a measured launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VmType {
    #[default]
    Plain,
    SevSnp,
    Tdx,
}

/// Where a guest notification (an ioeventfd) is caught: a port or an MMIO address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyAddress {
    Pio(u64),
    Mmio(u64),
}

/// Guest-private backing for a slot: a range of a `guest_memfd`.
#[derive(Debug, Clone, Copy)]
pub struct PrivateBacking<'a> {
    pub guest_memfd: BorrowedFd<'a>,
    pub offset: u64,
}

/// One guest-physical range and the host mapping behind it.
#[derive(Debug, Clone, Copy)]
pub struct MemorySlot<'a> {
    pub slot: u32,
    pub guest_addr: u64,
    pub size: u64,
    pub host_addr: u64,
    /// Set for memory that can be made private (SEV-SNP/TDX).
    pub private: Option<PrivateBacking<'a>>,
}

/// A hypervisor that creates VMs.
pub trait Hypervisor: Send + Sync {
    fn create_vm(&self, vm_type: VmType) -> Result<Box<dyn Vm>>;
    /// The CPUID leaves the hypervisor can give a vCPU.
    fn supported_cpuid(&self) -> Result<CpuId>;
}

/// A VM: memory slots, the platform's interrupt controllers, device interrupts and
/// notifications, vCPUs; and the private-memory and encryption operations of a confidential
/// launch.
pub trait Vm: Send + Sync {
    /// Maps `slot` into the guest.
    ///
    /// # Safety
    /// `host_addr..host_addr + size` must stay mapped, and not be handed to another slot, for
    /// as long as the VM exists.
    unsafe fn set_memory_slot(&self, slot: &MemorySlot) -> Result<()>;
    /// x86: the three pages of the real-mode TSS (Intel), inside the MMIO gap.
    fn set_tss_address(&self, address: u64) -> Result<()>;
    /// The in-kernel interrupt controllers (PIC, IOAPIC, LAPICs).
    fn create_irq_chip(&self) -> Result<()>;
    /// The in-kernel PIT.
    fn create_pit(&self) -> Result<()>;
    /// Raises `gsi` whenever `evt` is written.
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()>;
    /// Signals `evt` when the guest writes `datamatch` to `address`, without a vCPU exit to
    /// the VMM.
    fn register_notifier(
        &self,
        evt: &EventFd,
        address: NotifyAddress,
        datamatch: u32,
    ) -> Result<()>;
    fn create_vcpu(&self, index: u8) -> Result<Box<dyn Vcpu>>;
    /// The descriptor whose last close ends this VM (`runtime::teardown` keeps a copy).
    fn descriptor(&self) -> RawFd;

    /// A `guest_memfd` of `size` bytes: memory the host cannot map, for private guest pages.
    fn create_guest_memfd(&self, _size: u64) -> Result<File> {
        Err(unsupported())
    }
    /// Marks `guest_addr..+size` private (or shared again).
    fn set_memory_private(&self, _guest_addr: u64, _size: u64, _private: bool) -> Result<()> {
        Err(unsupported())
    }
    /// One SEV command (launch start, update data, measure, finish...).
    fn sev_command(&self, _command: &mut SevCommand) -> Result<()> {
        Err(unsupported())
    }
}

/// Why a vCPU stopped running the guest. Port and MMIO accesses borrow the hypervisor's
/// data buffer until the next run.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    IoIn(u16, &'a mut [u8]),
    IoOut(u16, &'a [u8]),
    MmioRead(u64, &'a mut [u8]),
    MmioWrite(u64, &'a [u8]),
    Hlt,
    /// A triple fault.
    Shutdown,
    FailEntry {
        reason: u64,
        cpu: u32,
    },
    InternalError,
    Reset,
    PowerOff,
    Crash,
    /// A system event this seam does not name.
    SystemEvent(u32),
    /// A signal interrupted the run (a pause's kick).
    Interrupted,
    /// Anything else, described.
    Other(String),
}

/// A vCPU: its registers and its run loop. Moved to its own thread.
pub trait Vcpu: Send {
    /// Runs the guest until its next exit; `EINTR`/`EAGAIN` come back as
    /// [`VcpuExit::Interrupted`].
    fn run(&mut self) -> Result<VcpuExit<'_>>;
    fn set_cpuid(&self, cpuid: &CpuId) -> Result<()>;
    /// The frequency of this vCPU's TSC, in kHz.
    fn tsc_khz(&self) -> Result<u32>;
    fn regs(&self) -> Result<Regs>;
    fn set_regs(&self, regs: &Regs) -> Result<()>;
    fn sregs(&self) -> Result<SpecialRegs>;
    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()>;
    fn set_fpu(&self, fpu: &Fpu) -> Result<()>;
    /// Returns how many MSRs were written (the first one refused stops the write).
    fn set_msrs(&self, msrs: &Msrs) -> Result<usize>;
    fn lapic(&self) -> Result<LapicState>;
    fn set_lapic(&self, lapic: &LapicState) -> Result<()>;
}
