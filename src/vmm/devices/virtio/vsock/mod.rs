//! virtio-vsock with a userspace host side (Firecracker's hybrid model).
//!
//! - Host to guest: a host process connects to the Unix socket at `uds_path`, writes
//!   `CONNECT <guest port>\n`, and once the guest accepts it reads `OK <host port>\n`; after that
//!   the socket carries the stream. If the guest refuses, the socket is closed.
//! - Guest to host: a guest connecting to CID 2, port P reaches a process listening on the Unix
//!   socket `<uds_path>_<P>`; no listener there means the guest gets a connection reset.

pub mod connection;
pub(crate) mod host;
pub mod muxer;
pub mod packet;
pub mod persist;

use crate::vmm::log_limit::LogLimit;
use crate::vmm::socket_path::{self, SocketPathError};
use std::io;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EpollEvent;
use vmm_sys_util::eventfd::EventFd;

use super::chain::total_len;
use super::cursor::Cursor;
use super::persist::{DeviceState, PersistError};
use super::worker::{
    drain, next_chain, signal_used, EventLoop, QueueError, Worker, WorkerBody, STOP_TOKEN,
};
use super::{read_config_bytes, ActivateError, GuestMemory, Interrupt, VirtioDevice};
use muxer::Muxer;
use packet::{read_packet, HEADER_LEN, MAX_PAYLOAD};

const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
const RX_TOKEN: u64 = 0;
const TX_TOKEN: u64 = 1;
const EVENT_TOKEN: u64 = 2;

/// How often the worker looks whether the guest has handled the transport reset.
const RESET_POLL_MS: i32 = 5;
/// Rx is held at most this long after the transport reset, for a driver that never re-posts its
/// event buffer. Guests that "never re-posted" (the Debian desktop guest after every resume, the
/// VMM e2e's guest at times) had never seen the reset's interrupt: the VMM restored the devices
/// before the irqchip and the vCPUs' local APICs, whose restore dropped the pending edge
/// (`Vm::build` now restores the devices last). 5 s stays as the bound for a driver that truly
/// never re-posts.
const RESET_WAIT_LIMIT: Duration = Duration::from_secs(5);

/// How to set up the vsock device.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more; CIDs 0-2 are reserved).
    pub guest_cid: u32,
    /// The host Unix socket; guest-initiated connections go to `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

/// Why the vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved; use 3 or more")]
    ReservedCid(u32),
    #[error(transparent)]
    SocketPath(#[from] SocketPathError),
    #[error("cannot listen on {path}: {source}; check that the directory exists and is writable")]
    Bind { path: PathBuf, source: io::Error },
}

/// The virtio-vsock device model.
#[derive(Debug)]
pub struct Vsock {
    config: VsockConfig,
    listener: UnixListener,
    worker: Option<Worker<VsockWorker>>,
    /// Restored from a snapshot: the next activation tells the guest its connections are gone.
    reset_pending: bool,
}

impl Vsock {
    /// Binds the host socket now, so host clients can connect before the guest driver is up
    /// (they wait in the listen backlog). A stale socket file at the path (nobody accepting on it)
    /// is replaced; a live one is an error.
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        if config.guest_cid < 3 {
            return Err(VsockError::ReservedCid(config.guest_cid));
        }
        let path = &config.uds_path;
        socket_path::claim(path)?;
        let listener = UnixListener::bind(path).map_err(|source| VsockError::Bind {
            path: path.clone(),
            source,
        })?;
        Ok(Vsock {
            config,
            listener,
            worker: None,
            reset_pending: false,
        })
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.worker = None;
        let _ = std::fs::remove_file(&self.config.uds_path);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(
            &u64::from(self.config.guest_cid).to_le_bytes(),
            offset,
            data,
        );
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let (Ok([rx, tx, event]), Ok(evts)) = (
            <[Queue; 3]>::try_from(queues),
            <[EventFd; 3]>::try_from(queue_evts),
        ) else {
            return Err(ActivateError::QueueCount { want: 3, got });
        };
        let listener = self
            .listener
            .try_clone()
            .map_err(|e| ActivateError::Backend(format!("cannot share the vsock listener: {e}")))?;
        let event_loop = EventLoop::new().map_err(ActivateError::Worker)?;
        for (token, evt) in [RX_TOKEN, TX_TOKEN, EVENT_TOKEN].into_iter().zip(&evts) {
            event_loop
                .add(evt.as_raw_fd(), token, vmm_sys_util::epoll::EventSet::IN)
                .map_err(ActivateError::Worker)?;
        }
        let muxer = Muxer::new(
            u64::from(self.config.guest_cid),
            &self.config.uds_path,
            listener,
            &event_loop,
        )
        .map_err(|e| ActivateError::Backend(format!("cannot watch the vsock host socket: {e}")))?;
        let broken = interrupt.needs_reset();
        let body = VsockWorker {
            mem,
            interrupt,
            rx,
            tx,
            event,
            evts,
            muxer,
            tx_stalled: false,
            broken,
            reset_pending: std::mem::take(&mut self.reset_pending),
            reset_unhandled: None,
        };
        self.worker =
            Some(Worker::start("virtio-vsock", event_loop, body).map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping the worker's muxer closes every connection's host socket.
        self.worker = None;
    }

