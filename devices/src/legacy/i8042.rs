//! The i8042 keyboard controller, reduced to what a microVM needs: the CPU reset line (command
//! 0xfe on port 0x64, which Linux uses for `reboot=k`) and a keyboard that can send Ctrl-Alt-Del.
//!
//! A reset pulse stops the vCPU that wrote it ([`WriteEffect::Reset`]) and signals the VMM
//! once; Linux pulses the line up to ten times, and later pulses are neither logged nor
//! signalled again.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use crate::{BusDevice, WriteEffect};

/// The controller answers on ports 0x60..=0x64.
pub const I8042_PORT_BASE: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;

const DATA: u64 = 0; // port 0x60
const COMMAND: u64 = 4; // port 0x64

// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// Keyboard not inhibited (no "keylock"): without it Linux warns at probe.
const STATUS_UNLOCKED: u8 = 0x10;

// Controller configuration byte bits.
const CONFIG_KBD_INTERRUPT: u8 = 0x01;
const CONFIG_SYSTEM_FLAG: u8 = 0x04;

// Controller commands.
const CMD_READ_CONFIG: u8 = 0x20;
const CMD_WRITE_CONFIG: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_INTERFACE_TEST: u8 = 0xab;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_PULSE_RESET: u8 = 0xfe;

// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_RESET: u8 = 0xff;

/// Scan code set 2 for Ctrl, Alt, Del pressed (the set a PC keyboard speaks untranslated).
pub const CTRL_ALT_DEL_SCANCODES: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];

/// A byte queue deep enough for a key sequence; a guest that never reads cannot grow it.
const OUTPUT_CAPACITY: usize = 16;

pub struct I8042 {
    reset_evt: EventFd,
    kbd_irq: EventFd,
    config: u8,
    status: u8,
    /// A command that takes a data byte on port 0x60 next.
    pending: Option<u8>,
    output: VecDeque<u8>,
    /// The guest has pulsed the reset line.
    reset_requested: bool,
}

impl I8042 {
    /// `reset_evt` fires when the guest pulses the reset line; `kbd_irq` raises IRQ 1.
    pub fn new(reset_evt: EventFd, kbd_irq: EventFd) -> Self {
        Self {
            reset_evt,
            kbd_irq,
            config: CONFIG_KBD_INTERRUPT | CONFIG_SYSTEM_FLAG,
            status: STATUS_SYSTEM_FLAG | STATUS_UNLOCKED,
            pending: None,
            output: VecDeque::with_capacity(OUTPUT_CAPACITY),
            reset_requested: false,
        }
    }

