//! Guest memory in a snapshot: one file holding every RAM region back to back, written sparse
//! (a page of zeros is a hole, never a write), and mapped `MAP_PRIVATE` on restore, so a restored
//! VM starts without reading its RAM (pages load when the guest first touches them) and every VM
//! restored from one file shares the pages none of them has written.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
};

use crate::vmm::memory::GuestMemory;

/// Pages compared against zero; the x86 base page size.
const PAGE: usize = 4096;
/// Guest memory is copied out this much at a time.
const CHUNK: usize = 1 << 20;
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];

/// Why guest memory could not be saved or mapped.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("cannot write the memory file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read guest memory at {addr:#x}: {reason}")]
    Guest { addr: u64, reason: String },
    #[error("cannot open the memory file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("the memory file {path} has {found} bytes, the snapshot needs {expected}; it is truncated or from another snapshot")]
    Size {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("cannot map the memory file {path}: {reason}")]
    Map { path: PathBuf, reason: String },
}

/// Where one RAM region lives in the guest and in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// How much a written memory file holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Bytes of guest RAM (the file's length).
    pub ram_bytes: u64,
    /// Bytes actually written (the rest are holes).
    pub data_bytes: u64,
}

/// The regions of `mem`, laid out back to back from offset 0.
pub fn layout(mem: &GuestMemory) -> Vec<MemoryRegion> {
    let mut offset = 0;
    mem.iter()
        .map(|r| {
            let region = MemoryRegion {
                guest_addr: r.start_addr().0,
                size: r.len(),
                file_offset: offset,
            };
            offset += r.len();
            region
        })
        .collect()
}

/// Total length of the memory file for `regions`.
pub fn file_len(regions: &[MemoryRegion]) -> u64 {
    regions
        .iter()
        .map(|r| r.file_offset.saturating_add(r.size))
        .max()
        .unwrap_or(0)
}

/// Writes all of `mem` to a new file at `path`, zero pages as holes, and syncs it.
pub fn write_sparse(mem: &GuestMemory, path: &Path) -> Result<WriteStats, MemoryFileError> {
    let werr = |source| MemoryFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(werr)?;
    let regions = layout(mem);
    let mut stats = WriteStats {
        ram_bytes: file_len(&regions),
        data_bytes: 0,
    };
    let mut buf = vec![0u8; CHUNK];
    for region in &regions {
        let mut done = 0u64;
        while done < region.size {
            let len = (region.size - done).min(CHUNK as u64) as usize;
            let addr = region.guest_addr + done;
            mem.read_slice(&mut buf[..len], GuestAddress(addr))
                .map_err(|e| MemoryFileError::Guest {
                    addr,
                    reason: e.to_string(),
                })?;
            for (start, end) in nonzero_runs(&buf[..len]) {
                file.write_all_at(&buf[start..end], region.file_offset + done + start as u64)
                    .map_err(werr)?;
                stats.data_bytes += (end - start) as u64;
            }
            done += len as u64;
        }
    }
    file.set_len(stats.ram_bytes).map_err(werr)?;
    file.sync_all().map_err(werr)?;
    Ok(stats)
}

/// Byte ranges of `buf` made of whole pages that are not all zero, adjacent pages merged.
fn nonzero_runs(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, page) in buf.chunks(PAGE).enumerate() {
        // A slice comparison is a memcmp, fast even in debug builds.
        if page == &ZERO_PAGE[..page.len()] {
            continue;
        }
        let (start, end) = (i * PAGE, i * PAGE + page.len());
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

/// Maps the memory file as the guest's RAM, private copy-on-write: nothing is read now, and the
/// guest's writes never reach the file.
pub fn map_private(path: &Path, regions: &[MemoryRegion]) -> Result<GuestMemory, MemoryFileError> {
    let file = File::open(path).map_err(|source| MemoryFileError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let found = file
        .metadata()
        .map_err(|source| MemoryFileError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let expected = file_len(regions);
    if found != expected {
        return Err(MemoryFileError::Size {
            path: path.to_path_buf(),
            expected,
            found,
        });
    }
    let map_err = |reason: String| MemoryFileError::Map {
        path: path.to_path_buf(),
        reason,
    };
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let size = usize::try_from(r.size).map_err(|_| map_err("region too large".into()))?;
        let fd = file
            .try_clone()
            .map_err(|e| map_err(format!("cannot duplicate the file handle: {e}")))?;
        let mapping = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::new(fd, r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_err(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
            .ok_or_else(|| map_err(format!("region at {:#x} overflows", r.guest_addr)))?;
        mapped.push(region);
    }
    GuestMemory::from_regions(mapped).map_err(|e| map_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn runs_skip_zero_pages_and_merge_neighbours() {
        let mut buf = vec![0u8; PAGE * 6];
        buf[PAGE] = 1; // page 1
        buf[PAGE * 2 + 100] = 2; // page 2, merged with 1
        buf[PAGE * 5 + PAGE - 1] = 3; // last byte of page 5
        assert_eq!(
            nonzero_runs(&buf),
            vec![(PAGE, PAGE * 3), (PAGE * 5, PAGE * 6)]
        );
        assert!(nonzero_runs(&vec![0u8; PAGE * 3]).is_empty());
    }

    #[test]
    fn memory_round_trips_sparse_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let size = 8 << 20;
        let mem =
            GuestMemory::from_ranges(&[(GuestAddress(0), size), (GuestAddress(1 << 32), size)])
                .unwrap();
        mem.write_slice(b"low", GuestAddress(0x1234)).unwrap();
        mem.write_slice(b"high", GuestAddress((1 << 32) + 0x5000))
            .unwrap();
        let stats = write_sparse(&mem, &path).unwrap();
        assert_eq!(stats.ram_bytes, 2 * size as u64);
        assert_eq!(
            stats.data_bytes,
            2 * PAGE as u64,
            "only the two written pages"
        );
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 2 * size as u64);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "the file is sparse: {} bytes allocated",
            meta.blocks() * 512
        );
        // A second write to the same path is refused: snapshots never overwrite.
        assert!(write_sparse(&mem, &path).is_err());

        let regions = layout(&mem);
        let restored = map_private(&path, &regions).unwrap();
        let mut got = [0u8; 4];
        restored
            .read_slice(&mut got[..3], GuestAddress(0x1234))
            .unwrap();
        assert_eq!(&got[..3], b"low");
        restored
            .read_slice(&mut got, GuestAddress((1 << 32) + 0x5000))
            .unwrap();
        assert_eq!(&got, b"high");
        // Private: the guest's writes do not reach the file, and a second mapping sees the file.
        restored.write_slice(b"XXX", GuestAddress(0x1234)).unwrap();
        let other = map_private(&path, &regions).unwrap();
        other
            .read_slice(&mut got[..3], GuestAddress(0x1234))
            .unwrap();
        assert_eq!(&got[..3], b"low");

        // A truncated file is refused before anything is mapped.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(size as u64).unwrap();
        let err = map_private(&path, &regions).unwrap_err();
        assert!(matches!(err, MemoryFileError::Size { .. }), "{err}");
    }
}
