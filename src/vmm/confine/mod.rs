//! Confinement of a VMM, as a jailer would do it, applied by `deskd vmm` itself once it has
//! opened everything it needs (KVM, guest memory, disks, TAP, sockets, logs, the kernel read)
//! and before any vCPU runs guest code, while the process still has a single thread:
//!
//! 1. [`sigsys`]: a forbidden system call ends the VMM with status 6 and says which, in its exit
//!    status file (the daemon shows it as the computer's `status_reason`).
//! 2. [`jail`]: its own mount namespace whose root holds only what [`plan`] lists (its computer
//!    directory, disks, kernel and initrd read-only, `/dev/kvm`, `/dev/null`, `/dev/urandom`),
//!    each at the same absolute path, so the rest of the VMM needs no change.
//! 3. [`limits`]: `RLIMIT_NOFILE`, `RLIMIT_FSIZE`, no core files.
//! 4. [`identity`]: the uid/gid the daemon gave it, no groups, no capabilities, no new
//!    privileges, not dumpable.
//! 5. [`seccomp`]: the setup filter on the whole (one-thread) process; then each thread
//!    installs the filter of its kind before it does guest-driven work ([`enter_thread`]):
//!    vCPU threads before their first `KVM_RUN`, device workers (started by the [`spawner`]),
//!    the control threads, and the main thread once the VM runs.
//!
//! Off when the configuration has no `confine` section (or with `--no-confine`); the daemon
//! writes one for every VMM when it runs as root (see docs/vmm-confinement.md).

pub mod identity;
pub mod jail;
pub mod limits;
pub mod plan;
pub mod seccomp;
pub mod sigsys;
pub mod spawner;

#[cfg(test)]
mod tests;

use std::os::fd::RawFd;
use std::sync::OnceLock;

use crate::vmm::config::{ConfineConfig, VmConfig};

pub use seccomp::ThreadKind;

