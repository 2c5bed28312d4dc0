//! What a confined VMM can still reach: the one place that derives, from the VMM's own
//! configuration, every path it uses after confinement. The jail bind-mounts each at its same
//! absolute path, so the rest of the VMM needs no change.
//!
//! - Read-write directories: those of its sockets (the vsock socket's `<socket>_<port>` peers
//!   are there too), console log and VMM log (they rotate: a rename and a new file), exit status
//!   file; in the daemon's layout all of them are the computer's directory, which also holds its
//!   disks and where snapshots are written (`<dir>/saved`).
//! - Disks, read-write unless configured read-only; the kernel and initrd, read-only (already
//!   read; bound so that the VMM's view of its VM is whole).
//! - `/dev/kvm`, `/dev/null`, `/dev/urandom` where the host has them. TAP devices and every
//!   other descriptor are open already: nothing else of `/dev` is there.
//!
//! A path inside a directory already bound is left out (the directory gives it), so no mount
//! point is ever created inside a host directory.

use std::path::{Component, Path, PathBuf};

use crate::vmm::config::VmConfig;

/// Device nodes every confined VMM gets, where the host has them.
pub const DEVICES: [&str; 3] = ["/dev/kvm", "/dev/null", "/dev/urandom"];

/// Why the list of paths could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot tell the absolute path of {path}: {source}")]
    Absolute {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} would give a confined VMM the directory {dir}, which is too broad; keep the VMM's \
         sockets, logs and exit file in a directory of their own (the daemon uses the computer's \
         directory), or pass --no-confine"
    )]
    TooBroad { path: PathBuf, dir: PathBuf },
}

/// What one bind mount is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Device,
}

/// One path the confined VMM keeps, at the same absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub path: PathBuf,
    pub kind: Kind,
    pub writable: bool,
}

/// The paths `config`'s VMM uses once confined, sorted, with nothing inside a directory that is
/// already in the list. `device_exists` says which of [`DEVICES`] the host has (tests choose).
pub fn binds(
    config: &VmConfig,
    device_exists: &dyn Fn(&Path) -> bool,
) -> Result<Vec<Bind>, PlanError> {
    let mut wanted: Vec<Bind> = Vec::new();
    let dir_of = |path: &Path| -> Result<PathBuf, PlanError> {
        let absolute = absolute(path)?;
        let dir = absolute
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        // "/" or a top-level directory (/tmp, /var) would hand the VMM most of the host.
        if dir.components().count() < 3 {
            return Err(PlanError::TooBroad {
                path: path.to_path_buf(),
                dir,
            });
        }
        Ok(dir)
    };
    let writable_files = [
        config.vsock.as_ref().map(|v| v.socket.as_path()),
        config.control_socket.as_deref(),
        config.console_log.as_deref(),
        config.log_file.as_deref(),
        config.exit_status_file.as_deref(),
    ];
    for path in writable_files.into_iter().flatten() {
        wanted.push(Bind {
            path: dir_of(path)?,
            kind: Kind::Dir,
            writable: true,
        });
    }
    for disk in &config.disks {
        wanted.push(Bind {
            path: absolute(&disk.path)?,
            kind: Kind::File,
            writable: !disk.read_only,
        });
    }
    for boot_file in std::iter::once(&config.kernel).chain(config.initrd.as_ref()) {
        let path = absolute(boot_file)?;
        // A restored VM does not need its boot files; they may be gone by now.
        if path.is_file() {
            wanted.push(Bind {
                path,
                kind: Kind::File,
                writable: false,
            });
        }
    }
    for device in DEVICES {
        if device_exists(Path::new(device)) {
            wanted.push(Bind {
                path: PathBuf::from(device),
                kind: Kind::Device,
                writable: true,
            });
        }
    }
    Ok(reduce(wanted))
}

/// Sorts, merges duplicates (writable wins) and drops what a listed directory already holds.
fn reduce(mut wanted: Vec<Bind>) -> Vec<Bind> {
    wanted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut kept: Vec<Bind> = Vec::new();
    for bind in wanted {
        if let Some(same) = kept.iter_mut().find(|k| k.path == bind.path) {
            same.writable |= bind.writable;
            continue;
        }
        let covered = kept
            .iter()
            .any(|k| k.kind == Kind::Dir && bind.path.starts_with(&k.path));
        if !covered {
            kept.push(bind);
        }
    }
    kept
}

