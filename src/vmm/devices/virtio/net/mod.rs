//! virtio-net on a TAP device: one receive and one transmit queue, the card's MAC in the config
//! space with the link reported up, mergeable receive buffers, checksum and TCP segmentation
//! offloads both ways (see [`vnet::OFFERED_FEATURES`]), and a token-bucket rate limiter per
//! direction that the control socket can change while the VM runs ([`NetHandle`]).
//!
//! - [`tap`]: the TAP backend (opened by name or inherited as a descriptor).
//! - [`queues`]: the worker moving frames between the queues and the backend.
//! - [`rate_limiter`]: the token buckets.
//! - [`vnet`]: the virtio-net header and the feature bits.
//! - [`persist`]: what a snapshot keeps.

pub mod persist;
pub mod queues;
pub mod rate_limiter;
pub mod tap;
pub mod vnet;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_net::VIRTIO_NET_S_LINK_UP;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::persist::{DeviceState, PersistError};
use super::worker::{EventLoop, Worker};
use super::{read_config_bytes, ActivateError, GuestMemory, Interrupt, VirtioDevice};
use crate::vmm::config::{MacAddr, NetConfig, NetRateLimit};
use queues::NetWorker;
use rate_limiter::{Clock, MonotonicClock, RateLimiter};
use tap::{NetBackend, Tap, TapError};
use vnet::{MAX_BUF_LEN, MAX_FRAME_LEN};

const QUEUE_SIZES: [u16; 2] = [256, 256];

