//! The real [`BuildRunner`]: boots a hidden build computer from the base image through the
//! ordinary lifecycle and VMM, applies the template's [`build_plan`] through the guest agent's
//! `/bash` (each step a root script; its output lines become build events), then suspends the VM
//! and keeps its disk and saved VM as the digest's golden snapshot (`crate::computers::golden`,
//! with a [`GoldenManifest`]). The build computer lives in the reserved workspace
//! [`BUILD_WORKSPACE`], which users' lists do not show, and is destroyed at the end of every
//! build, whether it succeeded, failed, was cancelled or ran out of time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::build::{
    BuildEvent, BuildFailure, BuildFuture, BuildJob, BuildLog, BuildRunner, Level, Phase, Source,
};
use super::build_plan::{self, Step};
use super::package_sources::PackageSources;
use crate::computers::agent_client::{AgentCall, AgentError};
use crate::computers::{new_vnc_password, Lifecycle, BASE_IMAGE};
use crate::store::{NewComputer, Store, WorkspaceStatus};
use deskd_agent::protocol::{BashRequest, BashResponse, ErrorBody};

/// Workspace of build computers: reserved (users cannot make one of this name) and hidden.
pub const BUILD_WORKSPACE: &str = "deskd-template-builds";
/// How long the base image may take to boot (190 s to running in the rig, on a good day).
const BOOT_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Extra time an agent call gets beyond the step's own limit (the agent kills the step at its
/// limit and answers).
const CALL_SLACK: Duration = Duration::from_secs(60);
/// The largest piece of a step script sent in one `/bash` command (the kernel refuses a single
/// argument over 128 KiB).
const SCRIPT_CHUNK: usize = 64 * 1024;
/// At most this many output lines of one step become events (the rest is counted).
const MAX_LINES_PER_STEP: usize = 400;
/// Hardware of a build when the template names none: that of a plain `POST /computers`.
pub const DEFAULT_CPU: u32 = 1;
pub const DEFAULT_RAM_GB: u32 = 4;
pub const DEFAULT_DISK_GB: u32 = 8;
pub const DEFAULT_RESOLUTION: &str = "1280x720x24";

/// What this deskd's builds put into a golden snapshot beyond the document's own steps, as a
/// number: raise it whenever that changes, so that snapshots made before are built again (a
/// snapshot keeps what the builder of its day installed). 1: the builds before the number was
/// kept (manifests without `builder`); 2: apps' autostart units and runtime health watches.
pub const BUILDER_VERSION: u32 = 2;

/// `golden.json`: what a golden snapshot is of and the VM it was taken from. A launch restores
/// it only into a computer of the same hardware ([`GoldenManifest::fits`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldenManifest {
    /// The [`BUILDER_VERSION`] of the deskd that made it (1 when the manifest has none).
    #[serde(default = "first_builder")]
    pub builder: u32,
    pub digest: String,
    pub reference: String,
    /// The guest image the build booted.
    pub base: String,
    pub cpu: u32,
    pub ram_gb: u32,
    pub disk_size_gb: u32,
    pub resolution: String,
    pub built_at: String,
    /// From the boot request to the build computer running.
    pub boot_ms: u64,
}

impl GoldenManifest {
    /// Whether a computer of this hardware can restore the snapshot (its VM's CPUs, memory,
    /// screen and disk size are the snapshot's); otherwise it cold-boots the golden disk.
    pub fn fits(&self, cpu: u32, ram_gb: u32, disk_size_gb: u32, resolution: &str) -> bool {
        (
            self.cpu,
            self.ram_gb,
            self.disk_size_gb,
            self.resolution.as_str(),
        ) == (cpu, ram_gb, disk_size_gb, resolution)
    }

    /// Why the snapshot should be built again by this deskd, if it should.
    pub fn outdated(&self) -> Option<String> {
        (self.builder < BUILDER_VERSION).then(|| {
            format!(
                "its golden snapshot was made by an older deskd (builder {}, this one is {}), without what builds add since (apps' autostart units and health watches)",
                self.builder, BUILDER_VERSION
            )
        })
    }