/// Why the VMM could not be confined. Each says what to change; `--no-confine` runs the VMM
/// without confinement (development only).
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error(
        "confining the VMM needs root (it runs as uid {0}); run it as root or pass --no-confine"
    )]
    NotRoot(u32),
    #[error(
        "the VMM has {0} threads where confinement needs exactly one (a mount namespace, \
         capabilities and the first filter are per thread); this is a bug in deskd"
    )]
    Threads(usize),
    #[error("cannot read the size of the disk {path}: {source}")]
    DiskSize {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Jail(#[from] jail::JailError),
    #[error(transparent)]
    Limits(#[from] limits::LimitsError),
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Sigsys(#[from] sigsys::SigsysError),
    #[error("cannot start the worker spawner thread: {0}")]
    Spawner(std::io::Error),
}

/// The filters of a confined VMM, once its setup filter is in place.
static FILTERS: OnceLock<seccomp::Filters> = OnceLock::new();

/// Everything confinement will do, worked out (and the filters compiled) before anything
/// changes, so that a mistake is reported while the VMM can still say so plainly.
pub struct Confinement {
    identity: ConfineConfig,
    binds: Vec<plan::Bind>,
    limits: limits::Limits,
    filters: seccomp::Filters,
    exit_fd: Option<RawFd>,
}

impl Confinement {
    /// The confinement `config` asks for, if any. `exit_fd` is the exit status file's open
    /// descriptor, for the SIGSYS handler.
    pub fn prepare(
        config: &VmConfig,
        exit_fd: Option<RawFd>,
    ) -> Result<Option<Confinement>, ConfineError> {
        let Some(identity) = config.confine.clone() else {
            return Ok(None);
        };
        // SAFETY: geteuid has no arguments and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(ConfineError::NotRoot(euid));
        }
        let binds = plan::binds(config, &|p| p.exists())?;
        let mut disk_bytes = 0u64;
        for disk in &config.disks {
            let len = std::fs::metadata(&disk.path)
                .map_err(|source| ConfineError::DiskSize {
                    path: disk.path.clone(),
                    source,
                })?
                .len();
            disk_bytes = disk_bytes.saturating_add(len);
        }
        let limits = limits::Limits::for_vm(config, &identity, disk_bytes, highest_open_fd());
        Ok(Some(Confinement {
            identity,
            binds,
            limits,
            filters: seccomp::Filters::build()?,
            exit_fd,
        }))
    }

    /// The paths the jail will hold.
    pub fn binds(&self) -> &[plan::Bind] {
        &self.binds
    }

    /// Confines this process (see the module docs for the order). Afterwards every thread this
    /// VMM starts must call [`enter_thread`] first.
    pub fn enter(self) -> Result<(), ConfineError> {
        let threads = thread_count();
        if threads != 1 {
            return Err(ConfineError::Threads(threads));
        }
        sigsys::install(self.exit_fd)?;
        jail::enter(&self.binds)?;
        limits::apply(self.limits)?;
        identity::drop_to(self.identity.uid, self.identity.gid)?;
        self.filters.install(ThreadKind::Setup)?;
        // Set once: a second confinement of one process is impossible (the first removed the
        // privileges it needs), so an error here cannot happen after the first succeeded.
        let _ = FILTERS.set(self.filters);
        spawner::start().map_err(ConfineError::Spawner)?;
        tracing::info!(
            "confined: uid {} gid {}, {} paths in the jail, at most {} descriptors and {} MiB per file, seccomp filters per thread",
            self.identity.uid,
            self.identity.gid,
            self.binds.len(),
            self.limits.open_files,
            self.limits.file_size >> 20
        );
        Ok(())
    }
}

/// The seccomp part of [`Confinement::enter`] alone (no jail, no identity: those need root),
/// for tests in a forked child.
#[cfg(test)]
pub(crate) fn filters_only(exit_fd: Option<RawFd>) -> Result<(), ConfineError> {
    sigsys::install(exit_fd)?;
    let filters = seccomp::Filters::build()?;
    filters.install(ThreadKind::Setup)?;
    let _ = FILTERS.set(filters);
    spawner::start().map_err(ConfineError::Spawner)
}

/// Whether this process is confined.
pub fn is_confined() -> bool {
    FILTERS.get().is_some()
}

/// Installs the filter of `kind` on the calling thread, if the VMM is confined. Call it first
/// thing in every thread started after confinement (threads started by a thread that called
/// it inherit its filter and need not).
pub fn enter_thread(kind: ThreadKind) -> Result<(), ConfineError> {
    match FILTERS.get() {
        Some(filters) => {
            sigsys::set_thread_kind(kind.as_str());
            Ok(filters.install(kind)?)
        }
        None => Ok(()),
    }
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count())
        .unwrap_or(0)
}

/// The highest descriptor open now (0 if /proc cannot say).
fn highest_open_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Environment variable of the test hook (debug builds only): after this many milliseconds a
/// thread of the confined VMM makes a forbidden system call (`getppid`, which no thread kind
/// allows and which is harmless where nothing forbids it), so tests can see the whole path to
/// the computer's `status_reason`.
pub const DEBUG_FORBIDDEN_SYSCALL_ENV: &str = "DESKD_VMM_DEBUG_FORBIDDEN_SYSCALL_MS";

/// Arms the test hook if its variable is set (debug builds only; release builds ignore it). Call
/// from the main thread after the VM started and before [`ThreadKind::Main`]'s filter.
pub fn arm_debug_hook() {
    if !cfg!(debug_assertions) {
        return;
    }
    let Some(ms) = std::env::var(DEBUG_FORBIDDEN_SYSCALL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    else {
        return;
    };
    if !is_confined() {
        tracing::warn!(
            "{DEBUG_FORBIDDEN_SYSCALL_ENV} is set but the VMM is not confined: nothing will trap"
        );
    }
    tracing::warn!("test hook: a forbidden system call in {ms} ms");
    let spawned = std::thread::Builder::new()
        .name("debug-hook".into())
        .spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            forbidden_syscall();
        });
    if let Err(e) = spawned {
        tracing::warn!("test hook: cannot start its thread: {e}");
    }
}

/// The system call the test hook and the tests make: allowed by no filter.
pub fn forbidden_syscall() -> libc::c_long {
    // SAFETY: getppid takes no arguments and changes nothing.
    unsafe { libc::syscall(libc::SYS_getppid) }
}
