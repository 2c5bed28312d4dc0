//! The virtio-vsock packet header (`struct virtio_vsock_hdr`, virtio 1.2 5.10.6) and reading a
//! whole packet out of a guest descriptor chain with its lengths checked.

use super::super::chain::Buf;
use super::super::cursor::Cursor;
use super::super::GuestMemory;

/// Size of the little-endian, packed header.
pub const HEADER_LEN: usize = 44;
/// Well-known CID of the host.
pub const HOST_CID: u64 = 2;
/// Stream sockets; the only type offered (no VIRTIO_VSOCK_F_SEQPACKET).
pub const TYPE_STREAM: u16 = 1;
/// Largest payload accepted from or sent to the guest in one packet (Linux uses 64 KiB too).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Operations.
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Why a packet from the guest was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("packet has {0} readable bytes, less than the 44-byte header")]
    ShortHeader(u64),
    #[error("header announces {} payload bytes, more than the 64 KiB limit", .0.len)]
    PayloadTooLong(Header),
    #[error("header announces {} payload bytes but the buffers hold only {available}", header.len)]
    PayloadMissing { header: Header, available: u64 },
    #[error("guest memory access failed while reading the packet")]
    Memory,
}

/// A decoded header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

impl PacketError {
    /// The header, when it could be read: the connection it names gets a reset.
    pub fn header(&self) -> Option<&Header> {
        match self {
            PacketError::PayloadTooLong(h) | PacketError::PayloadMissing { header: h, .. } => {
                Some(h)
            }
            _ => None,
        }
    }
}

/// Reads a packet from the device-readable buffers of a tx chain. The payload length comes from
/// the guest-written header, so it is checked against the 64 KiB limit and against what the
/// buffers really hold before anything is allocated.
pub fn read_packet(mem: &GuestMemory, readable: &[Buf]) -> Result<(Header, Vec<u8>), PacketError> {
    let mut cursor = Cursor::new(mem, readable);
    if cursor.remaining() < HEADER_LEN as u64 {
        return Err(PacketError::ShortHeader(cursor.remaining()));
    }
    let mut raw = [0u8; HEADER_LEN];
    cursor
        .read_exact(&mut raw)
        .map_err(|_| PacketError::Memory)?;
    let header = Header::decode(&raw);
    if header.len as usize > MAX_PAYLOAD {
        return Err(PacketError::PayloadTooLong(header));
    }
    if u64::from(header.len) > cursor.remaining() {
        return Err(PacketError::PayloadMissing {
            header,
            available: cursor.remaining(),
        });
    }
    let mut payload = vec![0u8; header.len as usize];
    cursor
        .read_exact(&mut payload)
        .map_err(|_| PacketError::Memory)?;
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::testing::memory;
    use vm_memory::{Bytes, GuestAddress};

    fn sample() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 52,
            len: 5,
            kind: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 17,
        }
    }

    #[test]
    fn header_round_trips_with_the_wire_layout() {
        let h = sample();
        let b = h.encode();
        assert_eq!(&b[16..20], &1234u32.to_le_bytes());
        assert_eq!(&b[30..32], &op::RW.to_le_bytes());
        assert_eq!(Header::decode(&b), h);
    }

    #[test]
    fn packet_split_over_buffers_is_read() {
        let mem = memory();
        let mut h = sample();
        h.len = 5;
        mem.write_slice(&h.encode(), GuestAddress(0x1000))
            .expect("hdr");
        mem.write_slice(b"hello", GuestAddress(0x2000))
            .expect("payload");
        let bufs = [
            Buf {
                addr: GuestAddress(0x1000),
                len: 44,
            },
            Buf {
                addr: GuestAddress(0x2000),
                len: 4096,
            },
        ];
        let (got, payload) = read_packet(&mem, &bufs).expect("valid packet");
        assert_eq!(got, h);
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn bad_headers_are_rejected_without_allocating() {
        let mem = memory();
        let short = [Buf {
            addr: GuestAddress(0x1000),
            len: 20,
        }];
        assert_eq!(
            read_packet(&mem, &short).unwrap_err(),
            PacketError::ShortHeader(20)
        );

        let mut h = sample();
        h.len = u32::MAX;
        mem.write_slice(&h.encode(), GuestAddress(0x1000))
            .expect("hdr");
        let bufs = [Buf {
            addr: GuestAddress(0x1000),
            len: 4096,
        }];
        assert_eq!(
            read_packet(&mem, &bufs).unwrap_err(),
            PacketError::PayloadTooLong(h)
        );

        h.len = 8000;
        mem.write_slice(&h.encode(), GuestAddress(0x1000))
            .expect("hdr");
        assert_eq!(
            read_packet(&mem, &bufs).unwrap_err(),
            PacketError::PayloadMissing {
                header: h,
                available: 4096 - 44
            }
        );
    }
}
