//! Growing the root filesystem onto a disk the host grew while the VM runs
//! ([`crate::protocol::growfs`]). The work needs root, so it is done by `deskd-agent
//! --grow-root-fs`, the root helper (see [`crate::root_helper`]) behind [`HELPER_SOCKET`]
//! (`deskd-growfs.socket`, which only the agent's user may open). The helper takes nothing but
//! the size the host made the disk: the device, the mount point and the program are its own, so
//! the socket can do this one thing and no other.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::growfs::{GrowRootFs, RootFsGrown, DEADLINE_SECS, SEE_NEW_SIZE_SECS};
use crate::root_helper::{self, HelperError};

/// The socket of the root helper (`images/rootfs/etc/systemd/system/deskd-growfs.socket`).
pub const HELPER_SOCKET: &str = "/run/deskd-growfs.sock";
/// How long the agent waits for the helper: a little less than the daemon waits for the agent,
/// so that the daemon hears why rather than a timeout.
const HELPER_DEADLINE: Duration = Duration::from_secs(DEADLINE_SECS - 10);

/// Why the root filesystem was not grown.
#[derive(Debug, thiserror::Error)]
pub enum GrowFsError {
    #[error("{0}")]
    BadRequest(String),
    #[error(
        "the guest's kernel still sees {seen} bytes on {device} after {secs} s, but the host made \
         the disk {want} bytes; the growth did not reach the guest (retry the resize; a restart \
         sees the new size for sure)"
    )]
    NotSeen {
        device: PathBuf,
        seen: u64,
        want: u64,
        secs: u64,
    },
    #[error("cannot read the size of {device} from {path}: {detail}")]
    KernelSize {
        device: PathBuf,
        path: PathBuf,
        detail: String,
    },
    #[error("cannot run {program}: {err}")]
    Spawn {
        program: PathBuf,
        err: std::io::Error,
    },
    #[error("{program} {device} failed ({status}): {output}")]
    Resize {
        program: PathBuf,
        device: PathBuf,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("cannot measure the filesystem at {mount}: {err}")]
    Measure { mount: PathBuf, err: nix::Error },
    #[error("{0}")]
    Helper(String),
}

/// The root disk and how to grow its filesystem.
#[derive(Debug, Clone)]
pub struct RootDisk {
    /// The block device the root filesystem is on (the whole disk, no partition table).
    pub device: PathBuf,
    /// Its size in 512-byte sectors as the kernel sees it (`/sys/block/<name>/size`).
    pub sysfs_size: PathBuf,
    /// Where it is mounted.
    pub mount: PathBuf,
    /// The program that grows the mounted ext4 online.
    pub resize2fs: PathBuf,
    /// How long to wait for the kernel to see the new size.
    pub see_within: Duration,
}

impl RootDisk {
    /// The image's: ext4 on the whole of `/dev/vda`, mounted at `/` (`images/rootfs/etc/fstab`).
    pub fn guest() -> RootDisk {
        RootDisk {
            device: "/dev/vda".into(),
            sysfs_size: "/sys/block/vda/size".into(),
            mount: "/".into(),
            // /sbin holds it with or without a merged /usr.
            resize2fs: "/sbin/resize2fs".into(),
            see_within: Duration::from_secs(SEE_NEW_SIZE_SECS),
        }
    }
}

/// Has the root helper at `socket` grow the root filesystem (the agent's side).
pub async fn grow_through_helper(
    socket: &Path,
    req: &GrowRootFs,
) -> Result<RootFsGrown, GrowFsError> {
    req.check().map_err(GrowFsError::BadRequest)?;
    root_helper::ask(socket, req, HELPER_DEADLINE)
        .await
        .map_err(|e| match e {
            HelperError::BadRequest(m) => GrowFsError::BadRequest(m),
            HelperError::Failed(m) => GrowFsError::Helper(m),
        })
}

