//! A computer's disk: a copy-on-write clone of its image's root filesystem (a reflink where the
//! filesystem has them, a sparse copy otherwise), grown to the size asked for, never shrunk.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::backend::{BackendError, VmSpec};
use super::images::GuestImage;
use super::vmm_config::files;

/// Waits until no process holds the lock a VMM takes on `dir`'s disk (the VMM of a previous run
/// may still be exiting: its last threads release the lock after its leader is gone). A disk
/// still locked after `patience` is in use by another VMM, which must not be joined by a second.
pub fn wait_until_unlocked(dir: &Path, patience: std::time::Duration) -> Result<(), BackendError> {
    use nix::fcntl::{Flock, FlockArg};
    let disk = dir.join(files::DISK);
    let deadline = std::time::Instant::now() + patience;
    loop {
        let file = match std::fs::File::open(&disk) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(BackendError::NotReady(format!(
                    "cannot open {}: {e}",
                    disk.display()
                )))
            }
        };
        // Taken and dropped at once: only whether it can be taken matters.
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(_lock) => return Ok(()),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(BackendError::Process(format!(
                    "the disk {} is still locked by another VMM after {} s; find it with \
                     `fuser {}` and stop it first",
                    disk.display(),
                    patience.as_secs(),
                    disk.display()
                )))
            }
            // A filesystem without flock: the VMM lets that through too.
            Err(_) => return Ok(()),
        }
    }
}

/// Makes `spec`'s disk (a copy of the image's root filesystem) if it does not exist yet and grows
/// it to the size asked for.
pub fn prepare(spec: &VmSpec, image: &GuestImage) -> Result<PathBuf, BackendError> {
    let disk = spec.dir.join(files::DISK);
    if !disk.exists() {
        let partial = spec.dir.join("disk.img.partial");
        copy_sparse(&image.rootfs, &partial).map_err(|e| {
            BackendError::NotReady(format!(
                "cannot copy the guest image {} to {}: {e}",
                image.rootfs.display(),
                partial.display()
            ))
        })?;
        std::fs::rename(&partial, &disk).map_err(|e| {
            BackendError::NotReady(format!("cannot create {}: {e}", disk.display()))
        })?;
    }
    let want = u64::from(spec.disk_size_gb) * 1024 * 1024 * 1024;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .map_err(|e| BackendError::NotReady(format!("cannot open {}: {e}", disk.display())))?;
    let have = file
        .metadata()
        .map_err(|e| BackendError::NotReady(format!("cannot stat {}: {e}", disk.display())))?
        .len();
    if have < want {
        // Grow only (sparse): shrinking would destroy the filesystem inside.
        file.set_len(want).map_err(|e| {
            BackendError::NotReady(format!(
                "cannot grow {} to {want} bytes: {e}",
                disk.display()
            ))
        })?;
    }
    Ok(disk)
}

/// Copies the disk of computer directory `from_dir` to `to_dir` (clone). A computer without a disk
/// yet makes a clone without one.
pub fn clone(from_dir: &Path, to_dir: &Path) -> Result<(), BackendError> {
    let from = from_dir.join(files::DISK);
    if !from.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(to_dir)
        .map_err(|e| BackendError::Process(format!("cannot create {}: {e}", to_dir.display())))?;
    let partial = to_dir.join("disk.img.partial");
    copy_sparse(&from, &partial)
        .and_then(|()| std::fs::rename(&partial, to_dir.join(files::DISK)))
        .map_err(|e| BackendError::Process(format!("cannot copy {}: {e}", from.display())))
}

/// Copies a file copy-on-write where the filesystem can (FICLONE: btrfs, XFS with reflink), which
/// is instant and shares blocks until the guest writes; otherwise keeping holes: reads in 1 MiB
/// blocks and seeks over all-zero ones. (The kernel's copy_file_range does not keep holes
/// everywhere.)
pub fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut src = std::fs::File::open(from)?;
    let len = src.metadata()?.len();
    let mut dst = std::fs::File::create(to)?;
    // SAFETY: FICLONE takes the source descriptor as its argument and only reads both open
    // descriptors we own; it touches none of our memory.
    let cloned = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0;
    if cloned {
        return dst.sync_all();
    }
    let mut buf = vec![0u8; 1 << 20];
    // Only the extents that hold data are read: a 32 GiB disk with 2 GiB written costs 2 GiB of
    // reads, not 32 (a live clone's source stays paused for the whole copy).
    let mut at = 0u64;
    while let Some((start, end)) = next_data_extent(&src, at, len)? {
        src.seek(SeekFrom::Start(start))?;
        dst.seek(SeekFrom::Start(start))?;
        let mut left = end - start;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = src.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().all(|&b| b == 0) {
                dst.seek(SeekFrom::Current(n as i64))?;
            } else {
                dst.write_all(&buf[..n])?;
            }
            left -= n as u64;
        }
        at = end;
    }
    dst.set_len(len)?;
    dst.sync_all()
}