    pub fn read(golden: &std::path::Path) -> Option<GoldenManifest> {
        let bytes = std::fs::read(golden.join(crate::computers::golden::MANIFEST)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

fn first_builder() -> u32 {
    1
}

/// Hardware of a template's computers when the create names none (`hardware` of the document,
/// else the defaults of `POST /computers`).
pub fn template_hardware(doc: &super::Document) -> (u32, u32, u32, String) {
    let hw = doc.hardware.clone().unwrap_or_default();
    (
        hw.cpu.unwrap_or(DEFAULT_CPU),
        hw.ram_gb.unwrap_or(DEFAULT_RAM_GB),
        hw.disk_gb.unwrap_or(DEFAULT_DISK_GB).max(DEFAULT_DISK_GB),
        hw.resolution
            .unwrap_or_else(|| DEFAULT_RESOLUTION.to_string()),
    )
}

/// What the build needs of a guest: a bash script as the desktop user, with a limit. The real
/// one is the guest agent ([`AgentGuest`]); unit tests of the sequencing use a fake.
pub trait Guest: Send + Sync {
    fn bash(
        &self,
        command: String,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<BashResponse, String>> + Send + '_>>;
}

/// The build computer's agent, reached through the lifecycle's agent client.
pub struct AgentGuest {
    pub lifecycle: Arc<Lifecycle>,
    pub computer_id: String,
}

impl Guest for AgentGuest {
    fn bash(
        &self,
        command: String,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<BashResponse, String>> + Send + '_>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&BashRequest {
                command,
                timeout: Some(timeout.as_secs_f64()),
            })
            .map_err(|e| e.to_string())?;
            let call = AgentCall::post_json("/bash", body.into(), timeout + CALL_SLACK);
            let reply = self
                .lifecycle
                .agent_request(&self.computer_id, call)
                .await
                .map_err(|e: AgentError| e.to_string())?;
            if !reply.status.is_success() {
                let why = serde_json::from_slice::<ErrorBody>(&reply.body)
                    .map(|b| b.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&reply.body).into_owned());
                return Err(format!("the guest agent answered {}: {why}", reply.status));
            }
            serde_json::from_slice(&reply.body)
                .map_err(|e| format!("the guest agent's answer is not a bash result: {e}"))
        })
    }
}

fn failure(phase: Phase, message: impl Into<String>) -> BuildFailure {
    BuildFailure {
        phase,
        message: message.into(),
    }
}

fn emit(log: &dyn BuildLog, level: Level, phase: Phase, source: Source, line: impl Into<String>) {
    log.emit(BuildEvent::now(level, phase, Some(source), line));
}

/// The `/bash` commands that run `script` as root with `set -e`: the script travels base64 in
/// pieces into a file of the desktop user's (no quoting of its text anywhere), the last command
/// runs it under sudo and removes it.
pub fn commands_for(script: &str, n: usize) -> Vec<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("set -e\n{script}"));
    // A random part: two builds (or two tests running their steps on this host) never write
    // into one file, which would run a step's script twice.
    let file = format!("/tmp/.deskd-build-step-{n}-{:016x}", rand::random::<u64>());
    let mut out = vec![format!("rm -f {file}.b64")];
    for chunk in b64.as_bytes().chunks(SCRIPT_CHUNK) {
        // Base64 has no character a single-quoted string cannot hold.
        let chunk = std::str::from_utf8(chunk).unwrap_or_default();
        out.push(format!("printf '%s' '{chunk}' >> {file}.b64"));
    }
    out.push(format!(
        "base64 -d {file}.b64 > {file} && rm -f {file}.b64 && sudo -n -H bash -l {file}; rc=$?; rm -f {file}; exit $rc"
    ));
    out
}

