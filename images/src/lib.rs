//! Container images for Tessera (issue 15, first part): OCI image layers applied, in order, into
//! a root filesystem directory without ever writing outside it ([`unpack`]).

pub mod unpack;
