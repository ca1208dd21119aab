//! Watches the guest console for a Linux kernel panic, so the VMM can say why the guest died.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// What Linux prints first when it panics (kernel/panic.c).
const MARKER: &str = "Kernel panic - not syncing: ";
/// Longest line kept; a panic reason is far shorter.
const MAX_LINE: usize = 1024;

/// The panic reason seen on the console, shared with whoever ends the VM.
#[derive(Debug, Clone, Default)]
pub struct PanicReason(Arc<Mutex<Option<String>>>);

impl PanicReason {
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A console writer that passes everything through and records the first panic line.
pub struct PanicWatch<W> {
    inner: W,
    line: Vec<u8>,
    reason: PanicReason,
}

impl<W: Write> PanicWatch<W> {
    pub fn new(inner: W, reason: PanicReason) -> Self {
        Self {
            inner,
            line: Vec::new(),
            reason,
        }
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        if let Some((_, why)) = line.split_once(MARKER) {
            let mut slot = self.reason.0.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| why.trim_end().to_string());
        }
        self.line.clear();
    }
}

impl<W: Write> Write for PanicWatch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        for &byte in &buf[..n] {
            match byte {
                b'\n' | b'\r' => self.end_line(),
                _ if self.line.len() < MAX_LINE => self.line.push(byte),
                _ => {}
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_first_panic_reason_and_passes_bytes_through() {
        let reason = PanicReason::default();
        let mut out = PanicWatch::new(Vec::new(), reason.clone());
        let text = "[ 0.5] ok\r\n[    1.234] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n\
                    [ 1.3] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs ]---\r\n\
                    Kernel panic - not syncing: second\n";
        for chunk in text.as_bytes().chunks(7) {
            out.write_all(chunk).unwrap();
        }
        assert_eq!(out.inner, text.as_bytes());
        assert_eq!(
            reason.get().as_deref(),
            Some("VFS: Unable to mount root fs")
        );
    }

    #[test]
    fn ignores_ordinary_output_and_huge_lines() {
        let reason = PanicReason::default();
        let mut out = PanicWatch::new(io::sink(), reason.clone());
        out.write_all(&vec![b'x'; 10 * MAX_LINE]).unwrap();
        out.write_all(b"Kernel panic - not syncing: late\n")
            .unwrap();
        out.write_all(b"echo Kernel panic\n").unwrap();
        assert_eq!(reason.get(), None);
    }
}
