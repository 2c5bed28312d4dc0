//! The vsock device driven through the MMIO transport by a test "guest driver", against real Unix
//! sockets on the host side.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

use super::packet::{op, Header, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::vmm::devices::virtio::testing::*;
use crate::vmm::devices::virtio::MmioTransport;

const GUEST_CID: u32 = 42;
const RX_BASE: u64 = 0x10_0000;
const RX_BUF: u32 = 0x1000;
const TX_SLOT: u64 = 0x40_0000;
const TIMEOUT: Duration = Duration::from_secs(5);

/// The guest side: posts rx buffers, sends packets, reads what the device delivered.
struct Guest<'a> {
    mem: &'a GuestMemory,
    rxq: MockSplitQueue<'a, GuestMemory>,
    txq: MockSplitQueue<'a, GuestMemory>,
    _evq: MockSplitQueue<'a, GuestMemory>,
    t: MmioTransport,
    rx_next_desc: u16,
    rx_seen: u16,
    tx_next_desc: u16,
    tx_sent: u16,
    _dir: TempDir,
    path: PathBuf,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMemory) -> Self {
        let dir = TempDir::new_with_prefix("/tmp/deskd-vsock-test-").expect("temp dir");
        let path = dir.as_path().join("v.sock");
        let dev = Vsock::new(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: path.clone(),
        })
        .expect("vsock device");
        let rxq = mock_queue(mem, 0, 256);
        let txq = mock_queue(mem, 1, 256);
        let evq = mock_queue(mem, 2, 256);
        let (t, _irq) = activate(Box::new(dev), mem, &[&rxq, &txq, &evq], 256);
        let mut g = Guest {
            mem,
            rxq,
            txq,
            _evq: evq,
            t,
            rx_next_desc: 0,
            rx_seen: 0,
            tx_next_desc: 0,
            tx_sent: 0,
            _dir: dir,
            path,
        };
        g.post_rx(16);
        g
    }

    fn post_rx(&mut self, count: u16) {
        for _ in 0..count {
            let addr = RX_BASE + u64::from(self.rx_next_desc) * u64::from(RX_BUF);
            self.rx_next_desc = add_chain(&self.rxq, self.rx_next_desc, &[(addr, RX_BUF, true)]);
        }
        write_reg(&mut self.t, 0x50, 0);
    }

    fn header(&self, op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
        Header {
            src_cid: u64::from(GUEST_CID),
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 256 * 1024,
            fwd_cnt: 0,
        }
    }

    /// Sends raw bytes as one tx chain of `bufs` (address, length) pairs and waits for it.
    fn send_raw(&mut self, bytes: &[u8], bufs: &[TestBuf]) {
        self.mem
            .write_slice(bytes, GuestAddress(TX_SLOT))
            .expect("tx bytes");
        self.tx_next_desc = add_chain(&self.txq, self.tx_next_desc, bufs);
        write_reg(&mut self.t, 0x50, 1);
        self.tx_sent += 1;
        assert!(
            wait_used(self.mem, &self.txq, self.tx_sent),
            "tx not consumed"
        );
    }

    fn send(&mut self, hdr: Header, payload: &[u8]) {
        let mut bytes = hdr.encode().to_vec();
        bytes.extend_from_slice(payload);
        let len = bytes.len() as u32;
        self.send_raw(&bytes, &[(TX_SLOT, len, false)]);
    }

    /// The next packet the device delivered into an rx buffer.
    fn recv(&mut self) -> (Header, Vec<u8>) {
        assert!(
            wait_used(self.mem, &self.rxq, self.rx_seen + 1),
            "no rx packet within 5 s"
        );
        let (id, len) = used_elem(self.mem, &self.rxq, self.rx_seen);
        self.rx_seen += 1;
        let addr = RX_BASE + u64::from(id) * u64::from(RX_BUF);
        let mut raw = [0u8; HEADER_LEN];
        self.mem
            .read_slice(&mut raw, GuestAddress(addr))
            .expect("rx hdr");
        let hdr = Header::decode(&raw);
        assert_eq!(
            len,
            HEADER_LEN as u32 + hdr.len,
            "used length matches header"
        );
        let mut payload = vec![0u8; hdr.len as usize];
        self.mem
            .read_slice(&mut payload, GuestAddress(addr + HEADER_LEN as u64))
            .expect("rx payload");
        (hdr, payload)
    }

    fn no_rx_within(&self, wait: Duration) -> bool {
        std::thread::sleep(wait);
        used_idx(self.mem, &self.rxq) == self.rx_seen
    }

    /// A host client connects and asks for guest port `port`; returns it and the REQUEST.
    fn host_connect(&mut self, port: u32) -> (UnixStream, Header) {
        let mut client = UnixStream::connect(&self.path).expect("connect to vsock socket");
        client.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        client
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .expect("connect line");
        let (req, _) = self.recv();
        assert_eq!(req.op, op::REQUEST);
        assert_eq!(req.dst_port, port);
        assert_eq!(req.src_cid, HOST_CID);
        assert_eq!(req.dst_cid, u64::from(GUEST_CID));
        (client, req)
    }
}

