//! Tessera's front end: the REST API server over a unix socket and its routes.

pub mod http;
pub mod routes;
pub mod server;
