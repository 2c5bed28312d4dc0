//! What a virtio-vsock device keeps in a snapshot: its queues (saved by the transport) and the
//! CID it had. Host connections are not saved: the host ends of them belong to other processes,
//! so after a restore the device sends the guest `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on the event
//! queue, the guest resets every connected socket and re-reads its CID, and its listeners (the
//! agent's) stay open for new host connections.

use serde::{Deserialize, Serialize};

use super::VsockConfig;

/// `struct virtio_vsock_event.id` for a transport reset (virtio 1.2 5.10.6.6).
pub const TRANSPORT_RESET_EVENT: u32 = 0;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockState {
    /// The CID the guest had. A restored VM may get another one: the guest re-reads it from the
    /// config space when it handles the transport reset.
    pub guest_cid: u32,
}

pub fn save(config: &VsockConfig) -> VsockState {
    VsockState {
        guest_cid: config.guest_cid,
    }
}

pub fn log_restore(saved: &VsockState, config: &VsockConfig) {
    if saved.guest_cid != config.guest_cid {
        tracing::info!(
            "vsock: guest CID {} in the snapshot, {} now; the guest learns it at the transport reset",
            saved.guest_cid,
            config.guest_cid
        );
    }
}
