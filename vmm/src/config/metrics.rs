//! The metrics destination: `PUT /metrics`'s body.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `PUT /metrics` and the config file's `metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsBody {
    pub metrics_path: PathBuf,
}