/// Why a network card could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot create the network card's {what}: {source}")]
    Resource {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What the device and the control socket share: the current limit and counters.
#[derive(Debug)]
pub struct NetShared {
    limit: Mutex<Option<NetRateLimit>>,
    /// Bumped with every new limit; the worker rebuilds its limiters when it changes.
    generation: AtomicU64,
    /// Wakes the worker after a new limit.
    limit_evt: EventFd,
    /// Frames dropped (bad, too big for the guest's buffers, refused by the backend).
    pub rx_dropped: AtomicU64,
    pub tx_dropped: AtomicU64,
    /// Frames moved.
    pub rx_frames: AtomicU64,
    pub tx_frames: AtomicU64,
}

impl NetShared {
    fn limit(&self) -> Option<NetRateLimit> {
        *self.limit.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle on a card's limit, for the control socket; valid while the VM runs.
#[derive(Debug, Clone)]
pub struct NetHandle(Arc<NetShared>);

impl NetHandle {
    /// Replaces the limit of both directions (none: unlimited) with full buckets. Takes effect
    /// at once, also while the device is paused or not yet started by the driver.
    pub fn set_limit(&self, limit: Option<NetRateLimit>) {
        let limit = limit.filter(|l| !l.is_unlimited());
        *self.0.limit.lock().unwrap_or_else(|e| e.into_inner()) = limit;
        self.0.generation.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.0.limit_evt.write(1) {
            tracing::warn!("net: cannot wake the device for its new limit: {e}");
        }
    }

    /// The current limit.
    pub fn limit(&self) -> Option<NetRateLimit> {
        self.0.limit()
    }

    #[cfg(test)]
    pub fn shared(&self) -> &NetShared {
        &self.0
    }
}

/// The virtio-net device model.
#[derive(Debug)]
pub struct Net {
    mac: MacAddr,
    backend: Arc<dyn NetBackend>,
    shared: Arc<NetShared>,
    clock: Arc<dyn Clock>,
    acked: u64,
    worker: Option<Worker<NetWorker>>,
}

impl Net {
    /// Opens the card's TAP and builds the device.
    pub fn new(config: &NetConfig) -> Result<Net, NetError> {
        let tap = Tap::open(&config.tap)?;
        tracing::debug!("net: TAP {} for MAC {}", tap.name(), config.mac);
        Net::with_backend(
            config.mac,
            Arc::new(tap),
            config.limit,
            Arc::new(MonotonicClock::new()),
        )
    }

    /// The device on any backend and clock (tests use a socket pair and a hand-moved clock).
    pub fn with_backend(
        mac: MacAddr,
        backend: Arc<dyn NetBackend>,
        limit: Option<NetRateLimit>,
        clock: Arc<dyn Clock>,
    ) -> Result<Net, NetError> {
        let limit_evt = EventFd::new(EFD_NONBLOCK).map_err(|source| NetError::Resource {
            what: "limit eventfd",
            source,
        })?;
        Ok(Net {
            mac,
            backend,
            shared: Arc::new(NetShared {
                limit: Mutex::new(limit.filter(|l| !l.is_unlimited())),
                generation: AtomicU64::new(0),
                limit_evt,
                rx_dropped: AtomicU64::new(0),
                tx_dropped: AtomicU64::new(0),
                rx_frames: AtomicU64::new(0),
                tx_frames: AtomicU64::new(0),
            }),
            clock,
            acked: 0,
            worker: None,
        })
    }

    /// The handle the control socket changes the limit through.
    pub fn handle(&self) -> NetHandle {
        NetHandle(self.shared.clone())
    }
}

fn timer() -> std::io::Result<TimerFd> {
    use std::os::fd::AsRawFd;
    let timer = TimerFd::new()?;
    let fd = timer.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL only change the flags of the timerfd this function owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(timer)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        vnet::OFFERED_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & vnet::OFFERED_FEATURES;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config { u8 mac[6]; le16 status; ... }: the rest is for features
        // not offered (multiqueue, MTU, speed), and reads as zero.
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac.bytes());
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR (not offered).
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let (Ok([rx, tx]), Ok(evts)) = (
            <[Queue; 2]>::try_from(queues),
            <[EventFd; 2]>::try_from(queue_evts),
        ) else {
            return Err(ActivateError::QueueCount { want: 2, got });
        };
        let offload = vnet::tap_offload(self.acked);
        self.backend.set_offload(offload).map_err(|e| {
            ActivateError::Backend(format!("cannot set the TAP offloads to {offload:#x}: {e}"))
        })?;
        let timer = timer().map_err(ActivateError::Worker)?;
        let event_loop = EventLoop::new().map_err(ActivateError::Worker)?;
        queues::register(
            &event_loop,
            &evts,
            &*self.backend,
            &timer,
            &self.shared.limit_evt,
        )
        .map_err(ActivateError::Worker)?;
        let now = self.clock.now();
        let limit = self.shared.limit();
        let broken = interrupt.needs_reset();
        let body = NetWorker {
            mem,
            interrupt,
            rx,
            tx,
            evts,
            backend: self.backend.clone(),
            shared: self.shared.clone(),
            clock: self.clock.clone(),
            timer,
            acked: self.acked,
            rx_buf: vec![0; MAX_BUF_LEN],
            rx_len: None,
            tap_readable: true,
            tx_buf: vec![0; MAX_BUF_LEN],
            rx_limiter: RateLimiter::new(limit, MAX_FRAME_LEN as u64, now),
            tx_limiter: RateLimiter::new(limit, MAX_FRAME_LEN as u64, now),
            rx_wait: None,
            tx_wait: None,
            limit_generation: self.shared.generation.load(Ordering::SeqCst),
            broken,
        };
        self.worker =
            Some(Worker::start("virtio-net", event_loop, body).map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
        self.acked = 0;
    }

    fn pause(&mut self) {
        if let Some(w) = self.worker.as_mut() {
            w.pause();
        }
    }

    fn resume(&mut self) -> Result<(), ActivateError> {
        match self.worker.as_mut() {
            Some(w) => w.resume().map_err(ActivateError::Worker),
            None => Ok(()),
        }
    }

    fn paused_queues(&self) -> Option<Vec<virtio_queue::QueueState>> {
        let body = self.worker.as_ref()?.paused_body()?;
        Some(vec![body.rx.state(), body.tx.state()])
    }

    fn save(&self) -> DeviceState {
        DeviceState::Net(persist::save(self.mac, self.acked, self.shared.limit()))
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), PersistError> {
        match state {
            DeviceState::Net(saved) => {
                persist::check(saved, self.mac, self.shared.limit())?;
                self.acked = saved.acked_features & vnet::OFFERED_FEATURES;
                Ok(())
            }
            other => Err(PersistError::WrongKind {
                saved: other.kind(),
                here: "virtio-net",
            }),
        }
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
pub(crate) mod tests;
