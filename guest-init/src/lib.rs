//! The guest side of Tessera, by job:
//!
//! - [`spec`]: the workload spec (serde, versioned), which the CLI, the REST API and the
//!   containerd shim all speak;
//! - [`protocol`]: the host<->guest protocol: how the spec reaches the guest (a newc archive
//!   appended to the initrd) and the report ports; the VMM side uses it too;
//! - [`runner`]: the [`runner::Runner`] trait and today's process runner;
//! - [`pid1`]: the duties of `tessera-init` as PID 1;
//! - [`newc`]: the cpio format both the spec archive and the packer write;
//! - `initramfs` (feature `initramfs`): the initramfs packer behind the `tessera-initramfs`
//!   tool, kept out of what the VMM and PID 1 link.
//!
//! Without features this library depends on libc, serde, serde_json, thiserror and displaydoc
//! only.

#[cfg(feature = "confine")]
pub mod confine;
#[cfg(feature = "initramfs")]
pub mod initramfs;
pub mod newc;
pub mod pid1;
pub mod protocol;
pub mod runner;
pub mod spec;
