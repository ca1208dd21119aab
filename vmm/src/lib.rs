//! Tessera's virtual machine monitor core.
//!
//! A launch goes: a front end's request shapes (`config`) -> one checked
//! [`VmResources`](resources::VmResources) -> [`builder`]: [`Vm::create`] (hypervisor VM,
//! memory, vCPUs: everything the machine config decides) then [`builder::boot`] (devices,
//! kernel, initrd, boot structures, vCPU threads) -> [`RunningVm::wait`] (the VMM event loop
//! until the guest ends). See docs/ARCHITECTURE.md.

pub mod boot;
pub mod builder;
pub mod config;
pub mod console_input;
pub mod controller;
pub mod device_manager;
pub mod hypervisor;
pub mod kernel_cmdline;
pub mod logger;
pub mod memory;
pub mod metrics;
pub mod resources;
pub mod rpc;
pub mod runtime;
pub mod seccomp;
pub mod vcpu;
pub mod vm;
pub mod x86_64;

pub use config::DevicesBody;
pub use config::{BootSource, ConsoleOutput, MachineConfig};
pub use runtime::exit::VmExit;
pub use runtime::RunningVm;
pub use vm::{Vm, VmError};
