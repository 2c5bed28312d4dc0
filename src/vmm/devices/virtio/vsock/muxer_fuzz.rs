//! Fuzz targets: the vsock connection state machine (the [`Muxer`]) driven by a fuzzed mix of
//! guest packets (any header, any op, spoofed CIDs and ports, lying lengths and credit), host
//! clients (good, bad and half `CONNECT` lines, data, hang-ups), a guest port with a listener,
//! socket events and the guest taking rx packets; and packets read from fuzzed tx chains. Its
//! bounds must hold after every step: connections, half-done hand-shakes, and answers owed.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use vmm_sys_util::epoll::EpollEvent;
use vmm_sys_util::tempdir::TempDir;

use super::super::packet::{read_packet, Header, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};
use super::{Muxer, FIRST_LOCAL_PORT, MAX_CONNECTIONS, MAX_CONTROL_BACKLOG, MAX_HANDSHAKES};
use crate::vmm::devices::virtio::fuzzing::{self, Input};
use crate::vmm::devices::virtio::worker::{process_queue, EventLoop};

const GUEST_CID: u64 = 3;
/// The guest port that has a host listener (`<uds>_5000`).
const LISTENED_PORT: u32 = 5000;

struct Host {
    _dir: TempDir,
    uds: std::path::PathBuf,
    event_loop: EventLoop,
    muxer: Muxer,
    port_listener: UnixListener,
    clients: Vec<UnixStream>,
    accepted: Vec<UnixStream>,
}

fn host() -> Host {
    let dir = TempDir::new_with_prefix("/tmp/deskd-vsock-fuzz-").expect("temp dir");
    let uds = dir.as_path().join("v.sock");
    let listener = UnixListener::bind(&uds).expect("listener");
    let port_listener =
        UnixListener::bind(format!("{}_{LISTENED_PORT}", uds.display())).expect("port listener");
    port_listener.set_nonblocking(true).expect("non-blocking");
    let event_loop = EventLoop::new().expect("epoll");
    let muxer = Muxer::new(GUEST_CID, &uds, listener, &event_loop).expect("muxer");
    Host {
        _dir: dir,
        uds,
        event_loop,
        muxer,
        port_listener,
        clients: Vec::new(),
        accepted: Vec::new(),
    }
}

fn port(input: &mut Input<'_>) -> u32 {
    match input.u8() % 6 {
        0 => input.u32(),
        1 => LISTENED_PORT,
        2 => 1024,
        3 => FIRST_LOCAL_PORT + u32::from(input.u8() % 8),
        _ => 40_000 + u32::from(input.u8() % 8),
    }
}

fn header(input: &mut Input<'_>) -> Header {
    Header {
        src_cid: if input.u8().is_multiple_of(8) {
            input.u64()
        } else {
            GUEST_CID
        },
        dst_cid: if input.u8().is_multiple_of(8) {
            input.u64()
        } else {
            HOST_CID
        },
        src_port: port(input),
        dst_port: port(input),
        len: 0,
        kind: if input.u8().is_multiple_of(8) {
            input.u16()
        } else {
            TYPE_STREAM
        },
        op: {
            use super::super::packet::op;
            let ops = [
                op::REQUEST,
                op::RESPONSE,
                op::RW,
                op::RW,
                op::SHUTDOWN,
                op::RST,
                op::CREDIT_UPDATE,
                op::CREDIT_REQUEST,
            ];
            match input.u8() % 10 {
                0 => u16::from(input.u8() % 12),
                n => ops[usize::from(n - 1) % ops.len()],
            }
        },
        flags: match input.u8() % 4 {
            0 => input.u32(),
            _ => u32::from(input.u8() % 4),
        },
        buf_alloc: match input.u8() % 4 {
            0 => input.u32(),
            1 => 0,
            _ => 256 * 1024,
        },
        fwd_cnt: input.u32(),
    }
}

/// Lets the muxer handle every event ready now, as its worker would.
fn dispatch(h: &mut Host) {
    let mut events = vec![EpollEvent::default(); 64];
    for _ in 0..4 {
        let ready = h.event_loop.ready_now(&mut events).unwrap_or_default();
        if ready.is_empty() {
            return;
        }
        for (token, set) in ready {
            h.muxer.handle_event(&h.event_loop, token, set);
        }
    }
}

fn check_bounds(m: &Muxer) {
    assert!(
        m.conns.len() <= MAX_CONNECTIONS,
        "{} connections",
        m.conns.len()
    );
    assert!(
        m.handshakes.len() <= MAX_HANDSHAKES,
        "{} hand-shakes",
        m.handshakes.len()
    );
    // The device stops taking tx packets at the backlog limit; one packet may add a few.
    assert!(
        m.control.len() <= MAX_CONTROL_BACKLOG + 4,
        "{} answers owed",
        m.control.len()
    );
}