fn read_line(stream: &UnixStream) -> String {
    let mut line = String::new();
    // One byte at a time so no stream data is swallowed into a buffer we then drop.
    let mut byte = [0u8; 1];
    let mut s = stream;
    while s.read(&mut byte).expect("read line") == 1 {
        line.push(byte[0] as char);
        if byte[0] == b'\n' {
            break;
        }
    }
    line
}

#[test]
fn host_initiated_connection_carries_data_both_ways_and_closes() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut client, req) = g.host_connect(1024);
    // Bytes sent right after the CONNECT line must not be lost.
    client.write_all(b"early").expect("early data");
    g.send(g.header(op::RESPONSE, 1024, req.src_port, 0), &[]);
    assert_eq!(read_line(&client), format!("OK {}\n", req.src_port));

    let (pkt, data) = g.recv();
    assert_eq!(
        (pkt.op, pkt.src_port, pkt.dst_port),
        (op::RW, req.src_port, 1024)
    );
    assert_eq!(data, b"early");

    client.write_all(b"ping").expect("host write");
    let (pkt, data) = g.recv();
    assert_eq!(pkt.op, op::RW);
    assert_eq!(data, b"ping");

    g.send(g.header(op::RW, 1024, req.src_port, 4), b"pong");
    let mut got = [0u8; 4];
    client.read_exact(&mut got).expect("host read");
    assert_eq!(&got, b"pong");

    // The host client closes: the guest is told the host will neither send nor receive.
    drop(client);
    let (pkt, _) = g.recv();
    assert_eq!(pkt.op, op::SHUTDOWN);
    assert_eq!(pkt.flags, SHUTDOWN_SEND | SHUTDOWN_RCV);
    g.send(g.header(op::RST, 1024, req.src_port, 0), &[]);
}

#[test]
fn guest_initiated_connection_reaches_the_port_socket() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut port_path = g.path.clone().into_os_string();
    port_path.push("_52");
    let listener = UnixListener::bind(&port_path).expect("port listener");

    g.send(g.header(op::REQUEST, 5000, 52, 0), &[]);
    let (pkt, _) = g.recv();
    assert_eq!(
        (pkt.op, pkt.src_port, pkt.dst_port),
        (op::RESPONSE, 52, 5000)
    );
    let (mut server, _) = listener.accept().expect("accept");
    server.set_read_timeout(Some(TIMEOUT)).expect("timeout");

    g.send(g.header(op::RW, 5000, 52, 11), b"hello world");
    let mut got = [0u8; 11];
    server.read_exact(&mut got).expect("server read");
    assert_eq!(&got, b"hello world");

    server.write_all(b"reply").expect("server write");
    let (pkt, data) = g.recv();
    assert_eq!((pkt.op, data.as_slice()), (op::RW, &b"reply"[..]));

    // The guest closes both directions: the host sees EOF, the guest gets RST.
    let mut shut = g.header(op::SHUTDOWN, 5000, 52, 0);
    shut.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    g.send(shut, &[]);
    let (pkt, _) = g.recv();
    assert_eq!(pkt.op, op::RST);
    let mut rest = Vec::new();
    BufReader::new(&server).read_to_end(&mut rest).expect("EOF");
    assert!(rest.is_empty());
}

#[test]
fn connection_to_a_port_nobody_listens_on_is_reset() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.send(g.header(op::REQUEST, 5000, 77, 0), &[]);
    let (pkt, _) = g.recv();
    assert_eq!((pkt.op, pkt.src_port, pkt.dst_port), (op::RST, 77, 5000));
}

#[test]
fn packets_for_unknown_connections_get_rst() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.send(g.header(op::RW, 6000, 1234, 3), b"abc");
    let (pkt, _) = g.recv();
    assert_eq!((pkt.op, pkt.src_port, pkt.dst_port), (op::RST, 1234, 6000));
    // An RST for an unknown connection is not answered (no RST storms).
    g.send(g.header(op::RST, 6000, 1234, 0), &[]);
    assert!(g.no_rx_within(Duration::from_millis(100)));
}