/// Whether the guest has a default route (`/proc/net/route` needs no tools).
const NETWORK_PROBE: &str = "awk '$2==\"00000000\"{f=1} END{exit !f}' /proc/net/route";

/// Runs the steps in order through `guest`, each command's output lines logged; the first step
/// that fails (or needs a network the guest lacks) fails the build naming it, with its output's
/// tail. A cancel ends the wait at once.
pub async fn run_steps(
    guest: &dyn Guest,
    steps: &[Step],
    log: &dyn BuildLog,
    cancel: &CancellationToken,
) -> Result<(), BuildFailure> {
    let total = steps.len();
    for (i, s) in steps.iter().enumerate() {
        emit(
            log,
            Level::Info,
            s.phase,
            s.source,
            format!("step {}/{total}: {}", i + 1, s.label),
        );
        let started = Instant::now();
        if s.needs_network {
            let probe = call(
                guest,
                NETWORK_PROBE.into(),
                Duration::from_secs(30),
                s,
                cancel,
            )
            .await?;
            if probe.exit_code != 0 {
                let msg = format!(
                    "{} needs the network to fetch packages, and this build's VM has none (guest \
                     networking is not enabled on this deskd); remove {} from the template or \
                     enable guest networking",
                    s.label, s.label
                );
                emit(log, Level::Error, s.phase, s.source, msg.clone());
                return Err(failure(s.phase, msg));
            }
        }
        let commands = commands_for(&s.script, i);
        let last = commands.len() - 1;
        for (k, command) in commands.into_iter().enumerate() {
            let out = call(guest, command, s.timeout, s, cancel).await?;
            if k < last && out.exit_code == 0 {
                continue;
            }
            let lines: Vec<&str> = out.output.lines().collect();
            for line in lines.iter().take(MAX_LINES_PER_STEP) {
                emit(log, Level::Info, s.phase, s.source, *line);
            }
            if lines.len() > MAX_LINES_PER_STEP {
                emit(
                    log,
                    Level::Warn,
                    s.phase,
                    s.source,
                    format!(
                        "({} more lines not shown)",
                        lines.len() - MAX_LINES_PER_STEP
                    ),
                );
            }
            if out.exit_code != 0 || out.timed_out {
                let how = if out.timed_out {
                    format!("timed out after {} s", s.timeout.as_secs())
                } else {
                    format!("exited with status {}", out.exit_code)
                };
                let tail = lines[lines.len().saturating_sub(10)..].join("\n");
                return Err(failure(
                    s.phase,
                    format!("{} {how}; its output ended with:\n{tail}", s.label),
                ));
            }
        }
        emit(
            log,
            Level::Success,
            s.phase,
            s.source,
            format!("{} done in {} ms", s.label, started.elapsed().as_millis()),
        );
    }
    Ok(())
}

async fn call(
    guest: &dyn Guest,
    command: String,
    timeout: Duration,
    s: &Step,
    cancel: &CancellationToken,
) -> Result<BashResponse, BuildFailure> {
    tokio::select! {
        () = cancel.cancelled() => Err(failure(Phase::Cancel, format!("stopped during {}", s.label))),
        r = guest.bash(command, timeout) => r.map_err(|e| failure(s.phase, format!("{}: {e}", s.label))),
    }
}

/// The VM template builder of `deskd serve`.
#[derive(Clone)]
pub struct VmBuilder {
    store: Arc<Store>,
    lifecycle: Arc<Lifecycle>,
    sources: Arc<PackageSources>,
}

impl VmBuilder {
    pub fn new(store: Arc<Store>, lifecycle: Arc<Lifecycle>, sources: PackageSources) -> VmBuilder {
        VmBuilder {
            store,
            lifecycle,
            sources: Arc::new(sources),
        }
    }