    /// Presses Ctrl-Alt-Del on the keyboard. Fails when the guest has not read earlier keys.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), &'static str> {
        if self.output.len() + CTRL_ALT_DEL_SCANCODES.len() > OUTPUT_CAPACITY {
            return Err("the guest is not reading the keyboard");
        }
        self.output.extend(CTRL_ALT_DEL_SCANCODES);
        self.raise_keyboard_irq();
        Ok(())
    }

    fn push(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_CAPACITY {
            self.output.push_back(byte);
        }
    }

    fn raise_keyboard_irq(&self) {
        if self.config & CONFIG_KBD_INTERRUPT != 0 {
            if let Err(e) = self.kbd_irq.write(1) {
                crate::guest_warn!("i8042: cannot raise the keyboard interrupt: {e}");
            }
        }
    }

    fn command(&mut self, cmd: u8) -> WriteEffect {
        self.status |= STATUS_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CONFIG => self.push(self.config),
            CMD_WRITE_CONFIG | CMD_WRITE_OUTPUT_PORT => self.pending = Some(cmd),
            CMD_SELF_TEST => self.push(0x55),
            CMD_INTERFACE_TEST => self.push(0x00),
            // Bit 0: the CPU is not held in reset; bit 1: A20 enabled.
            CMD_READ_OUTPUT_PORT => self.push(0x03),
            CMD_PULSE_RESET => return self.pulse_reset(),
            _ => crate::guest_debug!("i8042: ignoring controller command {cmd:#04x}"),
        }
        WriteEffect::Continue
    }

    /// The guest pulsed the reset line: the first pulse is logged and signalled, every pulse
    /// stops the vCPU that made it.
    fn pulse_reset(&mut self) -> WriteEffect {
        if self.reset_requested {
            crate::guest_debug!("i8042: another reset pulse; the first one stands");
            return WriteEffect::Reset;
        }
        self.reset_requested = true;
        log::info!(
            "guest requested a reset through the i8042 (monotonic_us={})",
            crate::clock::monotonic_us()
        );
        if let Err(e) = self.reset_evt.write(1) {
            log::error!("i8042: cannot signal the reset: {e}");
        }
        WriteEffect::Reset
    }

    fn data(&mut self, byte: u8) {
        self.status &= !STATUS_LAST_WAS_COMMAND;
        match self.pending.take() {
            Some(CMD_WRITE_CONFIG) => self.config = byte,
            Some(_) => {}
            // Bytes without a pending controller command go to the keyboard.
            None => {
                self.push(KBD_ACK);
                if byte == KBD_RESET {
                    self.push(KBD_SELF_TEST_OK);
                }
                self.raise_keyboard_irq();
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA => {
                let byte = self.output.pop_front().unwrap_or(0);
                // Linux reads one byte per (edge-triggered) interrupt: ask again for the rest.
                if !self.output.is_empty() {
                    self.raise_keyboard_irq();
                }
                byte
            }
            COMMAND if self.output.is_empty() => self.status,
            COMMAND => self.status | STATUS_OUTPUT_FULL,
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.write_effect(offset, data);
    }

    fn write_effect(&mut self, offset: u64, data: &[u8]) -> WriteEffect {
        let Some(&byte) = data.first() else {
            return WriteEffect::Continue;
        };
        match offset {
            DATA => self.data(byte),
            COMMAND => return self.command(byte),
            _ => {}
        }
        WriteEffect::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (I8042, EventFd, EventFd) {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042::new(reset.try_clone().unwrap(), irq.try_clone().unwrap());
        (dev, reset, irq)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_fires_the_reset_event() {
        let (mut dev, reset, _) = controller();
        assert!(reset.read().is_err(), "no reset before the command");
        dev.write(COMMAND, &[CMD_PULSE_RESET]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn every_reset_pulse_stops_the_vcpu_and_only_the_first_is_signalled() {
        let (mut dev, reset, _) = controller();
        assert_eq!(
            dev.write_effect(COMMAND, &[CMD_READ_CONFIG]),
            WriteEffect::Continue
        );
        assert_eq!(dev.write_effect(DATA, &[KBD_RESET]), WriteEffect::Continue);
        for _ in 0..10 {
            assert_eq!(
                dev.write_effect(COMMAND, &[CMD_PULSE_RESET]),
                WriteEffect::Reset
            );
        }
        assert_eq!(reset.read().unwrap(), 1);
        assert!(reset.read().is_err(), "signalled more than once");
    }

    #[test]
    fn ctrl_alt_del_is_readable_scancode_by_scancode_with_an_interrupt() {
        let (mut dev, _, irq) = controller();
        assert_eq!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
        dev.send_ctrl_alt_del().unwrap();
        // One interrupt per byte, as an interrupt handler reading one byte each time needs.
        let mut got = vec![];
        while irq.read().is_ok() {
            assert_ne!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
            got.push(read(&mut dev, DATA));
        }
        assert_eq!(got, CTRL_ALT_DEL_SCANCODES);
        assert_eq!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_queue() {
        let (mut dev, _, _) = controller();
        for _ in 0..4 {
            dev.send_ctrl_alt_del().unwrap();
        }
        assert!(dev.send_ctrl_alt_del().is_err());
        for _ in 0..100 {
            dev.write(DATA, &[KBD_RESET]);
        }
        assert_eq!(dev.output.len(), OUTPUT_CAPACITY);
    }

    #[test]
    fn config_byte_round_trips() {
        let (mut dev, _, irq) = controller();
        dev.write(COMMAND, &[CMD_WRITE_CONFIG]);
        dev.write(DATA, &[0x00]);
        dev.write(COMMAND, &[CMD_READ_CONFIG]);
        assert_eq!(read(&mut dev, DATA), 0x00);
        // With the keyboard interrupt disabled, keys queue silently.
        dev.send_ctrl_alt_del().unwrap();
        assert!(irq.read().is_err());
    }
}
