//! Computers: their lifecycle and the VMs behind them.
//!
//! - `lifecycle`: the status machine, kept truthful against what the VM backend reports.
//! - `backend`: the seam between the lifecycle and whatever runs VMs ([`VmBackend`]).
//! - `process`: the shipped backend, one `deskd vmm` child process per computer.
//! - `images`: which guest image a template reference names.
//! - `disk`: a computer's disk, a copy-on-write clone of its image.
//! - `vmm_config`: the configuration file the daemon writes for each VMM.
//! - `agent_client`: the one client of the guest agents (pooled connections, deadlines, caps).
//! - `readiness`: per-VM tasks that ask each guest agent whether its desktop is usable, and give a
//!   template's computer its launch files and `hooks.on_resume` ([`GuestSetup`]).
//! - `quota`: the commitment quotas checked at create and at a stored resize.
//! - `saved_vm`: a computer's saved VM (suspend, clone of a running computer), restored at start.
//! - `live_resize`: changes to a running VM through its VMM's control socket (bandwidth, disk).
//! - `disk_growth`: the guest's side of a live disk growth (the agent grows the root filesystem).
//! - `golden`: golden snapshots on disk (a template build's disk and saved VM) and launches' copies.

pub mod agent_client;
pub mod agent_files;
mod backend;
pub mod cgroup;
mod disk;
mod disk_growth;
pub mod golden;
mod images;
mod lifecycle;
mod live_resize;
mod process;
pub mod quota;
mod readiness;
mod saved_vm;
mod vmm_config;
pub mod vmm_identity;

pub use backend::{
    BackendError, GuestNic, Hotplug, Saved, Started, VmBackend, VmSpec, VmState, VMM_TAP_FD,
};
pub use images::{boot_image_ref, GuestImage, BASE_IMAGE};
pub use lifecycle::{new_vnc_password, GrownDisk, Lifecycle, LifecycleError, StoredResize};
pub use process::VmmProcessBackend;
pub use readiness::{GuestSetup, SetupHook, SetupLevel, SetupLog};
pub use vmm_config::{files, vm_config, GUEST_CID};