    /// Destroys the build computers a previous daemon left (their builds were failed by
    /// `Builds::new`); call once at start-up, before any build starts: the computers are those
    /// that exist when it is called, never a build's that starts later.
    pub fn remove_leftovers(&self) -> impl Future<Output = ()> + Send + 'static {
        let ids: Vec<String> = match self.workspace(false) {
            Ok(Some(ws)) => self
                .store
                .computers_in_workspace(&ws)
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.id)
                .collect(),
            _ => Vec::new(),
        };
        let lifecycle = self.lifecycle.clone();
        async move {
            for id in ids {
                tracing::info!(computer = %id, "removing the build computer of an interrupted template build");
                if let Err(e) = lifecycle.destroy(&id).await {
                    tracing::warn!(computer = %id, "cannot remove a leftover build computer: {e}");
                }
            }
        }
    }

    /// The build workspace's id (made when `create`).
    fn workspace(&self, create: bool) -> Result<Option<String>, crate::store::StoreError> {
        if let Some(w) = self
            .store
            .list_workspaces()?
            .into_iter()
            .find(|w| w.name == BUILD_WORKSPACE)
        {
            return Ok(Some(w.id));
        }
        if !create {
            return Ok(None);
        }
        Ok(Some(
            self.store
                .create_workspace(BUILD_WORKSPACE, WorkspaceStatus::Active, None)?
                .id,
        ))
    }

    async fn build(
        &self,
        job: BuildJob,
        log: Arc<dyn BuildLog>,
        cancel: CancellationToken,
    ) -> Result<(), BuildFailure> {
        let steps = build_plan::plan(&job.template.document, &self.sources)?;
        emit(
            &*log,
            Level::Info,
            Phase::Compile,
            Source::Builder,
            format!(
                "{} steps: {}",
                steps.len(),
                steps
                    .iter()
                    .map(|s| s.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let (cpu, ram_gb, disk_size_gb, resolution) = template_hardware(&job.template.document);
        let store_err = |e: crate::store::StoreError| failure(Phase::Boot, e.to_string());
        let ws = self.workspace(true).map_err(store_err)?.unwrap_or_default();
        let short = job.digest.trim_start_matches("sha256:");
        let new = NewComputer {
            workspace_id: ws,
            name: format!(
                "build-{}-{}",
                job.reference.name,
                &short[..short.len().min(12)]
            ),
            os: "linux".into(),
            cpu,
            ram_gb,
            gpu: "none".into(),
            disk_size_gb,
            resolution: resolution.clone(),
            auto_stop_minutes: None,
            template_ref: BASE_IMAGE.into(),
            image: None,
            vnc_password: new_vnc_password(),
            egress_policy: None,
        };
        // Builds are the operator's own work, not a user's computer: no quota applies.
        let c = self
            .store
            .insert_computer(&new, |_| Ok(()))
            .map_err(store_err)?;
        let result = self
            .in_vm(
                &job,
                &c.id,
                &steps,
                (cpu, ram_gb, disk_size_gb, resolution),
                &*log,
                &cancel,
            )
            .await;
        match (self.lifecycle.destroy(&c.id).await, &result) {
            (Err(e), _) => {
                tracing::warn!(computer = %c.id, "cannot remove the build computer: {e}")
            }
            (Ok(()), Err(f)) => emit(
                &*log,
                Level::Info,
                f.phase,
                Source::Builder,
                "the build VM was ended and removed",
            ),
            (Ok(()), Ok(())) => {}
        }
        result
    }

    async fn in_vm(
        &self,
        job: &BuildJob,
        id: &str,
        steps: &[Step],
        (cpu, ram_gb, disk_size_gb, resolution): (u32, u32, u32, String),
        log: &dyn BuildLog,
        cancel: &CancellationToken,
    ) -> Result<(), BuildFailure> {
        emit(
            log,
            Level::Info,
            Phase::Boot,
            Source::Builder,
            format!("booting {BASE_IMAGE} as build computer {id} ({cpu} vCPU, {ram_gb} GB, {disk_size_gb} GB disk, {resolution})"),
        );
        let boot_started = Instant::now();
        tokio::select! {
            () = cancel.cancelled() => return Err(failure(Phase::Cancel, "stopped while the build VM booted")),
            r = self.lifecycle.ensure_running(id, BOOT_TIMEOUT) => {
                r.map_err(|e| failure(Phase::Boot, format!("the build VM did not come up: {e}")))?;
            }
        }
        let boot_ms = boot_started.elapsed().as_millis() as u64;
        emit(
            log,
            Level::Success,
            Phase::Boot,
            Source::Builder,
            format!("the build VM runs after {boot_ms} ms"),
        );
        let guest = AgentGuest {
            lifecycle: self.lifecycle.clone(),
            computer_id: id.to_string(),
        };
        run_steps(&guest, steps, log, cancel).await?;
        if cancel.is_cancelled() {
            return Err(failure(Phase::Cancel, "stopped before the snapshot"));
        }
        emit(
            log,
            Level::Info,
            Phase::Snapshot,
            Source::Builder,
            "suspending the build VM (memory, devices and disk)",
        );
        let snap_started = Instant::now();
        self.lifecycle
            .suspend(id)
            .await
            .map_err(|e| failure(Phase::Snapshot, e.to_string()))?;
        let manifest = GoldenManifest {
            builder: BUILDER_VERSION,
            digest: job.digest.clone(),
            reference: job.reference.to_string(),
            base: BASE_IMAGE.into(),
            cpu,
            ram_gb,
            disk_size_gb,
            resolution,
            built_at: crate::store::now_iso(),
            boot_ms,
        };
        let bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| failure(Phase::Snapshot, e.to_string()))?;
        self.lifecycle
            .keep_as_golden(id, job.snapshot_dir.clone(), bytes)
            .await
            .map_err(|e| failure(Phase::Snapshot, e.to_string()))?;
        emit(
            log,
            Level::Success,
            Phase::Snapshot,
            Source::Builder,
            format!(
                "golden snapshot kept in {} ({} ms)",
                job.snapshot_dir.display(),
                snap_started.elapsed().as_millis()
            ),
        );
        Ok(())
    }
}

impl BuildRunner for VmBuilder {
    fn run(&self, job: BuildJob, log: Arc<dyn BuildLog>, cancel: CancellationToken) -> BuildFuture {
        let me = self.clone();
        // Its own task: the manager stops waiting for a cancelled build after a grace period,
        // and the build computer must still be removed after that.
        let task = tokio::spawn(async move { me.build(job, log, cancel).await });
        Box::pin(async move {
            task.await.unwrap_or_else(|e| {
                Err(failure(
                    Phase::Compile,
                    format!("the build task failed: {e}"),
                ))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records events for the assertions.
    #[derive(Default)]
    struct Events(Mutex<Vec<BuildEvent>>);
    impl BuildLog for Events {
        fn emit(&self, event: BuildEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    /// A guest that runs the commands the builder sends in a real local bash, with `sudo -n -H`
    /// taken out (the test is not root in a VM) and the network probe answered as told: only for
    /// the sequencing; the real guest is the rig test's.
    struct LocalBash {
        network: bool,
        seen: Mutex<Vec<String>>,
    }

    impl Guest for LocalBash {
        fn bash(
            &self,
            command: String,
            _timeout: Duration,
        ) -> Pin<Box<dyn Future<Output = Result<BashResponse, String>> + Send + '_>> {
            Box::pin(async move {
                self.seen.lock().unwrap().push(command.clone());
                if command == NETWORK_PROBE {
                    let code = if self.network { 0 } else { 1 };
                    return Ok(answer(&command, "", code));
                }
                let local = command.replace("sudo -n -H bash -l", "bash");
                let out = tokio::process::Command::new("bash")
                    .arg("-c")
                    .arg(&local)
                    .output()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                Ok(answer(&command, &text, out.status.code().unwrap_or(1)))
            })
        }
    }

    fn answer(command: &str, output: &str, exit_code: i32) -> BashResponse {
        BashResponse {
            success: true,
            action: "bash".into(),
            command: command.into(),
            output: output.into(),
            exit_code,
            truncated: false,
            timed_out: false,
            error: None,
        }
    }

    fn step(label: &str, script: &str, network: bool) -> Step {
        Step {
            phase: Phase::Install,
            source: if network {
                Source::Apt
            } else {
                Source::Builder
            },
            label: label.into(),
            script: script.into(),
            timeout: Duration::from_secs(30),
            needs_network: network,
        }
    }

    #[tokio::test]
    async fn steps_run_in_order_with_their_output_and_the_first_failure_ends_the_build() {
        let guest = LocalBash {
            network: true,
            seen: Mutex::new(Vec::new()),
        };
        let log = Events::default();
        let cancel = CancellationToken::new();
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("order");
        let m = marker.display();
        // A big script crosses the chunking (several `/bash` commands for one step).
        let big = format!("x='{}'\necho big ${{#x}}\n", "a".repeat(3 * SCRIPT_CHUNK));
        let steps = vec![
            step("one", &format!("echo first >> {m}\necho out-one\n"), false),
            step("big", &big, false),
            step(
                "two",
                &format!("echo second >> {m}\nfalse\necho never\n"),
                false,
            ),
            step("three", &format!("echo third >> {m}\n"), false),
        ];
        let e = run_steps(&guest, &steps, &log, &cancel).await.unwrap_err();
        assert_eq!(e.phase, Phase::Install);
        assert!(
            e.message.starts_with("two exited with status 1"),
            "{}",
            e.message
        );
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            "first\nsecond\n",
            "set -e stops the step, no later step runs"
        );
        let lines: Vec<String> = log
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.line.clone())
            .collect();
        assert!(lines.contains(&"out-one".to_string()), "{lines:?}");
        assert!(
            lines.contains(&format!("big {}", 3 * SCRIPT_CHUNK)),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l == "never"));
        assert!(
            guest.seen.lock().unwrap().len() > 8,
            "the big step went in pieces"
        );
    }

    #[tokio::test]
    async fn a_package_step_without_a_network_fails_naming_it_and_runs_nothing() {
        let guest = LocalBash {
            network: false,
            seen: Mutex::new(Vec::new()),
        };
        let log = Events::default();
        let steps = vec![step("build.apt", "echo should-not-run\n", true)];
        let e = run_steps(&guest, &steps, &log, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            e.message.starts_with("build.apt needs the network"),
            "{}",
            e.message
        );
        assert_eq!(
            guest.seen.lock().unwrap().as_slice(),
            [NETWORK_PROBE.to_string()]
        );
    }

    #[tokio::test]
    async fn a_cancel_ends_a_running_step() {
        let guest = LocalBash {
            network: true,
            seen: Mutex::new(Vec::new()),
        };
        let cancel = CancellationToken::new();
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            c2.cancel();
        });
        let started = Instant::now();
        let e = run_steps(
            &guest,
            &[step("slow", "sleep 20\n", false)],
            &Events::default(),
            &cancel,
        )
        .await
        .unwrap_err();
        assert_eq!(e.phase, Phase::Cancel);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_golden_snapshot_fits_only_the_hardware_it_was_taken_on() {
        let m = GoldenManifest {
            builder: BUILDER_VERSION,
            digest: "sha256:x".into(),
            reference: "default/a@1.0.0".into(),
            base: BASE_IMAGE.into(),
            cpu: 1,
            ram_gb: 4,
            disk_size_gb: 8,
            resolution: DEFAULT_RESOLUTION.into(),
            built_at: "now".into(),
            boot_ms: 1,
        };
        assert!(m.fits(1, 4, 8, "1280x720x24"));
        assert!(!m.fits(2, 4, 8, "1280x720x24"));
        assert!(!m.fits(1, 8, 8, "1280x720x24"));
        assert!(!m.fits(1, 4, 16, "1280x720x24"));
        assert!(!m.fits(1, 4, 8, "1920x1080x24"));
    }
}
