//! x86_64 machine setup: the guest physical layout, CPUID, registers, and the structures a
//! kernel reads at boot (zero page, PVH start info, e820 map, MP table).

pub mod boot_params;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
