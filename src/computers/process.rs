//! The real backend: one `deskd vmm --config <dir>/vmm.json` child process per computer, in its
//! own process group so it outlives a daemon restart (the unit uses `KillMode=process`). A pid file
//! (`vmm.pid`: pid and the process start time, so a recycled pid is never mistaken for our VMM)
//! lets a restarted daemon find it again.
//!
//! Per-computer directory `<data_dir>/computers/<id>/`:
//! `disk.img` (copy of the template's root filesystem, grown to `disk_size_gb`), `vmm.json`
//! (the VMM's own `VmConfig` JSON), `vmm.log` (VMM stdout/stderr), `console.log` (guest serial),
//! `vsock.sock` (hybrid vsock: connect, send `CONNECT <port>\n`, read `OK ...`), `control.sock`
//! (the VMM's JSON-lines control socket), `vmm.pid`.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::vmm::{exit, pidfile};

use super::backend::{
    BackendError, Hotplug, Saved, Started, VmBackend, VmSpec, VmState, VMM_TAP_FD,
};
use super::cgroup::{self, Cgroups, VmLimits};
use super::vmm_config::{self, files};
use super::vmm_identity::{self, IdentityPool};
use super::{disk, golden, images, live_resize, saved_vm};

/// How long a restored VMM may take to load its snapshot and answer (it maps memory, so size
/// hardly matters; the rig is slow).
const RESTORE_DEADLINE: Duration = Duration::from_secs(60);

/// How long a start waits for the previous VMM of the same computer to release its disk (its
/// last threads may still be unmapping gigabytes of guest memory on a slow host).
const DISK_LOCK_PATIENCE: Duration = Duration::from_secs(30);

/// Where `tests/rig/serve` is, for messages on hosts that cannot run VMs.
const RIG_HINT: &str =
    "Run deskd inside the emulated-virtualization rig instead: `tests/rig/serve` \
     (see shared/design/this-machine.md); the API itself keeps working here.";

/// A VMM process we know about.
struct Tracked {
    pid: i32,
    start_time: u64,
    /// Present when this daemon spawned the process (so it can reap it); absent after re-attach.
    child: Option<Child>,
}

/// Spawns and supervises `deskd vmm` processes.
pub struct VmmProcessBackend {
    exe: PathBuf,
    computers_dir: PathBuf,
    images_dir: PathBuf,
    hardware_virtualization: bool,
    procs: Mutex<HashMap<String, Tracked>>,
    /// Whether VMMs are confined (their own uid from `identities`, jail, seccomp).
    confine: bool,
    identities: IdentityPool,
    cgroups: Cgroups,
}

impl VmmProcessBackend {
    /// `exe` is the deskd binary to run as `deskd vmm`; `data_dir` the daemon's data directory.
    pub fn new(exe: PathBuf, data_dir: &Path, hardware_virtualization: bool) -> VmmProcessBackend {
        VmmProcessBackend {
            exe,
            computers_dir: data_dir.join("computers"),
            images_dir: data_dir.join("images"),
            hardware_virtualization,
            procs: Mutex::new(HashMap::new()),
            confine: false,
            identities: IdentityPool::default(),
            cgroups: Cgroups::disabled(),
        }
    }

    /// Confines every VMM (`confine`: an identity of its own, the jail, seccomp; see
    /// `crate::vmm::confine`) and gives each a cgroup of its own where `cgroups` has them.
    pub fn with_confinement(mut self, confine: bool, cgroups: Cgroups) -> VmmProcessBackend {
        self.confine = confine;
        self.cgroups = cgroups;
        self
    }

    /// Hands confined VMMs identities from `first` up (checked by
    /// [`vmm_identity::check_pool`] beforehand) instead of [`vmm_identity::FIRST_POOL_ID`].
    pub fn with_uid_base(mut self, first: u32) -> VmmProcessBackend {
        self.identities = IdentityPool::new(first);
        self
    }

    /// The confinement settings of `computer_id`'s next VMM, taking its identity.
    fn confinement(
        &self,
        computer_id: &str,
    ) -> Result<Option<crate::vmm::config::ConfineConfig>, BackendError> {
        if !self.confine {
            return Ok(None);
        }
        let id = self
            .identities
            .acquire(computer_id)
            .map_err(|e| BackendError::NotReady(e.to_string()))?;
        Ok(Some(crate::vmm::config::ConfineConfig::new(id, id)))
    }

    /// Once `computer_id`'s VMM has ended: its identity is free again, its files are root's,
    /// its cgroup goes.
    fn ended(&self, computer_id: &str) {
        if self.identities.release(computer_id).is_some() {
            vmm_identity::take_back(&self.dir(computer_id));
        }
        self.cgroups.remove(computer_id);
    }

