//! The newc ("070701") cpio format that Linux unpacks into its initial rootfs: the one writer
//! behind both the workload spec's archive and the initramfs packer, and a reader for checking
//! archives.
//!
//! An entry is a 110-byte ASCII header ("070701" and thirteen 8-digit hex fields), the
//! NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes. A `TRAILER!!!` entry
//! ends an archive. Offsets here are relative to the archive's start, which must itself sit at a
//! 4-byte boundary of the initrd (see [`crate::protocol::spec_transport`]).

use std::io::{self, Write};

/// The newc magic.
pub const MAGIC: &[u8; 6] = b"070701";
/// The name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Header length: magic and thirteen 8-digit fields.
const HEADER_LEN: usize = 110;

/// File-type bits of a newc `mode` (as in `stat`).
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;

/// One entry's header fields. uid, gid and mtime are always 0 so archives are reproducible.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    pub ino: u32,
    /// File type and permission bits.
    pub mode: u32,
    pub nlink: u32,
    pub filesize: u32,
    /// (major, minor) of a device node.
    pub rdev: (u32, u32),
    pub name: &'a str,
}

/// A writer of newc entries that keeps the 4-byte alignment the format needs.
pub struct Writer<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, written: 0 }
    }

    /// Writes one entry: header, name, data, padding.
    pub fn entry(&mut self, header: &Header<'_>, data: &[u8]) -> io::Result<()> {
        if data.len() != header.filesize as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry {:?}: data is not filesize long", header.name),
            ));
        }
        let namesize = header.name.len() + 1;
        let namesize = u32::try_from(namesize)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry name too long"))?;
        let fields = [
            header.ino,
            header.mode,
            0, // uid
            0, // gid
            header.nlink,
            0, // mtime
            header.filesize,
            0, // devmajor
            0, // devminor
            header.rdev.0,
            header.rdev.1,
            namesize,
            0, // check
        ];
        let mut text = String::with_capacity(HEADER_LEN);
        text.push_str("070701");
        for field in fields {
            text.push_str(&format!("{field:08x}"));
        }
        self.write_all(text.as_bytes())?;
        self.write_all(header.name.as_bytes())?;
        self.write_all(&[0])?;
        self.pad4()?;
        self.write_all(data)?;
        self.pad4()
    }

    /// Writes the `TRAILER!!!` entry and returns the inner writer. The archive's length is then
    /// a multiple of 4.
    pub fn finish(mut self) -> io::Result<W> {
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            filesize: 0,
            rdev: (0, 0),
            name: TRAILER,
        };
        self.entry(&trailer, &[])?;
        Ok(self.inner)
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - self.written % 4) % 4;
        self.write_all(&[0; 3][..pad as usize])
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// An entry read back by [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub mode: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Why [`parse`] refused an archive.
#[derive(Debug, thiserror::Error, displaydoc::Display, PartialEq, Eq)]
pub enum ParseError {
    /// cpio: no newc header at offset {0}
    BadMagic(usize),
    /// cpio: the entry at offset {0} runs past the end of the archive
    Truncated(usize),
    /// cpio: the entry at offset {0} has a malformed header field or name
    BadHeader(usize),
    /// cpio: {0} bytes follow the trailer
    TrailingBytes(usize),
}

/// Reads one newc archive (which must end with its trailer and nothing after it), checking its
/// framing as the kernel would.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, ParseError> {
    let (entries, len) = parse_prefix(bytes)?;
    match bytes.len() - len {
        0 => Ok(entries),
        rest => Err(ParseError::TrailingBytes(rest)),
    }
}

/// Reads the newc archive at the start of `bytes`, up to and including its trailer and padding;
/// returns its entries and its length.
pub fn parse_prefix(bytes: &[u8]) -> Result<(Vec<Entry>, usize), ParseError> {
    let mut entries = Vec::new();
    let mut at = 0;
    loop {
        let header = bytes
            .get(at..at + HEADER_LEN)
            .ok_or(ParseError::Truncated(at))?;
        if &header[..6] != MAGIC {
            return Err(ParseError::BadMagic(at));
        }
        let field = |i: usize| {
            std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .ok()
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .ok_or(ParseError::BadHeader(at))
        };
        let (mode, size, rdev, namesize) =
            (field(1)?, field(6)?, (field(9)?, field(10)?), field(11)?);
        let name_end = at + HEADER_LEN + namesize as usize;
        let name = bytes
            .get(at + HEADER_LEN..name_end)
            .ok_or(ParseError::Truncated(at))?;
        let name = match name.split_last() {
            Some((0, name)) => std::str::from_utf8(name).map_err(|_| ParseError::BadHeader(at))?,
            _ => return Err(ParseError::BadHeader(at)),
        };
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start + size as usize;
        let data = bytes
            .get(data_start..data_end)
            .ok_or(ParseError::Truncated(at))?;
        let next = data_end.next_multiple_of(4);
        if name == TRAILER {
            // The kernel needs no padding after the last trailer; the writer always adds it.
            return Ok((entries, next.min(bytes.len())));
        }
        entries.push(Entry {
            name: name.to_string(),
            mode,
            rdev,
            data: data.to_vec(),
        });
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_it_reads_with_4_byte_framing() {
        let mut w = Writer::new(Vec::new());
        let file = Header {
            ino: 1,
            mode: S_IFREG | 0o644,
            nlink: 1,
            filesize: 5,
            rdev: (0, 0),
            name: "a/b",
        };
        w.entry(&file, b"hello").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            parse(&bytes).unwrap(),
            [Entry {
                name: "a/b".into(),
                mode: S_IFREG | 0o644,
                rdev: (0, 0),
                data: b"hello".to_vec()
            }]
        );
        assert_eq!(
            parse(&bytes[..bytes.len() - 4]),
            Err(ParseError::Truncated(124))
        );
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 4]);
        assert_eq!(parse(&longer), Err(ParseError::TrailingBytes(4)));
        assert!(w_mismatch().is_err());
    }

    fn w_mismatch() -> io::Result<()> {
        let header = Header {
            ino: 1,
            mode: S_IFREG,
            nlink: 1,
            filesize: 2,
            rdev: (0, 0),
            name: "x",
        };
        Writer::new(Vec::new()).entry(&header, b"abc")
    }
}
