//! Runs template builds: one per digest at a time (the store's `begin_build` decides), a ready
//! digest is reused, every build has a time limit and can be cancelled, and every step's events
//! are kept in the store for the SSE stream and later reads. The VM work itself is the
//! [`BuildRunner`]'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::build::{
    BuildEvent, BuildFailure, BuildJob, BuildLog, BuildRunner, BuildStatus, Level, Phase, Source,
};
use super::validate::validate_value;
use super::vm_builder::GoldenManifest;
use crate::store::{BuildStart, Store, StoreError, StoredTemplate};

/// Longest a build may take (the hosted service's typical build is two minutes; the rig is
/// 50-100x slower than hardware).
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(60 * 60);
/// How long a cancelled or timed-out runner gets to stop on its own.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The build manager shared by the API handlers.
pub struct Builds {
    store: Arc<Store>,
    runner: Arc<dyn BuildRunner>,
    data_dir: PathBuf,
    time_limit: Duration,
    running: Mutex<HashMap<String, CancellationToken>>,
}

struct StoreLog {
    store: Arc<Store>,
    build_id: String,
}

impl BuildLog for StoreLog {
    fn emit(&self, event: BuildEvent) {
        if let Err(e) = self.store.add_build_event(&self.build_id, &event) {
            tracing::warn!(build = %self.build_id, "could not keep a build event: {e}");
        }
    }
}

impl Builds {
    /// Also fails the builds a previous daemon left running (their runner died with it).
    pub fn new(
        store: Arc<Store>,
        runner: Arc<dyn BuildRunner>,
        data_dir: &Path,
        time_limit: Duration,
    ) -> Result<Arc<Builds>, StoreError> {
        let n = store.fail_interrupted_builds()?;
        if n > 0 {
            tracing::warn!(
                "{n} template build(s) were interrupted by the last shutdown and are marked failed"
            );
        }
        Ok(Arc::new(Builds {
            store,
            runner,
            data_dir: data_dir.to_path_buf(),
            time_limit,
            running: Mutex::new(HashMap::new()),
        }))
    }