    fn dir(&self, computer_id: &str) -> PathBuf {
        self.computers_dir.join(computer_id)
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_pid_file(dir: &Path) -> Option<(i32, u64)> {
        pidfile::read(&dir.join(files::PID))
    }

    /// Whether the tracked process still runs (reaping it if it was our child). A reaped child's
    /// ending comes back as the error: how it ended, and whether that was a guest reboot.
    fn alive(tracked: &mut Tracked) -> Result<bool, (String, bool)> {
        if let Some(child) = tracked.child.as_mut() {
            return match child.try_wait() {
                Ok(None) => Ok(true),
                Ok(Some(status)) => Err((
                    describe_exit(status),
                    status.code().is_some_and(exit::is_reboot),
                )),
                Err(e) => Err((format!("cannot watch the VMM process: {e}"), false)),
            };
        }
        Ok(pidfile::start_time(tracked.pid) == Some(tracked.start_time))
    }

    /// How a VMM that was not our child ended: from the exit status it wrote (`vmm.exit`), if
    /// it got that far; a VMM killed outright writes nothing.
    fn ended_without_us(dir: &Path, when: &str) -> VmState {
        let tail = log_tail(&dir.join(files::VMM_LOG));
        match exit::read_status_record(&dir.join(files::EXIT_STATUS)) {
            Some(record) => {
                let code = record.status;
                let reason = format!(
                    "the VMM process {when}: it exited with status {code} ({}).{tail}",
                    exit::describe(code, Some(record))
                );
                if exit::is_reboot(code) {
                    VmState::GuestRebooted { reason }
                } else {
                    VmState::Exited { reason }
                }
            }
            None => VmState::Exited {
                reason: format!("the VMM process {when}, without saying why (killed?).{tail}"),
            },
        }
    }
}

impl VmBackend for VmmProcessBackend {
    fn host_check(&self) -> Result<(), BackendError> {
        if !self.hardware_virtualization {
            return Err(BackendError::HostUnsupported(format!(
                "This host cannot run computers: its CPU has no hardware virtualization (no vmx or svm \
                 flag in /proc/cpuinfo; a nested cloud's /dev/kvm without them cannot boot stock \
                 guest kernels). {RIG_HINT}"
            )));
        }
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            return Err(BackendError::HostUnsupported(format!(
                "This host cannot run computers: /dev/kvm cannot be opened ({e}). Load kvm-intel or \
                 kvm-amd and make sure the deskd service may use /dev/kvm. {RIG_HINT}"
            )));
        }
        Ok(())
    }

    fn start(&self, spec: &VmSpec) -> Result<Started, BackendError> {
        self.host_check()?;
        // A VMM this daemon does not track yet (it was started by a previous daemon and recovery
        // has not reached it) is found by its pid file: never a second VMM on the same disk.
        if !self.procs().contains_key(&spec.computer_id) {
            self.attach(&spec.computer_id);
        }
        if matches!(self.state(&spec.computer_id), VmState::Alive { .. }) {
            return Ok(Started::Booted);
        }
        std::fs::create_dir_all(&spec.dir).map_err(|e| {
            BackendError::NotReady(format!("cannot create {}: {e}", spec.dir.display()))
        })?;
        // Never taken for a refused snapshot below (which would throw the saved VM away).
        disk::wait_until_unlocked(&spec.dir, DISK_LOCK_PATIENCE)?;
        if saved_vm::present(&spec.dir) {
            let copy = saved_vm::is_copy(&spec.dir);
            match self.restore(spec) {
                Ok(()) => return Ok(Started::Restored { copy }),
                // A snapshot this VMM refuses (corrupt, another host, another format) would be
                // refused again: boot afresh from the disk, which is what the guest last wrote.
                Err(why) => {
                    tracing::warn!(computer = %spec.computer_id, "the saved VM cannot be restored, booting afresh: {why}");
                    saved_vm::discard(&spec.dir)?;
                }
            }
        }
        let image = images::resolve(&self.images_dir, &spec.template_ref)?;
        let disk = disk::prepare(spec, &image)?;
        let mut config = vmm_config::vm_config(spec, &image, &disk);
        config.confine = self.confinement(&spec.computer_id)?;
        let config_path = spec.dir.join(files::CONFIG);
        vmm_config::write(&config, &config_path).map_err(|e| {
            BackendError::Process(format!("cannot write {}: {e}", config_path.display()))
        })?;
        let args: Vec<std::ffi::OsString> = vec![
            "vmm".into(),
            "--config".into(),
            config_path.into_os_string(),
        ];
        self.spawn(spec, &args)?;
        // A VMM that rejects its configuration exits at once: report that as the start's failure
        // rather than as a later surprise.
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            if let VmState::Exited { reason } | VmState::GuestRebooted { reason } =
                self.state(&spec.computer_id)
            {
                return Err(BackendError::Process(reason));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(Started::Booted)
    }

    fn suspend(&self, computer_id: &str) -> Result<Saved, BackendError> {
        if !matches!(self.state(computer_id), VmState::Alive { .. }) {
            return Err(BackendError::NotReady("the VM is not running".into()));
        }
        let dir = self.dir(computer_id);
        let done = saved_vm::pause_and_save(&dir, &dir)?;
        // The VM is paused and saved: it must end without running another instruction (a power
        // button would let the guest write its disk past the snapshot).
        self.end_now(computer_id);
        Ok(Saved {
            memory_bytes: done.memory_bytes,
            disk_bytes: saved_vm::allocated_bytes(&dir).unwrap_or(done.memory_data_bytes),
            snapshot_ms: done.snapshot_ms,
        })
    }

    fn clone_running(&self, from_id: &str, to_id: &str) -> Result<(), BackendError> {
        if !matches!(self.state(from_id), VmState::Alive { .. }) {
            return Err(BackendError::NotReady("the VM is not running".into()));
        }
        let (from, to) = (self.dir(from_id), self.dir(to_id));
        std::fs::create_dir_all(&to)
            .map_err(|e| BackendError::Process(format!("cannot create {}: {e}", to.display())))?;
        // A confined VMM sees only its own directory: it writes the snapshot into a staging
        // directory there, which then moves into the clone's (a rename: same filesystem).
        let staging = saved_vm::clone_staging_dir(&from, to_id);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging).map_err(|e| {
            BackendError::Process(format!("cannot create {}: {e}", staging.display()))
        })?;
        if let Some(id) = self.identities.held(from_id) {
            if let Err(e) = vmm_identity::hand_over(&staging, id, id) {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(BackendError::Process(format!(
                    "cannot give {} to the VMM's user: {e}",
                    staging.display()
                )));
            }
        }
        if let Err(e) = saved_vm::pause_and_save(&from, &staging) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        let moved = saved_vm::move_saved(&staging, &to);
        let _ = std::fs::remove_dir_all(&staging);
        // The disk is copied while the source is still paused, so it matches the snapshot.
        let copied = moved
            .and_then(|()| disk::clone(&from, &to))
            .and_then(|()| saved_vm::mark_copy(&to));
        saved_vm::resume(&from);
        if let Err(e) = copied {
            let _ = saved_vm::discard(&to);
            return Err(e);
        }
        Ok(())
    }

