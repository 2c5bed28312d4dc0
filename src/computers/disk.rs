//! A computer's disk: a copy-on-write clone of its image's root filesystem (a reflink where the
//! filesystem has them, a sparse copy otherwise), grown to the size asked for, never shrunk.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::backend::{BackendError, VmSpec};
use super::images::GuestImage;
use super::vmm_config::files;

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
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|&b| b == 0) {
            dst.seek(SeekFrom::Current(n as i64))?;
        } else {
            dst.write_all(&buf[..n])?;
        }
    }
    dst.set_len(len)?;
    dst.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

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
