//! The network device through the real MMIO transport on in-memory guest memory, with a
//! datagram socket pair standing in for the TAP (one frame per message, like a TAP), plus one
//! test on a real TAP device.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_net::*;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::rate_limiter::tests::FakeClock;
use super::vnet::{HDR_LEN, MAX_BUF_LEN};
use super::*;
use crate::vmm::config::TapSource;
use crate::vmm::devices::virtio::testing::*;
use crate::vmm::devices::virtio::worker::WORKER_PANICS;
use crate::vmm::devices::virtio::MmioTransport;

pub(crate) const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const TX_DATA: u64 = DATA_BASE;
const RX_DATA: u64 = DATA_BASE + 0x10_0000;

/// The guest-facing end of a socket pair; the test holds the other end as "the network".
#[derive(Debug)]
pub(crate) struct PairBackend {
    sock: UnixDatagram,
    pub offloads: Mutex<Vec<u32>>,
}

impl NetBackend for PairBackend {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf)
    }
    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        self.sock.send(frame)
    }
    fn set_offload(&self, flags: u32) -> io::Result<()> {
        self.offloads.lock().unwrap().push(flags);
        Ok(())
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

pub(crate) fn pair() -> (Arc<PairBackend>, UnixDatagram) {
    let (dev, net) = UnixDatagram::pair().expect("socket pair");
    dev.set_nonblocking(true).expect("non-blocking");
    net.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    (
        Arc::new(PairBackend {
            sock: dev,
            offloads: Mutex::new(Vec::new()),
        }),
        net,
    )
}

pub(crate) fn mac() -> MacAddr {
    MacAddr::new(MAC).expect("mac")
}

/// A frame with its header: `hdr` then `len` bytes counting up from `seed`.
fn frame(hdr: [u8; HDR_LEN], len: usize, seed: u8) -> Vec<u8> {
    let mut f = hdr.to_vec();
    f.extend((0..len).map(|i| seed.wrapping_add(i as u8)));
    f
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("timed out waiting for {what}");
}

struct Rig<'a> {
    mem: &'a GuestMemory,
    rx: MockSplitQueue<'a, GuestMemory>,
    tx: MockSplitQueue<'a, GuestMemory>,
    t: MmioTransport,
    rx_next: u16,
    tx_next: u16,
    net: UnixDatagram,
    backend: Arc<PairBackend>,
    handle: NetHandle,
    clock: Arc<FakeClock>,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemory, mask: u64, limit: Option<NetRateLimit>) -> Self {
        let (backend, net) = pair();
        let clock = Arc::new(FakeClock::default());
        let dev = Net::with_backend(mac(), backend.clone(), limit, clock.clone()).expect("net");
        let handle = dev.handle();
        let rx = mock_queue(mem, 0, 256);
        let tx = mock_queue(mem, 1, 256);
        let (t, _irq) = activate_masked(Box::new(dev), mem, &[&rx, &tx], 256, mask);
        Rig {
            mem,
            rx,
            tx,
            t,
            rx_next: 0,
            tx_next: 0,
            net,
            backend,
            handle,
            clock,
        }
    }

    /// Puts `bytes` at TX_DATA + `at` and queues them as one transmit chain cut into `pieces`.
    fn send(&mut self, bytes: &[u8], at: u64, pieces: &[usize]) {
        self.mem
            .write_slice(bytes, GuestAddress(TX_DATA + at))
            .expect("tx data");
        let mut bufs = Vec::new();
        let mut off = 0u64;
        for &p in pieces {
            bufs.push((TX_DATA + at + off, p as u32, false));
            off += p as u64;
        }
        assert_eq!(off as usize, bytes.len());
        self.tx_next = add_chain(&self.tx, self.tx_next, &bufs);
        write_reg(&mut self.t, 0x50, 1);
    }

    /// Posts one receive chain of the given buffer sizes, at RX_DATA + `at`.
    fn post_rx(&mut self, at: u64, sizes: &[u32]) {
        let mut bufs = Vec::new();
        let mut off = 0u64;
        for &s in sizes {
            bufs.push((RX_DATA + at + off, s, true));
            off += u64::from(s);
        }
        self.rx_next = add_chain(&self.rx, self.rx_next, &bufs);
        write_reg(&mut self.t, 0x50, 0);
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem
            .read_slice(&mut out, GuestAddress(addr))
            .expect("read");
        out
    }

    fn shared(&self) -> &NetShared {
        self.handle.shared()
    }

    /// Whether the network end gets a frame within `wait`.
    fn net_recv(&self, wait: Duration) -> Option<Vec<u8>> {
        self.net.set_read_timeout(Some(wait)).expect("timeout");
        let mut buf = vec![0u8; MAX_BUF_LEN + 16];
        match self.net.recv(&mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn all_but(features: &[u32]) -> u64 {
    features.iter().fold(u64::MAX, |m, f| m & !(1u64 << f))
}

#[test]
fn config_space_holds_the_mac_and_link_up() {
    let (backend, _net) = pair();
    let dev = Net::with_backend(mac(), backend, None, Arc::new(FakeClock::default())).unwrap();
    let mut config = [0u8; 10];
    dev.read_config(0, &mut config);
    assert_eq!(&config[..6], &MAC);
    assert_eq!(
        u16::from_le_bytes([config[6], config[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(&config[8..], &[0, 0]);
    let mut one = [0u8; 1];
    dev.read_config(5, &mut one);
    assert_eq!(one[0], 0x56);
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes().len(), 2);
}

#[test]
fn offloads_are_set_on_the_backend_as_the_guest_accepted_them() {
    let mem = memory();
    let rig = Rig::new(&mem, u64::MAX, None);
    assert_eq!(
        *rig.backend.offloads.lock().unwrap(),
        vec![libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6]
    );
    let rig = Rig::new(&mem, all_but(&[VIRTIO_NET_F_GUEST_TSO6]), None);
    assert_eq!(
        *rig.backend.offloads.lock().unwrap(),
        vec![libc::TUN_F_CSUM | libc::TUN_F_TSO4]
    );
    let rig = Rig::new(&mem, all_but(&[VIRTIO_NET_F_GUEST_CSUM]), None);
    assert_eq!(*rig.backend.offloads.lock().unwrap(), vec![0]);
}

#[test]
fn a_transmitted_frame_reaches_the_backend_with_its_header() {
    let mem = memory();
    let mut rig = Rig::new(&mem, u64::MAX, None);
    // A TSO frame with a partial checksum: header, then the frame in two pieces.
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    hdr[2..4].copy_from_slice(&54u16.to_le_bytes());
    hdr[4..6].copy_from_slice(&1448u16.to_le_bytes());
    let f = frame(hdr, 3000, 7);
    rig.send(&f, 0, &[HDR_LEN, 1000, 2000]);
    assert_eq!(rig.net_recv(Duration::from_secs(5)).expect("frame"), f);
    assert!(wait_used(&mem, &rig.tx, 1));
    assert_eq!(used_elem(&mem, &rig.tx, 0), (0, 0));
    assert_eq!(rig.shared().tx_frames.load(Ordering::SeqCst), 1);

    // Without the host TSO feature the same header is refused: dropped, chain returned.
    let mem = memory();
    let mut rig = Rig::new(&mem, all_but(&[VIRTIO_NET_F_HOST_TSO4]), None);
    rig.send(&f, 0, &[f.len()]);
    assert!(wait_used(&mem, &rig.tx, 1));
    assert_eq!(rig.net_recv(Duration::from_millis(50)), None);
    assert_eq!(rig.shared().tx_dropped.load(Ordering::SeqCst), 1);
    // The device goes on.
    let plain = frame([0; HDR_LEN], 60, 1);
    rig.send(&plain, 0x10000, &[plain.len()]);
    assert_eq!(rig.net_recv(Duration::from_secs(5)).expect("frame"), plain);
}

#[test]
fn a_received_frame_fills_mergeable_buffers_across_chains() {
    let mem = memory();
    let mut rig = Rig::new(&mem, u64::MAX, None);
    for i in 0..4 {
        rig.post_rx(i * 0x1000, &[1000]);
    }
    let f = frame([0; HDR_LEN], 2500, 3);
    rig.net.send(&f).expect("send");
    assert!(wait_used(&mem, &rig.rx, 3));
    assert_eq!(used_elem(&mem, &rig.rx, 0), (0, 1000));
    assert_eq!(used_elem(&mem, &rig.rx, 1), (1, 1000));
    assert_eq!(used_elem(&mem, &rig.rx, 2), (2, (f.len() - 2000) as u32));
    let mut got = rig.read(RX_DATA, 1000);
    got.extend(rig.read(RX_DATA + 0x1000, 1000));
    got.extend(rig.read(RX_DATA + 0x2000, f.len() - 2000));
    // The header says three buffers; the rest is the frame as sent.
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3);
    got[10..12].copy_from_slice(&[0, 0]);
    assert_eq!(got, f);
    // A small frame then takes the one chain left.
    let small = frame([0; HDR_LEN], 100, 9);
    rig.net.send(&small).expect("send");
    assert!(wait_used(&mem, &rig.rx, 4));
    assert_eq!(used_elem(&mem, &rig.rx, 3), (3, small.len() as u32));
    let got = rig.read(RX_DATA + 0x3000, small.len());
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    // A chain of several descriptors is one buffer.
    rig.post_rx(0x8000, &[7, 5, 200]);
    rig.net.send(&small).expect("send");
    assert!(wait_used(&mem, &rig.rx, 5));
    assert_eq!(used_elem(&mem, &rig.rx, 4), (4, small.len() as u32));
    let mut got = rig.read(RX_DATA + 0x8000, small.len());
    got[10..12].copy_from_slice(&[0, 0]);
    assert_eq!(got, small);
    assert_eq!(counted(&rig.shared().rx_frames, 3), 3);
}

/// The counter once it reaches `n` (or after 10 s): the worker counts a frame just after it
/// publishes it in the used ring, so a test that saw the ring must not race the count.
fn counted(counter: &std::sync::atomic::AtomicU64, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    counter.load(Ordering::SeqCst)
}

#[test]
fn without_mergeable_buffers_a_frame_needs_one_chain_that_holds_it() {
    let mem = memory();
    let mut rig = Rig::new(&mem, all_but(&[VIRTIO_NET_F_MRG_RXBUF]), None);
    rig.post_rx(0, &[1000]);
    rig.post_rx(0x1000, &[1000]);
    // Too big for any one chain: dropped, and the chains stay for the next frame.
    rig.net.send(&frame([0; HDR_LEN], 1500, 0)).expect("send");
    wait_until("the drop", || {
        rig.shared().rx_dropped.load(Ordering::SeqCst) == 1
    });
    assert_eq!(used_idx(&mem, &rig.rx), 0);
    let f = frame([0; HDR_LEN], 500, 4);
    rig.net.send(&f).expect("send");
    assert!(wait_used(&mem, &rig.rx, 1));
    assert_eq!(used_elem(&mem, &rig.rx, 0), (0, f.len() as u32));
    let got = rig.read(RX_DATA, f.len());
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
}

#[test]
fn a_received_header_the_guest_did_not_agree_to_is_dropped() {
    let mem = memory();
    let mut rig = Rig::new(&mem, all_but(&[VIRTIO_NET_F_GUEST_CSUM]), None);
    rig.post_rx(0, &[2000]);
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    rig.net.send(&frame(hdr, 100, 0)).expect("send");
    rig.net.send(&[0u8; 5]).expect("send a runt");
    // DATA_VALID from the TAP is cleared: without GUEST_CSUM the flags must be zero.
    let mut hdr = [0u8; HDR_LEN];
    hdr[0] = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    let mut f = frame(hdr, 100, 1);
    rig.net.send(&f).expect("send");
    assert!(wait_used(&mem, &rig.rx, 1));
    assert_eq!(rig.shared().rx_dropped.load(Ordering::SeqCst), 2);
    let mut got = rig.read(RX_DATA, f.len());
    got[10..12].copy_from_slice(&[0, 0]);
    f[0] = 0;
    assert_eq!(got, f);
}

#[test]
fn a_guest_without_receive_buffers_makes_the_device_hold_one_frame_only() {
    let mem = memory();
    let mut rig = Rig::new(&mem, u64::MAX, None);
    rig.net.set_nonblocking(true).unwrap();
    // The network sends until its socket is full: the device stopped reading after one frame.
    let f = frame([0; HDR_LEN], 1000, 0);
    let mut sent = 0u32;
    let full = loop {
        match rig.net.send(&f) {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
            Err(e) => panic!("send: {e}"),
        }
        if sent > 100_000 {
            break false;
        }
        if sent.is_multiple_of(64) {
            // Give the worker every chance to read what it would.
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    assert!(full, "the device kept reading frames it had nowhere to put");
    assert_eq!(rig.shared().rx_frames.load(Ordering::SeqCst), 0);
    assert_eq!(rig.shared().rx_dropped.load(Ordering::SeqCst), 0);
    // Buffers arrive: frames flow again, the held one first.
    for i in 0..8 {
        rig.post_rx(i * 0x1000, &[2048]);
    }
    assert!(wait_used(&mem, &rig.rx, 8));
    assert_eq!(counted(&rig.shared().rx_frames, 8), 8);
    assert!(sent > 8);
}

#[test]
fn the_transmit_limit_holds_frames_until_the_clock_allows_and_can_be_lifted_live() {
    let mem = memory();
    // 10 frames/s: a bucket of one frame, one more every 100 ms (of the fake clock).
    let limit = NetRateLimit {
        bandwidth_bytes_per_sec: None,
        packets_per_sec: Some(10),
    };
    let mut rig = Rig::new(&mem, u64::MAX, Some(limit));
    let f = frame([0; HDR_LEN], 60, 0);
    for i in 0..4u64 {
        rig.send(&f, i * 0x100, &[f.len()]);
    }
    assert!(rig.net_recv(Duration::from_secs(5)).is_some());
    // The clock stands still: nothing more passes, however long the worker's timer runs.
    assert_eq!(rig.net_recv(Duration::from_millis(300)), None);
    assert_eq!(used_idx(&mem, &rig.tx), 1);
    rig.clock.advance(Duration::from_millis(100));
    // The worker's timer (armed for 100 ms) fires and finds the token.
    assert!(rig.net_recv(Duration::from_secs(5)).is_some());
    assert_eq!(rig.net_recv(Duration::from_millis(200)), None);
    // set-net-limit without a limit: the rest go at once.
    rig.handle.set_limit(None);
    assert!(rig.net_recv(Duration::from_secs(5)).is_some());
    assert!(rig.net_recv(Duration::from_secs(5)).is_some());
    assert!(wait_used(&mem, &rig.tx, 4));
    assert_eq!(rig.handle.limit(), None);
}

#[test]
fn the_receive_limit_holds_frames_by_bandwidth() {
    let mem = memory();
    // 100 kB/s: the bucket holds one largest frame (65 553 bytes).
    let limit = NetRateLimit {
        bandwidth_bytes_per_sec: Some(100_000),
        packets_per_sec: None,
    };
    let mut rig = Rig::new(&mem, u64::MAX, Some(limit));
    for i in 0..3 {
        rig.post_rx(i * 0x10000, &[0x10000]);
    }
    for seed in 0..2 {
        rig.net
            .send(&frame([0; HDR_LEN], 40_000, seed))
            .expect("send");
    }
    assert!(wait_used(&mem, &rig.rx, 1));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        used_idx(&mem, &rig.rx),
        1,
        "the second frame passed the limit"
    );
    // 14 447 more bytes are needed: 145 ms at 100 kB/s.
    rig.clock.advance(Duration::from_millis(140));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(used_idx(&mem, &rig.rx), 1);
    rig.clock.advance(Duration::from_millis(10));
    assert!(wait_used(&mem, &rig.rx, 2));
    // A new, higher limit starts with full buckets.
    rig.net.send(&frame([0; HDR_LEN], 40_000, 5)).expect("send");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(used_idx(&mem, &rig.rx), 2);
    rig.handle.set_limit(Some(NetRateLimit {
        bandwidth_bytes_per_sec: Some(10_000_000),
        packets_per_sec: Some(1000),
    }));
    assert!(wait_used(&mem, &rig.rx, 3));
}

#[test]
fn hostile_transmit_chains_are_dropped_or_stop_the_device() {
    let mem = memory();
    let mut rig = Rig::new(&mem, u64::MAX, None);
    // Zero length, shorter than a header, longer than the largest frame: dropped, returned.
    rig.tx_next = add_chain(&rig.tx, rig.tx_next, &[(TX_DATA, 0, false)]);
    rig.tx_next = add_chain(&rig.tx, rig.tx_next, &[(TX_DATA, 11, false)]);
    rig.tx_next = add_chain(
        &rig.tx,
        rig.tx_next,
        &[
            (TX_DATA, 0x8000, false),
            (TX_DATA, 0x8000, false),
            (TX_DATA, 100, false),
        ],
    );
    // Device-writable buffers only: nothing to send.
    rig.tx_next = add_chain(&rig.tx, rig.tx_next, &[(TX_DATA, 100, true)]);
    write_reg(&mut rig.t, 0x50, 1);
    assert!(wait_used(&mem, &rig.tx, 4));
    assert_eq!(rig.shared().tx_dropped.load(Ordering::SeqCst), 4);
    assert_eq!(rig.net_recv(Duration::from_millis(20)), None);
    assert_eq!(read_reg(&mut rig.t, 0x70) & 0x40, 0);
    // A buffer outside guest memory: the device needs a reset, the VMM is fine.
    rig.tx_next = add_chain(&rig.tx, rig.tx_next, &[(MEM_SIZE as u64 - 8, 64, false)]);
    write_reg(&mut rig.t, 0x50, 1);
    assert!(wait_needs_reset(&mut rig.t));
    write_reg(&mut rig.t, 0x70, 0);
    assert_eq!(read_reg(&mut rig.t, 0x70), 0);
    assert_eq!(WORKER_PANICS.load(Ordering::SeqCst), 0);
}

#[test]
fn a_descriptor_loop_stops_the_device() {
    let mem = memory();
    let mut rig = Rig::new(&mem, u64::MAX, None);
    use crate::vmm::devices::virtio::chain::tests::desc;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
    rig.tx
        .add_desc_chains(
            &[
                desc(TX_DATA, 16, VRING_DESC_F_NEXT, 1),
                desc(TX_DATA, 16, VRING_DESC_F_NEXT, 0),
            ],
            0,
        )
        .unwrap();
    write_reg(&mut rig.t, 0x50, 1);
    assert!(wait_needs_reset(&mut rig.t));
}

#[test]
fn a_receive_chain_with_a_readable_buffer_stops_the_device() {
    let mem = memory();
    let mut rig = Rig::new(&mem, u64::MAX, None);
    rig.rx_next = add_chain(&rig.rx, rig.rx_next, &[(RX_DATA, 100, false)]);
    rig.net.send(&frame([0; HDR_LEN], 60, 0)).expect("send");
    write_reg(&mut rig.t, 0x50, 0);
    assert!(wait_needs_reset(&mut rig.t));
    // Broken: nothing more is read from the network end, and a reset brings it back.
    write_reg(&mut rig.t, 0x70, 0);
    assert_eq!(read_reg(&mut rig.t, 0x70), 0);
}

#[test]
fn a_snapshot_keeps_mac_features_and_queues_and_takes_a_new_backend() {
    let mem = memory();
    let mut rig = Rig::new(&mem, all_but(&[VIRTIO_NET_F_GUEST_TSO6]), None);
    let f = frame([0; HDR_LEN], 60, 0);
    rig.send(&f, 0, &[f.len()]);
    assert!(rig.net_recv(Duration::from_secs(5)).is_some());
    assert!(wait_used(&mem, &rig.tx, 1));

    let (backend, net) = pair();
    let new_backend = backend.clone();
    let t = std::mem::replace(
        &mut rig.t,
        MmioTransport::new(
            Box::new(
                Net::with_backend(mac(), pair().0, None, Arc::new(FakeClock::default())).unwrap(),
            ),
            mem.clone(),
            vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
        )
        .unwrap(),
    );
    let (mut restored, saved) = snapshot_restore(
        t,
        move || {
            Box::new(
                Net::with_backend(mac(), new_backend, None, Arc::new(FakeClock::default()))
                    .unwrap(),
            )
        },
        &mem,
    );
    let DeviceState::Net(state) = &saved.device else {
        panic!("not a net state: {:?}", saved.device);
    };
    assert_eq!(state.mac, MAC);
    assert_eq!(state.acked_features & (1 << VIRTIO_NET_F_GUEST_TSO6), 0);
    assert_ne!(state.acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
    // The new backend got the offloads the guest had accepted.
    assert_eq!(
        *backend.offloads.lock().unwrap(),
        vec![libc::TUN_F_CSUM | libc::TUN_F_TSO4]
    );
    // The restored queue goes on where it was: the second frame reaches the new backend.
    let f2 = frame([0; HDR_LEN], 61, 1);
    mem.write_slice(&f2, GuestAddress(TX_DATA + 0x100)).unwrap();
    add_chain(&rig.tx, 1, &[(TX_DATA + 0x100, f2.len() as u32, false)]);
    write_reg(&mut restored, 0x50, 1);
    net.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 200];
    let n = net.recv(&mut buf).expect("frame on the new backend");
    assert_eq!(&buf[..n], &f2[..]);
    assert!(wait_used(&mem, &rig.tx, 2));

    // Another MAC is refused.
    let mut other = Net::with_backend(
        MacAddr::new([0x52, 0, 0, 0, 0, 1]).unwrap(),
        pair().0,
        None,
        Arc::new(FakeClock::default()),
    )
    .unwrap();
    let err = other.restore(&saved.device).unwrap_err();
    assert!(err.to_string().contains("MAC"), "{err}");
    // The state survives the snapshot encoding.
    let bytes = postcard::to_stdvec(state).unwrap();
    assert_eq!(
        &postcard::from_bytes::<persist::NetState>(&bytes).unwrap(),
        state
    );
}

/// A real TAP device: opened by name and as an inherited descriptor, offloads set, a frame
/// written from guest memory reaches the kernel. Needs /dev/net/tun and CAP_NET_ADMIN.
#[test]
fn a_real_tap_carries_a_guest_frame_to_the_kernel() {
    let name = format!("dsktst{}", std::process::id() % 100_000);
    let tap = match tap::Tap::open(&TapSource::Name(name.clone())) {
        Ok(tap) => tap,
        Err(e) => {
            eprintln!("SKIPPED a_real_tap_carries_a_guest_frame_to_the_kernel: {e}");
            return;
        }
    };
    assert_eq!(tap.name(), name);
    tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6)
        .expect("offloads");
    // Nothing to read: non-blocking.
    let mut buf = vec![0u8; MAX_BUF_LEN];
    assert_eq!(
        tap.recv(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    // A descriptor that is not a TAP is refused with a clear message.
    let null = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::IntoRawFd::into_raw_fd(null);
    let err = tap::Tap::open(&TapSource::Fd(fd)).unwrap_err();
    assert!(err.to_string().contains("not a TAP"), "{err}");
    // The same TAP as an inherited descriptor (a duplicate, as a parent would pass it).
    // SAFETY: dup of a descriptor this test owns; the new one is owned by the Tap below.
    let dup = unsafe { libc::dup(tap.raw_fd()) };
    assert!(dup > 2);
    let inherited = tap::Tap::open(&TapSource::Fd(dup)).expect("tap from fd");
    assert_eq!(inherited.name(), name);
    drop(inherited);

    // Bring the link up so the kernel takes frames, then send one through the device.
    let up = std::process::Command::new("ip")
        .args(["link", "set", "dev", &name, "up"])
        .status();
    if !matches!(up, Ok(s) if s.success()) {
        eprintln!("SKIPPED the frame part of a_real_tap_carries_a_guest_frame_to_the_kernel: `ip link set up` failed ({up:?})");
        return;
    }
    let stats = format!("/sys/class/net/{name}/statistics/rx_packets");
    let count = || -> u64 {
        std::fs::read_to_string(&stats)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = count();
    let mem = memory();
    let dev =
        Net::with_backend(mac(), Arc::new(tap), None, Arc::new(MonotonicClock::new())).unwrap();
    let rx = mock_queue(&mem, 0, 256);
    let txq = mock_queue(&mem, 1, 256);
    let (mut t, _irq) = activate(Box::new(dev), &mem, &[&rx, &txq], 256);
    // Broadcast, from our MAC, an experimental EtherType, 46 bytes of payload.
    let mut f = vec![0u8; HDR_LEN];
    f.extend([0xff; 6]);
    f.extend(MAC);
    f.extend([0x88, 0xb5]);
    f.extend([0xab; 46]);
    mem.write_slice(&f, GuestAddress(TX_DATA)).unwrap();
    add_chain(&txq, 0, &[(TX_DATA, f.len() as u32, false)]);
    write_reg(&mut t, 0x50, 1);
    assert!(wait_used(&mem, &txq, 1));
    wait_until("the kernel to count the frame", || count() > before);
}
