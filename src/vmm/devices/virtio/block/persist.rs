//! What a virtio-blk device keeps in a snapshot. Requests are served synchronously by the worker,
//! so at a queue boundary none is in flight: the queue (saved by the transport) and the disk's
//! shape are the whole state. The image's contents are the disk file itself, which the caller
//! keeps (or copies, for a clone) beside the snapshot.

use serde::{Deserialize, Serialize};

use super::request::Disk;
use crate::vmm::devices::virtio::persist::PersistError;

/// The disk as the guest knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// Size in 512-byte sectors (the guest cached it at probe time, or at the last live growth,
    /// which the snapshot therefore keeps: the restored guest and its disk file are both grown).
    pub capacity: u64,
    /// Whether `VIRTIO_BLK_F_RO` was offered.
    pub read_only: bool,
    /// The get-id answer.
    pub serial: Vec<u8>,
}

pub fn save(disk: &Disk) -> BlockState {
    BlockState {
        capacity: disk.capacity(),
        read_only: disk.read_only,
        serial: disk.serial.clone(),
    }
}

/// A restored guest keeps the size and features it probed, so the image it gets must match them.
pub fn check(saved: &BlockState, disk: &Disk) -> Result<(), PersistError> {
    if saved.capacity != disk.capacity() {
        return Err(PersistError::Mismatch {
            what: "disk size in sectors",
            saved: saved.capacity.to_string(),
            here: disk.capacity().to_string(),
            hint: "give the restored VM the disk image (or a same-sized copy) it had when the snapshot was taken",
        });
    }
    if saved.read_only != disk.read_only {
        return Err(PersistError::Mismatch {
            what: "disk read-only flag",
            saved: saved.read_only.to_string(),
            here: disk.read_only.to_string(),
            hint: "pass the disk with the same ',ro' setting as when the snapshot was taken",
        });
    }
    Ok(())
}
