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
const FILE_SIZE_SLACK: u64 = 64 << 20;

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
}
