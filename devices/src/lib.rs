//! Tessera device models.
//!
//! `bus` maps guest port and MMIO ranges to devices; `legacy` holds the PC devices a microVM
//! still needs (8250 serial, the i8042 reset line, the guest report ports); `virtio` holds the
//! virtio-mmio transport and the block, net, vsock and rng devices; `rate_limiter` is the token
//! bucket they share; `log_limit` rate-limits every log line a guest can trigger.

pub mod bus;
pub mod clock;
pub mod legacy;
pub mod log_limit;
pub mod rate_limiter;
pub mod timer;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, WriteEffect};

/// Guest memory, as the VMM maps it and devices read and write it: the one definition (the VMM's
/// `memory::GuestMemory` re-exports it).
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