/// The next range of `file` at or after `from` that may hold data, by SEEK_DATA/SEEK_HOLE; a
/// filesystem without them reports the whole rest as data.
fn next_data_extent(
    file: &std::fs::File,
    from: u64,
    len: u64,
) -> std::io::Result<Option<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    if from >= len {
        return Ok(None);
    }
    let seek = |offset: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        // SAFETY: lseek only moves the offset of a descriptor we own; no memory is passed.
        let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        match std::io::Error::last_os_error() {
            // ENXIO: no data after `offset`.
            e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            e => Err(e),
        }
    };
    match seek(from, libc::SEEK_DATA) {
        Ok(None) => Ok(None),
        Ok(Some(start)) => {
            let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
            Ok(Some((start, end)))
        }
        // No SEEK_DATA on this filesystem: read everything that is left.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Some((from, len))),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_disk_is_waited_for_then_refused_and_a_free_one_passes() {
        use nix::fcntl::{Flock, FlockArg};
        let d = tempfile::tempdir().unwrap();
        let quick = std::time::Duration::from_millis(200);
        assert!(wait_until_unlocked(d.path(), quick).is_ok(), "no disk yet");
        std::fs::write(d.path().join(files::DISK), b"disk").unwrap();
        let held = Flock::lock(
            std::fs::File::open(d.path().join(files::DISK)).unwrap(),
            FlockArg::LockExclusiveNonblock,
        )
        .unwrap();
        let err = wait_until_unlocked(d.path(), quick).unwrap_err();
        assert!(err.to_string().contains("still locked"), "{err}");
        // Released while waiting: the wait ends with it.
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(held);
        });
        wait_until_unlocked(d.path(), std::time::Duration::from_secs(5)).unwrap();
        release.join().unwrap();
    }

    #[test]
    fn sparse_copy_keeps_content_and_length() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let mut data = vec![0u8; 3 << 20];
        data[5] = 1;
        data[(3 << 20) - 1] = 7;
        std::fs::write(&a, &data).unwrap();
        copy_sparse(&a, &d.path().join("b")).unwrap();
        assert_eq!(std::fs::read(d.path().join("b")).unwrap(), data);
    }

    #[test]
    fn sparse_copy_reads_only_data_extents_and_keeps_holes() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let len = 256u64 << 20;
        let mut f = std::fs::File::create(&a).unwrap();
        f.set_len(len).unwrap();
        // Data in the middle and in the last block; holes before, between and after.
        f.seek(SeekFrom::Start(100 << 20)).unwrap();
        f.write_all(&[3u8; 8192]).unwrap();
        f.seek(SeekFrom::Start(len - 4096)).unwrap();
        f.write_all(&[9u8; 4096]).unwrap();
        drop(f);
        let b = d.path().join("b");
        copy_sparse(&a, &b).unwrap();
        assert_eq!(std::fs::metadata(&b).unwrap().len(), len);
        assert_eq!(std::fs::read(&b).unwrap(), std::fs::read(&a).unwrap());
        let allocated = std::fs::metadata(&b).unwrap().blocks() * 512;
        assert!(
            allocated < 4 << 20,
            "the copy allocated {allocated} bytes of a 256 MiB sparse file"
        );
        let extents = {
            let f = std::fs::File::open(&a).unwrap();
            let mut at = 0;
            let mut found = Vec::new();
            while let Some((s, e)) = next_data_extent(&f, at, len).unwrap() {
                found.push((s, e));
                at = e;
            }
            found
        };
        assert!(
            extents.len() >= 2 && extents.iter().map(|(s, e)| e - s).sum::<u64>() < 16 << 20,
            "{extents:?}"
        );
    }

    /// On a filesystem with reflinks the disk copy shares the image's blocks (FICLONE), and a
    /// write to the copy leaves the image alone. Needs root, loop devices and mkfs.btrfs
    /// (tests/install-deps installs btrfs-progs); skips loudly without them.
    #[test]
    fn copy_on_btrfs_is_a_reflink() {
        use std::process::Command;
        let skip = |why: &str| eprintln!("SKIPPED copy_on_btrfs_is_a_reflink: {why}");
        if !nix::unistd::geteuid().is_root() {
            return skip("needs root to mount a loop filesystem");
        }
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("btrfs.img");
        let mnt = d.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let ok = |cmd: &mut Command| cmd.output().map(|o| o.status.success()).unwrap_or(false);
        if !ok(Command::new("mkfs.btrfs").arg("-q").arg(&img)) {
            return skip("mkfs.btrfs is missing or failed (apt-get install btrfs-progs)");
        }
        if !ok(Command::new("mount")
            .arg("-o")
            .arg("loop")
            .arg(&img)
            .arg(&mnt))
        {
            return skip("cannot loop-mount a btrfs image here");
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(&mnt);

        let image = mnt.join("rootfs");
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&image, &data).unwrap();
        let disk = mnt.join("disk.img");
        copy_sparse(&image, &disk).unwrap();
        let extents = Command::new("filefrag")
            .arg("-v")
            .arg(&disk)
            .output()
            .unwrap();
        let extents = String::from_utf8_lossy(&extents.stdout);
        assert!(
            extents.contains("shared"),
            "the copy does not share the image's blocks:\n{extents}"
        );
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all(b"guest write").unwrap();
        drop(f);
        assert_eq!(
            std::fs::read(&image).unwrap(),
            data,
            "a write to the copy changed the image"
        );
        assert_eq!(&std::fs::read(&disk).unwrap()[..11], b"guest write");
    }
}
