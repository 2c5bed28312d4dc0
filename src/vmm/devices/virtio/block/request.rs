//! One virtio-blk request: header parsing, bounds checks, and the I/O on the image file.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use vm_memory::{Address, Bytes};

use super::discard::{self, DiscardError};
use super::SECTOR_SIZE;
use crate::vmm::devices::virtio::chain::{total_len, Buf, Chain};
use crate::vmm::devices::virtio::cursor::{Cursor, CursorError};
use crate::vmm::devices::virtio::GuestMemory;

/// Size of `struct virtio_blk_outhdr` (type, reserved, sector).
const HEADER_LEN: usize = 16;

/// Why a request failed; each maps to the status byte the guest sees.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request header is {0} bytes, 16 are needed")]
    ShortHeader(u64),
    #[error("data length {0} is not a multiple of 512")]
    UnalignedLength(u64),
    #[error("sectors {sector}..+{count} are past the end of the disk ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("disk I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("moving data to or from the guest failed: {0}")]
    Transfer(#[from] CursorError),
    #[error("{0}")]
    Discard(#[from] DiscardError),
}

impl RequestError {
    fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            RequestError::Discard(e) if e.is_unsupported() => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// The backing image as the worker thread uses it.
#[derive(Debug)]
pub struct Disk {
    pub(super) file: File,
    /// Size in 512-byte sectors, shared by the device, its worker and its [`super::BlockHandle`]:
    /// a live growth changes it for all of them at once (the file is extended first, so no
    /// request ever sees sectors the file does not have yet).
    pub(super) capacity: Arc<AtomicU64>,
    pub(super) read_only: bool,
    pub(super) serial: Vec<u8>,
}

impl Disk {
    /// Size in 512-byte sectors now.
    pub(super) fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Acquire)
    }

    pub(super) fn try_clone(&self) -> io::Result<Disk> {
        Ok(Disk {
            file: self.file.try_clone()?,
            capacity: self.capacity.clone(),
            read_only: self.read_only,
            serial: self.serial.clone(),
        })
    }

    /// Runs the request in `chain` and writes its status byte. Returns the used length (bytes
    /// written into the guest, status included). A chain without room for a status byte gets a
    /// used length of 0: there is nowhere to report the error, and the driver never builds one.
    pub fn execute(&mut self, mem: &GuestMemory, chain: &Chain) -> u32 {
        let Some((data_out, status_at)) = split_status(&chain.writable) else {
            tracing::debug!("virtio-blk: request without a status byte; returned unprocessed");
            return 0;
        };
        let (status, written) = match self.run(mem, &chain.readable, &data_out) {
            Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
            Err(e) => {
                tracing::debug!("virtio-blk: {e}");
                (e.status(), 0)
            }
        };
        if let Err(e) = mem.write_obj(status, status_at) {
            // Unreachable for a validated chain; logged rather than trusted.
            static STATUS_WRITE: crate::vmm::log_limit::LogLimit =
                crate::vmm::log_limit::LogLimit::new(10_000);
            crate::warn_limited!(
                STATUS_WRITE,
                "virtio-blk: cannot write the status byte: {e}"
            );
        }
        // `written` is bounded by the chain length, which Chain::parse capped at u32::MAX.
        u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX)
    }

    fn run(
        &mut self,
        mem: &GuestMemory,
        readable: &[Buf],
        data_out: &[Buf],
    ) -> Result<u64, RequestError> {
        let mut input = Cursor::new(mem, readable);
        if input.remaining() < HEADER_LEN as u64 {
            return Err(RequestError::ShortHeader(input.remaining()));
        }
        let mut header = [0u8; HEADER_LEN];
        input.read_exact(&mut header)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = total_len(data_out);
                self.seek_checked(sector, len)?;
                Cursor::new(mem, data_out).copy_from(&mut self.file, len)?;
                Ok(len)
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let len = input.remaining();
                self.seek_checked(sector, len)?;
                input.copy_to(&mut self.file, len)?;
                Ok(0)
            }
            VIRTIO_BLK_T_FLUSH => {
                self.file.sync_data()?;
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                let mut out = Cursor::new(mem, data_out);
                let mut id = [0u8; 20];
                id[..self.serial.len()].copy_from_slice(&self.serial);
                let n = (out.remaining() as usize).min(id.len());
                out.write_all(&id[..n])?;
                Ok(n as u64)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let write_zeroes = kind == VIRTIO_BLK_T_WRITE_ZEROES;
                let capacity = self.capacity();
                discard::execute(&mut self.file, capacity, &mut input, write_zeroes)?;
                Ok(0)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }

    /// Checks that `len` bytes from `sector` lie on the disk and positions the file there.
    fn seek_checked(&mut self, sector: u64, len: u64) -> Result<(), RequestError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(RequestError::UnalignedLength(len));
        }
        let count = len / SECTOR_SIZE;
        let capacity = self.capacity();
        let out_of_range = RequestError::OutOfRange {
            sector,
            count,
            capacity,
        };
        match sector.checked_add(count) {
            Some(end) if end <= capacity => {}
            _ => return Err(out_of_range),
        }
        // sector < capacity <= u64::MAX / 512 since capacity came from a byte length.
        self.file.seek(SeekFrom::Start(sector * SECTOR_SIZE))?;
        Ok(())
    }
}

/// Splits the device-writable buffers into the data part and the address of the final status byte.
fn split_status(writable: &[Buf]) -> Option<(Vec<Buf>, vm_memory::GuestAddress)> {
    let mut data: Vec<Buf> = writable.iter().copied().filter(|b| b.len > 0).collect();
    let last = data.pop()?;
    let status_at = last.addr.unchecked_add(u64::from(last.len - 1));
    if last.len > 1 {
        data.push(Buf {
            addr: last.addr,
            len: last.len - 1,
        });
    }
    Some((data, status_at))
}
