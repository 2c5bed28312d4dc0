//! A cgroup v2 group per VM, under the daemon's own (delegated) group: `<own>/vm-<id>` with
//! `memory.max` (guest RAM plus the VMM's overhead), `memory.swap.max` 0, `cpu.max` (its vCPUs'
//! worth of CPU time), `pids.max`, and `io.max` on the block device of the computers' directory
//! when `[vm_io]` sets limits, the VMM placed in it before it runs (`pre_exec` writes to its
//! `cgroup.procs`, opened beforehand), the group removed once the VMM has ended.
//!
//! cgroup v2 lets only leaf groups hold processes once controllers are enabled for children, so
//! the daemon first moves itself into `<own>/daemon` (capped with `memory.max`: the unit's own
//! `MemoryMax=` would cover every VM too) and then enables `memory`, `cpu`,
//! `pids` (and `io` where available) in `<own>`. Under systemd `<own>` is the unit's group,
//! which `Delegate=yes` hands to the daemon; started by hand it is wherever the daemon runs.
//!
//! Where cgroup v2 is not mounted or not writable (a container), or under systemd the unit's
//! group is not delegated (no `Delegate=yes`: systemd marks delegated groups with a
//! `trusted.delegate` xattr), the daemon logs one warning and runs VMMs without groups of their
//! own, as before.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;

/// The daemon's own leaf group, beside the VMs'.
pub const DAEMON_GROUP: &str = "daemon";
/// Where processes that were in the daemon's group already go (VMMs a deskd without per-VM
/// groups started): they run on there, without limits (the daemon's cap is not theirs).
pub const OTHERS_GROUP: &str = "others";
/// Prefix of each VM's group.
pub const VM_GROUP_PREFIX: &str = "vm-";
/// Controllers enabled for the VMs' groups, where the kernel offers them.
const CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "io"];
/// Memory the daemon may never pass: a few hundred MiB of its own plus the 256 MiB of agent
/// answers in flight (docs/threat-model.md), with ample room for the page cache of the disks it
/// copies (charged to it, reclaimed at the cap). A cap against a runaway daemon, not a budget:
/// no `memory.high`, whose throttling would slow the API while it copies a disk.
const DAEMON_MEMORY_MAX: u64 = 4 << 30;
/// Memory a VMM needs beyond guest RAM, fixed part: its binary and heap, vsock buffers (32 MiB at
/// most), device buffers (virtio queues, the block device's bounce buffers), the console and
/// control threads' stacks. The part that grows with RAM (KVM's page tables and its memory
/// slots' dirty bitmaps, the page cache of a snapshot's memory file) is RAM/16.
const VMM_MEMORY_OVERHEAD: u64 = 256 << 20;
/// Threads a VMM may have: its vCPUs (16 at most), a worker per device, the control socket's,
/// the spawner, with room for control clients.
const VMM_PIDS_MAX: u64 = 128;
/// `cpu.max`'s period, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The limits of one VM's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmLimits {
    pub memory_max: u64,
    /// Microseconds of CPU per [`CPU_PERIOD_US`].
    pub cpu_quota_us: u64,
    pub pids_max: u64,
}

impl VmLimits {
    /// For a VM of `vcpus` vCPUs and `mem_mib` MiB: RAM plus a sixteenth plus the fixed
    /// overhead, one CPU per vCPU.
    pub fn for_vm(vcpus: u32, mem_mib: u64) -> VmLimits {
        let ram = mem_mib << 20;
        VmLimits {
            memory_max: ram
                .saturating_add(ram / 16)
                .saturating_add(VMM_MEMORY_OVERHEAD),
            cpu_quota_us: u64::from(vcpus.max(1)) * CPU_PERIOD_US,
            pids_max: VMM_PIDS_MAX,
        }
    }