#[test]
fn bad_headers_are_dropped_and_the_device_keeps_working() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    // Too short for a header.
    g.send_raw(&[0u8; 10], &[(TX_SLOT, 10, false)]);
    // Length far beyond the 64 KiB limit.
    let mut huge = g.header(op::RW, 6000, 1234, u32::MAX);
    huge.len = u32::MAX;
    g.send_raw(&huge.encode(), &[(TX_SLOT, 44, false)]);
    let (pkt, _) = g.recv();
    assert_eq!(
        pkt.op,
        op::RST,
        "the connection named by a bad packet is reset"
    );
    // Length larger than the buffers.
    let lying = g.header(op::RW, 6000, 1234, 1000);
    g.send_raw(&lying.encode(), &[(TX_SLOT, 100, false)]);
    let (pkt, _) = g.recv();
    assert_eq!(pkt.op, op::RST);
    // Wrong socket type, and a spoofed source CID.
    let mut dgram = g.header(op::REQUEST, 6000, 52, 0);
    dgram.kind = 2;
    g.send(dgram, &[]);
    let (pkt, _) = g.recv();
    assert_eq!(pkt.op, op::RST);
    let mut spoofed = g.header(op::REQUEST, 6000, 52, 0);
    spoofed.src_cid = 99;
    g.send(spoofed, &[]);
    assert!(g.no_rx_within(Duration::from_millis(100)));
    // Still alive: a normal connection works.
    assert_eq!(read_reg(&mut g.t, 0x70) & 0x40, 0, "not marked broken");
    let (client, req) = g.host_connect(2000);
    g.send(g.header(op::RESPONSE, 2000, req.src_port, 0), &[]);
    assert_eq!(read_line(&client), format!("OK {}\n", req.src_port));
}

#[test]
fn host_data_respects_guest_credit() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (mut client, req) = g.host_connect(1024);
    let mut resp = g.header(op::RESPONSE, 1024, req.src_port, 0);
    resp.buf_alloc = 1000;
    g.send(resp, &[]);
    assert_eq!(read_line(&client), format!("OK {}\n", req.src_port));

    client.write_all(&[9u8; 3000]).expect("host write");
    let mut received = 0;
    while received < 1000 {
        let (pkt, data) = g.recv();
        assert_eq!(pkt.op, op::RW);
        received += data.len();
    }
    assert_eq!(received, 1000, "never more than the credit");
    let (pkt, _) = g.recv();
    assert_eq!(pkt.op, op::CREDIT_REQUEST);
    assert!(g.no_rx_within(Duration::from_millis(100)));

    // The guest consumed everything: 2000 more bytes of credit arrive.
    let mut update = g.header(op::CREDIT_UPDATE, 1024, req.src_port, 0);
    update.buf_alloc = 2000;
    update.fwd_cnt = 1000;
    g.send(update, &[]);
    while received < 3000 {
        let (pkt, data) = g.recv();
        assert_eq!(pkt.op, op::RW);
        received += data.len();
    }
    assert_eq!(received, 3000);
}

#[test]
fn guest_refusing_a_host_connection_closes_the_client() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (client, req) = g.host_connect(9999);
    g.send(g.header(op::RST, 9999, req.src_port, 0), &[]);
    let mut rest = Vec::new();
    (&client).read_to_end(&mut rest).expect("EOF");
    assert!(rest.is_empty(), "no OK line");
}

#[test]
fn malformed_connect_lines_are_refused() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut client = UnixStream::connect(&g.path).expect("connect");
    client.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    client.write_all(b"CONNECT banana\n").expect("write");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("closed");
    assert!(rest.is_empty());
    let mut long = UnixStream::connect(&g.path).expect("connect");
    long.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    long.write_all(&[b'x'; 100]).expect("write");
    let mut rest = Vec::new();
    let _ = long.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(g.no_rx_within(Duration::from_millis(50)));
    let (_ok, _) = g.host_connect(5);
}

#[test]
fn tx_chain_outside_memory_marks_device_broken() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    g.tx_next_desc = add_chain(&g.txq, 0, &[(MEM_SIZE as u64 - 8, 64, false)]);
    write_reg(&mut g.t, 0x50, 1);
    assert!(wait_needs_reset(&mut g.t));
    // Reset tears the worker down and closes the listener's clients; the transport survives.
    write_reg(&mut g.t, 0x70, 0);
    assert_eq!(read_reg(&mut g.t, 0x70), 0);
}

