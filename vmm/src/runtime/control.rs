//! What ends a running VM: a vCPU exit, an i8042 reset, or SIGINT/SIGTERM to the VMM.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use devices::legacy::I8042;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::exit::VmExit;
use super::signals::signal_stream;
use crate::vcpu::threads::VcpuEnded;
use crate::vcpu::Buses;
use crate::vm::VmError;

/// Decides when the VM ends: a vCPU exit, an i8042 reset, or a signal to the VMM.
///
/// SIGTERM presses Ctrl-Alt-Del so the guest can shut down cleanly (as `docker stop` asks PID 1);
/// a second SIGTERM, or SIGINT, stops the VM at once.
pub struct VmControl {
    exit_rx: Receiver<VcpuEnded>,
    exit_evt: EventFd,
    reset_evt: EventFd,
    sigint: UnixStream,
    sigterm: UnixStream,
    signal_ids: [signal_hook::SigId; 2],
    i8042: Arc<Mutex<I8042>>,
    asked_guest_to_stop: bool,
    pub exit: Option<VmExit>,
    /// The buses of vCPUs that ended, dropped with this (on the VMM thread).
    retired: Vec<Buses>,
}

impl VmControl {
    pub fn new(
        exit_rx: Receiver<VcpuEnded>,
        exit_evt: EventFd,
        reset_evt: EventFd,
        i8042: Arc<Mutex<I8042>>,
    ) -> Result<Self, VmError> {
        let (sigint, sigint_id) = signal_stream(signal_hook::consts::SIGINT)?;
        let (sigterm, sigterm_id) = signal_stream(signal_hook::consts::SIGTERM)?;
        Ok(Self {
            exit_rx,
            exit_evt,
            reset_evt,
            sigint,
            sigterm,
            signal_ids: [sigint_id, sigterm_id],
            i8042,
            asked_guest_to_stop: false,
            exit: None,
            retired: Vec::new(),
        })
    }

    fn on_sigterm(&mut self) {
        if self.asked_guest_to_stop {
            self.exit = Some(VmExit::Signal {
                signal: signal_hook::consts::SIGTERM,
            });
            return;
        }
        self.asked_guest_to_stop = true;
        let mut i8042 = self.i8042.lock().unwrap_or_else(|p| p.into_inner());
        match i8042.send_ctrl_alt_del() {
            Ok(()) => log::info!(
                "SIGTERM: sent Ctrl-Alt-Del to the guest; send SIGTERM again to stop at once"
            ),
            Err(why) => {
                log::warn!("SIGTERM: cannot send Ctrl-Alt-Del ({why}); stopping the VM");
                self.exit = Some(VmExit::Signal {
                    signal: signal_hook::consts::SIGTERM,
                });
            }
        }
    }
}

impl Drop for VmControl {
    fn drop(&mut self) {
        for id in self.signal_ids {
            signal_hook::low_level::unregister(id);
        }
    }
}

fn drain(stream: &mut UnixStream) {
    let mut buf = [0u8; 16];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

impl MutEventSubscriber for VmControl {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            self.exit_evt.as_raw_fd(),
            self.reset_evt.as_raw_fd(),
            self.sigint.as_raw_fd(),
            self.sigterm.as_raw_fd(),
        ];
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("VMM loop: cannot watch fd {fd}: {e}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.exit_evt.as_raw_fd() {
            let _ = self.exit_evt.read();
            while let Ok(ended) = self.exit_rx.try_recv() {
                self.exit.get_or_insert(ended.exit);
                self.retired.push(ended.buses);
            }
        } else if fd == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            self.exit.get_or_insert(VmExit::Reset);
        } else if fd == self.sigint.as_raw_fd() {
            drain(&mut self.sigint);
            self.exit.get_or_insert(VmExit::Signal {
                signal: signal_hook::consts::SIGINT,
            });
        } else if fd == self.sigterm.as_raw_fd() {
            drain(&mut self.sigterm);
            self.on_sigterm();
        }
    }
}