/// `deskd-agent --grow-root-fs`: the root helper's side (see [`root_helper::serve`]).
pub fn serve_helper() -> std::process::ExitCode {
    root_helper::serve(|req: GrowRootFs| {
        grow(&RootDisk::guest(), &req).map_err(|e| match e {
            GrowFsError::BadRequest(m) => HelperError::BadRequest(m),
            e => HelperError::Failed(e.to_string()),
        })
    })
}

/// Grows `disk`'s filesystem once the kernel sees at least `req.disk_bytes` on it (as root;
/// blocking). Growing a filesystem that fills its disk already is not an error: a retried
/// request does no harm.
pub fn grow(disk: &RootDisk, req: &GrowRootFs) -> Result<RootFsGrown, GrowFsError> {
    req.check().map_err(GrowFsError::BadRequest)?;
    let seen = wait_for_size(disk, req.disk_bytes)?;
    let output = std::process::Command::new(&disk.resize2fs)
        .arg(&disk.device)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|err| GrowFsError::Spawn {
            program: disk.resize2fs.clone(),
            err,
        })?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr).to_string()
            + &String::from_utf8_lossy(&output.stdout);
        return Err(GrowFsError::Resize {
            program: disk.resize2fs.clone(),
            device: disk.device.clone(),
            status: output.status,
            output: last_lines(&text, 4),
        });
    }
    let stat = nix::sys::statvfs::statvfs(&disk.mount).map_err(|err| GrowFsError::Measure {
        mount: disk.mount.clone(),
        err,
    })?;
    Ok(RootFsGrown {
        disk_bytes: seen,
        filesystem_bytes: stat.blocks().saturating_mul(stat.fragment_size()),
    })
}

