//! Tessera's Wasm runner (issue 16): a WASI preview 1 module run on wasmtime under the limits
//! and with the exit codes of the Blockless runtime, from its JSON config file or from flags
//! ([`config`]); modules compiled once into a cache ([`engine`]); fuel, memory and wall-time
//! limits ([`limits`]); the exit-code table ([`exit`]); one run ([`run`]); the host sandbox
//! around it ([`sandbox`]); Blockless's CGI extensions ([`cgi`]); repeated instantiation for a
//! warm pool ([`warm`]). The `tessera-wasm` binary is this crate's front end: `tessera run
//! app.wasm` starts it in a host sandbox.

pub mod cgi;
pub mod config;
pub mod engine;
pub mod exit;
pub mod limits;
pub mod run;
pub mod sandbox;
pub mod warm;
