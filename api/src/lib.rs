//! Tessera's front ends, each producing one checked `vmm::resources::VmResources` for the one
//! builder: the `tessera` command line ([`cli`]), the HTTP server over a unix socket
//! ([`http`]) and Firecracker's REST routes on it ([`rest`]); later the containerd shim and the
//! OCI runtime CLI. [`guest_image`] says where the default guest is cached.

pub mod cli;
pub mod guest_image;
pub mod http;
pub mod rest;
