//! The guest side of Tessera: what `tessera-init` runs (the [`task`] encoding on the kernel
//! command line), how it reports back ([`report`]), and the [`initramfs`] builder that packs it.

pub mod initramfs;
pub mod report;
pub mod task;
