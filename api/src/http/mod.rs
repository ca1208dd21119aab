//! HTTP/1.1 over a unix socket: the messages ([`message`]) and the server ([`server`]). Knows
//! nothing of Firecracker's routes, which are in `rest`.

pub mod message;
pub mod server;

pub use message::*;
pub use server::*;
