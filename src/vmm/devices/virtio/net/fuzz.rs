//! Fuzz target: virtio-net's queue processing (transmit and receive, merged receive buffers,
//! offload headers, the rate limiter) on fuzzed queues (see `../fuzzing.rs`), with frames of any
//! size and header coming from the network side (a socket pair stands in for the TAP).

use std::sync::Arc;

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_MRG_RXBUF,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::queues::NetWorker;
use super::rate_limiter::{Clock, MonotonicClock, RateLimiter};
use super::vnet::{MAX_BUF_LEN, MAX_FRAME_LEN};
use super::Net;
use crate::vmm::config::NetRateLimit;
use crate::vmm::devices::virtio::fuzzing::{self, Input};

#[test]
fn fuzz_net_queues() {
    let reach = fuzzing::Reach::default();
    bolero::check!()
        .with_test_time(fuzzing::TEST_TIME)
        .for_each(|data: &[u8]| {
            reach.input();
            let mut input = Input::new(data);
            let (backend, peer) = super::tests::pair();
            peer.set_nonblocking(true).expect("non-blocking");
            let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::new());
            let limited = input.u8().is_multiple_of(4);
            let limit = limited.then(|| NetRateLimit {
                bandwidth_bytes_per_sec: Some(u64::from(input.u32())),
                packets_per_sec: Some(u64::from(input.u16())),
            });
            let net = Net::with_backend(super::tests::mac(), backend.clone(), limit, clock.clone())
                .expect("net device");
            let mem = fuzzing::memory();
            // Each queue from its own half of the input, so that a short input still makes two.
            let (front, back) = data.split_at(data.len() / 2);
            let mut input = Input::new(front);
            let mut tx_input = Input::new(back);
            let rx = fuzzing::queue(&mem, &mut input, 0);
            let tx = fuzzing::queue(&mem, &mut tx_input, 1);
            let features = [
                0,
                1 << VIRTIO_NET_F_MRG_RXBUF,
                (1 << VIRTIO_NET_F_MRG_RXBUF)
                    | (1 << VIRTIO_NET_F_GUEST_CSUM)
                    | (1 << VIRTIO_NET_F_GUEST_TSO4)
                    | (1 << VIRTIO_NET_F_CSUM),
                input.u64(),
            ][usize::from(input.u8() % 4)];
            // Frames from the network: a virtio-net header (plain mostly, else any flags and
            // sizes) and a body.
            for _ in 0..(input.u8() % 6) {
                let len = match input.u8() % 4 {
                    0 => usize::from(input.u16()) % (MAX_FRAME_LEN + 64),
                    _ => usize::from(input.u16()) % 1600,
                };
                let mut frame = if input.u8().is_multiple_of(4) {
                    input.bytes(12).to_vec()
                } else {
                    vec![0; 12]
                };
                frame.resize(12 + len, 0xa5);
                let _ = peer.send(&frame);
            }
            fuzzing::fill_data(&mem, &mut input);
            // Plain transmit headers (no offload) at the start of most transmit buffers.
            for i in 0..8 {
                if !tx_input.u8().is_multiple_of(4) {
                    fuzzing::put_in_buffer(&mem, 1, i, &[0u8; 12]);
                }
            }
            let now = clock.now();
            let evt = || EventFd::new(EFD_NONBLOCK).expect("eventfd");
            let mut worker = NetWorker {
                mem: mem.clone(),
                interrupt: Arc::new(fuzzing::interrupt()),
                rx,
                tx,
                evts: [evt(), evt()],
                backend,
                shared: net.shared.clone(),
                clock: clock.clone(),
                timer: super::timer().expect("timerfd"),
                acked: features,
                rx_buf: vec![0; MAX_BUF_LEN],
                rx_len: None,
                tap_readable: true,
                tx_buf: vec![0; MAX_BUF_LEN],
                rx_limiter: RateLimiter::new(net.shared.limit(), MAX_FRAME_LEN as u64, now),
                tx_limiter: RateLimiter::new(net.shared.limit(), MAX_FRAME_LEN as u64, now),
                rx_wait: None,
                tx_wait: None,
                limit_generation: 0,
                broken: false,
            };
            worker.process();
            worker.tap_readable = true;
            worker.process();
            let mut buf = vec![0u8; MAX_BUF_LEN];
            while peer.recv(&mut buf).is_ok() {}
            use std::sync::atomic::Ordering::Relaxed;
            if net.shared.rx_frames.load(Relaxed) + net.shared.tx_frames.load(Relaxed) > 0 {
                reach.deep();
            }
        });
    reach.report("fuzz_net_queues", "moved frames");
}
