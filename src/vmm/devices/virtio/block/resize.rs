//! Growing a disk while the VM runs (the control socket's `grow-disk`): the image file is
//! extended (sparse: no block is written), the capacity every request is checked against moves
//! up, and the driver is told with a configuration-change interrupt (virtio-mmio
//! `InterruptStatus` bit 1), on which Linux's virtio_blk re-reads `capacity` and resizes the
//! block device. Growth only: the guest's filesystem runs to the old end of the disk, and a
//! shrink would cut it off.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::SECTOR_SIZE;
use crate::vmm::devices::virtio::MmioTransport;

/// Largest disk a growth may ask for: 16 TiB, far above any quota, and small enough that no
/// sector arithmetic can overflow (a guest's ext4 with 4 KiB blocks goes well beyond it, so the
/// cap is ours, not the guest's).
pub const MAX_DISK_BYTES: u64 = 16 << 40;

/// Why a disk was not grown; each says what to ask instead.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("the disk is read-only; only a writable disk can grow")]
    ReadOnly,
    #[error(
        "a disk can only grow: it has {have} bytes and {want} would shrink it (the guest's \
         filesystem runs to its end)"
    )]
    Shrink { have: u64, want: u64 },
    #[error("{want} bytes is not a whole number of 512-byte sectors; ask for a multiple of 512")]
    Unaligned { want: u64 },
    #[error("{want} bytes is over the {max} bytes (16 TiB) a disk may have; ask for less")]
    TooLarge { want: u64, max: u64 },
    #[error(
        "cannot extend the disk image {path} to {want} bytes: {source}; check the space and \
         limits of its filesystem"
    )]
    Extend {
        path: PathBuf,
        want: u64,
        source: io::Error,
    },
}

/// A handle on one disk's size, for the control socket; valid while the VM runs.
#[derive(Debug, Clone)]
pub struct BlockHandle(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    /// The image, for extending it (a duplicate of the device's descriptor).
    file: File,
    path: PathBuf,
    read_only: bool,
    /// The device's own capacity in sectors (see `request::Disk::capacity`).
    capacity: Arc<AtomicU64>,
    /// Two growths at once would race on the file's length.
    growing: Mutex<()>,
}

impl BlockHandle {
    pub(super) fn new(
        file: File,
        path: PathBuf,
        read_only: bool,
        capacity: Arc<AtomicU64>,
    ) -> BlockHandle {
        BlockHandle(Arc::new(Shared {
            file,
            path,
            read_only,
            capacity,
            growing: Mutex::new(()),
        }))
    }

    /// What the guest is (or is about to be) told the disk holds, in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.0.capacity.load(Ordering::Acquire) * SECTOR_SIZE
    }

    /// Extends the image to `want` bytes and publishes the new capacity. `Ok(false)`: the disk
    /// has that size already (asking twice is not an error, so a caller may retry).
    fn grow(&self, want: u64) -> Result<bool, GrowError> {
        let _one_at_a_time = self.0.growing.lock().unwrap_or_else(|e| e.into_inner());
        if self.0.read_only {
            return Err(GrowError::ReadOnly);
        }
        if !want.is_multiple_of(SECTOR_SIZE) {
            return Err(GrowError::Unaligned { want });
        }
        if want > MAX_DISK_BYTES {
            return Err(GrowError::TooLarge {
                want,
                max: MAX_DISK_BYTES,
            });
        }
        let have = self.size_bytes();
        if want < have {
            return Err(GrowError::Shrink { have, want });
        }
        if want == have {
            return Ok(false);
        }
        let extend = |source| GrowError::Extend {
            path: self.0.path.clone(),
            want,
            source,
        };
        // A file already longer (a partial last sector the guest never saw) is never cut.
        let len = self.0.file.metadata().map_err(extend)?.len();
        if len < want {
            self.0.file.set_len(want).map_err(extend)?;
        }
        // After the file has the sectors: a request the worker checks against the new capacity
        // finds them (reads of the new part are holes, zeroes).
        self.0.capacity.store(want / SECTOR_SIZE, Ordering::Release);
        Ok(true)
    }
}

/// Grows the disk `handle` names to `want` bytes and tells the driver behind `transport` (the
/// disk's own). The caller holds the transport's lock, which every guest register access takes
/// too: the guest reads the capacity either before or after the change, and the configuration
/// generation moves with it, so a driver reading the 64-bit field in two halves sees the change
/// and reads again. Returns the disk's size now.
pub fn grow_live(
    transport: &mut MmioTransport,
    handle: &BlockHandle,
    want: u64,
) -> Result<u64, GrowError> {
    if handle.grow(want)? {
        transport.signal_config_change();
        tracing::info!(
            "virtio-blk {}: grown to {want} bytes",
            handle.0.path.display()
        );
    }
    Ok(handle.size_bytes())
}
