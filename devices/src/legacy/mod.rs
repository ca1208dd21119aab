//! Legacy PC devices on the port I/O bus.

mod boot_done;
mod i8042;
mod serial;

pub use boot_done::{BootDonePort, BOOT_DONE_PORT};
pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use serial::{EventFdTrigger, SerialConsole, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