    /// What the group's files get, in the order they are written.
    fn files(&self) -> [(&'static str, String); 4] {
        [
            ("memory.max", self.memory_max.to_string()),
            // No swap: `memory.max` then caps RAM and swap together, so a VM cannot spill its
            // guest RAM into the host's swap (shared by every VM and the daemon) past its cap,
            // and a guest near its cap is stopped by the OOM killer rather than thrashing the
            // host's disk.
            ("memory.swap.max", "0".to_string()),
            ("cpu.max", format!("{} {CPU_PERIOD_US}", self.cpu_quota_us)),
            ("pids.max", self.pids_max.to_string()),
        ]
    }
}

/// `[vm_io]` in deskd.toml: the same `io.max` for every VM's group, on the block device that
/// holds the computers' disks. All limits 0 (the default): no `io.max`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct IoConfig {
    /// Bytes per second a VM may read from its disk (0: unlimited).
    pub read_bytes_per_second: u64,
    /// Bytes per second a VM may write (0: unlimited).
    pub write_bytes_per_second: u64,
    /// Read operations per second (0: unlimited).
    pub read_iops: u64,
    /// Write operations per second (0: unlimited).
    pub write_iops: u64,
    /// The block device to limit (e.g. "/dev/nvme0n1"); empty: the one holding the computers'
    /// directory (for a partition, its whole disk, which is what `io.max` takes).
    pub device: String,
}

impl IoConfig {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        [
            self.read_bytes_per_second,
            self.write_bytes_per_second,
            self.read_iops,
            self.write_iops,
        ]
        .iter()
        .any(|v| *v > 0)
    }

    /// The `io.max` line for device `dev` (0 becomes "max", so a reused group loses old limits).
    fn line(&self, dev: DeviceNumber) -> String {
        let v = |n: u64| {
            if n == 0 {
                "max".to_string()
            } else {
                n.to_string()
            }
        };
        format!(
            "{}:{} rbps={} wbps={} riops={} wiops={}",
            dev.major,
            dev.minor,
            v(self.read_bytes_per_second),
            v(self.write_bytes_per_second),
            v(self.read_iops),
            v(self.write_iops)
        )
    }
}

/// A block device's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNumber {
    pub major: u32,
    pub minor: u32,
}

