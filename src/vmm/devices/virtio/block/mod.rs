//! virtio-blk backed by a raw image file: read, write, flush (fdatasync), get-id, discard and
//! write-zeroes (hole punching), read-only mode, and growth while the VM runs ([`resize`]).

mod discard;
pub mod persist;
mod request;
pub mod resize;

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::persist::{DeviceState, PersistError};
use super::worker::{spawn_single_queue, SingleQueue, Worker};
use super::{read_config_bytes, ActivateError, GuestMemory, Interrupt, VirtioDevice};
pub use request::Disk;
pub use resize::{grow_live, BlockHandle, GrowError};

/// Size of a virtio-blk sector, whatever the image's own block size.
pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Largest request accepted (the used-ring length field is 32 bits).
const MAX_REQUEST_LEN: u64 = u32::MAX as u64;

/// How to open a disk.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Refuse guest writes (the image is opened read-only and VIRTIO_BLK_F_RO is offered).
    pub read_only: bool,
    /// Answer to VIRTIO_BLK_T_GET_ID (at most 20 bytes are kept); shows up as
    /// `/sys/block/vdX/serial` in the guest.
    pub serial: String,
}

/// Why a disk could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {source}; check that it exists and is readable{rw}")]
    Open {
        path: PathBuf,
        rw: &'static str,
        source: io::Error,
    },
    #[error("cannot read the size of disk image {path}: {source}")]
    Size { path: PathBuf, source: io::Error },
    #[error("disk image {path} is smaller than one 512-byte sector")]
    TooSmall { path: PathBuf },
    #[error("cannot duplicate the disk image handle: {0}")]
    Clone(#[source] io::Error),
    #[error(
        "disk image {path} is in use by another VMM (it holds the image's lock); stop that VM \
         first: two VMs writing one disk would corrupt its filesystem"
    )]
    InUse { path: PathBuf },
}

/// Takes an exclusive, non-blocking `flock` on a writable image, so that a second VMM (an
/// untracked one, a restarted daemon's mistake) cannot open the same disk. Filesystems without
/// `flock` support are logged and let through: the lock is a safety net, not the only guard.
fn lock_exclusive(file: &File, path: &Path) -> Result<Option<nix::fcntl::Flock<File>>, BlockError> {
    use nix::errno::Errno;
    use nix::fcntl::{Flock, FlockArg};
    let handle = file.try_clone().map_err(BlockError::Clone)?;
    match Flock::lock(handle, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Err(BlockError::InUse {
            path: path.to_path_buf(),
        }),
        Err((_, e)) => {
            tracing::warn!(
                "virtio-blk: cannot lock {} ({e}); going on without the lock",
                path.display()
            );
            Ok(None)
        }
    }
}

/// The virtio-blk device model.
#[derive(Debug)]
pub struct Block {
    /// The exclusive lock on a writable image, held as long as the device lives (and released by
    /// the kernel when the VMM exits, however it ends).
    _lock: Option<nix::fcntl::Flock<File>>,
    disk: Disk,
    /// The control socket's way to grow the disk (it shares `disk`'s capacity).
    handle: BlockHandle,
    worker: Option<Worker<SingleQueue>>,
}

impl Block {
    /// Opens the image (read-write unless `read_only`).
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        let file: File = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(&config.path)
            .map_err(|source| BlockError::Open {
                path: config.path.clone(),
                rw: if config.read_only {
                    ""
                } else {
                    " and writable"
                },
                source,
            })?;
        let lock = if config.read_only {
            None
        } else {
            lock_exclusive(&file, &config.path)?
        };
        let len = file
            .metadata()
            .map_err(|source| BlockError::Size {
                path: config.path.clone(),
                source,
            })?
            .len();
        // A partial last sector cannot be addressed by the guest; it is left untouched.
        let capacity = len / SECTOR_SIZE;
        if capacity == 0 {
            return Err(BlockError::TooSmall { path: config.path });
        }
        if !len.is_multiple_of(SECTOR_SIZE) {
            tracing::warn!(
                "virtio-blk: {} is not a multiple of 512 bytes; the last {} bytes are invisible to the guest",
                config.path.display(),
                len % SECTOR_SIZE
            );
        }
        let mut serial = config.serial.into_bytes();
        serial.truncate(VIRTIO_BLK_ID_BYTES as usize);
        let capacity = Arc::new(AtomicU64::new(capacity));
        let handle = BlockHandle::new(
            file.try_clone().map_err(BlockError::Clone)?,
            config.path,
            config.read_only,
            capacity.clone(),
        );
        Ok(Block {
            _lock: lock,
            disk: Disk {
                file,
                capacity,
                read_only: config.read_only,
                serial,
            },
            handle,
            worker: None,
        })
    }

    /// The handle the control socket grows the disk through.
    pub fn handle(&self) -> BlockHandle {
        self.handle.clone()
    }
}

/// `struct virtio_blk_config` up to `write_zeroes_may_unmap` (fields of features not offered
/// stay zero).
fn config_space(capacity: u64) -> Vec<u8> {
    fn put_u32(c: &mut [u8], at: usize, v: u32) {
        c[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    let mut c = vec![0u8; 60];
    c[0..8].copy_from_slice(&capacity.to_le_bytes());
    put_u32(&mut c, 12, u32::from(QUEUE_SIZE - 2)); // seg_max
    put_u32(&mut c, 36, discard::MAX_SECTORS); // max_discard_sectors
    put_u32(&mut c, 40, discard::MAX_SEGMENTS); // max_discard_seg
    put_u32(&mut c, 44, discard::ALIGNMENT_SECTORS); // discard_sector_alignment
    put_u32(&mut c, 48, discard::MAX_SECTORS); // max_write_zeroes_sectors
    put_u32(&mut c, 52, discard::MAX_SEGMENTS); // max_write_zeroes_seg
    c[56] = 1; // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX);
        if self.disk.read_only {
            features |= 1u64 << VIRTIO_BLK_F_RO;
        } else {
            features |= (1u64 << VIRTIO_BLK_F_DISCARD) | (1u64 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        features
    }

    fn ack_features(&mut self, _features: u64) {}

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Built at each read: the capacity changes when the disk grows (reads are rare: at probe
        // and after a configuration-change interrupt).
        read_config_bytes(&config_space(self.disk.capacity()), offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // Only the writeback field (VIRTIO_BLK_F_CONFIG_WCE) is writable, and it is not offered.
        tracing::debug!("virtio-blk: config write at {offset:#x} ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        let mut disk = self
            .disk
            .try_clone()
            .map_err(|e| ActivateError::Backend(BlockError::Clone(e).to_string()))?;
        self.worker = Some(spawn_single_queue(
            "virtio-blk",
            mem,
            interrupt,
            queues,
            queue_evts,
            MAX_REQUEST_LEN,
            Box::new(move |mem, chain| Ok(disk.execute(mem, chain))),
        )?);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
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
        Some(vec![body.queue_state()])
    }

    fn save(&self) -> DeviceState {
        DeviceState::Block(persist::save(&self.disk))
    }

    fn restore(&mut self, state: &DeviceState) -> Result<(), PersistError> {
        match state {
            DeviceState::Block(saved) => persist::check(saved, &self.disk),
            other => Err(PersistError::WrongKind {
                saved: other.kind(),
                here: "virtio-blk",
            }),
        }
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod resize_tests;
#[cfg(test)]
mod tests;
