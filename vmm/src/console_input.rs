//! Host input to the guest's serial console, on the VMM event loop.
//!
//! The VMM reads its input source only while the UART's receive FIFO has room. When the FIFO is
//! full, it stops watching the input and waits for the UART to say the guest drained it, so a
//! guest that never reads its console cannot make the VMM buffer without bound.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use devices::legacy::SerialConsole;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

pub struct ConsoleInput<R: Read + AsRawFd> {
    input: R,
    serial: Arc<Mutex<SerialConsole>>,
    room_evt: EventFd,
    /// Input is being watched (not paused for a full FIFO, not at end of file).
    watching: bool,
    at_eof: bool,
}

impl<R: Read + AsRawFd> ConsoleInput<R> {
    pub fn new(input: R, serial: Arc<Mutex<SerialConsole>>, room_evt: EventFd) -> Self {
        Self {
            input,
            serial,
            room_evt,
            watching: false,
            at_eof: false,
        }
    }

    fn serial(&self) -> std::sync::MutexGuard<'_, SerialConsole> {
        self.serial.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watch(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.watching || self.at_eof {
            return;
        }
        let events = Events::new(&self.input.as_raw_fd(), EventSet::IN);
        let result = if on {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.watching = on,
            // Regular files and /dev/null cannot be polled: the guest gets no input from them.
            Err(e) => {
                log::debug!("console input: not watching the input: {e}");
                self.at_eof = true;
            }
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let room = self.serial().input_room();
        if room == 0 {
            self.watch(ops, false);
            return;
        }
        let mut buf = [0u8; 64];
        let len = room.min(buf.len());
        match self.input.read(&mut buf[..len]) {
            Ok(0) => {
                self.watch(ops, false);
                self.at_eof = true;
            }
            Ok(n) => {
                self.serial().enqueue_input(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("console input: read failed, no more input to the guest: {e}");
                self.watch(ops, false);
                self.at_eof = true;
            }
        }
    }
}

impl<R: Read + AsRawFd> MutEventSubscriber for ConsoleInput<R> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.room_evt, EventSet::IN)) {
            log::warn!("console input: cannot watch the UART: {e}");
        }
        self.watch(ops, true);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.room_evt.as_raw_fd() {
            let _ = self.room_evt.read();
            self.watch(ops, true);
        } else if events
            .event_set()
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
        {
            self.read_input(ops);
        }
    }
}
