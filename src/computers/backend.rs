//! The seam between computer lifecycle and whatever runs the VM. The daemon drives computers only
//! through [`VmBackend`]; the shipped implementation is [`super::VmmProcessBackend`], which runs
//! one `deskd vmm` child process per computer.

use std::path::PathBuf;

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
    /// Boots a VM for `spec`. Returns once the VMM process runs; the guest may still be booting.
    fn start(&self, spec: &VmSpec) -> Result<(), BackendError>;
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
}

/// A resize of a running VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hotplug {
    Vcpus(u32),
    MemMib(u64),
    DiskGb(u32),
    BandwidthMbps(u32),
}
