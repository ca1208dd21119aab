//! The host<->guest protocol, defined once for both sides: how the workload spec reaches the
//! guest ([`spec_transport`]) and how the guest reports back ([`report`]). The VMM side uses it
//! too (`devices::legacy::GuestReport`, the `tessera` CLI); the guest side knows nothing else of
//! the VMM.

pub mod report;
pub mod spec_transport;

pub use report::{
    BOOT_DONE_PORT, BOOT_DONE_VALUE, EXIT_STATUS_PORT, REPORT_PORT_COUNT, STATUS_CANNOT_EXECUTE,
    STATUS_INIT_FAILED, STATUS_NOT_FOUND,
};
pub use spec_transport::{
    appended_archive_offset, read_spec, read_spec_from, spec_archive, spec_from_archive,
    TransportError, ARCHIVE_ALIGN, SPEC_PATH,
};
