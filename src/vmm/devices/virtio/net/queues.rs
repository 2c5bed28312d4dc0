//! The worker of an active network card: frames from the guest's transmit queue to the backend,
//! frames from the backend into the guest's receive buffers (merged across several when the
//! guest allows it), each direction held back by its rate limiter.
//!
//! Bounded by design: at most one received frame waits in the device (for guest buffers or for
//! tokens); while it waits the TAP is not read, so the kernel's TAP queue fills and drops, as a
//! full NIC would. Nothing spins: a throttled direction sleeps on a timerfd, a device without
//! guest buffers waits for the guest's receive-queue notification.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::bindings::virtio_net::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EpollEvent;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::rate_limiter::{Clock, RateLimiter};
use super::tap::NetBackend;
use super::vnet::{self, Direction, Header, HDR_LEN, MAX_BUF_LEN, MAX_FRAME_LEN};
use super::NetShared;
use crate::vmm::devices::virtio::chain::{total_len, Chain};
use crate::vmm::devices::virtio::cursor::Cursor;
use crate::vmm::devices::virtio::worker::{
    drain, next_chain, signal_used, EventLoop, QueueError, WorkerBody, STOP_TOKEN,
};
use crate::vmm::devices::virtio::{GuestMemory, Interrupt};
use crate::vmm::log_limit::LogLimit;

pub const RX_TOKEN: u64 = 0;
pub const TX_TOKEN: u64 = 1;
pub const TAP_TOKEN: u64 = 2;
pub const TIMER_TOKEN: u64 = 3;
pub const LIMIT_TOKEN: u64 = 4;

/// The shortest timer the worker arms: waits below it are rounded up, so a limiter answering
/// "a few nanoseconds" cannot turn into a stream of wakeups.
const MIN_TIMER: Duration = Duration::from_micros(500);

/// What happened to the frame waiting for the guest.
enum Delivery {
    Delivered,
    /// Not enough guest buffers yet; the frame keeps waiting.
    NoBuffers,
    /// It can never fit in what the guest gives (the buffers were left in the ring).
    TooBig,
}

/// State of the device thread.
pub struct NetWorker {
    pub(super) mem: GuestMemory,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) evts: [EventFd; 2],
    pub(super) backend: Arc<dyn NetBackend>,
    pub(super) shared: Arc<NetShared>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) timer: TimerFd,
    /// Features the driver accepted.
    pub(super) acked: u64,
    /// A frame read from the backend, header included, and its length.
    pub(super) rx_buf: Vec<u8>,
    pub(super) rx_len: Option<usize>,
    /// The backend may have frames (edge-triggered: cleared only by `WouldBlock`).
    pub(super) tap_readable: bool,
    pub(super) tx_buf: Vec<u8>,
    pub(super) rx_limiter: RateLimiter,
    pub(super) tx_limiter: RateLimiter,
    /// Until when (clock time) a direction is held back by its limiter.
    pub(super) rx_wait: Option<Duration>,
    pub(super) tx_wait: Option<Duration>,
    /// The limit generation the limiters were built from.
    pub(super) limit_generation: u64,
    pub(super) broken: bool,
}

impl WorkerBody for NetWorker {
    fn run(&mut self, event_loop: &EventLoop) {
        let mut events = vec![EpollEvent::default(); 8];
        // Started or resumed: frames may have come while nobody looked.
        self.process();
        loop {
            let ready = match event_loop.wait(&mut events) {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::error!("net: epoll_wait failed: {e}");
                    self.interrupt.set_needs_reset();
                    self.broken = true;
                    // Sleeping here instead of returning keeps the stop request answerable.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            for (token, _) in ready {
                match token {
                    STOP_TOKEN => return,
                    RX_TOKEN => drain(&self.evts[0]),
                    TX_TOKEN => drain(&self.evts[1]),
                    TAP_TOKEN => self.tap_readable = true,
                    TIMER_TOKEN => {
                        // Non-blocking: a timer re-armed after it fired reads as EAGAIN.
                        let _ = self.timer.wait();
                    }
                    LIMIT_TOKEN => drain(&self.shared.limit_evt),
                    _ => {}
                }
            }
            if !self.broken {
                self.process();
            }
        }
    }
}

impl NetWorker {
    /// One round of work on both queues, then the timer for whichever direction waits.
    pub(super) fn process(&mut self) {
        self.reload_limit();
        let now = self.clock.now();
        if self.rx_wait.is_some_and(|t| t <= now) {
            self.rx_wait = None;
        }
        if self.tx_wait.is_some_and(|t| t <= now) {
            self.tx_wait = None;
        }
        let mut result = Ok(());
        if self.tx_wait.is_none() {
            result = self.process_tx();
        }
        if result.is_ok() && self.rx_wait.is_none() {
            result = self.process_rx();
        }
        if let Err(e) = result {
            static NEEDS_RESET: LogLimit = LogLimit::new(10_000);
            crate::warn_limited!(
                NEEDS_RESET,
                "net: {e}; the device needs a reset by the driver"
            );
            self.broken = true;
            self.interrupt.set_needs_reset();
            return;
        }
        self.arm_timer(now);
    }