#[test]
fn config_space_holds_the_guest_cid() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut cid = [0u8; 8];
    crate::vmm::devices::bus::BusDevice::read(&mut g.t, 0x100, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), u64::from(GUEST_CID));
    assert!(Vsock::new(VsockConfig {
        guest_cid: 2,
        uds_path: g.path.with_extension("x"),
    })
    .is_err());
}

#[test]
fn bulk_transfer_keeps_every_byte_in_order() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (client, req) = g.host_connect(1024);
    g.send(g.header(op::RESPONSE, 1024, req.src_port, 0), &[]);
    assert_eq!(read_line(&client), format!("OK {}\n", req.src_port));

    // Host to guest: 100 KB, more than the posted rx buffers hold, so the guest reposts.
    let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let writer = {
        let mut c = client.try_clone().expect("clone");
        let data = sent.clone();
        std::thread::spawn(move || c.write_all(&data).expect("host bulk write"))
    };
    let mut got = Vec::new();
    while got.len() < sent.len() {
        if g.rx_seen + 2 >= g.rx_next_desc {
            g.post_rx(8);
        }
        let (pkt, data) = g.recv();
        assert_eq!(pkt.op, op::RW);
        got.extend_from_slice(&data);
    }
    writer.join().expect("writer");
    assert_eq!(got, sent);

    // Guest to host: 150 KB in 60 KB packets.
    let upload: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
    let reader = {
        let mut c = client.try_clone().expect("clone");
        let n = upload.len();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; n];
            c.read_exact(&mut buf).expect("host bulk read");
            buf
        })
    };
    for chunk in upload.chunks(60_000) {
        g.send(
            g.header(op::RW, 1024, req.src_port, chunk.len() as u32),
            chunk,
        );
    }
    assert_eq!(reader.join().expect("reader"), upload);
    client.shutdown(std::net::Shutdown::Both).expect("shutdown");
}

#[test]
fn full_listen_backlog_refuses_instead_of_blocking() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let mut port_path = g.path.clone().into_os_string();
    port_path.push("_80");
    let listener = UnixListener::bind(&port_path).expect("port listener");
    // The smallest backlog, so that it fills at once.
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(0).unwrap()).unwrap();
    // Nobody accepts: the queue fills after the first connection or two, and a blocking connect
    // would then stall the device thread forever.
    let mut resets = 0;
    for port in 0..4 {
        g.send(g.header(op::REQUEST, 7000 + port, 80, 0), &[]);
        let (pkt, _) = g.recv();
        if pkt.op == op::RST {
            resets += 1;
        }
    }
    assert!(resets > 0, "a full backlog must be refused");
    // The device thread is still responsive.
    let (_client, _) = g.host_connect(3);
}

#[test]
fn device_reset_closes_host_connections() {
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (client, req) = g.host_connect(1024);
    g.send(g.header(op::RESPONSE, 1024, req.src_port, 0), &[]);
    assert_eq!(read_line(&client), format!("OK {}\n", req.src_port));
    write_reg(&mut g.t, 0x70, 0);
    let mut rest = Vec::new();
    (&client).read_to_end(&mut rest).expect("EOF after reset");
    assert!(rest.is_empty());
    // The host socket itself survives a reset: new clients wait for the driver to come back.
    UnixStream::connect(&g.path).expect("listener still bound");
}

#[test]
fn guest_that_never_receives_is_throttled_not_buffered() {
    use super::muxer::MAX_CONTROL_BACKLOG;
    let mem = memory();
    let mut g = Guest::new(&mem);
    // Each packet to an unknown connection earns an RST; only 16 rx buffers are posted.
    let total: u16 = 200;
    let start = g.tx_sent;
    for i in 0..total {
        let hdr = g.header(op::RW, 9000 + u32::from(i), 4242, 0);
        g.mem
            .write_slice(&hdr.encode(), GuestAddress(TX_SLOT + 64 * u64::from(i)))
            .expect("tx");
        g.tx_next_desc = add_chain(
            &g.txq,
            g.tx_next_desc,
            &[(TX_SLOT + 64 * u64::from(i), 44, false)],
        );
    }
    write_reg(&mut g.t, 0x50, 1);
    std::thread::sleep(Duration::from_millis(200));
    let consumed = used_idx(&mem, &g.txq) - start;
    assert_eq!(
        usize::from(consumed),
        16 + MAX_CONTROL_BACKLOG,
        "tx stops once the answers no longer fit"
    );
    // Posting rx buffers lets the device go on with the rest.
    g.post_rx(128);
    assert!(wait_used(&mem, &g.txq, start + total), "tx resumed");
    assert_eq!(read_reg(&mut g.t, 0x70) & 0x40, 0, "not marked broken");
}