impl DeviceNumber {
    fn of(dev: u64) -> DeviceNumber {
        DeviceNumber {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }

    /// Parses sysfs's `MAJ:MIN`.
    fn parse(text: &str) -> Option<DeviceNumber> {
        let (major, minor) = text.trim().split_once(':')?;
        Some(DeviceNumber {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

/// The whole block device `io.max` can take for the filesystem or device at `path`: a block
/// device node (when `[vm_io] device` names one) or the device of the filesystem holding `path`.
/// `sys_dev_block` is `/sys/dev/block`, whose `MAJ:MIN` entries link to the device's sysfs
/// directory: a partition (which has a `partition` file) is replaced by its disk, the parent
/// directory. Filesystems without a block device of their own (tmpfs, overlayfs, btrfs's
/// anonymous devices, NFS) have no entry there: an error saying so.
pub fn block_device_of(path: &Path, sys_dev_block: &Path) -> Result<DeviceNumber, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    let dev = if meta.file_type().is_block_device() {
        DeviceNumber::of(meta.rdev())
    } else {
        DeviceNumber::of(meta.dev())
    };
    let entry = sys_dev_block.join(format!("{}:{}", dev.major, dev.minor));
    let dir = std::fs::canonicalize(&entry).map_err(|_| {
        format!(
            "{} is on device {}:{}, which is not a block device ({} does not exist: tmpfs, \
             overlayfs, btrfs and network filesystems have none)",
            path.display(),
            dev.major,
            dev.minor,
            entry.display()
        )
    })?;
    if !dir.join("partition").exists() {
        return Ok(dev);
    }
    let parent = dir.parent().map(|p| p.join("dev"));
    parent
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .as_deref()
        .and_then(DeviceNumber::parse)
        .ok_or_else(|| {
            format!(
                "{}:{} is a partition whose disk is not found in sysfs ({})",
                dev.major,
                dev.minor,
                dir.display()
            )
        })
}

/// The daemon's VM groups, or none.
#[derive(Debug)]
pub struct Cgroups {
    base: Option<PathBuf>,
    /// The `io.max` line every VM's group gets, when `[vm_io]` sets limits and the device is
    /// known.
    io_max: Option<String>,
    /// Whether the missing `io.max` file (the io controller is not enabled) has been reported.
    io_missing_told: AtomicBool,
}

/// A VM's group, ready for its VMM: `pre_exec` writes to `procs`.
#[derive(Debug)]
pub struct VmGroup {
    pub path: PathBuf,
    procs: File,
}

impl VmGroup {
    /// The descriptor of its `cgroup.procs`, for [`join_in_child`]; open while this lives.
    pub fn join_fd(&self) -> i32 {
        self.procs.as_raw_fd()
    }
}

/// In a forked child, before exec: joins the group whose `cgroup.procs` is open at `fd`
/// (writing "0" moves the writer). Async-signal-safe: one write(2), no allocation.
pub fn join_in_child(fd: i32) -> std::io::Result<()> {
    // SAFETY: write(2) of a 1-byte static buffer on a descriptor number; async-signal-safe.
    if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Cgroups {
    /// No groups: VMMs run in the daemon's.
    pub fn disabled() -> Cgroups {
        Cgroups {
            base: None,
            io_max: None,
            io_missing_told: AtomicBool::new(false),
        }
    }

    /// Gives every VM's group the `io.max` of `config` on the block device holding
    /// `computers_dir` (or `config.device`). Without groups, or without limits, nothing; a
    /// device that cannot be found is logged as a warning once, and VMs run without `io.max`.
    pub fn with_io(mut self, config: &IoConfig, computers_dir: &Path) -> Cgroups {
        self.io_max = None;
        if !config.any() {
            return self;
        }
        if self.base.is_none() {
            tracing::warn!(
                "[vm_io] sets disk limits, but VMMs have no cgroups of their own (see the warning \
                 above): no VM's disk I/O is limited"
            );
            return self;
        }
        let target = if config.device.is_empty() {
            // Made at the first create: until then, the data directory it will be in.
            computers_dir
                .ancestors()
                .find(|p| p.exists())
                .unwrap_or(computers_dir)
                .to_path_buf()
        } else {
            PathBuf::from(&config.device)
        };
        match block_device_of(&target, Path::new("/sys/dev/block")) {
            Ok(dev) => {
                let line = config.line(dev);
                tracing::info!("each VM's disk I/O is limited: io.max {line}");
                self.io_max = Some(line);
            }
            Err(why) => tracing::warn!(
                "[vm_io] sets disk limits, but no VM's disk I/O is limited: {why}. Name the block \
                 device that holds {} with [vm_io] device = \"/dev/...\"",
                computers_dir.display()
            ),
        }
        self
    }

    /// Sets up the daemon's subtree (see the module docs); on any failure logs one warning and
    /// returns [`Cgroups::disabled`].
    pub fn init() -> Cgroups {
        match Self::try_init() {
            Ok(cgroups) => cgroups,
            Err(why) => {
                tracing::warn!(
                    "VMMs run without cgroups of their own (no memory, CPU or pids limit per VM): {why}. \
                     Mount cgroup v2 at /sys/fs/cgroup and, under systemd, keep Delegate=yes in deskd.service"
                );
                Cgroups::disabled()
            }
        }
    }

    fn try_init() -> Result<Cgroups, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let (mount, mount_root) = cgroup2_mount(&mountinfo).ok_or("cgroup v2 is not mounted")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .as_deref()
            .and_then(own_cgroup)
            .ok_or("this process's cgroup v2 group is unknown (/proc/self/cgroup)")?;
        let mut base = group_dir(&mount, &mount_root, &own)
            .ok_or_else(|| format!("this process's group {own} is outside the cgroup v2 mount"))?;
        // Already in our leaf (a restart into it, or systemd's DelegateSubgroup=daemon).
        if base.file_name().is_some_and(|n| n == DAEMON_GROUP) {
            if let Some(parent) = base.parent().filter(|p| p.starts_with(&mount)) {
                base = parent.to_path_buf();
            }
        }
        let is_root = base == mount;
        // Under systemd (which sets INVOCATION_ID for a service) a group is the daemon's to
        // divide only if the unit delegates it; systemd marks such groups with an xattr.
        if std::env::var_os("INVOCATION_ID").is_some() && !is_root && !delegated(&base) {
            return Err(format!(
                "the unit's cgroup {} is not delegated to deskd (add Delegate=yes to deskd.service)",
                base.display()
            ));
        }
        let daemon = base.join(DAEMON_GROUP);
        make_dir(&daemon)?;
        write_file(
            &daemon.join("cgroup.procs"),
            &std::process::id().to_string(),
        )
        .map_err(|e| format!("cannot move the daemon into {}: {e}", daemon.display()))?;
        if !is_root {
            // A group holding processes cannot give controllers to its children: whatever else
            // is in ours gets a leaf of its own.
            let others = procs(&base);
            if !others.is_empty() {
                let group = base.join(OTHERS_GROUP);
                make_dir(&group)?;
                for pid in others {
                    let _ = write_file(&group.join("cgroup.procs"), &pid.to_string());
                }
            } else {
                let _ = std::fs::remove_dir(base.join(OTHERS_GROUP));
            }
        }
        let cgroups = Cgroups::at(base)?;
        // The daemon's own cap; a kernel without the memory controller has no such files.
        let path = daemon.join("memory.max");
        if path.exists() {
            if let Err(e) = write_file(&path, &DAEMON_MEMORY_MAX.to_string()) {
                tracing::warn!("cannot set the daemon's memory.max: {e}");
            }
        }
        Ok(cgroups)
    }

    /// VM groups under `base` (a writable cgroup v2 group holding no processes, or the root):
    /// enables the controllers its children get and removes groups of VMMs that are gone.
    pub fn at(base: PathBuf) -> Result<Cgroups, String> {
        let available = std::fs::read_to_string(base.join("cgroup.controllers"))
            .map_err(|e| format!("{} is not a cgroup v2 group: {e}", base.display()))?;
        let wanted: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if wanted.is_empty() {
            tracing::warn!(
                "cgroup v2 at {} offers none of {CONTROLLERS:?}: VMMs get groups but no limits",
                base.display()
            );
        } else if let Err(e) = write_file(&base.join("cgroup.subtree_control"), &wanted.join(" ")) {
            tracing::warn!(
                "cannot enable {} for the VMs' groups in {}: {e}; VMMs get groups but no limits",
                wanted.join(" "),
                base.display()
            );
        }
        let cgroups = Cgroups {
            base: Some(base),
            ..Cgroups::disabled()
        };
        cgroups.remove_stale();
        Ok(cgroups)
    }

    /// Whether VMMs get groups.
    pub fn enabled(&self) -> bool {
        self.base.is_some()
    }

    fn vm_dir(&self, computer_id: &str) -> Option<PathBuf> {
        let base = self.base.as_ref()?;
        // Ids are the daemon's own (uuid-like); anything else never becomes a path.
        let safe = !computer_id.is_empty()
            && computer_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        safe.then(|| base.join(format!("{VM_GROUP_PREFIX}{computer_id}")))
    }

    /// Creates (or reuses) the group of `computer_id`'s VMM with `limits`, ready to be joined.
    /// `None` when groups are off; an error when the group cannot be made or limited.
    pub fn prepare(&self, computer_id: &str, limits: VmLimits) -> Result<Option<VmGroup>, String> {
        let Some(dir) = self.vm_dir(computer_id) else {
            return Ok(None);
        };
        make_dir(&dir)?;
        for (file, value) in limits.files() {
            let path = dir.join(file);
            // Absent where the controller is not enabled (logged once at start), and
            // `memory.swap.max` where the kernel has no swap accounting (no swap to limit).
            if path.exists() {
                write_file(&path, &value)
                    .map_err(|e| format!("cannot set {}: {e}", path.display()))?;
            }
        }
        if let Some(line) = &self.io_max {
            let path = dir.join("io.max");
            if path.exists() {
                write_file(&path, line)
                    .map_err(|e| format!("cannot set {} to {line:?}: {e}", path.display()))?;
            } else if !self.io_missing_told.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "[vm_io] sets disk limits, but the io controller is not enabled for the VMs' \
                     groups (no {}): VMs' disk I/O is not limited",
                    path.display()
                );
            }
        }
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| format!("cannot open {}/cgroup.procs: {e}", dir.display()))?;
        Ok(Some(VmGroup { path: dir, procs }))
    }

    /// Removes `computer_id`'s group once its VMM has ended (a group with processes stays: it
    /// is removed at the next start of the daemon or reused by the next VMM).
    pub fn remove(&self, computer_id: &str) {
        if let Some(dir) = self.vm_dir(computer_id) {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::debug!("cannot remove {}: {e}", dir.display()),
            }
        }
    }