    /// A new limit from the control socket: fresh limiters, and whatever waited looks again.
    fn reload_limit(&mut self) {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        if generation == self.limit_generation {
            return;
        }
        self.limit_generation = generation;
        let limit = self.shared.limit();
        let now = self.clock.now();
        self.rx_limiter = RateLimiter::new(limit, MAX_FRAME_LEN as u64, now);
        self.tx_limiter = RateLimiter::new(limit, MAX_FRAME_LEN as u64, now);
        self.rx_wait = None;
        self.tx_wait = None;
    }

    fn arm_timer(&mut self, now: Duration) {
        let next = match (self.rx_wait, self.tx_wait) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return,
        };
        let after = next.saturating_sub(now).max(MIN_TIMER);
        if let Err(e) = self.timer.reset(after, None) {
            // Without the timer the throttled direction would stall: give up on the device,
            // which the driver can reset, rather than on the VMM.
            tracing::error!("net: cannot arm the rate-limit timer: {e}");
            self.broken = true;
            self.interrupt.set_needs_reset();
        }
    }

    fn dropped(&self, direction: Direction, why: &str) {
        let counter = match direction {
            Direction::Tx => &self.shared.tx_dropped,
            Direction::Rx => &self.shared.rx_dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Guest-triggered, so debug only (see the virtio module's logging rule).
        tracing::debug!("net: dropped a {direction:?} frame: {why}");
    }

    /// Sends every frame the guest queued, until the queue is empty or the limiter says wait.
    pub(super) fn process_tx(&mut self) -> Result<(), QueueError> {
        let mut used = false;
        let result = loop {
            let chain = match next_chain(&mut self.tx, &self.mem, u64::from(u32::MAX)) {
                Ok(Some(chain)) => chain,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let len = total_len(&chain.readable);
            let fits = (HDR_LEN as u64..=MAX_BUF_LEN as u64).contains(&len);
            if fits {
                let frame_len = len - HDR_LEN as u64;
                let now = self.clock.now();
                let wait = self.tx_limiter.wait(frame_len, now);
                if !wait.is_zero() {
                    // The chain stays in the ring for when the tokens are there.
                    self.tx.go_to_previous_position();
                    self.tx_wait = Some(now + wait);
                    break Ok(());
                }
                if let Err(e) = self.send(&chain, len as usize) {
                    self.dropped(Direction::Tx, &e);
                } else {
                    self.tx_limiter.consume(frame_len);
                    self.shared.tx_frames.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                self.dropped(
                    Direction::Tx,
                    &format!("{len} bytes with the header, outside {HDR_LEN}..={MAX_BUF_LEN}"),
                );
            }
            if let Err(e) = self.tx.add_used(&self.mem, chain.head, 0) {
                break Err(QueueError::Queue(e));
            }
            used = true;
        };
        signal_used(&self.mem, &mut self.tx, &self.interrupt, used)?;
        result
    }

    /// Copies one guest frame to the backend; the reason when it is dropped.
    fn send(&mut self, chain: &Chain, len: usize) -> Result<(), String> {
        let buf = &mut self.tx_buf[..len];
        Cursor::new(&self.mem, &chain.readable)
            .read_exact(buf)
            .map_err(|e| e.to_string())?;
        let header = Header::parse(buf).ok_or("no header")?;
        header.check(self.acked, Direction::Tx)?;
        match self.backend.send(buf) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(format!("the backend took {n} of {len} bytes")),
            // A full TAP queue drops the frame, like a busy link; TCP sends it again.
            Err(e) => Err(format!("the backend refused it: {e}")),
        }
    }

    /// Moves frames from the backend into guest buffers until there are no more of either, or
    /// the limiter says wait.
    pub(super) fn process_rx(&mut self) -> Result<(), QueueError> {
        let mut used = false;
        let result = loop {
            let len = match self.rx_len {
                Some(len) => len,
                None => {
                    if !self.tap_readable {
                        break Ok(());
                    }
                    match self.backend.recv(&mut self.rx_buf) {
                        Ok(len) => {
                            if let Some(why) = self.refuse_rx(len) {
                                self.dropped(Direction::Rx, &why);
                                continue;
                            }
                            if !vnet::has(self.acked, VIRTIO_NET_F_GUEST_CSUM) {
                                // 5.1.6.4.1: without GUEST_CSUM the flags are zero (the TAP
                                // marks checksummed frames DATA_VALID regardless).
                                self.rx_buf[0] = 0;
                            }
                            self.rx_len = Some(len);
                            len
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.tap_readable = false;
                            break Ok(());
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // The TAP went away (its interface was deleted): nothing to read
                            // until it says otherwise.
                            static READ_FAILED: LogLimit = LogLimit::new(100);
                            crate::warn_limited!(READ_FAILED, "net: reading the TAP failed: {e}");
                            self.tap_readable = false;
                            break Ok(());
                        }
                    }
                }
            };
            let frame_len = (len - HDR_LEN) as u64;
            let now = self.clock.now();
            let wait = self.rx_limiter.wait(frame_len, now);
            if !wait.is_zero() {
                self.rx_wait = Some(now + wait);
                break Ok(());
            }
            match self.deliver(len) {
                Ok(Delivery::Delivered) => {
                    self.rx_limiter.consume(frame_len);
                    self.shared.rx_frames.fetch_add(1, Ordering::Relaxed);
                    self.rx_len = None;
                    used = true;
                }
                Ok(Delivery::NoBuffers) => break Ok(()),
                Ok(Delivery::TooBig) => {
                    self.dropped(Direction::Rx, "larger than the guest's receive buffers");
                    self.rx_len = None;
                }
                Err(e) => break Err(e),
            }
        };
        signal_used(&self.mem, &mut self.rx, &self.interrupt, used)?;
        result
    }

    /// Why a frame of `len` bytes just read from the backend cannot go to the guest.
    fn refuse_rx(&self, len: usize) -> Option<String> {
        if len < HDR_LEN {
            return Some(format!("{len} bytes, shorter than the header"));
        }
        let header = Header::parse(&self.rx_buf[..len])?;
        header
            .check(self.acked, Direction::Rx)
            .err()
            .map(str::to_string)
    }

    /// Puts the waiting frame of `len` bytes into guest receive chains: one, or with mergeable
    /// buffers as many as it needs (its header says how many in `num_buffers`).
    fn deliver(&mut self, len: usize) -> Result<Delivery, QueueError> {
        let mergeable = vnet::has(self.acked, VIRTIO_NET_F_MRG_RXBUF);
        let max_chains = if mergeable {
            usize::from(self.rx.size())
        } else {
            1
        };
        let mut chains: Vec<Chain> = Vec::new();
        let mut room: u64 = 0;
        while room < len as u64 && chains.len() < max_chains {
            let Some(chain) = next_chain(&mut self.rx, &self.mem, u64::from(u32::MAX))? else {
                break;
            };
            let writable = total_len(&chain.writable);
            if !chain.readable.is_empty() || writable == 0 {
                return Err(QueueError::Device(
                    "a receive chain with device-readable or no writable buffers".into(),
                ));
            }
            room += writable;
            chains.push(chain);
        }
        if room < len as u64 {
            let full = chains.len() == max_chains;
            // The buffers stay in the ring: they may suit the next frame, or more will come.
            for _ in &chains {
                self.rx.go_to_previous_position();
            }
            return Ok(if full {
                Delivery::TooBig
            } else {
                Delivery::NoBuffers
            });
        }
        // At most the queue size, which is at most 32768.
        vnet::set_num_buffers(&mut self.rx_buf, chains.len() as u16);
        let mut at = 0usize;
        for chain in &chains {
            let take = (total_len(&chain.writable) as usize).min(len - at);
            Cursor::new(&self.mem, &chain.writable)
                .write_all(&self.rx_buf[at..at + take])
                .map_err(|e| QueueError::Device(format!("cannot write a received frame: {e}")))?;
            at += take;
            // `take` is at most MAX_BUF_LEN.
            self.rx
                .add_used(&self.mem, chain.head, take as u32)
                .map_err(QueueError::Queue)?;
        }
        Ok(Delivery::Delivered)
    }
}

/// Registers the worker's descriptors in its epoll set.
pub(super) fn register(
    event_loop: &EventLoop,
    evts: &[EventFd; 2],
    backend: &dyn NetBackend,
    timer: &TimerFd,
    limit_evt: &EventFd,
) -> io::Result<()> {
    use vmm_sys_util::epoll::EventSet;
    event_loop.add(evts[0].as_raw_fd(), RX_TOKEN, EventSet::IN)?;
    event_loop.add(evts[1].as_raw_fd(), TX_TOKEN, EventSet::IN)?;
    // Edge-triggered: a frame left unread while the guest has no buffers must not wake the
    // worker again and again; `tap_readable` remembers it instead.
    event_loop.add(
        backend.raw_fd(),
        TAP_TOKEN,
        EventSet::IN | EventSet::EDGE_TRIGGERED,
    )?;
    event_loop.add(timer.as_raw_fd(), TIMER_TOKEN, EventSet::IN)?;
    event_loop.add(limit_evt.as_raw_fd(), LIMIT_TOKEN, EventSet::IN)
}
