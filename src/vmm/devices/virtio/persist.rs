//! What every virtio device's snapshot has in common: the saved form of a queue, the per-device
//! state (each kind's own in its `persist` module) and the error a restore gives when a saved
//! state does not fit the device it is restored into.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;

use super::block::persist::BlockState;
use super::net::persist::NetState;
use super::rng::persist::RngState;
use super::vsock::persist::VsockState;

/// Why a saved device state cannot be restored into this device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PersistError {
    #[error("the snapshot has a {saved} device where this VM has a {here} device; restore with the configuration the snapshot was taken with")]
    WrongKind {
        saved: &'static str,
        here: &'static str,
    },
    #[error("the snapshot's {what} was {saved}, this VM's is {here}; {hint}")]
    Mismatch {
        what: &'static str,
        saved: String,
        here: String,
        hint: &'static str,
    },
    #[error("the snapshot's queue {index} is invalid: {reason}")]
    Queue { index: usize, reason: String },
}

/// A virtqueue as the device left it: ring addresses, size, and where the device was in the
/// available and used rings (virtio-queue's `QueueState`, which has no serde of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub event_idx_enabled: bool,
    pub next_avail: u16,
    pub next_used: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for SavedQueue {
    fn from(q: QueueState) -> Self {
        SavedQueue {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            event_idx_enabled: q.event_idx_enabled,
            next_avail: q.next_avail,
            next_used: q.next_used,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<SavedQueue> for QueueState {
    fn from(q: SavedQueue) -> Self {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// One device's own state (the transport saves the registers and queues around it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    Block(BlockState),
    Vsock(VsockState),
    Rng(RngState),
    Net(NetState),
}

impl DeviceState {
    /// The kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceState::Block(_) => "virtio-blk",
            DeviceState::Vsock(_) => "virtio-vsock",
            DeviceState::Rng(_) => "virtio-rng",
            DeviceState::Net(_) => "virtio-net",
        }
    }
}
