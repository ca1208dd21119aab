//! The virtio-vsock packet (virtio 1.2, 5.10.6): the 44-byte little-endian header and moving
//! header plus payload through descriptor chains. Guest chains are checked here: a short header,
//! a header the device cannot read, a length beyond the chain or beyond [`MAX_PAYLOAD`] are
//! errors, never panics or allocations on the guest's word.

use std::io::{self, Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};

use crate::virtio::GuestMemory;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The host's CID (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;
/// The only socket type the device speaks.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload the device takes from or hands to the guest in one packet (Linux's
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Packet operations (`op` field).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flags: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum PacketError {
    /// vsock: unusable descriptor chain: {0}
    Chain(virtio_queue::Error),
    /// vsock: the chain's readable part is shorter than the 44-byte packet header
    ShortHeader,
    /// vsock: packet claims a {0}-byte payload, more than the 64 KiB the device accepts
    TooLong(u32),
    /// vsock: packet claims a {claimed}-byte payload but its chain holds {available} bytes
    Truncated { claimed: u32, available: usize },
    /// vsock: cannot read the packet payload: {0}
    Payload(io::Error),
}

/// `struct virtio_vsock_hdr`, host-endian.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Reads a guest packet from a TX chain: the header, and for OP_RW its payload into `payload`
/// (at most [`MAX_PAYLOAD`] bytes). Returns the header and the payload length. Payloads of other
/// operations are ignored.
pub fn read_packet(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    payload: &mut [u8],
) -> Result<(Header, usize), PacketError> {
    let mut reader: Reader = chain.reader(mem).map_err(PacketError::Chain)?;
    let mut raw = [0u8; HDR_LEN];
    reader
        .read_exact(&mut raw)
        .map_err(|_| PacketError::ShortHeader)?;
    let hdr = Header::from_bytes(&raw);
    if hdr.op != op::RW {
        return Ok((hdr, 0));
    }
    let len = hdr.len as usize;
    let Some(buf) = payload.get_mut(..len).filter(|_| len <= MAX_PAYLOAD) else {
        return Err(PacketError::TooLong(hdr.len));
    };
    if len > reader.available_bytes() {
        return Err(PacketError::Truncated {
            claimed: hdr.len,
            available: reader.available_bytes(),
        });
    }
    reader.read_exact(buf).map_err(PacketError::Payload)?;
    Ok((hdr, len))
}

/// Writes a packet for the guest into an RX chain's writer; returns the bytes written. The
/// caller has checked that header and payload fit.
pub fn write_packet(writer: &mut Writer, hdr: &Header, payload: &[u8]) -> io::Result<u32> {
    writer.write_all(&hdr.to_bytes())?;
    writer.write_all(payload)?;
    // Payloads are at most MAX_PAYLOAD bytes.
    Ok((HDR_LEN + payload.len()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let hdr = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 0x1234,
            dst_port: 80,
            len: 5,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: SHUTDOWN_BOTH,
            buf_alloc: 0x4_0000,
            fwd_cnt: 9,
        };
        let raw = hdr.to_bytes();
        assert_eq!(&raw[0..8], &3u64.to_le_bytes());
        assert_eq!(&raw[30..32], &op::RW.to_le_bytes());
        assert_eq!(Header::from_bytes(&raw), hdr);
    }
}
