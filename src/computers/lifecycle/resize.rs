//! Resizes that are not CPU or memory hotplug: growing a running computer's disk (the VMM grows
//! the device, the guest its root filesystem), and a stopped computer's new shape, stored for
//! its next start.
//!
//! A suspended computer keeps its vCPUs, memory and disk until it runs again: its saved VM was
//! taken with them (a restore recreates exactly the vCPUs and memory saved, and refuses a disk of
//! another size), so only what a restore takes anew (the bandwidth limit, given with its card)
//! and what is not the VM's (auto-stop) can change while it is suspended.

use crate::store::{Commitment, ComputerStatus, Shape};

use super::super::backend::{Hotplug, VmState};
use super::super::disk_growth;
use super::{Computer, Lifecycle, LifecycleError};

/// What a resize of a computer that is not running stores for its next start; `None` keeps
/// what it has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredResize {
    pub vcpus: Option<u32>,
    pub mem_gb: Option<u32>,
    pub disk_gb: Option<u32>,
    pub bandwidth_mbps: Option<u32>,
}

impl StoredResize {
    /// Whether it changes what the VM is made of (rather than only its card's limit).
    fn changes_the_vm(&self) -> bool {
        self.vcpus.is_some() || self.mem_gb.is_some() || self.disk_gb.is_some()
    }
}

/// A running computer's disk after a growth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrownDisk {
    /// The disk's size now, GiB, as the computer's record says.
    pub disk_gb: u32,
    /// The root filesystem's size after the guest grew it, bytes, or why it did not (then it
    /// grows at the next boot, or when the same resize is asked again).
    pub filesystem: Result<u64, String>,
}

impl Lifecycle {
    /// Grows running computer `id`'s disk to `gb` GiB: the VMM grows the device and the guest
    /// sees it at once; the record takes the new size; then the guest agent grows the root
    /// filesystem onto it (a bounded wait, outside the computer's lock: a stop need not wait for
    /// the guest). Asking for the size the disk has is not an error, and asks the guest again.
    pub async fn grow_disk(&self, id: &str, gb: u32) -> Result<GrownDisk, LifecycleError> {
        self.touch(id);
        let disk_gb = {
            let lock = self.lock_for(id);
            let _guard = lock.lock().await;
            let c = self.load(id)?;
            if c.status != ComputerStatus::Running {
                return Err(LifecycleError::Conflict(format!(
                    "The computer is {}; its disk can grow live only while it runs.",
                    c.status.as_str()
                )));
            }
            if gb < c.disk_size_gb {
                return Err(LifecycleError::Conflict(format!(
                    "disk_size_gb can only grow: the disk is {} GB.",
                    c.disk_size_gb
                )));
            }
            let cid = id.to_string();
            let applied = self
                .blocking(move |b| b.hotplug(&cid, Hotplug::DiskGb(gb)))
                .await?
                .map_err(|e| LifecycleError::Host(e.to_string()))?;
            let applied = u32::try_from(applied).unwrap_or(u32::MAX);
            self.store.set_disk_size(id, applied)?;
            applied
        };
        let filesystem = disk_growth::grow_root_fs(
            &self.agents,
            &self.agent_socket(id),
            u64::from(disk_gb) << 30,
        )
        .await
        .map(|grown| grown.filesystem_bytes)
        .map_err(|e| e.to_string());
        match &filesystem {
            Ok(bytes) => {
                tracing::info!(computer = %id, disk_gb, filesystem_bytes = bytes, "disk grown live")
            }
            Err(why) => {
                tracing::warn!(computer = %id, disk_gb, "disk grown, its filesystem not: {why}")
            }
        }
        Ok(GrownDisk {
            disk_gb,
            filesystem,
        })
    }

    /// Stores the new shape of computer `id`, which is not running, for its next start (its VMM
    /// is configured from the record, and its disk file grown, at every boot). `admit` checks
    /// the new shape against the quotas, with what the other computers hold, in the same
    /// transaction as the update. A suspended computer (or one with a saved VM left to restore)
    /// takes only a bandwidth limit; a computer on its way up or down none.
    pub async fn resize_stored(
        &self,
        id: &str,
        want: StoredResize,
        admit: impl FnOnce(&Commitment, &Shape) -> Result<(), String>,
    ) -> Result<Computer, LifecycleError> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let c = self.load(id)?;
        match c.status {
            ComputerStatus::Stopped | ComputerStatus::Error | ComputerStatus::Suspended => {}
            other => {
                return Err(LifecycleError::Conflict(format!(
                    "The computer is {}; resize it once it is running or stopped.",
                    other.as_str()
                )))
            }
        }
        let cid = id.to_string();
        let (alive, saved) = self
            .blocking(move |b| {
                (
                    matches!(b.state(&cid), VmState::Alive { .. }),
                    b.saved_bytes(&cid).is_some(),
                )
            })
            .await?;
        if alive {
            return Err(LifecycleError::Conflict(
                "The computer's VM still runs (it is being stopped or recovered); resize it once it is running or stopped.".into(),
            ));
        }
        if want.changes_the_vm() && (c.status == ComputerStatus::Suspended || saved) {
            return Err(LifecycleError::Conflict(
                "The computer's saved VM (it is suspended) holds its current vCPUs, memory and \
                 disk, so they cannot change until it runs again: start it (it resumes) and grow \
                 the disk live, or stop it (dropping its saved state) and resize it then."
                    .into(),
            ));
        }
        if want.changes_the_vm() {
            let shape = Shape {
                cpu: want.vcpus,
                ram_gb: want.mem_gb,
                disk_size_gb: want.disk_gb,
            };
            self.store.resize_computer(id, shape, admit)?;
        }
        if let Some(mbps) = want.bandwidth_mbps {
            self.store.set_bandwidth_limit(id, Some(mbps))?;
        }
        tracing::info!(computer = %id, ?want, "resize stored for the next start");
        self.load(id)
    }
}
