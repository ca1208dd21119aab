//! The request shapes of every front end, one file per resource, in Firecracker's JSON shape:
//! the config file, `GET /vm/config`, and the bodies of the configuration endpoints.
//!
//! One naming rule: `<Resource>Body` is a body as the client sends it (serde, Firecracker's
//! field names, nothing checked); the checked value it becomes has the plain name
//! (`MachineConfig`, `BootSource`) or is the device model's own config (`BlockConfig`,
//! `NetConfig`, ...). Checks that span resources, and file checks, are in `resources`.

pub mod boot;
pub mod devices;
pub mod drive;
pub mod entropy;
pub mod logger;
pub mod machine;
pub mod metrics;
pub mod net;
pub mod rate_limiter;
pub mod vm;
pub mod vsock;

pub use boot::{BootSource, BootSourceBody, ConsoleOutput};
pub use devices::DevicesBody;
pub use drive::{DriveBody, DriveCacheType, DriveUpdateBody};
pub use entropy::EntropyBody;
pub use logger::LoggerBody;
pub use machine::{MachineConfig, MachineConfigBody, MAX_MEM_MIB, MAX_VCPUS, MIN_MEM_MIB};
pub use metrics::MetricsBody;
pub use net::{NetworkInterfaceBody, NetworkInterfaceUpdateBody};
pub use rate_limiter::{RateLimiterBody, TokenBucketBody};
pub use vm::VmConfigBody;
pub use vsock::VsockBody;

#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum ConfigError {
    /// vCPU count {0} is out of range: use 1 to 32
    VcpuCount(u64),
    /// memory size {0} MiB is out of range: use 8 to 1048576 MiB
    MemorySize(u64),
    /// kernel command line is {len} bytes; the limit is {max} bytes
    CmdlineTooLong { len: usize, max: usize },
    /// kernel command line contains a NUL byte or a non-ASCII character
    CmdlineInvalid,
}
