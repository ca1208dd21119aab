//! Legacy PC devices on the port I/O bus.

mod console_sink;
mod guest_report;
mod i8042;
mod panic_watch;
mod serial;

pub use console_sink::{
    stdout_writer, ConsoleSink, ConsoleSinkHandle, ParkedConsoleWriter, CONSOLE_QUEUE_BYTES,
};
pub use guest_report::{GuestReport, ReportedStatus, GUEST_REPORT_LEN, GUEST_REPORT_PORT};
pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use panic_watch::{PanicReason, PanicWatch};
pub use serial::{EventFdTrigger, SerialConsole, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