    fn pause(&mut self) {
        // The muxer (and so every host connection) stays with the paused body.
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
        Some(vec![body.rx.state(), body.tx.state(), body.event.state()])
    }

    fn save(&self) -> DeviceState {
        DeviceState::Vsock(persist::save(&self.config))
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), PersistError> {
        match state {
            DeviceState::Vsock(saved) => {
                persist::log_restore(saved, &self.config);
                self.reset_pending = true;
                Ok(())
            }
            other => Err(PersistError::WrongKind {
                saved: other.kind(),
                here: "virtio-vsock",
            }),
        }
    }
}

/// State of the device thread.
pub struct VsockWorker {
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    rx: Queue,
    tx: Queue,
    /// The event queue: its only event is the transport reset sent after a restore.
    event: Queue,
    evts: [EventFd; 3],
    muxer: Muxer,
    /// Tx processing paused because the muxer's answer backlog is full.
    tx_stalled: bool,
    /// The guest's queues were found broken; nothing is processed until a driver reset.
    broken: bool,
    /// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` is owed to the guest (it waits for an event buffer).
    reset_pending: bool,
    /// The transport reset is in the guest's event ring but the guest has not handled it yet.
    reset_unhandled: Option<ResetSent>,
}

/// A transport reset the guest may not have handled yet. Until it has, nothing goes into rx: the
/// guest's driver runs its rx and event work independently (Linux queues the rx work first when
/// both interrupts are pending), so a host connection request delivered right after a restore
/// would be accepted and then killed by the reset that follows it. Linux re-posts an event buffer
/// only after handling the event, so the event ring's available index moving past the one seen
/// when the reset was sent means the old connections are gone.
#[derive(Debug, Clone, Copy)]
struct ResetSent {
    event_avail: Wrapping<u16>,
    at: Instant,
}

impl WorkerBody for VsockWorker {
    fn run(&mut self, event_loop: &EventLoop) {
        self.run_loop(event_loop)
    }
}

