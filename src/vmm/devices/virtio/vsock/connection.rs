//! One vsock stream between a guest port and a host Unix socket: its state, the bytes waiting to
//! be written to the host socket, and credit accounting in both directions (virtio 1.2 5.10.6.3).

use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::packet::{Header, HOST_CID, TYPE_STREAM};

/// Receive buffer we advertise to the guest (`buf_alloc`): how many bytes the guest may have in
/// flight towards a host socket. Also the cap on what we hold for a slow host reader.
pub const TX_BUF_SIZE: u32 = 256 * 1024;
/// When the guest's view of our free space drops below this, we send it a credit update.
const CREDIT_LOW_WATER: u32 = 128 * 1024;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A host client asked for it (`CONNECT`); REQUEST sent, waiting for the guest's RESPONSE.
    LocalInit,
    Established,
    /// The host side ended; SHUTDOWN sent to the guest, waiting for its RST.
    Closing,
}

/// Identifies a connection: (host-side port, guest-side port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub local_port: u32,
    pub peer_port: u32,
}

/// Why a connection has to be reset.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("the guest sent {pending} bytes beyond the {TX_BUF_SIZE}-byte credit it was given")]
    CreditExceeded { pending: usize },
    #[error("host socket I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// What a read from the host socket produced.
#[derive(Debug)]
pub enum HostRead {
    Data(Vec<u8>),
    WouldBlock,
    Eof,
}

#[derive(Debug)]
pub struct Connection {
    pub stream: UnixStream,
    pub key: Key,
    pub state: State,
    /// Bytes from the guest not yet accepted by the host socket.
    pending_out: Vec<u8>,
    /// Bytes from the guest written to the host socket (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` the guest last saw from us.
    fwd_cnt_sent: Wrapping<u32>,
    /// Guest's receive buffer size and how much of what we sent it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes we sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// The host socket may have data (edge-triggered epoll: cleared only on EAGAIN).
    pub host_readable: bool,
    /// The guest said it sends no more / receives no more.
    pub peer_shut_send: bool,
    pub peer_shut_rcv: bool,
    /// Close with RST once `pending_out` is flushed (guest shut down both directions).
    pub close_when_flushed: bool,
    /// A CREDIT_REQUEST was sent and not yet answered.
    pub credit_requested: bool,
    /// Listed in the muxer's rx-ready queue (keeps that queue free of duplicates).
    pub in_rx_ready: bool,
    /// The host client closed its socket (EPOLLHUP) / its sending side (read returned EOF).
    pub host_hup: bool,
    pub host_eof: bool,
}

impl Connection {
    pub fn new(stream: UnixStream, key: Key, state: State) -> Self {
        Connection {
            stream,
            key,
            state,
            pending_out: Vec::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            host_readable: false,
            peer_shut_send: false,
            peer_shut_rcv: false,
            close_when_flushed: false,
            credit_requested: false,
            in_rx_ready: false,
            host_hup: false,
            host_eof: false,
        }
    }