    /// Where the golden snapshot of `digest` lives.
    pub fn snapshot_dir(&self, digest: &str) -> PathBuf {
        self.data_dir
            .join("templates/snapshots")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Starts building `t` unless its digest is being built or was built.
    pub fn start(self: &Arc<Self>, t: &StoredTemplate) -> Result<BuildStart, StoreError> {
        let reference = t.reference.to_string();
        let mut start = self.store.begin_build(&t.digest, &reference)?;
        let mut outdated = None;
        if matches!(start, BuildStart::Ready(_)) {
            // A snapshot by an older deskd lacks what builds add since: built again, once.
            outdated =
                GoldenManifest::read(&self.snapshot_dir(&t.digest)).and_then(|m| m.outdated());
            if outdated.is_some() {
                start = self.store.begin_rebuild(&t.digest, &reference)?;
            }
        }
        let BuildStart::Started(record) = &start else {
            return Ok(start);
        };
        let log: Arc<dyn BuildLog> = Arc::new(StoreLog {
            store: self.store.clone(),
            build_id: record.id.clone(),
        });
        log.emit(BuildEvent::now(
            Level::Info,
            Phase::Publish,
            Some(Source::Builder),
            format!("build of {reference} ({}) started", t.digest),
        ));
        if let Some(why) = outdated {
            log.emit(BuildEvent::now(
                Level::Info,
                Phase::Publish,
                Some(Source::Builder),
                format!("built again: {why}"),
            ));
        }
        let template = match validate_value(t.document.clone()) {
            Ok(v) => v,
            Err(issues) => {
                // Stored documents were valid when published; a newer deskd may disagree.
                let msg = format!(
                    "the stored document no longer validates: {}",
                    issues
                        .iter()
                        .map(|i| format!("{}: {}", i.field, i.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                log.emit(BuildEvent::now(
                    Level::Error,
                    Phase::Compile,
                    Some(Source::Builder),
                    msg.clone(),
                ));
                self.store
                    .finish_build(&record.id, BuildStatus::Failed, 0, Some(&msg))?;
                return Ok(start);
            }
        };
        let cancel = CancellationToken::new();
        lock(&self.running).insert(record.id.clone(), cancel.clone());
        let job = BuildJob {
            build_id: record.id.clone(),
            reference: t.reference.clone(),
            digest: t.digest.clone(),
            snapshot_dir: self.snapshot_dir(&t.digest),
            template,
        };
        let me = self.clone();
        let id = record.id.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = me.drive(job, log.clone(), cancel).await;
            let ms = started.elapsed().as_millis() as u64;
            let (status, error) = match &result {
                Ok(()) => {
                    log.emit(BuildEvent::now(
                        Level::Success,
                        Phase::Ready,
                        Some(Source::Builder),
                        format!("ready in {ms} ms"),
                    ));
                    (BuildStatus::Ready, None)
                }
                Err(f) => {
                    log.emit(BuildEvent::now(
                        Level::Error,
                        f.phase,
                        Some(Source::Builder),
                        format!("build failed: {}", f.message),
                    ));
                    (BuildStatus::Failed, Some(f.message.clone()))
                }
            };
            if let Err(e) = me.store.finish_build(&id, status, ms, error.as_deref()) {
                tracing::error!(build = %id, "could not record the end of a build: {e}");
            }
            lock(&me.running).remove(&id);
        });
        Ok(start)
    }

    async fn drive(
        &self,
        job: BuildJob,
        log: Arc<dyn BuildLog>,
        cancel: CancellationToken,
    ) -> Result<(), BuildFailure> {
        let mut run = self.runner.run(job, log, cancel.clone());
        let limit = self.time_limit;
        let stopped = |phase, message: String| BuildFailure { phase, message };
        tokio::select! {
            // A cancel wins over the runner's own answer to it.
            biased;
            () = cancel.cancelled() => {
                let _ = tokio::time::timeout(STOP_GRACE, run).await;
                Err(stopped(Phase::Cancel, "cancelled by DELETE .../build".into()))
            }
            () = tokio::time::sleep(limit) => {
                cancel.cancel();
                let _ = tokio::time::timeout(STOP_GRACE, run).await;
                Err(stopped(Phase::Timeout, format!("the build took longer than its limit of {} s", limit.as_secs())))
            }
            r = &mut run => r,
        }
    }

    /// Cancels the running build of `digest`; false when none runs.
    pub fn cancel(&self, digest: &str) -> Result<bool, StoreError> {
        let Some(b) = self.store.latest_build(digest)? else {
            return Ok(false);
        };
        if b.status != BuildStatus::Building {
            return Ok(false);
        }
        match lock(&self.running).get(&b.id) {
            Some(token) => {
                token.cancel();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The store (for the handlers that read records and events).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::build::{BuildFuture, NoVmBuilder};
    use crate::templates::validate::validate_bytes;

    /// A runner that waits to be told how to end, so the manager's own duties can be tested.
    struct Waits(tokio::sync::watch::Receiver<Option<bool>>);

    impl BuildRunner for Waits {
        fn run(
            &self,
            _job: BuildJob,
            log: Arc<dyn BuildLog>,
            cancel: CancellationToken,
        ) -> BuildFuture {
            let mut rx = self.0.clone();
            Box::pin(async move {
                log.emit(BuildEvent::now(Level::Info, Phase::Boot, None, "booting"));
                tokio::select! {
                    r = rx.wait_for(|v| v.is_some()) => match r.ok().and_then(|v| *v) {
                        Some(true) => Ok(()),
                        _ => Err(BuildFailure { phase: Phase::Install, message: "step 1 failed: exit 1".into() }),
                    },
                    () = cancel.cancelled() => Err(BuildFailure { phase: Phase::Cancel, message: "stopped".into() }),
                }
            })
        }
    }

    fn published(store: &Store, doc: &str) -> StoredTemplate {
        let t = validate_bytes(doc.as_bytes()).unwrap();
        store
            .publish_template(&t.reference("default"), &t.digest, &t.canonical, false)
            .unwrap()
            .0
    }

    async fn settle(store: &Store, digest: &str) -> crate::templates::build::BuildRecord {
        for _ in 0..200 {
            let b = store.latest_build(digest).unwrap().unwrap();
            if b.status.is_final() {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("build did not end");
    }

    #[tokio::test]
    async fn without_a_vm_builder_a_build_fails_saying_why() {
        let (dir, store) = crate::store::test_store();
        let store = Arc::new(store);
        let builds = Builds::new(
            store.clone(),
            Arc::new(NoVmBuilder),
            dir.path(),
            DEFAULT_TIME_LIMIT,
        )
        .unwrap();
        let t = published(&store, "api_version: orgo.ai/v1\nname: a@1.0.0\n");
        assert!(matches!(builds.start(&t).unwrap(), BuildStart::Started(_)));
        let b = settle(&store, &t.digest).await;
        assert_eq!(b.status, BuildStatus::Failed);
        assert!(b.error.unwrap().contains("cannot build templates yet"));
        let events = store.build_events(&b.id, 0).unwrap();
        assert_eq!(events.first().unwrap().1.phase, Phase::Publish);
        assert_eq!(events.last().unwrap().1.level, Level::Error);
    }

    #[tokio::test]
    async fn success_reuse_failure_cancel_and_time_limit() {
        let (dir, store) = crate::store::test_store();
        let store = Arc::new(store);
        let (tx, rx) = tokio::sync::watch::channel(None);
        let builds = Builds::new(
            store.clone(),
            Arc::new(Waits(rx)),
            dir.path(),
            DEFAULT_TIME_LIMIT,
        )
        .unwrap();
        let t = published(&store, "api_version: orgo.ai/v1\nname: a@1.0.0\n");
        let BuildStart::Started(first) = builds.start(&t).unwrap() else {
            panic!()
        };
        assert!(
            matches!(builds.start(&t).unwrap(), BuildStart::AlreadyBuilding(b) if b.id == first.id)
        );
        tx.send(Some(true)).unwrap();
        assert_eq!(settle(&store, &t.digest).await.status, BuildStatus::Ready);
        assert!(matches!(builds.start(&t).unwrap(), BuildStart::Ready(b) if b.id == first.id));
        assert!(builds
            .snapshot_dir(&t.digest)
            .ends_with(t.digest.trim_start_matches("sha256:")));

        // A golden snapshot made by this deskd's builder is reused; one by an older is built again.
        let golden = builds.snapshot_dir(&t.digest);
        std::fs::create_dir_all(&golden).unwrap();
        let manifest = |builder: u32| {
            let mut m = serde_json::json!({
                "digest": t.digest, "reference": "default/a@1.0.0", "base": "system/desktop@1.0.0",
                "cpu": 1, "ram_gb": 4, "disk_size_gb": 8, "resolution": "1280x720x24",
                "built_at": "then", "boot_ms": 1
            });
            if builder > 0 {
                m["builder"] = builder.into();
            }
            std::fs::write(
                golden.join(crate::computers::golden::MANIFEST),
                m.to_string(),
            )
            .unwrap();
        };
        manifest(crate::templates::vm_builder::BUILDER_VERSION);
        assert!(matches!(builds.start(&t).unwrap(), BuildStart::Ready(b) if b.id == first.id));
        manifest(0); // a manifest from before the builder was recorded
        let BuildStart::Started(again) = builds.start(&t).unwrap() else {
            panic!("a snapshot by an older builder was reused")
        };
        let said: Vec<String> = store
            .build_events(&again.id, 0)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.line)
            .collect();
        assert!(
            said.iter().any(|m| m.contains("older deskd (builder 1")),
            "{said:?}"
        );
        assert!(
            matches!(builds.start(&t).unwrap(), BuildStart::AlreadyBuilding(b) if b.id == again.id)
        );
        assert_eq!(store.ready_build(&t.digest).unwrap().unwrap().id, first.id);
        builds.cancel(&t.digest).unwrap();
        settle(&store, &t.digest).await;

        let (tx, rx) = tokio::sync::watch::channel(None);
        let builds = Builds::new(
            store.clone(),
            Arc::new(Waits(rx)),
            dir.path(),
            DEFAULT_TIME_LIMIT,
        )
        .unwrap();
        let u = published(&store, "api_version: orgo.ai/v1\nname: b@1.0.0\n");
        builds.start(&u).unwrap();
        tx.send(Some(false)).unwrap();
        let b = settle(&store, &u.digest).await;
        assert_eq!(
            (b.status, b.error.as_deref()),
            (BuildStatus::Failed, Some("step 1 failed: exit 1"))
        );

        let (_tx, rx) = tokio::sync::watch::channel(None);
        let builds = Builds::new(
            store.clone(),
            Arc::new(Waits(rx)),
            dir.path(),
            DEFAULT_TIME_LIMIT,
        )
        .unwrap();
        let c = published(&store, "api_version: orgo.ai/v1\nname: c@1.0.0\n");
        builds.start(&c).unwrap();
        assert!(builds.cancel(&c.digest).unwrap());
        let b = settle(&store, &c.digest).await;
        assert!(b.error.unwrap().contains("cancelled"));
        assert!(!builds.cancel(&c.digest).unwrap(), "nothing left to cancel");

        let (_tx, rx) = tokio::sync::watch::channel(None);
        let builds = Builds::new(
            store.clone(),
            Arc::new(Waits(rx)),
            dir.path(),
            Duration::from_millis(50),
        )
        .unwrap();
        let d = published(&store, "api_version: orgo.ai/v1\nname: d@1.0.0\n");
        builds.start(&d).unwrap();
        let b = settle(&store, &d.digest).await;
        assert!(b.error.unwrap().contains("longer than its limit"));
        let phases: Vec<Phase> = store
            .build_events(&b.id, 0)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e.phase)
            .collect();
        assert_eq!(phases, [Phase::Publish, Phase::Boot, Phase::Timeout]);
    }
}
