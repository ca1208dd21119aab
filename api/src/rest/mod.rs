//! Firecracker's REST API: routes from HTTP requests to [`vmm::rpc::VmmAction`]s and back.

pub mod routes;

pub use routes::Router;