/// `path` made absolute against the working directory and cleaned of `.` and `..`, without
/// resolving symbolic links: the jail must offer the path the VMM will use, as it is written.
pub fn absolute(path: &Path) -> Result<PathBuf, PlanError> {
    let joined = std::path::absolute(path).map_err(|source| PlanError::Absolute {
        path: path.to_path_buf(),
        source,
    })?;
    let mut clean = PathBuf::from("/");
    for part in joined.components() {
        match part {
            Component::ParentDir => {
                clean.pop();
            }
            Component::Normal(name) => clean.push(name),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::config::{DiskConfig, VsockConfig};

    fn config(dir: &Path) -> VmConfig {
        let mut args = crate::vmm::config::VmmArgs {
            kernel: Some(dir.join("images/kernel")),
            ..Default::default()
        };
        args.initrd = Some(dir.join("images/initrd"));
        let mut config = VmConfig::from_args(&args).unwrap();
        let computer = dir.join("computers/c1");
        config.disks = vec![
            DiskConfig {
                path: computer.join("disk.img"),
                read_only: false,
            },
            DiskConfig {
                path: dir.join("shared/base.img"),
                read_only: true,
            },
        ];
        config.vsock = Some(VsockConfig {
            socket: computer.join("vsock.sock"),
            guest_cid: 3,
        });
        config.control_socket = Some(computer.join("control.sock"));
        config.console_log = Some(computer.join("console.log"));
        config.log_file = Some(computer.join("vmm.log"));
        config.exit_status_file = Some(computer.join("vmm.exit"));
        config.pid_file = Some(computer.join("vmm.pid"));
        config
    }

    #[test]
    fn the_computer_directory_its_boot_files_and_devices() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("images")).unwrap();
        std::fs::write(d.path().join("images/kernel"), b"k").unwrap();
        let binds = binds(&config(d.path()), &|p| p == Path::new("/dev/kvm")).unwrap();
        let listed: Vec<(PathBuf, Kind, bool)> = binds
            .iter()
            .map(|b| (b.path.clone(), b.kind, b.writable))
            .collect();
        let root = d.path().to_path_buf();
        assert_eq!(
            listed,
            vec![
                (PathBuf::from("/dev/kvm"), Kind::Device, true),
                (root.join("computers/c1"), Kind::Dir, true),
                // The initrd does not exist: a restore does not need it.
                (root.join("images/kernel"), Kind::File, false),
                (root.join("shared/base.img"), Kind::File, false),
            ]
        );
    }

    #[test]
    fn a_file_in_a_listed_directory_is_not_listed_again() {
        let wanted = vec![
            Bind {
                path: "/a/b/x.img".into(),
                kind: Kind::File,
                writable: false,
            },
            Bind {
                path: "/a/b".into(),
                kind: Kind::Dir,
                writable: true,
            },
            Bind {
                path: "/a/bc".into(),
                kind: Kind::File,
                writable: false,
            },
            Bind {
                path: "/a/bc".into(),
                kind: Kind::File,
                writable: true,
            },
        ];
        let kept = reduce(wanted);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!(kept[0].path, PathBuf::from("/a/b"));
        assert_eq!(kept[1].path, PathBuf::from("/a/bc"));
        assert!(kept[1].writable, "writable wins");
    }

    #[test]
    fn broad_directories_are_refused_and_paths_are_cleaned() {
        let d = tempfile::tempdir().unwrap();
        let mut c = config(d.path());
        c.control_socket = Some("/tmp/control.sock".into());
        let err = binds(&c, &|_| false).unwrap_err();
        assert!(matches!(err, PlanError::TooBroad { .. }), "{err}");
        assert!(err.to_string().contains("--no-confine"));
        assert_eq!(
            absolute(Path::new("/a/./b/../c")).unwrap(),
            PathBuf::from("/a/c")
        );
        assert!(absolute(Path::new("rel")).unwrap().is_absolute());
    }
}
