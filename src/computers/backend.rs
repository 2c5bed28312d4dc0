//! The seam between computer lifecycle and whatever runs the VM. The daemon drives computers only
//! through [`VmBackend`]; the shipped implementation is [`super::VmmProcessBackend`], which runs
//! one `deskd vmm` child process per computer.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use crate::vmm::config::NetConfig;

/// The descriptor number a VM's TAP has in its VMM process: the backend places
/// [`GuestNic::tap`] there before the VMM runs, and [`GuestNic::card`] names it.
pub const VMM_TAP_FD: i32 = 3;

/// A computer's network card: its TAP (opened by the daemon in the computer's network
/// namespace, see `crate::network`) and the card the VMM makes of it.
#[derive(Debug, Clone)]
pub struct GuestNic {
    /// The daemon's copy of the TAP; the VMM gets its own, at [`VMM_TAP_FD`].
    pub tap: Arc<OwnedFd>,
    /// `TapSource::Fd(VMM_TAP_FD)`, the fixed MAC and the rate limit.
    pub card: NetConfig,
}

impl PartialEq for GuestNic {
    fn eq(&self, other: &GuestNic) -> bool {
        self.tap.as_raw_fd() == other.tap.as_raw_fd() && self.card == other.card
    }
}

/// Everything a backend needs to boot one computer.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    pub computer_id: String,
    pub instance_id: String,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub disk_size_gb: u32,
    /// `WIDTHxHEIGHTxDEPTH`.
    pub resolution: String,
    pub template_ref: String,
    /// Directory that holds this computer's disk, logs, sockets and pid file.
    pub dir: PathBuf,
    /// Its network card; `None`: the VM has none (networking is off or unavailable).
    pub net: Option<GuestNic>,
}

/// What a backend knows about one computer's VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmState {
    /// No VM and no trace of one.
    Absent,
    /// The VMM process runs. Whether its guest is ready is the readiness tracker's to say
    /// (`super::readiness`): the backend never waits on a guest.
    Alive { pid: i32 },
    /// The VMM process ended; `reason` says how (exit status and the end of its log).
    Exited { reason: String },
    /// The guest reset itself (a reboot from inside, or a triple fault) and the VMM ended as it
    /// does then: the computer should boot again, as a real machine would.
    GuestRebooted { reason: String },
}

/// Backend failures. Messages are shown to API clients as the reason a start failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The host cannot run VMs at all (no hardware virtualization, no /dev/kvm).
    #[error("{0}")]
    HostUnsupported(String),
    /// Something this computer needs is missing (guest image, disk space...).
    #[error("{0}")]
    NotReady(String),
    /// The VMM could not be spawned, stopped or watched.
    #[error("{0}")]
    Process(String),
}

/// Runs and watches VMs. Calls may block (spawning, stopping): async callers use
/// `spawn_blocking`.
pub trait VmBackend: Send + Sync + 'static {
    /// Whether this host can run VMs; the error says why not and what to do.
    fn host_check(&self) -> Result<(), BackendError>;
    /// Runs a VM for `spec`: restores the computer's saved VM if it has one, else boots. Returns
    /// once the VMM process runs; a booted guest may still be starting.
    fn start(&self, spec: &VmSpec) -> Result<Started, BackendError>;
    /// Saves the running VM (memory and device state, next to its disk) and ends its VMM: the
    /// next [`VmBackend::start`] restores it. On failure the VM runs on.
    fn suspend(&self, computer_id: &str) -> Result<Saved, BackendError>;
    /// Gives computer `to_id` a copy of the running VM of `from_id` (its memory and state, and
    /// its disk copied while it is paused), which `to_id`'s next start restores; `from_id` runs on.
    fn clone_running(&self, from_id: &str, to_id: &str) -> Result<(), BackendError>;
    /// Bytes on disk of the computer's saved VM, if it has one.
    fn saved_bytes(&self, computer_id: &str) -> Option<u64>;
    /// Drops the computer's saved VM (its disk moves on without it: a stop, a cold restart).
    fn discard_saved(&self, computer_id: &str) -> Result<(), BackendError>;
    /// Lets the VM run if a daemon that died in the middle of a suspend or a clone left it
    /// paused (after any snapshot it is still writing); a running VM is not affected.
    fn unpause(&self, computer_id: &str);
    /// Stops the VM (asking first, then forcing after `grace`). Stopping an absent VM is fine.
    fn stop(&self, computer_id: &str, grace: std::time::Duration) -> Result<(), BackendError>;
    /// Current state of a VM this backend started or attached. Cheap: it looks at the process,
    /// never at the guest.
    fn state(&self, computer_id: &str) -> VmState;
    /// Takes over a VM left running by a previous daemon (found through its pid file).
    fn attach(&self, computer_id: &str) -> VmState;
    /// Stops every VMM of this data directory whose computer `known` does not name (its record is
    /// gone); returns how many.
    fn stop_strays(&self, known: &dyn Fn(&str) -> bool) -> usize;
    /// Stops the VM and removes everything the computer had on disk.
    fn destroy(&self, computer_id: &str) -> Result<(), BackendError>;
    /// Copies a computer's disk to another computer (for clone). A computer without a disk yet
    /// makes a clone without one.
    fn clone_disk(&self, from_id: &str, to_id: &str) -> Result<(), BackendError>;
    /// Changes one dimension of a running VM; returns the value now in effect.
    fn hotplug(&self, computer_id: &str, change: Hotplug) -> Result<u64, BackendError>;
    /// Moves a suspended computer's disk and saved VM into the golden snapshot directory
    /// `golden`, with `manifest` beside them (see `super::golden`); the computer keeps neither.
    fn keep_as_golden(
        &self,
        computer_id: &str,
        golden: &std::path::Path,
        manifest: &[u8],
    ) -> Result<(), BackendError>;
    /// Gives a new computer (no disk yet) a copy of `golden`'s disk and, when `restore`, its
    /// saved VM as a copy (shared, not duplicated), which its next start restores.
    fn seed_from_golden(
        &self,
        computer_id: &str,
        golden: &std::path::Path,
        restore: bool,
    ) -> Result<super::golden::Seeded, BackendError>;
}

/// How [`VmBackend::start`] brought the VM up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// A fresh boot.
    Booted,
    /// From the computer's saved VM; `copy` when it was another computer's (a clone), which must
    /// take a new identity before it is used.
    Restored { copy: bool },
}

/// A saved VM, as a suspend reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// Guest RAM, bytes.
    pub memory_bytes: u64,
    /// What the snapshot costs on disk.
    pub disk_bytes: u64,
    /// How long the VMM took to write it.
    pub snapshot_ms: u64,
}

/// A resize of a running VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hotplug {
    Vcpus(u32),
    MemMib(u64),
    DiskGb(u32),
    BandwidthMbps(u32),
}