    fn saved_bytes(&self, computer_id: &str) -> Option<u64> {
        saved_vm::allocated_bytes(&self.dir(computer_id))
    }

    fn discard_saved(&self, computer_id: &str) -> Result<(), BackendError> {
        saved_vm::discard(&self.dir(computer_id))
    }

    fn unpause(&self, computer_id: &str) {
        let dir = self.dir(computer_id);
        if matches!(self.state(computer_id), VmState::Alive { .. }) {
            saved_vm::resume_after_any_snapshot(&dir);
        }
        saved_vm::remove_unfinished(&dir);
    }

    fn stop(&self, computer_id: &str, grace: Duration) -> Result<(), BackendError> {
        // A stopped computer boots afresh next time: its saved VM (if suspended) is gone.
        saved_vm::discard(&self.dir(computer_id))?;
        let tracked = self.procs().remove(computer_id);
        let mut tracked = match tracked {
            Some(t) => t,
            None => match Self::read_pid_file(&self.dir(computer_id)) {
                Some((pid, start_time)) => Tracked {
                    pid,
                    start_time,
                    child: None,
                },
                None => {
                    // No VMM: an identity taken for a start that failed is free again.
                    self.ended(computer_id);
                    return Ok(());
                }
            },
        };
        if matches!(Self::alive(&mut tracked), Ok(true)) {
            // SIGTERM asks the VMM to power the guest off; SIGKILL after the grace period.
            signal_group(tracked.pid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && matches!(Self::alive(&mut tracked), Ok(true)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(Self::alive(&mut tracked), Ok(true)) {
                signal_group(tracked.pid, Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(Self::alive(&mut tracked), Ok(true)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if matches!(Self::alive(&mut tracked), Ok(true)) {
                    return Err(BackendError::Process(format!(
                        "the VMM process {} did not end after SIGKILL",
                        tracked.pid
                    )));
                }
            }
        }
        let _ = std::fs::remove_file(self.dir(computer_id).join(files::PID));
        self.ended(computer_id);
        Ok(())
    }

    fn state(&self, computer_id: &str) -> VmState {
        let dir = self.dir(computer_id);
        let mut procs = self.procs();
        let Some(tracked) = procs.get_mut(computer_id) else {
            return VmState::Absent;
        };
        match Self::alive(tracked) {
            Ok(true) => VmState::Alive { pid: tracked.pid },
            Ok(false) => {
                procs.remove(computer_id);
                self.ended(computer_id);
                Self::ended_without_us(&dir, "ended while deskd was not its parent")
            }
            Err((how, rebooted)) => {
                procs.remove(computer_id);
                self.ended(computer_id);
                let _ = std::fs::remove_file(dir.join(files::PID));
                // A confined VMM's forbidden system call is named in its exit status file.
                let how = match exit::read_status_record(&dir.join(files::EXIT_STATUS)) {
                    Some(record) if record.forbidden_syscall.is_some() => format!(
                        "the VMM process exited with status {}: {}",
                        record.status,
                        exit::describe(record.status, Some(record))
                    ),
                    _ => how,
                };
                let reason = format!("{how}.{}", log_tail(&dir.join(files::VMM_LOG)));
                if rebooted {
                    VmState::GuestRebooted { reason }
                } else {
                    VmState::Exited { reason }
                }
            }
        }
    }

    fn attach(&self, computer_id: &str) -> VmState {
        let dir = self.dir(computer_id);
        let recorded = Self::read_pid_file(&dir);
        // A VMM of this computer that its pid file does not name (the file was lost) is adopted:
        // leaving it would mean a second VMM on the same disk at the next start.
        let found = recorded
            .filter(|(pid, start)| pidfile::is_alive(*pid, *start))
            .or_else(|| self.find_vmm_of(computer_id));
        if let Some((pid, start_time)) = found {
            if recorded != Some((pid, start_time)) {
                tracing::warn!(computer = %computer_id, pid, "adopting a VMM its pid file did not name");
            }
            self.identities.adopt(computer_id, pid);
            self.procs().insert(
                computer_id.to_string(),
                Tracked {
                    pid,
                    start_time,
                    child: None,
                },
            );
            return self.state(computer_id);
        }
        if recorded.is_some() {
            let _ = std::fs::remove_file(dir.join(files::PID));
            self.ended(computer_id);
            return Self::ended_without_us(&dir, "ended while deskd was down");
        }
        VmState::Absent
    }

    fn stop_strays(&self, known: &dyn Fn(&str) -> bool) -> usize {
        let mut stopped = 0;
        for (id, pid, _) in self.running_vmms() {
            // Each VMM leads its own process group (spawned with `process_group(0)`), and the
            // group is what is signalled: a process that is not a group leader is a VMM's child
            // caught between fork and exec (its command line still the VMM's), gone with it.
            let leads_group =
                nix::unistd::getpgid(Some(Pid::from_raw(pid))).is_ok_and(|g| g.as_raw() == pid);
            if known(&id) || !leads_group {
                continue;
            }
            tracing::warn!(computer = %id, pid, "stopping a VMM of a computer deskd does not know");
            signal_group(pid, Signal::SIGKILL);
            stopped += 1;
        }
        stopped
    }

    fn destroy(&self, computer_id: &str) -> Result<(), BackendError> {
        self.stop(computer_id, Duration::from_secs(10))?;
        let dir = self.dir(computer_id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::Process(format!(
                "cannot remove {}: {e}",
                dir.display()
            ))),
        }
    }

    fn clone_disk(&self, from_id: &str, to_id: &str) -> Result<(), BackendError> {
        let (from, to) = (self.dir(from_id), self.dir(to_id));
        disk::clone(&from, &to)?;
        // A suspended computer's clone resumes where its source was, as itself.
        if saved_vm::present(&from) {
            saved_vm::copy(&from, &to)?;
        }
        Ok(())
    }

    fn hotplug(&self, computer_id: &str, change: Hotplug) -> Result<u64, BackendError> {
        if !matches!(self.state(computer_id), VmState::Alive { .. }) {
            return Err(BackendError::NotReady("the VM is not running".into()));
        }
        match change {
            Hotplug::BandwidthMbps(mbps) => {
                live_resize::set_net_limit(&self.dir(computer_id), mbps)?;
                Ok(mbps.into())
            }
            // The disk's size in whole GiB, as the VMM answered it.
            Hotplug::DiskGb(gb) => {
                // A confined VMM may write files only as long as its disks were at its start
                // (RLIMIT_FSIZE): let it extend this one first.
                if let (true, VmState::Alive { pid }) = (self.confine, self.state(computer_id)) {
                    let bytes = (u64::from(gb) << 30)
                        .saturating_add(crate::vmm::confine::limits::FILE_SIZE_SLACK);
                    crate::vmm::confine::limits::raise_file_size(pid, bytes).map_err(|e| {
                        BackendError::Process(format!(
                            "cannot let the VMM (pid {pid}) grow its disk to {gb} GB (RLIMIT_FSIZE): {e}"
                        ))
                    })?;
                }
                Ok(live_resize::grow_disk(&self.dir(computer_id), gb)? >> 30)
            }
            other => Err(Self::hotplug_unsupported(other)),
        }
    }

    fn keep_as_golden(
        &self,
        computer_id: &str,
        golden_dir: &Path,
        manifest: &[u8],
    ) -> Result<(), BackendError> {
        if matches!(self.state(computer_id), VmState::Alive { .. }) {
            return Err(BackendError::NotReady(
                "the VM still runs; suspend it before keeping it as a golden snapshot".into(),
            ));
        }
        golden::keep(&self.dir(computer_id), golden_dir, manifest)
    }

    fn seed_from_golden(
        &self,
        computer_id: &str,
        golden_dir: &Path,
        restore: bool,
    ) -> Result<golden::Seeded, BackendError> {
        golden::seed(golden_dir, &self.dir(computer_id), restore)
    }
}

impl VmmProcessBackend {
    /// Spawns `deskd <args>` for `spec`'s computer and tracks it.
    fn spawn(&self, spec: &VmSpec, args: &[std::ffi::OsString]) -> Result<(), BackendError> {
        // A previous run's exit status would be taken for how this one ended. Its sockets stay:
        // the VMM replaces stale ones itself and refuses live ones (another VMM's).
        let _ = std::fs::remove_file(spec.dir.join(files::EXIT_STATUS));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.dir.join(files::VMM_LOG))
            .map_err(|e| BackendError::Process(format!("cannot open the VMM log: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| BackendError::Process(format!("cannot open the VMM log: {e}")))?;
        // A confined VMM writes its directory as its own user (logs rotate, snapshots).
        if let Some(id) = self
            .confine
            .then(|| self.identities.held(&spec.computer_id))
            .flatten()
        {
            vmm_identity::hand_over(&spec.dir, id, id).map_err(|e| {
                BackendError::Process(format!(
                    "cannot give {} to the VMM's user {id}: {e}",
                    spec.dir.display()
                ))
            })?;
        }
        let group = self
            .cgroups
            .prepare(
                &spec.computer_id,
                VmLimits::for_vm(spec.vcpus, spec.mem_mib),
            )
            .map_err(|e| BackendError::Process(format!("cannot make the VM's cgroup: {e}")))?;
        let mut command = Command::new(&self.exe);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Own process group: signals for the daemon (Ctrl-C, systemd stop) do not reach VMs.
            .process_group(0);
        if let Some(nic) = &spec.net {
            let tap = nic.tap.as_raw_fd();
            // SAFETY: the closure runs in the forked child before exec and calls only dup2 and
            // fcntl, which are async-signal-safe; it allocates nothing and takes no lock. `tap`
            // is open in the parent for as long as `spec` lives (past this spawn), so it is open
            // in the child too.
            unsafe {
                command.pre_exec(move || inherit_at(tap, VMM_TAP_FD));
            }
        }
        if let Some(group) = &group {
            let fd = group.join_fd();
            // SAFETY: the closure runs in the forked child before exec and makes one write(2) on
            // a descriptor open in the parent (`group` lives past the spawn): async-signal-safe,
            // no allocation, no lock.
            unsafe {
                command.pre_exec(move || cgroup::join_in_child(fd));
            }
        }
        let child = command.spawn().map_err(|e| {
            BackendError::Process(format!("cannot run {} vmm: {e}", self.exe.display()))
        })?;
        drop(group);
        let pid = child.id() as i32;
        // The VMM writes its own pid file before its guest runs (and does not start without it).
        let start_time = pidfile::start_time(pid).unwrap_or(0);
        self.procs().insert(
            spec.computer_id.clone(),
            Tracked {
                pid,
                start_time,
                child: Some(child),
            },
        );
        Ok(())
    }

    /// Restores `spec`'s saved VM; once its VMM answers (the snapshot is loaded and mapped), the
    /// saved VM is discarded: the guest runs on from it and its disk moves on.
    fn restore(&self, spec: &VmSpec) -> Result<(), BackendError> {
        let cards = saved_vm::saved_cards(&spec.dir)?;
        let net = spec.net.as_ref().map(|nic| &nic.card);
        let mut args = saved_vm::restore_args(&spec.dir, cards, net)?;
        // A snapshot never carries its confinement: the VMM is given its identity anew.
        if let Some(confine) = self.confinement(&spec.computer_id)? {
            args.extend(saved_vm::confine_args(&confine));
        }
        self.spawn(spec, &args)?;
        let deadline = Instant::now() + RESTORE_DEADLINE;
        loop {
            match self.state(&spec.computer_id) {
                VmState::Alive { .. } if saved_vm::answers(&spec.dir) => break,
                VmState::Alive { .. } if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                VmState::Alive { .. } => {
                    self.end_now(&spec.computer_id);
                    return Err(BackendError::Process(format!(
                        "the restored VMM did not answer within {} s",
                        RESTORE_DEADLINE.as_secs()
                    )));
                }
                VmState::Exited { reason } | VmState::GuestRebooted { reason } => {
                    return Err(BackendError::Process(reason))
                }
                VmState::Absent => {
                    return Err(BackendError::Process("the restored VMM vanished".into()))
                }
            }
        }
        saved_vm::discard(&spec.dir)
    }

    /// Ends a VMM without letting its guest run on: a forced shutdown on its control socket,
    /// SIGKILL if that does not end it soon.
    fn end_now(&self, computer_id: &str) {
        let dir = self.dir(computer_id);
        let Some(mut tracked) = self.procs().remove(computer_id) else {
            return;
        };
        if let Err(e) = saved_vm::force_shutdown(&dir) {
            tracing::debug!(computer = %computer_id, "forced shutdown request failed: {e}");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(Self::alive(&mut tracked), Ok(true)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(Self::alive(&mut tracked), Ok(true)) {
            signal_group(tracked.pid, Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(Self::alive(&mut tracked), Ok(true)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_file(dir.join(files::PID));
        self.ended(computer_id);
    }

    /// Every live `deskd vmm` process of this data directory, found by its command line
    /// (`vmm --config <computers dir>/<id>/vmm.json`): computer id, pid, start time.
    fn running_vmms(&self) -> Vec<(String, i32, u64)> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            // Booted: `vmm --config <computer dir>/vmm.json`; restored: `vmm --restore <computer
            // dir>/saved`.
            let Some((path, expected)) = args
                .windows(3)
                .find(|w| w[0] == b"vmm" && (w[1] == b"--config" || w[1] == b"--restore"))
                .map(|w| {
                    let file = if w[1] == b"--config" {
                        files::CONFIG
                    } else {
                        files::SAVED_VM
                    };
                    (
                        std::path::Path::new(std::ffi::OsStr::from_bytes(w[2])),
                        file,
                    )
                })
            else {
                continue;
            };
            let Ok(rest) = path.strip_prefix(&self.computers_dir) else {
                continue;
            };
            let mut parts = rest.components();
            let (Some(id), Some(file), None) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if file.as_os_str() != expected {
                continue;
            }
            if let (Some(id), Some(start)) = (id.as_os_str().to_str(), pidfile::start_time(pid)) {
                found.push((id.to_string(), pid, start));
            }
        }
        found
    }

    /// The live VMM process of `computer_id`, if there is one.
    fn find_vmm_of(&self, computer_id: &str) -> Option<(i32, u64)> {
        self.running_vmms()
            .into_iter()
            .find(|(id, _, _)| id == computer_id)
            .map(|(_, pid, start)| (pid, start))
    }

    /// CPU and memory hotplug need ACPI hotplug devices and virtio-mem, which `deskd vmm` does not
    /// have yet: such a resize is reported as not applied rather than pretended.
    fn hotplug_unsupported(change: Hotplug) -> BackendError {
        let what = match change {
            Hotplug::Vcpus(_) => "Changing the vCPUs of a running computer (CPU hotplug)",
            Hotplug::MemMib(_) => "Changing the memory of a running computer (memory hotplug)",
            Hotplug::DiskGb(_) | Hotplug::BandwidthMbps(_) => "This change",
        };
        BackendError::NotReady(format!(
            "{what} is not supported by deskd's VMM yet; stop the computer, resize it (the new \
             size is stored) and start it again"
        ))
    }
}

/// In a forked child: makes `fd` available as descriptor `at` across exec (dup2 clears
/// close-on-exec on the copy; a descriptor already at `at` has the flag cleared instead).
fn inherit_at(fd: i32, at: i32) -> std::io::Result<()> {
    if fd == at {
        // SAFETY: fcntl on a descriptor number; no memory is involved.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    } else {
        // SAFETY: dup2 on descriptor numbers; it replaces whatever `at` was in this child only.
        if unsafe { libc::dup2(fd, at) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Signals the VMM's own process group (it was spawned with `process_group(0)`, so nothing else
/// is hit). A group that is gone already is fine.
fn signal_group(pid: i32, signal: Signal) {
    let _ = nix::sys::signal::killpg(Pid::from_raw(pid), signal);
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!(
            "the VMM process exited with status {code} ({})",
            exit::meaning(code)
        ),
        // The kernel's own SIGSYS: a confined VMM's forbidden system call made while it blocked
        // signals (inside a thread start), so its handler could not run.
        (None, Some(libc::SIGSYS)) => format!(
            "the VMM process was killed by signal {} (SIGSYS): it made a forbidden system call",
            libc::SIGSYS
        ),
        (None, Some(sig)) => format!("the VMM process was killed by signal {sig}"),
        _ => "the VMM process ended".to_string(),
    }
}

/// The last lines of a log, prefixed for appending to a message; empty if there is no log.
fn log_tail(path: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(2048)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = strip_ansi(&String::from_utf8_lossy(&bytes));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        String::new()
    } else {
        format!(" Last VMM log lines ({}): {tail}", path.display())
    }
}

/// Removes terminal colour sequences (`ESC [ ... letter`) that loggers write to a log file.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip `[`, parameters, and the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> VmSpec {
        VmSpec {
            computer_id: "c1".into(),
            instance_id: "abcd1234".into(),
            vcpus: 1,
            mem_mib: 1024,
            disk_size_gb: 1,
            resolution: "1280x720x24".into(),
            template_ref: "system/desktop@1.0.0".into(),
            dir: dir.join("computers/c1"),
            net: None,
        }
    }

    /// A one-byte stand-in for the default image, in the layout images/install.sh makes.
    fn fake_image(data_dir: &Path) {
        let images = data_dir.join("images/system/desktop/1.0.0");
        std::fs::create_dir_all(&images).unwrap();
        for f in ["kernel", "initrd", "rootfs"] {
            std::fs::write(images.join(f), b"x").unwrap();
        }
    }

    /// An executable shell script standing in for `deskd vmm`.
    fn fake_vmm(path: &Path, body: &str) {
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }

    #[test]
    fn without_hardware_virtualization_start_fails_and_points_to_the_rig() {
        let data = tempfile::tempdir().unwrap();
        let b = VmmProcessBackend::new("/bin/false".into(), data.path(), false);
        let err = b.start(&spec(data.path())).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, BackendError::HostUnsupported(_)));
        assert!(
            msg.contains("vmx") && msg.contains("tests/rig/serve"),
            "{msg}"
        );
        assert_eq!(b.state("c1"), VmState::Absent);
    }

    /// Runs a real child process through the backend (a shell standing in for `deskd vmm` only so
    /// that the supervision code, not the VMM, is under test) and checks exit detection, stop and
    /// re-attach by pid file.
    #[test]
    fn supervises_a_real_process() {
        let data = tempfile::tempdir().unwrap();
        fake_image(data.path());
        let script = data.path().join("fake-deskd");
        // Like the real VMM, it writes its own pid file (its config names it) before running on.
        fake_vmm(
            &script,
            "dir=$(dirname \"$3\")\necho \"$$ $(cut -d' ' -f22 /proc/$$/stat)\" > \"$dir/vmm.pid\"\nexec sleep 30",
        );
        let b = VmmProcessBackend::new(script.clone(), data.path(), true);
        // host_check also wants /dev/kvm; skip loudly where it is missing.
        if let Err(e) = b.host_check() {
            eprintln!("SKIPPED supervises_a_real_process: {e}");
            return;
        }
        let s = spec(data.path());
        b.start(&s).unwrap();
        assert!(matches!(b.state("c1"), VmState::Alive { .. }));
        assert_eq!(
            std::fs::metadata(s.dir.join(files::DISK)).unwrap().len(),
            1 << 30
        );
        // A second backend (a restarted daemon) finds the process through the pid file.
        let b2 = VmmProcessBackend::new(script, data.path(), true);
        assert!(matches!(b2.attach("c1"), VmState::Alive { .. }));
        b2.stop("c1", Duration::from_secs(2)).unwrap();
        assert!(matches!(b.state("c1"), VmState::Exited { .. }));
        assert_eq!(b2.state("c1"), VmState::Absent);
    }

    /// VMMs its pid files do not name are found by their command line: one of a known computer
    /// is adopted, one of a computer that no longer exists is stopped.
    #[test]
    fn stray_vmms_are_adopted_or_stopped() {
        use std::os::unix::process::CommandExt;
        let data = tempfile::tempdir().unwrap();
        let script = data.path().join("fake-deskd");
        // Not `exec`: the shell's command line must keep the VMM's arguments.
        fake_vmm(&script, "sleep 30");
        let spawn = |id: &str| {
            let dir = data.path().join("computers").join(id);
            std::fs::create_dir_all(&dir).unwrap();
            std::process::Command::new(&script)
                .arg("vmm")
                .arg("--config")
                .arg(dir.join(files::CONFIG))
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut known = spawn("c1");
        let mut ghost = spawn("ghost");
        let b = VmmProcessBackend::new(script.clone(), data.path(), true);
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.running_vmms().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(matches!(b.attach("c1"), VmState::Alive { pid } if pid == known.id() as i32));
        assert_eq!(b.stop_strays(&|id| id == "c1"), 1);
        assert!(ghost.wait().unwrap().code().is_none(), "killed by a signal");
        b.stop("c1", Duration::from_secs(2)).unwrap();
        let _ = known.wait();
    }

    /// A VMM that ends with the reboot status (a shell standing in for it, as above) is a guest
    /// reboot, not a failure; any other ending is.
    #[test]
    fn a_reboot_exit_is_told_apart_from_a_failure() {
        let data = tempfile::tempdir().unwrap();
        fake_image(data.path());
        for (code, rebooted) in [(3, true), (5, false)] {
            let script = data.path().join(format!("fake-deskd-{code}"));
            fake_vmm(&script, &format!("sleep 0.5\nexit {code}"));
            let b = VmmProcessBackend::new(script, data.path(), true);
            if let Err(e) = b.host_check() {
                eprintln!("SKIPPED a_reboot_exit_is_told_apart_from_a_failure: {e}");
                return;
            }
            b.start(&spec(data.path())).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let state = loop {
                match b.state("c1") {
                    VmState::Alive { .. } if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    other => break other,
                }
            };
            match state {
                VmState::GuestRebooted { reason } => {
                    assert!(rebooted, "exit {code} taken for a reboot");
                    assert!(reason.contains("the guest rebooted"), "{reason}");
                }
                VmState::Exited { reason } => {
                    assert!(!rebooted, "exit {code} not taken for a reboot: {reason}")
                }
                other => panic!("exit {code}: unexpected state {other:?}"),
            }
        }
    }

    /// A confined VMM's forbidden system call (its SIGSYS handler writes `6 seccomp N` to the
    /// exit status file and exits with 6) becomes the reason, naming the call.
    #[test]
    fn a_forbidden_system_call_is_the_reason() {
        let data = tempfile::tempdir().unwrap();
        fake_image(data.path());
        let script = data.path().join("fake-deskd");
        fake_vmm(
            &script,
            "dir=$(dirname \"$3\")\nsleep 0.5\necho '6 seccomp 41' > \"$dir/vmm.exit\"\nexit 6",
        );
        let b = VmmProcessBackend::new(script, data.path(), true);
        if let Err(e) = b.host_check() {
            eprintln!("SKIPPED a_forbidden_system_call_is_the_reason: {e}");
            return;
        }
        b.start(&spec(data.path())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let state = loop {
            match b.state("c1") {
                VmState::Alive { .. } if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => break other,
            }
        };
        match state {
            VmState::Exited { reason } => {
                assert!(reason.contains("forbidden system call 41"), "{reason}")
            }
            other => panic!("unexpected state {other:?}"),
        }
    }

    /// With confinement, the VMM's configuration names an identity of the pool, its directory
    /// is that identity's while it runs and root's again once it has ended.
    #[test]
    fn a_confined_vmm_gets_its_own_identity_and_gives_it_back() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "SKIPPED a_confined_vmm_gets_its_own_identity_and_gives_it_back: chown needs root"
            );
            return;
        }
        let data = tempfile::tempdir().unwrap();
        fake_image(data.path());
        let script = data.path().join("fake-deskd");
        fake_vmm(
            &script,
            "dir=$(dirname \"$3\")\necho \"$$ $(cut -d' ' -f22 /proc/$$/stat)\" > \"$dir/vmm.pid\"\nexec sleep 30",
        );
        let b = VmmProcessBackend::new(script, data.path(), true)
            .with_confinement(true, Cgroups::disabled());
        if let Err(e) = b.host_check() {
            eprintln!("SKIPPED a_confined_vmm_gets_its_own_identity_and_gives_it_back: {e}");
            return;
        }
        let s = spec(data.path());
        b.start(&s).unwrap();
        let config = crate::vmm::config::VmConfig::from_file(&s.dir.join(files::CONFIG)).unwrap();
        let confine = config.confine.expect("a confined VMM's config says so");
        assert!(b.identities.contains(confine.uid));
        assert_eq!(confine.uid, confine.gid);
        assert_eq!(std::fs::metadata(&s.dir).unwrap().uid(), confine.uid);
        assert_eq!(
            std::fs::metadata(s.dir.join(files::DISK)).unwrap().uid(),
            confine.uid
        );
        b.stop("c1", Duration::from_secs(2)).unwrap();
        assert_eq!(std::fs::metadata(&s.dir).unwrap().uid(), 0);
        assert_eq!(b.identities.held("c1"), None, "released");
    }

    /// A VMM that ended while deskd was down is judged by the exit status file it wrote.
    #[test]
    fn an_ended_vmm_that_was_not_our_child_is_judged_by_its_exit_status_file() {
        let data = tempfile::tempdir().unwrap();
        let b = VmmProcessBackend::new("/bin/false".into(), data.path(), true);
        let dir = data.path().join("computers/c1");
        std::fs::create_dir_all(&dir).unwrap();
        // A pid that cannot exist (above the kernel's pid_max limit of 2^22).
        let dead_pid_file = "99999999 12345\n";
        std::fs::write(dir.join(files::PID), dead_pid_file).unwrap();
        std::fs::write(dir.join(files::EXIT_STATUS), "3 reboot\n").unwrap();
        match b.attach("c1") {
            VmState::GuestRebooted { reason } => assert!(reason.contains("status 3"), "{reason}"),
            other => panic!("expected a guest reboot, got {other:?}"),
        }
        std::fs::write(dir.join(files::PID), dead_pid_file).unwrap();
        std::fs::write(dir.join(files::EXIT_STATUS), "5 failed\n").unwrap();
        assert!(matches!(b.attach("c1"), VmState::Exited { .. }));
        std::fs::write(dir.join(files::PID), dead_pid_file).unwrap();
        std::fs::remove_file(dir.join(files::EXIT_STATUS)).unwrap();
        match b.attach("c1") {
            VmState::Exited { reason } => {
                assert!(reason.contains("without saying why"), "{reason}")
            }
            other => panic!("expected an exit, got {other:?}"),
        }
    }

    #[test]
    fn cpu_and_memory_hotplug_say_they_are_not_there_yet_and_what_to_do() {
        for change in [Hotplug::Vcpus(2), Hotplug::MemMib(8192)] {
            let m = VmmProcessBackend::hotplug_unsupported(change).to_string();
            assert!(
                m.contains("not supported by deskd's VMM yet") && m.contains("stop the computer"),
                "{m}"
            );
        }
        let b = VmmProcessBackend::new("/bin/false".into(), Path::new("/nonexistent"), true);
        let err = b.hotplug("c1", Hotplug::DiskGb(12)).unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
    }

    #[test]
    fn log_tails_lose_colour_codes() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m VM started"),
            "2026  INFO VM started"
        );
    }
}