/// Waits until the kernel sees at least `want` bytes on the disk; what it sees then.
fn wait_for_size(disk: &RootDisk, want: u64) -> Result<u64, GrowFsError> {
    let deadline = Instant::now() + disk.see_within;
    loop {
        let seen = kernel_size(disk)?;
        if seen >= want {
            return Ok(seen);
        }
        if Instant::now() >= deadline {
            return Err(GrowFsError::NotSeen {
                device: disk.device.clone(),
                seen,
                want,
                secs: disk.see_within.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The disk's size as the kernel sees it, bytes (sysfs counts 512-byte sectors whatever the
/// device's block size).
fn kernel_size(disk: &RootDisk) -> Result<u64, GrowFsError> {
    let fail = |detail: String| GrowFsError::KernelSize {
        device: disk.device.clone(),
        path: disk.sysfs_size.clone(),
        detail,
    };
    let text = std::fs::read_to_string(&disk.sysfs_size).map_err(|e| fail(e.to_string()))?;
    let sectors: u64 = text
        .trim()
        .parse()
        .map_err(|_| fail(format!("{:?} is not a number of sectors", text.trim())))?;
    sectors
        .checked_mul(512)
        .ok_or_else(|| fail(format!("{sectors} sectors overflow")))
}

/// The last `n` non-empty lines of `text`, joined by ` | `.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root_helper::tests::tempfile_dir;

    /// Whether this process may use ext4's online resize (CAP_SYS_RESOURCE, capability 24).
    fn has_cap_sys_resource() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .is_some_and(|caps| caps & (1 << 24) != 0)
    }

    fn fake_disk(dir: &Path, sectors: &str) -> RootDisk {
        let size = dir.join("size");
        std::fs::write(&size, sectors).unwrap();
        RootDisk {
            device: dir.join("vda"),
            sysfs_size: size,
            mount: dir.to_path_buf(),
            resize2fs: dir.join("no-resize2fs"),
            see_within: Duration::from_millis(300),
        }
    }

    #[test]
    fn a_size_the_kernel_does_not_see_is_reported_not_waited_for_forever() {
        let d = tempfile_dir();
        let disk = fake_disk(&d, "1000\n");
        let started = Instant::now();
        let err = grow(
            &disk,
            &GrowRootFs {
                disk_bytes: 2000 * 512,
            },
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        let m = err.to_string();
        assert!(
            m.contains("still sees 512000 bytes") && m.contains("1024000"),
            "{m}"
        );
        std::fs::write(&disk.sysfs_size, "lots").unwrap();
        let m = grow(&disk, &GrowRootFs { disk_bytes: 512 })
            .unwrap_err()
            .to_string();
        assert!(m.contains("not a number of sectors"), "{m}");
    }

    #[test]
    fn a_bad_request_touches_nothing_and_a_missing_program_is_named() {
        let d = tempfile_dir();
        let disk = fake_disk(&d, "2000\n");
        assert!(matches!(
            grow(&disk, &GrowRootFs { disk_bytes: 100 }),
            Err(GrowFsError::BadRequest(_))
        ));
        let m = grow(&disk, &GrowRootFs { disk_bytes: 1024 })
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("cannot run") && m.contains("no-resize2fs"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn without_the_helper_the_agent_says_which_socket_it_could_not_reach() {
        let d = tempfile_dir();
        let m = grow_through_helper(&d.join("growfs.sock"), &GrowRootFs { disk_bytes: 1024 })
            .await
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("cannot reach the root helper") && m.contains("growfs.sock"),
            "{m}"
        );
    }

    /// The real thing on a loop device: an ext4 of 32 MiB, mounted, its disk grown to 64 MiB,
    /// then grown online by `grow` with resize2fs. Needs root, losetup, mkfs.ext4 and resize2fs;
    /// skips loudly without them.
    #[test]
    fn a_mounted_ext4_grows_onto_its_grown_loop_device() {
        use std::process::Command;
        let skip =
            |why: &str| eprintln!("SKIPPED a_mounted_ext4_grows_onto_its_grown_loop_device: {why}");
        if !nix::unistd::geteuid().is_root() {
            return skip("needs root for a loop device and a mount");
        }
        if !has_cap_sys_resource() {
            // ext4's online resize ioctl wants it; the guest's helper, a plain root service, has it.
            return skip("needs CAP_SYS_RESOURCE (this container dropped it)");
        }
        let ok = |cmd: &mut Command| cmd.output().map(|o| o.status.success()).unwrap_or(false);
        let d = tempfile_dir();
        let img = d.join("disk.img");
        let mnt = d.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        if !ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)) {
            return skip("mkfs.ext4 is missing or failed (apt-get install e2fsprogs)");
        }
        let attached = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output();
        let loop_dev = match attached {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            _ => return skip("cannot attach a loop device here"),
        };
        struct Cleanup(PathBuf, String);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
                let _ = std::process::Command::new("losetup")
                    .args(["-d", &self.1])
                    .status();
            }
        }
        let _cleanup = Cleanup(mnt.clone(), loop_dev.clone());
        if !ok(Command::new("mount").arg(&loop_dev).arg(&mnt)) {
            return skip("cannot mount an ext4 loop device here");
        }
        let before = nix::sys::statvfs::statvfs(&mnt).unwrap();
        let before = before.blocks() * before.fragment_size();
        // The host's part: a longer file, and the loop device told (the VMM's interrupt, here).
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        assert!(ok(Command::new("losetup").args(["-c", &loop_dev])));
        let name = loop_dev.trim_start_matches("/dev/");
        let disk = RootDisk {
            device: loop_dev.clone().into(),
            sysfs_size: format!("/sys/block/{name}/size").into(),
            mount: mnt.clone(),
            resize2fs: "/sbin/resize2fs".into(),
            see_within: Duration::from_secs(10),
        };
        let grown = grow(
            &disk,
            &GrowRootFs {
                disk_bytes: 64 << 20,
            },
        )
        .unwrap();
        assert_eq!(grown.disk_bytes, 64 << 20);
        assert!(
            grown.filesystem_bytes > before + (24 << 20) && grown.filesystem_bytes <= 64 << 20,
            "{before} -> {grown:?}"
        );
        // Again: nothing to do, and not an error.
        assert_eq!(
            grow(
                &disk,
                &GrowRootFs {
                    disk_bytes: 64 << 20
                }
            )
            .unwrap(),
            grown
        );
    }
}
