//! VIRTIO_BLK_T_DISCARD and VIRTIO_BLK_T_WRITE_ZEROES: image ranges handed back to the host
//! filesystem (hole punching keeps sparse images sparse when the guest frees blocks) or zeroed.

use std::fs::File;
use std::io;

use vmm_sys_util::write_zeroes::{PunchHole, WriteZeroesAt};

use super::SECTOR_SIZE;
use crate::vmm::devices::virtio::cursor::{Cursor, CursorError};

/// Largest segment accepted (advertised as max_discard_sectors / max_write_zeroes_sectors): 32 MiB.
/// With [`MAX_SEGMENTS`] one request covers at most 512 MiB, which bounds how long the worker is
/// busy (and a driver reset waits) when zeroes have to be written because the host filesystem
/// cannot zero or punch ranges.
pub const MAX_SECTORS: u32 = 1 << 16;
/// Most segments in one request (max_discard_seg / max_write_zeroes_seg).
pub const MAX_SEGMENTS: u32 = 16;
/// Advertised discard granularity in sectors: 4 KiB, the usual host filesystem block.
pub const ALIGNMENT_SECTORS: u32 = 8;
/// `struct virtio_blk_discard_write_zeroes`: le64 sector, le32 num_sectors, le32 flags.
const SEGMENT_LEN: u64 = 16;
/// Write-zeroes flag: the device may deallocate the range instead of writing zeroes.
const FLAG_UNMAP: u32 = 1;

/// Why a discard or write-zeroes request failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    #[error("payload of {0} bytes is not a whole number of 16-byte segments")]
    Malformed(u64),
    #[error("{0} segments, more than the {MAX_SEGMENTS} advertised")]
    TooManySegments(u64),
    #[error("segment flags {0:#x} are not supported for this request")]
    UnsupportedFlags(u32),
    #[error("segment of {0} sectors is larger than the {MAX_SECTORS} advertised")]
    TooLarge(u32),
    #[error("sectors {sector}..+{count} are past the end of the disk ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        count: u32,
        capacity: u64,
    },
    #[error("cannot zero or deallocate the image range: {0}")]
    Io(#[from] io::Error),
    #[error("reading the segments from the guest failed: {0}")]
    Transfer(#[from] CursorError),
}

impl DiscardError {
    /// Unknown flags are "unsupported"; anything else is an I/O error for the guest.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, DiscardError::UnsupportedFlags(_))
    }
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    sector: u64,
    count: u32,
    flags: u32,
}

/// Reads and checks every segment before touching the image, so a bad segment late in the list
/// does not leave the request half done.
fn read_segments(
    input: &mut Cursor<'_>,
    capacity: u64,
    write_zeroes: bool,
) -> Result<Vec<Segment>, DiscardError> {
    let len = input.remaining();
    if len == 0 || !len.is_multiple_of(SEGMENT_LEN) {
        return Err(DiscardError::Malformed(len));
    }
    let count = len / SEGMENT_LEN;
    if count > u64::from(MAX_SEGMENTS) {
        return Err(DiscardError::TooManySegments(count));
    }
    let allowed_flags = if write_zeroes { FLAG_UNMAP } else { 0 };
    let mut segments = Vec::new();
    for _ in 0..count {
        let mut raw = [0u8; SEGMENT_LEN as usize];
        input.read_exact(&mut raw)?;
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&raw[..8]);
        let seg = Segment {
            sector: u64::from_le_bytes(sector),
            count: u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
            flags: u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]),
        };
        if seg.flags & !allowed_flags != 0 {
            return Err(DiscardError::UnsupportedFlags(seg.flags));
        }
        if seg.count > MAX_SECTORS {
            return Err(DiscardError::TooLarge(seg.count));
        }
        match seg.sector.checked_add(u64::from(seg.count)) {
            Some(end) if end <= capacity => segments.push(seg),
            _ => {
                return Err(DiscardError::OutOfRange {
                    sector: seg.sector,
                    count: seg.count,
                    capacity,
                })
            }
        }
    }
    Ok(segments)
}

/// Runs a discard (`write_zeroes == false`) or write-zeroes request whose segments follow the
/// request header in `input`.
pub fn execute(
    file: &mut File,
    capacity: u64,
    input: &mut Cursor<'_>,
    write_zeroes: bool,
) -> Result<(), DiscardError> {
    for seg in read_segments(input, capacity, write_zeroes)? {
        // In range, so both fit: sector + count <= capacity <= u64::MAX / 512.
        let offset = seg.sector * SECTOR_SIZE;
        let len = u64::from(seg.count) * SECTOR_SIZE;
        if len == 0 {
            continue;
        }
        if !write_zeroes {
            // Discarded data is undefined afterwards, so a filesystem without hole punching
            // simply keeps the blocks.
            match file.punch_hole(offset, len) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                other => other?,
            }
            continue;
        }
        // A punched hole reads back as zeroes, and frees the space too.
        if seg.flags & FLAG_UNMAP != 0 && file.punch_hole(offset, len).is_ok() {
            continue;
        }
        // len <= MAX_SECTORS * 512 = 32 MiB.
        file.write_all_zeroes_at(offset, len as usize)?;
    }
    Ok(())
}
