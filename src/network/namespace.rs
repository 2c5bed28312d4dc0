//! Named network namespaces, the `ip netns` convention (a bind mount of the namespace under
//! /run/netns, so it outlives every process in it and `ip netns` / reconcile can find it) made
//! with system calls rather than an `ip` process.
//!
//! A network namespace belongs to a thread. Entering one happens only on a thread made for it
//! (`on_new_thread`), never on a tokio worker or blocking-pool thread, which would stay in it.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::NetworkError;

/// Where named namespaces live.
pub const NETNS_DIR: &str = "/run/netns";

/// The path of namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn err(what: &str, e: impl std::fmt::Display) -> NetworkError {
    NetworkError::Namespace(format!("{what}: {e}"))
}

/// The calling thread's current network namespace (to come back to, or to hand to the kernel as
/// a veth peer's destination).
pub fn current() -> Result<OwnedFd, NetworkError> {
    File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(|e| err("cannot open /proc/thread-self/ns/net", e))
}

/// Makes a new namespace, moves the calling thread into it and pins it at `path(name)`. Fails if
/// one of that name exists already (the caller removes leftovers first).
pub fn create_and_enter(name: &str) -> Result<(), NetworkError> {
    std::fs::create_dir_all(NETNS_DIR).map_err(|e| err("cannot create /run/netns", e))?;
    let target = path(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
        .map_err(|e| err(&format!("cannot create {}", target.display()), e))?;
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
        let _ = std::fs::remove_file(&target);
        return Err(err(
            "unshare(CLONE_NEWNET) failed (deskd needs CAP_SYS_ADMIN)",
            e,
        ));
    }
    if let Err(e) = mount(
        Some("/proc/thread-self/ns/net"),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    ) {
        let _ = std::fs::remove_file(&target);
        return Err(err(
            &format!("cannot bind-mount the namespace on {}", target.display()),
            e,
        ));
    }
    Ok(())
}

/// Moves the calling thread into namespace `name`.
pub fn enter(name: &str) -> Result<(), NetworkError> {
    let f = File::open(path(name)).map_err(|e| err(&format!("namespace {name}"), e))?;
    enter_fd(&OwnedFd::from(f))
}

/// Moves the calling thread into the namespace `fd` refers to.
pub fn enter_fd(fd: &OwnedFd) -> Result<(), NetworkError> {
    setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| err("setns failed", e))
}

/// Unpins namespace `name`; the kernel frees it (and its TAP and veth) once no process or socket
/// holds it. Absent is fine.
pub fn remove(name: &str) -> Result<(), NetworkError> {
    let p = path(name);
    match umount2(&p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(err(&format!("cannot unmount {}", p.display()), e)),
    }
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(&format!("cannot remove {}", p.display()), e)),
    }
}

/// Names under /run/netns that start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Runs `f` on a fresh thread (which may then change namespace freely) and returns its result.
pub fn on_new_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    std::thread::Builder::new()
        .name("deskd-netns".into())
        .spawn(f)
        .map_err(|e| err("cannot start a namespace thread", e))?
        .join()
        .map_err(|_| NetworkError::Namespace("the namespace thread panicked".into()))?
}

/// Writes a sysctl of the calling thread's network namespace (the files under /proc/sys/net are
/// those of the opener's namespace).
pub fn sysctl(key: &str, value: &str) -> Result<(), NetworkError> {
    let p = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&p, value).map_err(|e| err(&format!("cannot write {p}"), e))
}
