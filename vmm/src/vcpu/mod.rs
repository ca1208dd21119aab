//! One vCPU: its state at creation and the run loop its thread spins in ([`threads`] spawns
//! and parks those threads).

pub mod threads;

use std::sync::Arc;

use devices::{Bus, WriteEffect};

use crate::hypervisor::{self, CpuId, VcpuExit, Vm};
use crate::runtime::exit::VmExit;
use crate::runtime::pause::PauseGate;
use crate::x86_64::{cpuid, regs};

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum VcpuError {
    /// cannot create vCPU {index}: {source}
    Create {
        index: u8,
        source: hypervisor::Error,
    },
    /// cannot set CPUID on vCPU {index}: {source}
    Cpuid {
        index: u8,
        source: hypervisor::Error,
    },
    /// cannot set up vCPU {index}: {source}
    Regs { index: u8, source: regs::RegsError },
}

/// The buses a vCPU dispatches its port and MMIO exits to.
#[derive(Clone)]
pub struct Buses {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
}

pub struct Vcpu {
    pub index: u8,
    pub fd: Box<dyn hypervisor::Vcpu>,
}

impl Vcpu {
    /// Creates vCPU `index` of `count` with its CPUID, MSRs, FPU and LAPIC LINT pins set.
    pub fn new(vm: &dyn Vm, index: u8, count: u8, supported: &CpuId) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(index)
            .map_err(|source| VcpuError::Create { index, source })?;
        // Without it the guest measures the TSC itself; the timing leaf is left out.
        let tsc_khz = fd.tsc_khz().ok();
        fd.set_cpuid(&cpuid::vcpu_cpuid(supported, index, count, tsc_khz))
            .map_err(|source| VcpuError::Cpuid { index, source })?;
        let regs_err = |source| VcpuError::Regs { index, source };
        regs::setup_msrs(fd.as_ref()).map_err(regs_err)?;
        regs::setup_fpu(fd.as_ref()).map_err(regs_err)?;
        regs::setup_lint(fd.as_ref()).map_err(regs_err)?;
        Ok(Self { index, fd })
    }

    /// Runs the guest until this vCPU ends the VM, stopping at `gate` while the VM is paused.
    pub fn run(&mut self, buses: &Buses, gate: &PauseGate) -> VmExit {
        let vcpu = self.index;
        loop {
            gate.wait_while_paused();
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !buses.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::IoOut(port, data)) => match buses.pio.write(u64::from(port), data) {
                    Some(WriteEffect::Continue) => {}
                    // The i8042's reset line: nothing after the write runs.
                    Some(WriteEffect::Reset) => return VmExit::Reset,
                    None => devices::guest_debug!("vCPU {vcpu}: write to unclaimed port {port:#x}"),
                },
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !buses.mmio.read(addr, data) {
                        data.fill(0);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => match buses.mmio.write(addr, data) {
                    Some(WriteEffect::Continue) => {}
                    Some(WriteEffect::Reset) => return VmExit::Reset,
                    None => devices::guest_debug!("vCPU {vcpu}: write to unclaimed MMIO {addr:#x}"),
                },
                Ok(VcpuExit::Hlt) => return VmExit::Halted { vcpu },
                Ok(VcpuExit::Shutdown) => return VmExit::TripleFault { vcpu },
                Ok(VcpuExit::FailEntry { reason, cpu }) => {
                    return VmExit::KvmFailure {
                        vcpu,
                        detail: format!(
                            "VM entry failed with hardware reason {reason:#x} on host CPU {cpu}"
                        ),
                    }
                }
                Ok(VcpuExit::InternalError) => {
                    return VmExit::KvmFailure {
                        vcpu,
                        detail: "KVM internal error".into(),
                    }
                }
                Ok(VcpuExit::Reset) => return VmExit::Reset,
                Ok(VcpuExit::PowerOff) => return VmExit::Halted { vcpu },
                Ok(VcpuExit::Crash) => return VmExit::TripleFault { vcpu },
                Ok(VcpuExit::SystemEvent(other)) => {
                    return VmExit::Unexpected {
                        vcpu,
                        detail: format!("unknown system event {other}"),
                    }
                }
                // A signal (a pause's kick) interrupted the run; the gate decides what is next.
                Ok(VcpuExit::Interrupted) => {}
                Ok(VcpuExit::Other(what)) => {
                    return VmExit::Unexpected {
                        vcpu,
                        detail: format!("unhandled exit {what}"),
                    }
                }
                Err(e) => {
                    return VmExit::Unexpected {
                        vcpu,
                        detail: format!("KVM_RUN failed: {e}"),
                    }
                }
            }
        }
    }
}
