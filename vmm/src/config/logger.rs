//! The logger: `PUT /logger`'s body.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `PUT /logger` and the config file's `logger`, as Firecracker names them.
///
/// Unlike Firecracker, `show_level` defaults to true: a log line without its level is rarely
/// what anyone wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerBody {
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub show_level: Option<bool>,
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    /// Only records whose module path starts with this are written.
    #[serde(default)]
    pub module: Option<String>,
}

impl LoggerBody {
    /// This configuration over `old`: the fields it sets replace `old`'s, as the live logger
    /// applies them.
    pub fn over(self, old: LoggerBody) -> LoggerBody {
        LoggerBody {
            log_path: self.log_path.or(old.log_path),
            level: self.level.or(old.level),
            show_level: self.show_level.or(old.show_level),
            show_log_origin: self.show_log_origin.or(old.show_log_origin),
            module: self.module.or(old.module),
        }
    }
}
