//! The legacy devices every microVM has: the 8250 serial console (watched for kernel panics),
//! the i8042 (reset, Ctrl-Alt-Del) and the guest report ports, on the port I/O bus.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::legacy::{
    ConsoleSinkHandle, GuestReport, PanicReason, PanicWatch, ParkedConsoleWriter, ReportedStatus,
    SerialConsole, GUEST_REPORT_LEN, GUEST_REPORT_PORT, I8042, I8042_PORT_BASE, I8042_PORT_LEN,
    SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};
use devices::{Bus, BusError};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::ConsoleOutput;
use crate::hypervisor;
use crate::vm::{io_err, setup, VmError};
use crate::x86_64::layout::{KEYBOARD_IRQ, SERIAL_IRQ};

/// Serial console (watched for kernel panics), i8042 and guest report ports, with the eventfds that connect them to KVM and to
/// the VMM loop.
pub struct LegacyDevices {
    pub serial: Arc<Mutex<SerialConsole>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub guest_report: Arc<Mutex<GuestReport>>,
    pub reported_status: ReportedStatus,
    pub panic_reason: PanicReason,
    pub reset_evt: EventFd,
    pub input_room_evt: EventFd,
    /// The console's writer thread, flushed as the VM ends.
    pub console_sink: ConsoleSinkHandle,
}

impl LegacyDevices {
    pub fn new(
        vm_fd: &dyn hypervisor::Vm,
        console: &ConsoleOutput,
        process_start: Instant,
        console_writer: ParkedConsoleWriter,
    ) -> Result<Self, VmError> {
        let irq = |gsi| -> Result<EventFd, VmError> {
            let evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("create an eventfd"))?;
            vm_fd
                .register_irqfd(&evt, gsi)
                .map_err(setup("a device interrupt"))?;
            Ok(evt)
        };
        let out: Box<dyn Write + Send> = match console {
            ConsoleOutput::Stdio => devices::legacy::stdout_writer(),
            ConsoleOutput::Stderr => Box::new(io::stderr()),
            ConsoleOutput::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| VmError::ConsoleFile {
                        path: path.display().to_string(),
                        source,
                    })?,
            ),
        };
        // The writer thread (parked since the machine was made) drains the console: guest
        // output never blocks a vCPU or the VM's stop.
        let (out, console_sink) = console_writer.start(out);
        let panic_reason = PanicReason::default();
        let out = Box::new(PanicWatch::new(out, panic_reason.clone()));
        let input_room_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("create an eventfd"))?;
        let serial = SerialConsole::new(
            irq(SERIAL_IRQ)?,
            input_room_evt
                .try_clone()
                .map_err(io_err("clone an eventfd"))?,
            out,
        );
        let reported_status = ReportedStatus::default();
        let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("create an eventfd"))?;
        let i8042 = I8042::new(
            reset_evt.try_clone().map_err(io_err("clone an eventfd"))?,
            irq(KEYBOARD_IRQ)?,
        );
        Ok(Self {
            serial: Arc::new(Mutex::new(serial)),
            i8042: Arc::new(Mutex::new(i8042)),
            guest_report: Arc::new(Mutex::new(GuestReport::new(
                process_start,
                reported_status.clone(),
            ))),
            reported_status,
            panic_reason,
            reset_evt,
            input_room_evt,
            console_sink,
        })
    }

    pub fn pio_bus(&self) -> Result<Bus, BusError> {
        let mut bus = Bus::new();
        bus.insert(self.serial.clone(), SERIAL_PORT_BASE, SERIAL_PORT_LEN)?;
        bus.insert(self.i8042.clone(), I8042_PORT_BASE, I8042_PORT_LEN)?;
        bus.insert(
            self.guest_report.clone(),
            GUEST_REPORT_PORT,
            GUEST_REPORT_LEN,
        )?;
        Ok(bus)
    }
}
