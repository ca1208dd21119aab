//! The 8250 UART on 0x3f8 / IRQ 4, backed by `vm-superio`.
//!
//! Output goes to the console writer one byte at a time; the VMM gives it a
//! [`ConsoleSink`](super::ConsoleSink), which never blocks the vCPU (a slow reader loses bytes,
//! counted, instead of stalling the guest and the VM's stop). Input is queued only while the
//! UART's FIFO has room; the VMM stops reading its input source when the FIFO is full and
//! resumes when `room_evt` fires.

use std::io::{self, Write};

use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;

pub const SERIAL_PORT_BASE: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;

/// An interrupt line raised by writing to an eventfd registered as a KVM irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the VMM that the guest drained the receive FIFO.
struct InputRoom {
    room_evt: EventFd,
}

impl SerialEvents for InputRoom {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Err(e) = self.room_evt.write(1) {
            crate::guest_warn!("serial: cannot signal input room: {e}");
        }
    }
}

/// The guest's serial console.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, InputRoom, Box<dyn Write + Send>>,
    output_failed: bool,
}

impl SerialConsole {
    /// `irq` raises the UART interrupt; `room_evt` fires when the receive FIFO empties.
    pub fn new(irq: EventFd, room_evt: EventFd, out: Box<dyn Write + Send>) -> Self {
        let uart = Serial::with_events(EventFdTrigger(irq), InputRoom { room_evt }, out);
        Self {
            uart,
            output_failed: false,
        }
    }

    /// Bytes the receive FIFO can take now.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes were taken.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.input_room().min(bytes.len());
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                crate::guest_warn!("serial: cannot queue input: {e}");
                0
            }
        }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0xff, |reg| self.uart.read(reg));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(reg), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(e) = self.uart.write(reg, value) {
            // A closed console must not stop the guest; say so once.
            if !self.output_failed {
                log::warn!("serial: console output failed, dropping further output errors: {e}");
                self.output_failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can inspect after the console took ownership of it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn console() -> (SerialConsole, Sink, EventFd) {
        let sink = Sink::default();
        let room = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let con = SerialConsole::new(irq, room.try_clone().unwrap(), Box::new(sink.clone()));
        (con, sink, room)
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut con, sink, _) = console();
        for b in b"hi\n" {
            con.write(0, &[*b]);
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn input_stops_at_fifo_capacity_and_room_is_signalled_when_drained() {
        let (mut con, _, room) = console();
        let big = vec![b'x'; 1000];
        let taken = con.enqueue_input(&big);
        assert!(taken > 0 && taken < big.len(), "took {taken}");
        assert_eq!(con.input_room(), 0);
        assert_eq!(con.enqueue_input(b"more"), 0);

        let mut byte = [0u8];
        for _ in 0..taken {
            con.read(0, &mut byte);
            assert_eq!(byte, [b'x']);
        }
        assert_eq!(room.read().unwrap(), 1);
        assert_eq!(con.input_room(), taken);
    }
}
