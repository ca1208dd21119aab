//! Tessera device models.
//!
//! `bus` maps guest port and MMIO ranges to devices; `legacy` holds the PC devices a microVM
//! still needs (8250 serial, the i8042 reset line, the guest report ports).

pub mod bus;
pub mod clock;
pub mod legacy;

pub use bus::{Bus, BusDevice, BusError};
