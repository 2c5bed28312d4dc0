//! The host side of virtio-vsock in Firecracker's hybrid model: a Unix listener for host clients
//! (`CONNECT <port>\n` -> `OK <hostport>\n`), Unix sockets `<path>_<port>` for connections the guest
//! opens, and the table of live connections. Turns guest packets into socket I/O and socket events
//! into packets for the guest's rx queue.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::EventSet;

use super::connection::{ConnError, Connection, HostRead, Key, State, TX_BUF_SIZE};
use super::host::{connect_nonblocking, parse_connect};
use super::packet::{op, Header, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use crate::vmm::devices::virtio::worker::EventLoop;

/// epoll token of the host listener.
pub const LISTENER_TOKEN: u64 = 3;
/// Tokens at or above this are host sockets: token = base + fd.
pub const STREAM_TOKEN_BASE: u64 = 1 << 32;

/// Most connections at once; a guest opening more gets RST (bounds host fds and memory). Each
/// connection may hold up to its advertised receive buffer of guest bytes that the host side has
/// not taken yet, so this also caps what one guest can make the VMM buffer:
/// [`MAX_BUFFERED_BYTES`]. The daemon needs a handful per VM (its agent pool, a few relays).
const MAX_CONNECTIONS: usize = 128;
/// Most guest bytes one VM's vsock device may hold for slow host readers.
pub const MAX_BUFFERED_BYTES: usize = 32 << 20;
const _: () = assert!(MAX_CONNECTIONS * TX_BUF_SIZE as usize <= MAX_BUFFERED_BYTES);
/// Most host clients that connected but have not finished their `CONNECT` line.
const MAX_HANDSHAKES: usize = 64;
/// Longest accepted `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// Most data-less packets waiting for guest rx buffers. Past it the device stops taking tx packets
/// (which may need an answer) until the guest posts rx buffers: a guest cannot grow host memory by
/// sending packets while never receiving.
pub const MAX_CONTROL_BACKLOG: usize = 128;
/// Host ports for host-initiated connections are taken from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// A host client that has not sent its full `CONNECT` line yet.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// A packet owed to the guest that carries no data.
#[derive(Debug, Clone, Copy)]
enum Control {
    /// For a connection in the table (skipped if it is gone by then).
    Conn { key: Key, op: u16 },
    /// A reset answering a packet of a connection we do not have.
    Rst {
        src_cid: u64,
        src_port: u32,
        dst_port: u32,
    },
}

#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    handshakes: HashMap<RawFd, Handshake>,
    conns: HashMap<Key, Connection>,
    fd_keys: HashMap<RawFd, Key>,
    control: VecDeque<Control>,
    rx_ready: VecDeque<Key>,
    next_local_port: u32,
}

/// A reset packet for the guest; RST carries no credit information.
fn rst_header(src_cid: u64, guest_cid: u64, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid,
        dst_cid: guest_cid,
        src_port,
        dst_port,
        kind: TYPE_STREAM,
        op: op::RST,
        ..Header::default()
    }
}

fn stream_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED
}

impl Muxer {
    /// Starts serving `listener` (non-blocking, already bound to `uds_path`).
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        listener: UnixListener,
        event_loop: &EventLoop,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        event_loop.add(listener.as_raw_fd(), LISTENER_TOKEN, EventSet::IN)?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            fd_keys: HashMap::new(),
            control: VecDeque::new(),
            rx_ready: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// Too many answers are waiting for rx buffers to take more guest packets.
    pub fn backlog_full(&self) -> bool {
        self.control.len() >= MAX_CONTROL_BACKLOG
    }

