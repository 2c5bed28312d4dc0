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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::super::super::backend::{BackendError, Saved, Started, VmBackend, VmSpec};
    use super::super::super::golden::Seeded;
    use super::*;
    use crate::store::{NewComputer, Store, WorkspaceStatus};

    /// A backend that runs nothing: it records what it is asked and reports what the test set.
    #[derive(Default)]
    struct Recorder {
        started: Mutex<Vec<VmSpec>>,
        hotplugs: Mutex<Vec<Hotplug>>,
        alive: AtomicBool,
        saved: AtomicBool,
        refuse_growth: AtomicBool,
    }

    impl VmBackend for Recorder {
        fn host_check(&self) -> Result<(), BackendError> {
            Ok(())
        }
        fn start(&self, spec: &VmSpec) -> Result<Started, BackendError> {
            self.started.lock().unwrap().push(spec.clone());
            self.alive.store(true, Ordering::SeqCst);
            Ok(Started::Booted)
        }
        fn suspend(&self, _: &str) -> Result<Saved, BackendError> {
            Err(BackendError::NotReady("not in this test".into()))
        }
        fn clone_running(&self, _: &str, _: &str) -> Result<(), BackendError> {
            Err(BackendError::NotReady("not in this test".into()))
        }
        fn saved_bytes(&self, _: &str) -> Option<u64> {
            self.saved.load(Ordering::SeqCst).then_some(4096)
        }
        fn discard_saved(&self, _: &str) -> Result<(), BackendError> {
            Ok(())
        }
        fn unpause(&self, _: &str) {}
        fn stop(&self, _: &str, _: Duration) -> Result<(), BackendError> {
            self.alive.store(false, Ordering::SeqCst);
            Ok(())
        }
        fn state(&self, _: &str) -> VmState {
            if self.alive.load(Ordering::SeqCst) {
                VmState::Alive { pid: 1 }
            } else {
                VmState::Absent
            }
        }
        fn attach(&self, id: &str) -> VmState {
            self.state(id)
        }
        fn stop_strays(&self, _: &dyn Fn(&str) -> bool) -> usize {
            0
        }
        fn destroy(&self, _: &str) -> Result<(), BackendError> {
            Ok(())
        }
        fn clone_disk(&self, _: &str, _: &str) -> Result<(), BackendError> {
            Ok(())
        }
        fn hotplug(&self, _: &str, change: Hotplug) -> Result<u64, BackendError> {
            self.hotplugs.lock().unwrap().push(change);
            match change {
                Hotplug::DiskGb(_) if self.refuse_growth.load(Ordering::SeqCst) => Err(
                    BackendError::NotReady("the VM's disk was not grown: read-only".into()),
                ),
                Hotplug::DiskGb(gb) => Ok(gb.into()),
                _ => Err(BackendError::NotReady("not in this test".into())),
            }
        }
        fn keep_as_golden(&self, _: &str, _: &Path, _: &[u8]) -> Result<(), BackendError> {
            Err(BackendError::NotReady("not in this test".into()))
        }
        fn seed_from_golden(&self, _: &str, _: &Path, _: bool) -> Result<Seeded, BackendError> {
            Err(BackendError::NotReady("not in this test".into()))
        }
    }

    struct Rig {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        backend: Arc<Recorder>,
        lc: Arc<Lifecycle>,
        id: String,
    }

    fn rig(status: ComputerStatus) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let backend = Arc::new(Recorder::default());
        let lc = Arc::new(Lifecycle::new(
            store.clone(),
            backend.clone(),
            dir.path().to_path_buf(),
        ));
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let c = store
            .insert_computer(
                &NewComputer {
                    egress_policy: None,
                    workspace_id: ws.id,
                    name: "c".into(),
                    os: "linux".into(),
                    cpu: 1,
                    ram_gb: 4,
                    gpu: "none".into(),
                    disk_size_gb: 8,
                    resolution: "1280x720x24".into(),
                    auto_stop_minutes: None,
                    template_ref: "system/desktop@1.0.0".into(),
                    image: None,
                    vnc_password: "pw".into(),
                },
                |_| Ok(()),
            )
            .unwrap();
        store.set_computer_status(&c.id, status, None).unwrap();
        Rig {
            _dir: dir,
            store,
            backend,
            lc,
            id: c.id,
        }
    }

    const BIGGER: StoredResize = StoredResize {
        vcpus: Some(2),
        mem_gb: Some(8),
        disk_gb: Some(12),
        bandwidth_mbps: Some(50),
    };

    #[tokio::test]
    async fn a_stored_resize_is_what_the_next_start_boots() {
        let r = rig(ComputerStatus::Stopped);
        let c =
            r.lc.resize_stored(&r.id, BIGGER, |_, _| Ok(()))
                .await
                .unwrap();
        assert_eq!((c.cpu, c.ram_gb, c.disk_size_gb), (2, 8, 12));
        assert_eq!(r.store.bandwidth_limit(&r.id).unwrap(), Some(50));
        assert!(
            r.backend.hotplugs.lock().unwrap().is_empty(),
            "nothing live"
        );
        r.lc.start(&r.id).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while r.backend.started.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let spec = r.backend.started.lock().unwrap()[0].clone();
        assert_eq!((spec.vcpus, spec.mem_mib, spec.disk_size_gb), (2, 8192, 12));
    }

    #[tokio::test]
    async fn a_refused_quota_stores_nothing() {
        let r = rig(ComputerStatus::Error);
        let err =
            r.lc.resize_stored(&r.id, BIGGER, |_, _| Err("ram_commit_ratio".into()))
                .await
                .unwrap_err();
        assert!(err.to_string().contains("ram_commit_ratio"), "{err}");
        let c = r.store.computer(&r.id).unwrap().unwrap();
        assert_eq!((c.cpu, c.ram_gb, c.disk_size_gb), (1, 4, 8));
        assert_eq!(r.store.bandwidth_limit(&r.id).unwrap(), None);
    }

    #[tokio::test]
    async fn a_suspended_computer_takes_only_a_bandwidth_limit() {
        let r = rig(ComputerStatus::Suspended);
        for want in [
            StoredResize {
                vcpus: Some(2),
                ..StoredResize::default()
            },
            StoredResize {
                mem_gb: Some(8),
                ..StoredResize::default()
            },
            StoredResize {
                disk_gb: Some(12),
                bandwidth_mbps: Some(5),
                ..StoredResize::default()
            },
        ] {
            let err =
                r.lc.resize_stored(&r.id, want, |_, _| Ok(()))
                    .await
                    .unwrap_err();
            assert!(
                matches!(&err, LifecycleError::Conflict(m) if m.contains("saved VM")),
                "{err}"
            );
        }
        assert_eq!(r.store.bandwidth_limit(&r.id).unwrap(), None);
        let only_limit = StoredResize {
            bandwidth_mbps: Some(5),
            ..StoredResize::default()
        };
        r.lc.resize_stored(&r.id, only_limit, |_, _| Ok(()))
            .await
            .unwrap();
        assert_eq!(r.store.bandwidth_limit(&r.id).unwrap(), Some(5));
        // The same for a computer in `error` whose saved VM is still there to restore.
        let r = rig(ComputerStatus::Error);
        r.backend.saved.store(true, Ordering::SeqCst);
        assert!(r
            .lc
            .resize_stored(&r.id, BIGGER, |_, _| Ok(()))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_computer_on_its_way_or_with_a_live_vm_is_a_conflict() {
        for status in [
            ComputerStatus::Starting,
            ComputerStatus::Stopping,
            ComputerStatus::Restarting,
            ComputerStatus::Deleting,
            ComputerStatus::Creating,
            ComputerStatus::Running,
        ] {
            let r = rig(status);
            let err =
                r.lc.resize_stored(&r.id, BIGGER, |_, _| Ok(()))
                    .await
                    .unwrap_err();
            assert!(
                matches!(&err, LifecycleError::Conflict(m) if m.contains(status.as_str())),
                "{status:?}: {err}"
            );
        }
        let r = rig(ComputerStatus::Error);
        r.backend.alive.store(true, Ordering::SeqCst);
        let err =
            r.lc.resize_stored(&r.id, BIGGER, |_, _| Ok(()))
                .await
                .unwrap_err();
        assert!(err.to_string().contains("still runs"), "{err}");
    }

    #[tokio::test]
    async fn a_running_disk_grows_and_the_guest_grows_its_filesystem() {
        let r = rig(ComputerStatus::Running);
        r.backend.alive.store(true, Ordering::SeqCst);
        crate::computers::disk_growth::tests::fake_agent(
            &r.lc.agent_socket(&r.id),
            200,
            r#"{"disk_bytes":12884901888,"filesystem_bytes":12500000000}"#,
        );
        let grown = r.lc.grow_disk(&r.id, 12).await.unwrap();
        assert_eq!(
            grown,
            GrownDisk {
                disk_gb: 12,
                filesystem: Ok(12_500_000_000)
            }
        );
        assert_eq!(r.store.computer(&r.id).unwrap().unwrap().disk_size_gb, 12);
        assert_eq!(
            *r.backend.hotplugs.lock().unwrap(),
            vec![Hotplug::DiskGb(12)]
        );
        // Smaller than it is now: refused before the VM is asked.
        assert!(matches!(
            r.lc.grow_disk(&r.id, 10).await,
            Err(LifecycleError::Conflict(m)) if m.contains("only grow")
        ));
        assert_eq!(r.backend.hotplugs.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_disk_the_guest_does_not_grow_into_is_recorded_and_its_reason_given() {
        let r = rig(ComputerStatus::Running);
        r.backend.alive.store(true, Ordering::SeqCst);
        crate::computers::disk_growth::tests::fake_agent(
            &r.lc.agent_socket(&r.id),
            500,
            r#"{"error":"cannot reach the root helper at /run/deskd-growfs.sock"}"#,
        );
        let grown = r.lc.grow_disk(&r.id, 16).await.unwrap();
        assert_eq!(grown.disk_gb, 16);
        let why = grown.filesystem.unwrap_err();
        assert!(why.contains("deskd-growfs.sock"), "{why}");
        // The device did grow: the record says so (a shrink is impossible from here on).
        assert_eq!(r.store.computer(&r.id).unwrap().unwrap().disk_size_gb, 16);
        // Through `hotplug`, the same growth is an error carrying the reason.
        let err = r.lc.hotplug(&r.id, Hotplug::DiskGb(16)).await.unwrap_err();
        assert!(err.to_string().contains("deskd-growfs.sock"), "{err}");
    }

    #[tokio::test]
    async fn a_disk_the_vmm_refuses_stays_as_it_was() {
        let r = rig(ComputerStatus::Running);
        r.backend.alive.store(true, Ordering::SeqCst);
        r.backend.refuse_growth.store(true, Ordering::SeqCst);
        let err = r.lc.grow_disk(&r.id, 12).await.unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
        assert_eq!(r.store.computer(&r.id).unwrap().unwrap().disk_size_gb, 8);
        let r = rig(ComputerStatus::Stopped);
        let err = r.lc.grow_disk(&r.id, 12).await.unwrap_err();
        assert!(
            matches!(&err, LifecycleError::Conflict(m) if m.contains("stopped")),
            "{err}"
        );
        assert!(r.backend.hotplugs.lock().unwrap().is_empty());
    }
}