    /// Removes every empty VM group (their VMMs are gone).
    fn remove_stale(&self) {
        let Some(base) = &self.base else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(base) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(VM_GROUP_PREFIX)
            {
                // EBUSY for a group whose VMM still runs: it stays.
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// Whether systemd delegated `group` (`trusted.delegate` or `user.delegate` is "1").
fn delegated(group: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(group.as_os_str().as_bytes()) else {
        return false;
    };
    [c"trusted.delegate", c"user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        // SAFETY: both strings are NUL-terminated and live across the call; `value` is a
        // writable buffer of the length given.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n > 0 && value[0] == b'1'
    })
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create the cgroup {}: {e}", dir.display())),
    }
}

/// cgroup files take one write of the whole value.
fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

fn procs(group: &Path) -> Vec<u32> {
    std::fs::read_to_string(group.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The cgroup v2 mount point and the group it shows as its root, from /proc/self/mountinfo
/// (`id parent dev root mountpoint options ... - fstype source superoptions`).
fn cgroup2_mount(mountinfo: &str) -> Option<(PathBuf, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = before.split_whitespace().collect();
        Some((PathBuf::from(fields.get(4)?), PathBuf::from(fields.get(3)?)))
    })
}

/// This process's cgroup v2 group from /proc/self/cgroup (the `0::PATH` line).
fn own_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// The directory of group `group` under a cgroup2 mount at `mount` that shows `mount_root`.
fn group_dir(mount: &Path, mount_root: &Path, group: &str) -> Option<PathBuf> {
    let relative = Path::new(group).strip_prefix(mount_root).ok()?;
    Some(mount.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_vm() {
        let l = VmLimits::for_vm(2, 4096);
        assert_eq!(l.memory_max, (4096u64 << 20) + (256 << 20) + (256 << 20));
        assert_eq!(l.cpu_quota_us, 200_000);
        assert_eq!(l.pids_max, VMM_PIDS_MAX);
        assert_eq!(VmLimits::for_vm(0, 512).cpu_quota_us, CPU_PERIOD_US);
    }

    #[test]
    fn no_swap_and_the_overhead_is_documented() {
        let l = VmLimits::for_vm(4, 8192);
        let files = l.files();
        assert_eq!(
            files[0],
            ("memory.max", ((8192u64 + 512 + 256) << 20).to_string())
        );
        assert_eq!(files[1], ("memory.swap.max", "0".to_string()));
        assert_eq!(files[2], ("cpu.max", "400000 100000".to_string()));
        assert_eq!(files[3], ("pids.max", "128".to_string()));
    }

    /// A temporary directory standing in for cgroupfs: the files the kernel would show, empty.
    fn fake_cgroupfs(controllers: &str, vm_files: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("deskd.service");
        std::fs::create_dir(&base).unwrap();
        std::fs::write(base.join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(base.join("cgroup.subtree_control"), "").unwrap();
        // The kernel makes a new group's files itself; here the test makes them beforehand.
        let vm = base.join("vm-c1");
        std::fs::create_dir(&vm).unwrap();
        for f in vm_files.iter().chain(&["cgroup.procs"]) {
            std::fs::write(vm.join(f), "").unwrap();
        }
        (d, base)
    }

    #[test]
    fn a_vm_group_gets_every_limit_written() {
        let (_d, base) = fake_cgroupfs(
            "cpuset cpu io memory pids",
            &[
                "memory.max",
                "memory.swap.max",
                "cpu.max",
                "pids.max",
                "io.max",
            ],
        );
        let mut cgroups = Cgroups::at(base.clone()).unwrap();
        assert_eq!(
            std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids +io"
        );
        cgroups.io_max = Some(
            IoConfig {
                write_bytes_per_second: 50 << 20,
                read_iops: 2000,
                ..IoConfig::default()
            }
            .line(DeviceNumber {
                major: 259,
                minor: 0,
            }),
        );
        let limits = VmLimits::for_vm(2, 2048);
        let group = cgroups.prepare("c1", limits).unwrap().unwrap();
        let read = |f: &str| std::fs::read_to_string(group.path.join(f)).unwrap();
        assert_eq!(read("memory.max"), limits.memory_max.to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "200000 100000");
        assert_eq!(read("pids.max"), "128");
        assert_eq!(
            read("io.max"),
            "259:0 rbps=max wbps=52428800 riops=2000 wiops=max"
        );
    }

    #[test]
    fn files_of_controllers_that_are_off_are_skipped() {
        // No swap accounting, no io controller: those files do not exist and are not made.
        let (_d, base) = fake_cgroupfs("cpu memory pids", &["memory.max", "cpu.max", "pids.max"]);
        let mut cgroups = Cgroups::at(base.clone()).unwrap();
        cgroups.io_max = Some("8:0 rbps=1 wbps=max riops=max wiops=max".into());
        let group = cgroups
            .prepare("c1", VmLimits::for_vm(1, 512))
            .unwrap()
            .unwrap();
        assert!(!group.path.join("memory.swap.max").exists());
        assert!(!group.path.join("io.max").exists());
        assert!(cgroups.io_missing_told.load(Ordering::Relaxed), "said once");
        assert_eq!(
            std::fs::read_to_string(group.path.join("pids.max")).unwrap(),
            "128"
        );
    }

    #[test]
    fn io_limits_need_a_limit_and_groups() {
        assert!(!IoConfig::default().any());
        let config = IoConfig {
            read_bytes_per_second: 1,
            ..IoConfig::default()
        };
        assert!(config.any());
        // Without groups there is nowhere to write io.max.
        let c = Cgroups::disabled().with_io(&config, Path::new("/"));
        assert_eq!(c.io_max, None);
        // No limit set: none, even with groups.
        let (_d, base) = fake_cgroupfs("io", &["io.max"]);
        let c = Cgroups::at(base.clone())
            .unwrap()
            .with_io(&IoConfig::default(), &base);
        assert_eq!(c.io_max, None);
        // A device that cannot be found: none (a warning at start), and the VM still gets its
        // group.
        let c = Cgroups::at(base.clone()).unwrap().with_io(
            &IoConfig {
                device: "/nonexistent/nvme9n9".into(),
                ..config
            },
            &base,
        );
        assert_eq!(c.io_max, None);
        assert!(c.prepare("c1", VmLimits::for_vm(1, 512)).unwrap().is_some());
    }

    #[test]
    fn the_whole_disk_of_a_partition_is_found_in_sysfs() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let here = std::fs::metadata(d.path()).unwrap().dev();
        let dev = DeviceNumber::of(here);
        let sys = d.path().join("sys");
        let disk = sys.join("devices/pci0000:00/nvme0n1");
        let part = disk.join("nvme0n1p2");
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(disk.join("dev"), "259:0\n").unwrap();
        std::fs::write(part.join("dev"), format!("{}:{}\n", dev.major, dev.minor)).unwrap();
        let block = sys.join("dev/block");
        std::fs::create_dir_all(&block).unwrap();
        let entry = block.join(format!("{}:{}", dev.major, dev.minor));
        std::os::unix::fs::symlink("../../devices/pci0000:00/nvme0n1/nvme0n1p2", &entry).unwrap();
        // A whole disk: itself.
        assert_eq!(block_device_of(d.path(), &block), Ok(dev));
        // A partition: its disk.
        std::fs::write(part.join("partition"), "2\n").unwrap();
        assert_eq!(
            block_device_of(d.path(), &block),
            Ok(DeviceNumber {
                major: 259,
                minor: 0
            })
        );
        // Not in sysfs (tmpfs and the like): an error naming the device.
        std::fs::remove_file(&entry).unwrap();
        let err = block_device_of(d.path(), &block).unwrap_err();
        assert!(err.contains("not a block device"), "{err}");
        assert!(block_device_of(&d.path().join("none"), &block).is_err());
        assert_eq!(
            DeviceNumber::parse("8:16\n"),
            Some(DeviceNumber {
                major: 8,
                minor: 16
            })
        );
        assert_eq!(DeviceNumber::parse("8"), None);
    }

    #[test]
    fn mounts_and_groups_are_found() {
        let mountinfo = "\
25 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(("/sys/fs/cgroup/unified".into(), "/".into()))
        );
        assert_eq!(
            cgroup2_mount("25 1 0:22 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        assert_eq!(
            own_cgroup("12:pids:/x\n0::/system.slice/deskd.service\n").as_deref(),
            Some("/system.slice/deskd.service")
        );
        assert_eq!(
            group_dir(
                Path::new("/sys/fs/cgroup"),
                Path::new("/"),
                "/system.slice/deskd.service"
            ),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/deskd.service"))
        );
        // A mount showing a subtree (a cgroup namespace, a container).
        assert_eq!(
            group_dir(Path::new("/sys/fs/cgroup"), Path::new("/ns"), "/ns/a"),
            Some(PathBuf::from("/sys/fs/cgroup/a"))
        );
        assert_eq!(
            group_dir(Path::new("/sys/fs/cgroup"), Path::new("/ns"), "/other"),
            None
        );
    }

    #[test]
    fn odd_ids_never_become_paths() {
        let c = Cgroups {
            base: Some("/sys/fs/cgroup/x".into()),
            ..Cgroups::disabled()
        };
        assert!(c.vm_dir("../../etc").is_none());
        assert!(c.vm_dir("").is_none());
        assert_eq!(
            c.vm_dir("ab-12_c"),
            Some(PathBuf::from("/sys/fs/cgroup/x/vm-ab-12_c"))
        );
        assert!(Cgroups::disabled()
            .prepare("c1", VmLimits::for_vm(1, 512))
            .unwrap()
            .is_none());
    }

    /// A real group on this host's cgroup v2 mount, under a scratch group of the test's own (the
    /// test process itself never moves): created with its limits where the controllers are
    /// enabled, joined by a child before it runs, removed once the child has ended.
    #[test]
    fn a_vm_group_is_made_joined_and_removed() {
        let test = "a_vm_group_is_made_joined_and_removed";
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let Some((mount, _)) = cgroup2_mount(&mountinfo) else {
            eprintln!("SKIPPED {test}: cgroup v2 is not mounted here");
            return;
        };
        let scratch = mount.join(format!("deskd-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&scratch) {
            eprintln!("SKIPPED {test}: {} is not writable: {e}", mount.display());
            return;
        }
        let result = std::panic::catch_unwind(|| {
            let cgroups = Cgroups::at(scratch.clone()).unwrap();
            let limits = VmLimits::for_vm(2, 1024);
            let group = cgroups.prepare("c1", limits).unwrap().unwrap();
            assert_eq!(group.path, scratch.join("vm-c1"));
            let memory_max = group.path.join("memory.max");
            if memory_max.exists() {
                let read = |f: &str| std::fs::read_to_string(group.path.join(f)).unwrap();
                assert_eq!(read("memory.max").trim(), limits.memory_max.to_string());
                assert_eq!(read("cpu.max").trim(), "200000 100000");
                assert_eq!(read("pids.max").trim(), "128");
                if group.path.join("memory.swap.max").exists() {
                    assert_eq!(read("memory.swap.max").trim(), "0");
                }
            } else {
                eprintln!(
                    "{test}: the memory, cpu and pids controllers are not available at {} \
                     (cgroup.controllers: {:?}); limits not checked here",
                    mount.display(),
                    std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default()
                );
            }
            use std::os::unix::process::CommandExt;
            let fd = group.join_fd();
            let mut command = std::process::Command::new("sleep");
            command.arg("30");
            // SAFETY: the closure only makes one write(2) on a descriptor open in the parent.
            unsafe {
                command.pre_exec(move || join_in_child(fd));
            }
            let mut child = command.spawn().unwrap();
            let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
            let relative = group
                .path
                .strip_prefix(&mount)
                .unwrap()
                .display()
                .to_string();
            assert!(cgroup.contains(&format!("0::/{relative}")), "{cgroup}");
            // A group with a live VMM stays; once it has ended the group goes.
            cgroups.remove("c1");
            assert!(group.path.exists());
            child.kill().unwrap();
            child.wait().unwrap();
            cgroups.remove("c1");
            assert!(!group.path.exists());
        });
        let _ = std::fs::remove_dir(scratch.join("vm-c1"));
        let _ = std::fs::remove_dir(&scratch);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
