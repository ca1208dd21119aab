//! A KVM vCPU behind the [`Vcpu`] seam.

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};

use crate::hypervisor::{CpuId, Fpu, LapicState, Msrs, Regs, Result, SpecialRegs, Vcpu, VcpuExit};

pub struct KvmVcpu {
    fd: VcpuFd,
}

impl KvmVcpu {
    pub fn new(fd: VcpuFd) -> Self {
        Self { fd }
    }
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<VcpuExit<'_>> {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if matches!(e.errno(), libc::EINTR | libc::EAGAIN) => {
                return Ok(VcpuExit::Interrupted)
            }
            Err(e) => return Err(e),
        };
        Ok(match exit {
            KvmExit::IoIn(port, data) => VcpuExit::IoIn(port, data),
            KvmExit::IoOut(port, data) => VcpuExit::IoOut(port, data),
            KvmExit::MmioRead(addr, data) => VcpuExit::MmioRead(addr, data),
            KvmExit::MmioWrite(addr, data) => VcpuExit::MmioWrite(addr, data),
            KvmExit::Hlt => VcpuExit::Hlt,
            KvmExit::Shutdown => VcpuExit::Shutdown,
            KvmExit::FailEntry(reason, cpu) => VcpuExit::FailEntry { reason, cpu },
            KvmExit::InternalError => VcpuExit::InternalError,
            KvmExit::SystemEvent(kind, _) => match kind {
                KVM_SYSTEM_EVENT_RESET => VcpuExit::Reset,
                KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::PowerOff,
                KVM_SYSTEM_EVENT_CRASH => VcpuExit::Crash,
                other => VcpuExit::SystemEvent(other),
            },
            KvmExit::Intr => VcpuExit::Interrupted,
            other => VcpuExit::Other(format!("{other:?}")),
        })
    }

    fn set_cpuid(&self, cpuid: &CpuId) -> Result<()> {
        self.fd.set_cpuid2(cpuid)
    }

    fn tsc_khz(&self) -> Result<u32> {
        self.fd.get_tsc_khz()
    }

    fn regs(&self) -> Result<Regs> {
        self.fd.get_regs()
    }

    fn set_regs(&self, regs: &Regs) -> Result<()> {
        self.fd.set_regs(regs)
    }

    fn sregs(&self) -> Result<SpecialRegs> {
        self.fd.get_sregs()
    }

    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()> {
        self.fd.set_sregs(sregs)
    }

    fn set_fpu(&self, fpu: &Fpu) -> Result<()> {
        self.fd.set_fpu(fpu)
    }

    fn set_msrs(&self, msrs: &Msrs) -> Result<usize> {
        self.fd.set_msrs(msrs)
    }

    fn lapic(&self) -> Result<LapicState> {
        self.fd.get_lapic()
    }

    fn set_lapic(&self, lapic: &LapicState) -> Result<()> {
        self.fd.set_lapic(lapic)
    }
}