/// One step of the fuzzed session.
fn step(h: &mut Host, input: &mut Input<'_>) {
    match input.u8() % 10 {
        0..=3 => {
            // The device takes no tx packet while its answers back up (see Muxer::backlog_full).
            if h.muxer.backlog_full() {
                return;
            }
            let mut hdr = header(input);
            let want = usize::from(input.u16()) % 4096;
            let payload = input.bytes(want).to_vec();
            hdr.len = if input.u8().is_multiple_of(8) {
                input.u32()
            } else {
                payload.len() as u32
            };
            h.muxer.handle_guest_packet(&h.event_loop, &hdr, &payload);
        }
        4 => {
            if h.clients.len() >= 80 {
                return;
            }
            let Ok(mut s) = UnixStream::connect(&h.uds) else {
                return;
            };
            let _ = s.set_nonblocking(true);
            let line: Vec<u8> = match input.u8() % 5 {
                0 => format!("CONNECT {LISTENED_PORT}\n").into_bytes(),
                1 => format!("CONNECT {}\n", input.u32()).into_bytes(),
                2 => b"CONNECT 10".to_vec(), // half a line
                3 => vec![],
                _ => input.bytes(40).to_vec(),
            };
            let _ = s.write_all(&line);
            h.clients.push(s);
        }
        5 => {
            let n = h.clients.len();
            if n > 0 {
                let i = usize::from(input.u8()) % n;
                let n = usize::from(input.u16()) % 8192;
                let data = input.bytes(n);
                let _ = h.clients[i].write(data);
                let mut buf = [0u8; 4096];
                let _ = h.clients[i].read(&mut buf);
            }
        }
        6 => {
            let n = h.clients.len();
            if n > 0 {
                let i = usize::from(input.u8()) % n;
                drop(h.clients.swap_remove(i));
            }
        }
        7 => dispatch(h),
        8 => {
            for _ in 0..(input.u8() % 8) {
                let max = match input.u8() % 3 {
                    0 => 0,
                    1 => usize::from(input.u16()),
                    _ => MAX_PAYLOAD,
                };
                let Some((hdr, _)) = h.muxer.next_rx(max) else {
                    break;
                };
                // A guest that mostly plays along: it accepts the host's connections and
                // answers credit requests, so that sessions get past their first packet.
                use super::super::packet::op;
                let answer = match hdr.op {
                    op::REQUEST => Some(op::RESPONSE),
                    op::CREDIT_REQUEST => Some(op::CREDIT_UPDATE),
                    _ => None,
                };
                if let Some(answer) = answer.filter(|_| !input.u8().is_multiple_of(4)) {
                    let reply = Header {
                        src_cid: GUEST_CID,
                        dst_cid: HOST_CID,
                        src_port: hdr.dst_port,
                        dst_port: hdr.src_port,
                        len: 0,
                        kind: TYPE_STREAM,
                        op: answer,
                        flags: 0,
                        buf_alloc: 256 * 1024,
                        fwd_cnt: 0,
                    };
                    h.muxer.handle_guest_packet(&h.event_loop, &reply, &[]);
                }
            }
        }
        _ => {
            // The guest port's server: takes connections, answers a little, sometimes hangs up.
            if let Ok((s, _)) = h.port_listener.accept() {
                let _ = s.set_nonblocking(true);
                h.accepted.push(s);
            }
            let n = h.accepted.len();
            if n > 0 {
                let i = usize::from(input.u8()) % n;
                let mut buf = [0u8; 4096];
                let _ = h.accepted[i].read(&mut buf);
                let _ = h.accepted[i].write(input.bytes(64));
                if input.u8().is_multiple_of(4) {
                    drop(h.accepted.swap_remove(i));
                }
            }
        }
    }
}

#[test]
fn fuzz_vsock_connection_state_machine() {
    let reach = fuzzing::Reach::default();
    bolero::check!()
        .with_test_time(fuzzing::TEST_TIME)
        .for_each(|data: &[u8]| {
            reach.input();
            let mut h = host();
            let mut input = Input::new(data);
            let mut connected = false;
            for _ in 0..256 {
                if input.is_empty() {
                    break;
                }
                step(&mut h, &mut input);
                check_bounds(&h.muxer);
                connected |= !h.muxer.conns.is_empty();
            }
            if connected {
                reach.deep();
            }
            dispatch(&mut h);
            while h.muxer.next_rx(MAX_PAYLOAD).is_some() {}
            check_bounds(&h.muxer);
        });
    reach.report(
        "fuzz_vsock_connection_state_machine",
        "had a connection open",
    );
}

#[test]
fn fuzz_vsock_tx_packets() {
    // One host for all inputs, as one VMM serves a guest for its whole life.
    let mut h = std::panic::AssertUnwindSafe(host());
    let reach = fuzzing::Reach::default();
    bolero::check!()
        .with_test_time(fuzzing::TEST_TIME)
        .for_each(|data: &[u8]| {
            reach.input();
            let mut input = Input::new(data);
            let mem = fuzzing::memory();
            let mut queue = fuzzing::queue(&mem, &mut input, 1);
            // A plausible header at the start of the first buffers.
            for i in 0..4 {
                let mut hdr = header(&mut input);
                hdr.len = u32::from(input.u16() % 512);
                fuzzing::put_in_buffer(&mem, 1, i, &hdr.encode());
            }
            fuzzing::fill_data(&mem, &mut input);
            let irq = fuzzing::interrupt();
            let h = &mut *h;
            let muxer = &mut h.muxer;
            let event_loop = &h.event_loop;
            let _ = process_queue(&mem, &mut queue, &irq, u64::MAX, |chain| {
                match read_packet(&mem, &chain.readable) {
                    Ok((hdr, payload)) => {
                        reach.deep();
                        muxer.handle_guest_packet(event_loop, &hdr, &payload)
                    }
                    Err(e) => {
                        if let Some(hdr) = e.header() {
                            muxer.reject_packet(hdr);
                        }
                    }
                }
                Ok(0)
            });
            while h.muxer.next_rx(MAX_PAYLOAD).is_some() {}
            check_bounds(&h.muxer);
        });
    reach.report("fuzz_vsock_tx_packets", "packets read from chains");
}