impl VsockWorker {
    fn run_loop(&mut self, event_loop: &EventLoop) {
        let mut events = vec![EpollEvent::default(); 32];
        if self.reset_pending && !self.broken {
            self.send_transport_reset();
        }
        loop {
            // A broken device processes nothing, so it has no reason to poll.
            let timeout_ms = if self.reset_unhandled.is_some() && !self.broken {
                RESET_POLL_MS
            } else {
                -1
            };
            let ready = match event_loop.wait_at_most(timeout_ms, &mut events) {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::error!("vsock: epoll_wait failed: {e}");
                    self.interrupt.set_needs_reset();
                    self.broken = true;
                    // Sleeping here instead of returning keeps the stop request answerable.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            let mut tx_kicked = false;
            for (token, set) in ready {
                match token {
                    STOP_TOKEN => return,
                    RX_TOKEN => drain(&self.evts[0]),
                    TX_TOKEN => {
                        drain(&self.evts[1]);
                        tx_kicked = true;
                    }
                    // The guest posted event buffers: one may be owed a transport reset.
                    EVENT_TOKEN => {
                        drain(&self.evts[2]);
                        if self.reset_pending && !self.broken {
                            self.send_transport_reset();
                        }
                    }
                    _ => self.muxer.handle_event(event_loop, token, set),
                }
            }
            if self.broken {
                continue;
            }
            let mut result = Ok(());
            if tx_kicked || self.tx_stalled {
                result = self.process_tx(event_loop);
            }
            if result.is_ok() {
                result = self.process_rx();
            }
            // Rx buffers freed the backlog: take the tx packets that were left waiting.
            if result.is_ok() && self.tx_stalled && !self.muxer.backlog_full() {
                result = self.process_tx(event_loop).and_then(|()| self.process_rx());
            }
            if let Err(e) = result {
                static NEEDS_RESET: LogLimit = LogLimit::new(10_000);
                crate::warn_limited!(
                    NEEDS_RESET,
                    "vsock: {e}; the device needs a reset by the driver"
                );
                self.broken = true;
                self.interrupt.set_needs_reset();
            }
        }
    }

    /// Puts `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` in the guest's next event buffer (virtio 1.2
    /// 5.10.6.6): the guest drops its connections, re-reads its CID and keeps its listeners.
    /// Without a buffer yet, it stays owed until the guest posts one.
    fn send_transport_reset(&mut self) {
        let result =
            next_chain(&mut self.event, &self.mem, u64::from(u32::MAX)).and_then(|chain| {
                let Some(chain) = chain else {
                    return Ok(false);
                };
                let mut out = Cursor::new(&self.mem, &chain.writable);
                out.write_all(&persist::TRANSPORT_RESET_EVENT.to_le_bytes())
                    .map_err(|e| {
                        QueueError::Device(format!("cannot write the vsock event: {e}"))
                    })?;
                self.event
                    .add_used(&self.mem, chain.head, out.done() as u32)
                    .map_err(QueueError::Queue)?;
                let event_avail = self
                    .event
                    .avail_idx(&self.mem, Ordering::Acquire)
                    .map_err(QueueError::Queue)?;
                self.reset_unhandled = Some(ResetSent {
                    event_avail,
                    at: Instant::now(),
                });
                signal_used(&self.mem, &mut self.event, &self.interrupt, true)?;
                Ok(true)
            });
        match result {
            Ok(sent) => {
                if sent {
                    tracing::info!("vsock: transport reset sent to the guest after the restore");
                }
                self.reset_pending = !sent;
            }
            Err(e) => {
                static EVENT_NEEDS_RESET: LogLimit = LogLimit::new(10_000);
                crate::warn_limited!(
                    EVENT_NEEDS_RESET,
                    "vsock: event queue: {e}; the device needs a reset by the driver"
                );
                self.broken = true;
                self.interrupt.set_needs_reset();
            }
        }
    }

    /// Takes every packet the guest queued for sending.
    fn process_tx(&mut self, event_loop: &EventLoop) -> Result<(), QueueError> {
        let mem = &self.mem;
        let mut used = false;
        let result = loop {
            self.tx_stalled = self.muxer.backlog_full();
            if self.tx_stalled {
                break Ok(());
            }
            let chain = match next_chain(&mut self.tx, mem, u64::from(u32::MAX)) {
                Ok(Some(chain)) => chain,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            match read_packet(mem, &chain.readable) {
                Ok((hdr, payload)) => self.muxer.handle_guest_packet(event_loop, &hdr, &payload),
                Err(e) => {
                    // A bad packet is dropped (and its connection reset); the device goes on.
                    tracing::debug!("vsock: dropped a guest packet: {e}");
                    if let Some(hdr) = e.header() {
                        self.muxer.reject_packet(hdr);
                    }
                }
            }
            if let Err(e) = self.tx.add_used(mem, chain.head, 0) {
                break Err(QueueError::Queue(e));
            }
            used = true;
        };
        signal_used(mem, &mut self.tx, &self.interrupt, used)?;
        result
    }

    /// True while the guest may still be about to handle the transport reset (see [`ResetSent`]).
    fn reset_still_unhandled(&mut self) -> Result<bool, QueueError> {
        let Some(sent) = self.reset_unhandled else {
            return Ok(false);
        };
        let avail = self
            .event
            .avail_idx(&self.mem, Ordering::Acquire)
            .map_err(QueueError::Queue)?;
        if avail != sent.event_avail {
            tracing::info!(
                "vsock: the guest handled the transport reset after {:?}",
                sent.at.elapsed()
            );
        } else if sent.at.elapsed() >= RESET_WAIT_LIMIT {
            tracing::warn!(
                "vsock: the guest did not re-post an event buffer within {RESET_WAIT_LIMIT:?} \
                 of the transport reset; rx goes on"
            );
        } else {
            return Ok(true);
        }
        self.reset_unhandled = None;
        Ok(false)
    }

    /// Fills guest rx buffers with whatever the host side has for the guest.
    fn process_rx(&mut self) -> Result<(), QueueError> {
        if self.reset_still_unhandled()? {
            return Ok(());
        }
        let mem = &self.mem;
        let mut used = false;
        let result = loop {
            if !self.muxer.has_rx() {
                break Ok(());
            }
            // No buffer: the guest's next rx notification brings us back here.
            let chain = match next_chain(&mut self.rx, mem, u64::from(u32::MAX)) {
                Ok(Some(chain)) => chain,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let room = total_len(&chain.writable);
            if room < HEADER_LEN as u64 {
                break Err(QueueError::Device(format!(
                    "rx buffer of {room} bytes cannot hold a packet header"
                )));
            }
            let max_payload = (room - HEADER_LEN as u64).min(MAX_PAYLOAD as u64) as usize;
            let Some((hdr, payload)) = self.muxer.next_rx(max_payload) else {
                self.rx.go_to_previous_position();
                break Ok(());
            };
            let mut out = Cursor::new(mem, &chain.writable);
            let written = out
                .write_all(&hdr.encode())
                .and_then(|()| out.write_all(&payload));
            if let Err(e) = written {
                break Err(QueueError::Device(format!(
                    "cannot write an rx packet: {e}"
                )));
            }
            // HEADER_LEN + payload <= 44 + 64 KiB.
            if let Err(e) = self.rx.add_used(mem, chain.head, out.done() as u32) {
                break Err(QueueError::Queue(e));
            }
            used = true;
        };
        signal_used(mem, &mut self.rx, &self.interrupt, used)?;
        result
    }
}

#[cfg(test)]
mod tests;
