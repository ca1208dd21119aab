//! Tessera's virtual machine monitor core.
//!
//! A launch goes `VmConfig` -> [`Vm::create`] (KVM VM, memory, memslots, vCPUs: everything the
//! machine config decides) -> [`Vm::boot`] (kernel, initrd, boot structures, vCPU threads) ->
//! [`RunningVm::wait`] (the VMM event loop until the guest ends).

pub mod boot;
pub mod config;
pub mod console_input;
pub mod controller;
pub mod device_config;
pub mod device_manager;
pub mod exit;
pub mod hypervisor;
pub mod logger;
pub mod memory;
pub mod metrics;
pub mod pause;
pub mod resources;
pub mod rpc;
pub mod seccomp;
pub mod signals;
pub mod vcpu;
pub mod vcpu_threads;
pub mod vm;
pub mod x86_64;

pub use config::{BootSource, ConsoleOutput, MachineConfig};
pub use device_config::DevicesConfig;
pub use exit::VmExit;
pub use vm::{RunningVm, Vm, VmError};
