//! The guest end of the report ports ([`crate::protocol::report`]).

use std::io;

use crate::protocol::{BOOT_DONE_PORT, EXIT_STATUS_PORT, REPORT_PORT_COUNT};

/// Access to the report ports, granted by ioperm(2). Without it (a kernel lacking
/// CONFIG_X86_IOPL_IOPERM) writes are skipped and the VMM sees no status.
#[derive(Clone, Copy)]
pub struct ReportPorts {
    usable: bool,
}

impl ReportPorts {
    pub fn open() -> Self {
        // SAFETY: ioperm only changes this process's I/O permission bitmap.
        let usable =
            unsafe { libc::ioperm(BOOT_DONE_PORT.into(), REPORT_PORT_COUNT.into(), 1) } == 0;
        if !usable {
            eprintln!(
                "tessera-init: warning: no access to ports {BOOT_DONE_PORT:#x}-{EXIT_STATUS_PORT:#x} ({}); the exit status cannot be reported",
                io::Error::last_os_error()
            );
        }
        Self { usable }
    }

    pub fn write(self, port: u16, value: u8) {
        if self.usable {
            // SAFETY: ioperm granted this port; an OUT to it has no effect on our memory.
            unsafe {
                std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
            };
        }
    }
}