#[test]
fn socket_path_rules() {
    let dir = TempDir::new_with_prefix("/tmp/deskd-vsock-path-").expect("dir");
    let path = dir.as_path().join("v.sock");
    let config = VsockConfig {
        guest_cid: 3,
        uds_path: path.clone(),
    };
    // A stale socket file (its listener gone) is replaced.
    drop(UnixListener::bind(&path).expect("stale"));
    assert!(path.exists());
    let first = Vsock::new(config.clone()).expect("stale socket replaced");
    // A live one is not taken over.
    assert!(matches!(
        Vsock::new(config.clone()),
        Err(VsockError::SocketPath(SocketPathError::InUse(_)))
    ));
    drop(first);
    assert!(!path.exists(), "the socket file is removed with the device");
    // Nor is a regular file.
    std::fs::write(&path, b"data").expect("file");
    assert!(matches!(
        Vsock::new(config),
        Err(VsockError::SocketPath(SocketPathError::NotASocket(_)))
    ));
}

/// A throwaway transport to hold a place while the real one is moved out.
fn spare_transport(mem: &GuestMemory) -> MmioTransport {
    let irq = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    MmioTransport::new(
        Box::new(crate::vmm::devices::virtio::rng::Rng::new()),
        mem.clone(),
        irq,
    )
    .unwrap()
}

#[test]
fn pause_keeps_connections_and_a_restore_resets_them_with_the_event() {
    const EVT_BUF: u64 = 0x60_0000;
    let mem = memory();
    let mut g = Guest::new(&mem);
    let (client, req) = g.host_connect(1024);

    // Paused and resumed in the same process: the host connection goes on.
    g.t.pause();
    g.t.resume();
    g.send(g.header(op::RESPONSE, 1024, req.src_port, 0), &[]);
    assert_eq!(read_line(&client), format!("OK {}\n", req.src_port));

    // The guest driver keeps an event buffer posted, as Linux does.
    mem.write_obj(0xffff_ffffu32, GuestAddress(EVT_BUF))
        .expect("event buffer");
    add_chain(&g._evq, 0, &[(EVT_BUF, 4, true)]);

    // Restored in "another process": a new device on another socket path.
    let path2 = g._dir.as_path().join("v2.sock");
    let dev = Vsock::new(VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: path2.clone(),
    })
    .expect("vsock device");
    let saved = {
        // The Guest keeps its transport; swap a restored one in.
        let old = std::mem::replace(&mut g.t, spare_transport(&mem));
        let (t, saved) = snapshot_restore(old, move || Box::new(dev), &mem);
        g.t = t;
        saved
    };
    assert_eq!(saved.queues.len(), 3);
    assert_eq!(
        saved.queues[0].next_used, g.rx_seen,
        "rx saved where it stopped"
    );
    assert_eq!(
        saved.queues[1].next_used, g.tx_sent,
        "tx saved where it stopped"
    );
    // The guest gets VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (id 0) in its event buffer.
    assert!(wait_used(&mem, &g._evq, 1), "no transport reset event");
    assert_eq!(used_elem(&mem, &g._evq, 0).1, 4);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(EVT_BUF)).unwrap(), 0);
    // The old host connection is gone with the old device.
    let mut buf = [0u8; 8];
    let mut c = &client;
    assert!(
        matches!(c.read(&mut buf), Ok(0) | Err(_)),
        "old connection still open"
    );
    // New host connections reach the guest through the new socket, on the same rx ring, but only
    // once the guest has handled the reset (it re-posts the event buffer): delivered earlier, a
    // request could be accepted and then killed by the reset.
    g.path = path2;
    let mut client2 = UnixStream::connect(&g.path).expect("connect to vsock socket");
    client2.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    client2.write_all(b"CONNECT 1024\n").expect("connect line");
    assert!(
        !wait_used_within(&mem, &g.rxq, g.rx_seen + 1, Duration::from_millis(300)),
        "a connection request reached the guest before it handled the transport reset"
    );
    add_chain(&g._evq, 1, &[(EVT_BUF, 4, true)]);
    let (req2, _) = g.recv();
    assert_eq!(req2.op, op::REQUEST);
    assert_eq!(req2.dst_port, 1024);
    g.send(g.header(op::RESPONSE, 1024, req2.src_port, 0), &[]);
    assert_eq!(read_line(&client2), format!("OK {}\n", req2.src_port));
}