    /// Something is waiting to go to the guest.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.rx_ready.is_empty()
    }

    /// A host fd or the listener became ready.
    pub fn handle_event(&mut self, event_loop: &EventLoop, token: u64, events: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept_clients(event_loop);
            return;
        }
        let Some(fd) = token
            .checked_sub(STREAM_TOKEN_BASE)
            .and_then(|fd| RawFd::try_from(fd).ok())
        else {
            return;
        };
        if self.handshakes.contains_key(&fd) {
            self.progress_handshake(fd);
            return;
        }
        let Some(&key) = self.fd_keys.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::HANG_UP) || events.contains(EventSet::ERROR) {
            conn.host_hup = true;
        }
        if events
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            conn.host_readable = true;
            self.mark_rx_ready(key);
        }
        if events.contains(EventSet::OUT) {
            self.flush_to_host(key);
        }
    }

    fn accept_clients(&mut self, event_loop: &EventLoop) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the client stays in the backlog for a later try.
                    tracing::warn!("vsock: accepting a host client failed: {e}");
                    return;
                }
            };
            if self.handshakes.len() >= MAX_HANDSHAKES {
                tracing::warn!("vsock: too many host clients mid-handshake; dropping one");
                continue;
            }
            let fd = stream.as_raw_fd();
            let registered = stream
                .set_nonblocking(true)
                .and_then(|()| event_loop.add(fd, STREAM_TOKEN_BASE + fd as u64, stream_events()));
            if let Err(e) = registered {
                tracing::warn!("vsock: cannot watch a host client: {e}");
                continue;
            }
            self.handshakes.insert(
                fd,
                Handshake {
                    stream,
                    line: Vec::new(),
                },
            );
            // Edge-triggered: the line may already be there.
            self.progress_handshake(fd);
        }
    }

    /// Reads the `CONNECT` line one byte at a time so that no byte meant for the guest is consumed.
    fn progress_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err("client closed before finishing the line"),
                Ok(_) if byte[0] == b'\n' => break parse_connect(&hs.line),
                Ok(_) if hs.line.len() >= MAX_CONNECT_LINE => break Err("line too long"),
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break Err("read error"),
            }
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let peer_port = match port {
            Ok(port) => port,
            Err(why) => {
                tracing::warn!("vsock: host client refused: {why} (expected `CONNECT <port>\\n`)");
                return;
            }
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!("vsock: connection limit reached; host client refused");
            return;
        }
        let Some(local_port) = self.allocate_local_port() else {
            tracing::warn!("vsock: no free host port; host client refused");
            return;
        };
        let key = Key {
            local_port,
            peer_port,
        };
        self.fd_keys.insert(fd, key);
        self.conns
            .insert(key, Connection::new(hs.stream, key, State::LocalInit));
        self.queue_conn(key, op::REQUEST);
    }

    fn allocate_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.local_port == port) {
                return Some(port);
            }
        }
        None
    }

    fn mark_rx_ready(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if !conn.in_rx_ready {
                conn.in_rx_ready = true;
                self.rx_ready.push_back(key);
            }
        }
    }

    /// Drops a connection (closing its host socket) and tells the guest with RST.
    fn reset(&mut self, key: Key) {
        self.remove(key);
        self.queue_rst(key);
    }

    /// Queues a data-less packet of connection `key` for the guest.
    fn queue_conn(&mut self, key: Key, op: u16) {
        self.control.push_back(Control::Conn { key, op });
    }

    /// Queues a reset from host port `key.local_port` to guest port `key.peer_port`, for a
    /// connection that is gone or was never made.
    fn queue_rst(&mut self, key: Key) {
        self.control.push_back(Control::Rst {
            src_cid: HOST_CID,
            src_port: key.local_port,
            dst_port: key.peer_port,
        });
    }

    fn remove(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            self.fd_keys.remove(&conn.stream.as_raw_fd());
        }
    }

    fn flush_to_host(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Err(e) = conn.flush() {
            tracing::debug!("vsock: host socket of port {}: {e}", key.local_port);
            self.reset(key);
            return;
        }
        if conn.has_pending_out() {
            return;
        }
        if conn.close_when_flushed {
            self.reset(key);
            return;
        }
        if conn.peer_shut_send {
            // The guest sends nothing more: let the host client see EOF.
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
        if conn.needs_credit_update() {
            self.queue_conn(key, op::CREDIT_UPDATE);
        }
    }

    /// A packet the guest put on its tx queue.
    pub fn handle_guest_packet(&mut self, event_loop: &EventLoop, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid {
            tracing::debug!(
                "vsock: packet with spoofed source CID {} dropped",
                hdr.src_cid
            );
            return;
        }
        let key = Key {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.dst_cid != HOST_CID || hdr.kind != TYPE_STREAM {
            if hdr.op != op::RST {
                self.control.push_back(Control::Rst {
                    src_cid: hdr.dst_cid,
                    src_port: hdr.dst_port,
                    dst_port: hdr.src_port,
                });
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match hdr.op {
                op::REQUEST => self.connect_for_guest(event_loop, key, hdr),
                op::RST => {}
                _ => self.queue_rst(key),
            }
            return;
        };
        let credit_before = conn.peer_credit();
        conn.update_peer_credit(hdr);
        if conn.peer_credit() > credit_before && conn.host_readable {
            self.mark_rx_ready(key);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        match (hdr.op, conn.state) {
            (op::RESPONSE, State::LocalInit) => {
                let ok = format!("OK {}\n", key.local_port);
                // A fresh socket's buffer always takes these few bytes; if not, give up on it.
                if conn.stream.write_all(ok.as_bytes()).is_err() {
                    self.reset(key);
                    return;
                }
                conn.state = State::Established;
                // Bytes the client sent after its CONNECT line are waiting already.
                conn.host_readable = true;
                self.mark_rx_ready(key);
            }
            (op::RW, State::Established) if !conn.peer_shut_send => {
                match conn.send_to_host(payload) {
                    Ok(()) => {
                        if conn.needs_credit_update() {
                            self.queue_conn(key, op::CREDIT_UPDATE);
                        }
                    }
                    Err(ConnError::CreditExceeded { pending }) => {
                        tracing::debug!("vsock: guest overran its credit ({pending} bytes); reset");
                        self.reset(key);
                    }
                    Err(ConnError::Io(e)) => {
                        tracing::debug!("vsock: host socket write failed: {e}; reset");
                        self.reset(key);
                    }
                }
            }
            (op::CREDIT_UPDATE, _) => {}
            (op::CREDIT_REQUEST, _) => self.queue_conn(key, op::CREDIT_UPDATE),
            (op::SHUTDOWN, State::Established | State::Closing) => {
                conn.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                conn.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                if conn.peer_shut_send && conn.peer_shut_rcv {
                    // Both directions closed: answer with RST once our buffer reached the host.
                    conn.close_when_flushed = true;
                }
                self.flush_to_host(key);
            }
            (op::RST, _) => self.remove(key),
            _ => {
                tracing::debug!("vsock: op {} in state {:?}; reset", hdr.op, conn.state);
                self.reset(key);
            }
        }
    }

    /// The guest opens a connection to host port `key.local_port`: connect to `<path>_<port>`.
    fn connect_for_guest(&mut self, event_loop: &EventLoop, key: Key, hdr: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::debug!("vsock: connection limit reached; guest connection refused");
            return self.queue_rst(key);
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connect to {path:?}: {e}");
                return self.queue_rst(key);
            }
        };
        let fd = stream.as_raw_fd();
        let registered = event_loop.add(fd, STREAM_TOKEN_BASE + fd as u64, stream_events());
        if let Err(e) = registered {
            tracing::warn!("vsock: cannot watch host socket {path:?}: {e}");
            return self.queue_rst(key);
        }
        let mut conn = Connection::new(stream, key, State::Established);
        conn.update_peer_credit(hdr);
        self.fd_keys.insert(fd, key);
        self.conns.insert(key, conn);
        self.queue_conn(key, op::RESPONSE);
    }

    /// The next packet for the guest, with at most `max_payload` payload bytes; `None` when there
    /// is nothing to send right now.
    pub fn next_rx(&mut self, max_payload: usize) -> Option<(Header, Vec<u8>)> {
        while let Some(item) = self.control.pop_front() {
            match item {
                Control::Rst {
                    src_cid,
                    src_port,
                    dst_port,
                } => {
                    let hdr = rst_header(src_cid, self.guest_cid, src_port, dst_port);
                    return Some((hdr, Vec::new()));
                }
                Control::Conn { key, op } => {
                    if let Some(conn) = self.conns.get_mut(&key) {
                        return Some((conn.header(self.guest_cid, op, 0, 0), Vec::new()));
                    }
                }
            }
        }
        while let Some(key) = self.rx_ready.pop_front() {
            if let Some(packet) = self.read_host_data(key, max_payload) {
                return Some(packet);
            }
        }
        None
    }

    /// Moves host bytes of one connection into a packet, if it has any and the guest has room.
    fn read_host_data(&mut self, key: Key, max_payload: usize) -> Option<(Header, Vec<u8>)> {
        let guest_cid = self.guest_cid;
        let conn = self.conns.get_mut(&key)?;
        conn.in_rx_ready = false;
        if conn.state != State::Established || !conn.host_readable || conn.host_eof {
            return None;
        }
        if conn.peer_shut_rcv {
            // The guest takes no more data: drain and drop what the host sends.
            let mut sink = [0u8; 4096];
            while let Ok(n) = conn.stream.read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
            conn.host_readable = false;
            return None;
        }
        let credit = conn.peer_credit() as usize;
        if credit == 0 {
            if conn.credit_requested {
                return None;
            }
            conn.credit_requested = true;
            return Some((conn.header(guest_cid, op::CREDIT_REQUEST, 0, 0), Vec::new()));
        }
        match conn.read_from_host(credit.min(max_payload)) {
            Ok(HostRead::Data(data)) => {
                // usize -> u32: data.len() <= max_payload <= 64 KiB.
                let hdr = conn.header(guest_cid, op::RW, 0, data.len() as u32);
                self.mark_rx_ready(key);
                Some((hdr, data))
            }
            Ok(HostRead::WouldBlock) => None,
            Ok(HostRead::Eof) => {
                conn.host_eof = true;
                conn.host_readable = false;
                let flags = if conn.host_hup {
                    conn.state = State::Closing;
                    SHUTDOWN_SEND | SHUTDOWN_RCV
                } else {
                    SHUTDOWN_SEND
                };
                Some((conn.header(guest_cid, op::SHUTDOWN, flags, 0), Vec::new()))
            }
            Err(e) => {
                tracing::debug!("vsock: host socket read failed: {e}; reset");
                self.remove(key);
                let hdr = rst_header(HOST_CID, guest_cid, key.local_port, key.peer_port);
                Some((hdr, Vec::new()))
            }
        }
    }

    /// A guest packet whose payload could not be read: reset the connection it names.
    pub fn reject_packet(&mut self, hdr: &Header) {
        if hdr.src_cid != self.guest_cid {
            return;
        }
        let key = Key {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.conns.contains_key(&key) {
            self.reset(key);
        } else if hdr.op != op::RST {
            self.queue_rst(key);
        }
    }
}

#[cfg(test)]
#[path = "muxer_fuzz.rs"]
mod fuzz;
