//! The virtio-vsock device: `PUT /vsock`'s body.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The virtio-vsock device and its host unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockBody {
    /// Accepted for Firecracker compatibility; unused.
    #[serde(default)]
    pub vsock_id: Option<String>,
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}
