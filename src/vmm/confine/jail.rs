//! The jail: a mount namespace of the VMM's own whose root is a fresh, read-only tmpfs holding
//! only the bind mounts of [`super::plan`], each at its same absolute path.
//!
//! Steps: the VMM gets its own mount namespace with every mount private (nothing it does
//! propagates back, and no host mount appears in it later); every source is opened (`O_PATH`)
//! while the tree is still whole; a tmpfs is mounted over an existing directory and each
//! source is bound into it through `/proc/self/fd` (so a source under that directory, which the
//! tmpfs now hides, is still found, and a symbolic link swapped in meanwhile is not followed);
//! then `pivot_root` makes the tmpfs the root and the old root is detached. Where `pivot_root`
//! cannot work (a host whose root is the initramfs), the tmpfs is moved over `/` and `chroot`ed
//! into instead; without capabilities (see `identity`) there is no way back out of either.
//!
//! Needs `CAP_SYS_ADMIN` and a single-threaded process (a mount namespace is per thread).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::plan::{Bind, Kind};

/// Directories the new root's tmpfs may be mounted over (only inside the VMM's own namespace),
/// in order of preference; the first that exists is used.
const MOUNT_POINTS: [&str; 4] = ["/tmp", "/mnt", "/run", "/var/tmp"];

/// tmpfs options of the new root: it only holds mount points.
const ROOT_OPTIONS: &str = "mode=0755,size=1m,nr_inodes=4096";

/// Why the jail could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot open {path} to bind it into the jail: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot {what}: {source} (the jail needs root with CAP_SYS_ADMIN; under systemd, do not \
         restrict mount namespaces; or pass --no-confine)"
    )]
    Sys {
        what: String,
        source: nix::errno::Errno,
    },
    #[error("cannot create the mount point {path} in the jail: {source}")]
    MountPoint {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("none of {MOUNT_POINTS:?} exists to mount the jail's root on; create /mnt")]
    NoMountPoint,
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

/// A source opened before the tree changes.
struct Source {
    bind: Bind,
    fd: File,
}

/// Moves this (single-threaded) process into its jail. Afterwards only `binds` exist, at their
/// paths; the working directory is the same path if the jail has it, else `/`.
pub fn enter(binds: &[Bind]) -> Result<(), JailError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("make a mount namespace (unshare)"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make every mount private"))?;
    // Opened in the new namespace: a bind mount's source must be a mount of the caller's own
    // namespace, and a descriptor opened before `unshare` names the old one's.
    let sources = binds
        .iter()
        .map(|bind| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH)
                .open(&bind.path)
                .map(|fd| Source {
                    bind: bind.clone(),
                    fd,
                })
                .map_err(|source| JailError::Open {
                    path: bind.path.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = std::env::current_dir().ok();
    let root = MOUNT_POINTS
        .iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .ok_or(JailError::NoMountPoint)?;
    // /proc/self/fd/N names each source whatever hides its path later; without /proc the paths
    // themselves are used (then no source may lie under `root`).
    let proc_fd = Path::new("/proc/self/fd").is_dir();

    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(ROOT_OPTIONS),
    )
    .map_err(sys(format!("mount the jail's tmpfs on {}", root.display())))?;
    for source in &sources {
        bind_one(root, source, proc_fd)?;
    }
    switch_root(root)?;
    // Nothing may be created in the root itself: it only holds mount points.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(sys("make the jail's root read-only"))?;
    let back = cwd.filter(|dir| dir.is_dir()).unwrap_or_else(|| "/".into());
    std::env::set_current_dir(&back).map_err(|e| JailError::MountPoint {
        path: back.clone(),
        source: e,
    })?;
    Ok(())
}

/// Binds one source at its own path under `root`, then sets its flags: never setuid or
/// executable, device nodes only where a device is bound, read-only unless writable.
fn bind_one(root: &Path, source: &Source, proc_fd: bool) -> Result<(), JailError> {
    let bind = &source.bind;
    let target = root.join(bind.path.strip_prefix("/").unwrap_or(&bind.path));
    let mount_point_err = |e: std::io::Error| JailError::MountPoint {
        path: bind.path.clone(),
        source: e,
    };
    if let Some(parent) = target.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(mount_point_err)?;
    }
    match bind.kind {
        Kind::Dir => std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&target)
            .map_err(mount_point_err)?,
        Kind::File | Kind::Device => {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&target)
                .map_err(mount_point_err)?;
        }
    }
    let from: PathBuf = if proc_fd {
        PathBuf::from(format!("/proc/self/fd/{}", source.fd.as_raw_fd()))
    } else {
        bind.path.clone()
    };
    mount(
        Some(&from),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(format!("bind {} into the jail", bind.path.display())))?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID;
    flags |= MsFlags::MS_NOEXEC;
    if bind.kind != Kind::Device {
        flags |= MsFlags::MS_NODEV;
    }
    if !bind.writable {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, &target, None::<&str>, flags, None::<&str>).map_err(sys(format!(
        "set the flags of {} in the jail",
        bind.path.display()
    )))
}

/// Makes `root` the root: `pivot_root` with the old root stacked on the new one and detached, or
/// (where the root cannot be pivoted) the tmpfs moved over `/` and chrooted into.
fn switch_root(root: &Path) -> Result<(), JailError> {
    std::env::set_current_dir(root).map_err(|e| JailError::MountPoint {
        path: root.to_path_buf(),
        source: e,
    })?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            // The old root is now mounted on top of the new one, at "/": detach it.
            umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the old root"))?;
        }
        Err(nix::errno::Errno::EINVAL) => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .map_err(sys("move the jail's root over /"))?;
            nix::unistd::chroot(".").map_err(sys("chroot into the jail's root"))?;
        }
        Err(e) => return Err(sys("pivot into the jail's root")(e)),
    }
    std::env::set_current_dir("/").map_err(|e| JailError::MountPoint {
        path: "/".into(),
        source: e,
    })
}
