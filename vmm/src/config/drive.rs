//! A virtio-blk drive: `PUT /drives/{id}` and `PATCH /drives/{id}` bodies.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::rate_limiter::RateLimiterBody;

/// Host page cache use for a drive, as Firecracker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DriveCacheType {
    /// Flush requests are acknowledged without syncing (the guest is not offered FLUSH).
    #[default]
    Unsafe,
    /// The guest is offered FLUSH and each flush is an fdatasync.
    Writeback,
}

/// A virtio-blk drive backed by a raw file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveBody {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    #[serde(default)]
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
    #[serde(default)]
    pub cache_type: DriveCacheType,
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterBody>,
}

/// `PATCH /drives/{id}`: a new backing file and/or rate limiter for a running VM's drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdateBody {
    pub drive_id: String,
    #[serde(default)]
    pub path_on_host: Option<PathBuf>,
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterBody>,
}
