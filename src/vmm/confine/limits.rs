//! Resource limits of a confined VMM: how many descriptors it may hold, how large a file it may
//! write, and no core files (guest memory must not end up on the host's disk).
//!
//! A write past `RLIMIT_FSIZE` would raise SIGXFSZ, which ends a process by default: it is
//! ignored, so such a write fails with EFBIG and the request that made it reports an error.

use crate::vmm::config::{ConfineConfig, VmConfig};

/// Default `RLIMIT_NOFILE`: 128 vsock connections and 64 unfinished host hand-shakes
/// (`vsock::muxer`), the devices' eventfds, epoll sets and timers, the vCPUs, logs and control
/// clients (about 100 in all), with room to spare.
pub const DEFAULT_MAX_OPEN_FILES: u64 = 1024;

/// Bytes past guest RAM and disks allowed by the default `RLIMIT_FSIZE`: a snapshot's state
/// file, the logs (4 MiB each before they rotate).
pub const FILE_SIZE_SLACK: u64 = 64 << 20;

/// Why a limit could not be set.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("cannot set {what} to {value}: {source}")]
    Set {
        what: &'static str,
        value: u64,
        source: std::io::Error,
    },
    #[error("cannot ignore SIGXFSZ: {0}")]
    Signal(std::io::Error),
}

/// The limits one VMM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub open_files: u64,
    pub file_size: u64,
}

impl Limits {
    /// From the configuration: what it sets, else the defaults. `disk_bytes` is the sum of its
    /// disks' sizes; `highest_fd` the highest descriptor open now (the limit must leave it usable).
    pub fn for_vm(
        config: &VmConfig,
        confine: &ConfineConfig,
        disk_bytes: u64,
        highest_fd: u64,
    ) -> Limits {
        // A snapshot's memory file is as long as guest RAM; a disk never grows past its size.
        let file_size = confine.max_file_size_bytes.unwrap_or_else(|| {
            (config.memory_mib << 20)
                .saturating_add(disk_bytes)
                .saturating_add(FILE_SIZE_SLACK)
        });
        let open_files = confine
            .max_open_files
            .unwrap_or(DEFAULT_MAX_OPEN_FILES)
            .max(highest_fd.saturating_add(64));
        Limits {
            open_files,
            file_size,
        }
    }
}

/// Raises a running confined VMM's `RLIMIT_FSIZE` to at least `bytes` (the daemon, as root, before
/// it grows the VM's disk live: the limit was set for the disk's size at start, and the VMM cannot
/// raise its own hard limit). Never lowers it.
pub fn raise_file_size(pid: i32, bytes: u64) -> std::io::Result<()> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads the limit of process `pid` into `old`, which is valid for the call.
    if unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut old) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if old.rlim_cur >= bytes && old.rlim_max >= bytes {
        return Ok(());
    }
    let new = libc::rlimit {
        rlim_cur: old.rlim_cur.max(bytes),
        rlim_max: old.rlim_max.max(bytes),
    };
    // SAFETY: sets the limit of process `pid` from `new`, valid for the call; nothing is read back.
    if unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &new, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set(
    what: &'static str,
    resource: libc::__rlimit_resource_t,
    value: u64,
) -> Result<(), LimitsError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(resource, &limit) } == 0 {
        Ok(())
    } else {
        Err(LimitsError::Set {
            what,
            value,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Sets the limits for the whole process (hard limits too: they cannot be raised again).
pub fn apply(limits: Limits) -> Result<(), LimitsError> {
    set("RLIMIT_NOFILE", libc::RLIMIT_NOFILE, limits.open_files)?;
    set("RLIMIT_FSIZE", libc::RLIMIT_FSIZE, limits.file_size)?;
    set("RLIMIT_CORE", libc::RLIMIT_CORE, 0)?;
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ; no handler code runs.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(LimitsError::Signal(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_ram_disks_and_descriptors_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k");
        std::fs::write(&kernel, b"k").unwrap();
        let mut config = VmConfig::from_args(&crate::vmm::config::VmmArgs {
            kernel: Some(kernel),
            memory_mib: Some(4096),
            ..Default::default()
        })
        .unwrap();
        let confine = ConfineConfig::new(70_000, 70_000);
        let limits = Limits::for_vm(&config, &confine, 8 << 30, 10);
        assert!(limits.file_size >= (4u64 << 30) + (8 << 30));
        assert_eq!(limits.open_files, DEFAULT_MAX_OPEN_FILES);
        // Descriptors already open above the default stay usable.
        assert_eq!(Limits::for_vm(&config, &confine, 0, 5000).open_files, 5064);
        config.confine = Some(ConfineConfig {
            max_open_files: Some(100),
            max_file_size_bytes: Some(1 << 20),
            ..confine
        });
        let set = Limits::for_vm(&config, config.confine.as_ref().unwrap(), 8 << 30, 10);
        assert_eq!((set.open_files, set.file_size), (100, 1 << 20));
    }

    /// The daemon raises a running VMM's file size limit before a live disk growth (as root), and
    /// never lowers it.
    #[test]
    fn a_running_processs_file_size_limit_is_raised_not_lowered() {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("\n*** SKIPPED: raising another process's RLIMIT_FSIZE needs root ***\n");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let low = libc::rlimit {
            rlim_cur: 1 << 30,
            rlim_max: 1 << 30,
        };
        // SAFETY: sets the child's limit from `low`, valid for the call.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &low, std::ptr::null_mut()) };
        assert_eq!(rc, 0);
        let limit = || {
            let mut now = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: reads the child's limit into `now`, valid for the call.
            let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut now) };
            assert_eq!(rc, 0);
            (now.rlim_cur, now.rlim_max)
        };
        match raise_file_size(pid, 12 << 30) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("\n*** SKIPPED: this root lacks CAP_SYS_RESOURCE (a container's), which raising a hard limit needs ***\n");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            other => other.unwrap(),
        }
        assert_eq!(limit(), (12 << 30, 12 << 30));
        raise_file_size(pid, 2 << 30).unwrap();
        assert_eq!(limit(), (12 << 30, 12 << 30), "never lowered");
        let _ = child.kill();
        let _ = child.wait();
    }
}
