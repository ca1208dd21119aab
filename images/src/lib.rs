//! Container images for Tessera (issue 15, under way): OCI image layers applied, in order, into a
//! root filesystem directory without ever writing outside it ([`unpack`]); images read from an
//! OCI layout, an OCI archive or a `docker save` tar with every blob checked against its digest
//! ([`import`]); images pulled from an OCI / Docker registry into the store through that import
//! ([`pull`]); and the store that keeps each as a read-only ext4 filesystem ([`store`]).

pub mod import;
pub mod progress;
pub mod pull;
pub mod store;
pub mod unpack;
pub mod volume;