    /// Takes the credit fields every guest packet carries.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        self.credit_requested = false;
    }

    /// How many bytes the guest can take now. A guest reporting nonsense (consumed more than we
    /// sent) gets zero rather than a huge number.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// A header for a packet from the host side of this connection to the guest; records the
    /// credit information it carries.
    pub fn header(&mut self, guest_cid: u64, op: u16, flags: u32, len: u32) -> Header {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.rx_cnt += Wrapping(len);
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// True when the guest, going by the last `fwd_cnt` it saw, is about to run out of credit
    /// although we have forwarded more since.
    pub fn needs_credit_update(&self) -> bool {
        let unseen = (self.fwd_cnt - self.fwd_cnt_sent).0;
        let guest_view_used = unseen.saturating_add(self.pending_out.len() as u32);
        unseen > 0 && TX_BUF_SIZE.saturating_sub(guest_view_used) < CREDIT_LOW_WATER
    }

    /// Data from the guest for the host socket: written now if possible, otherwise kept (within
    /// the credit we gave the guest).
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), ConnError> {
        let pending = self.pending_out.len() + data.len();
        if pending > TX_BUF_SIZE as usize {
            return Err(ConnError::CreditExceeded { pending });
        }
        if !self.pending_out.is_empty() {
            self.pending_out.extend_from_slice(data);
            return self.flush();
        }
        // Nothing is queued ahead of it, so the packet goes straight to the socket; only what
        // the socket does not take now is copied.
        let n = write_now(&mut self.stream, &mut self.fwd_cnt, data)?;
        self.pending_out.extend_from_slice(&data[n..]);
        Ok(())
    }

    /// Writes as much pending data as the host socket takes.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        let n = write_now(&mut self.stream, &mut self.fwd_cnt, &self.pending_out)?;
        self.pending_out.drain(..n);
        Ok(())
    }

    pub fn has_pending_out(&self) -> bool {
        !self.pending_out.is_empty()
    }

    /// Reads at most `max` bytes the guest has credit for.
    pub fn read_from_host(&mut self, max: usize) -> Result<HostRead, ConnError> {
        let mut buf = vec![0u8; max];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Ok(HostRead::Eof),
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(HostRead::Data(buf));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return Ok(HostRead::WouldBlock);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Writes as much of `data` as `stream` takes without blocking and counts it in `fwd_cnt`;
/// returns how many bytes that was.
fn write_now(
    stream: &mut UnixStream,
    fwd_cnt: &mut Wrapping<u32>,
    data: &[u8],
) -> Result<usize, ConnError> {
    let mut written = 0;
    while written < data.len() {
        match stream.write(&data[written..]) {
            Ok(0) => return Err(ConnError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                written += n;
                // n <= data.len() <= TX_BUF_SIZE, so it fits in u32.
                *fwd_cnt += Wrapping(n as u32);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        let key = Key {
            local_port: 1024,
            peer_port: 5000,
        };
        (Connection::new(a, key, State::Established), b)
    }

    #[test]
    fn peer_credit_follows_what_the_guest_consumed() {
        let (mut c, _peer) = pair();
        let mut hdr = Header {
            buf_alloc: 1000,
            ..Header::default()
        };
        c.update_peer_credit(&hdr);
        assert_eq!(c.peer_credit(), 1000);
        c.header(3, super::super::packet::op::RW, 0, 600);
        assert_eq!(c.peer_credit(), 400);
        hdr.fwd_cnt = 600;
        c.update_peer_credit(&hdr);
        assert_eq!(c.peer_credit(), 1000);
        // A guest claiming to have consumed more than it got earns no credit.
        hdr.fwd_cnt = 5000;
        c.update_peer_credit(&hdr);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn guest_exceeding_its_credit_is_refused() {
        let (mut c, _peer) = pair();
        // Nobody reads the peer end, so the socket buffer fills and data piles up in pending_out.
        let chunk = vec![7u8; 64 * 1024];
        let mut result = Ok(());
        for _ in 0..64 {
            result = c.send_to_host(&chunk);
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(ConnError::CreditExceeded { .. })));
    }

    #[test]
    fn credit_update_is_due_once_the_guest_view_runs_low() {
        let (mut c, mut peer) = pair();
        peer.set_nonblocking(true).expect("nonblocking");
        c.send_to_host(&vec![1u8; 100 * 1024]).expect("send");
        // Drain the peer so the connection can forward everything.
        let mut sink = vec![0u8; 256 * 1024];
        let _ = peer.read(&mut sink);
        c.flush().expect("flush");
        c.send_to_host(&vec![1u8; 60 * 1024]).expect("send");
        let _ = peer.read(&mut sink);
        c.flush().expect("flush");
        assert!(c.needs_credit_update());
        c.header(3, super::super::packet::op::CREDIT_UPDATE, 0, 0);
        assert!(!c.needs_credit_update());
    }
}
