//! The template build's contract: build records and their events (the SSE stream's items), and
//! [`BuildRunner`], the part that boots a VM from the base image, applies the template and takes
//! the golden snapshot. `deskd serve` runs the VM builder (`super::vm_builder`); [`NoVmBuilder`]
//! is for a manager without VMs (its tests), and fails each build at once saying so.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::refs::TemplateRef;
use super::validate::Template;

/// The state of a build (templates.md: `not_built` is the absence of any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    NotBuilt,
    Building,
    Ready,
    Failed,
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::NotBuilt => "not_built",
            BuildStatus::Building => "building",
            BuildStatus::Ready => "ready",
            BuildStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<BuildStatus> {
        Some(match s {
            "not_built" => BuildStatus::NotBuilt,
            "building" => BuildStatus::Building,
            "ready" => BuildStatus::Ready,
            "failed" => BuildStatus::Failed,
            _ => return None,
        })
    }

    /// Whether the build's event stream ends.
    pub fn is_final(self) -> bool {
        matches!(self, BuildStatus::Ready | BuildStatus::Failed)
    }
}

/// One stored build of one digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRecord {
    pub id: String,
    pub digest: String,
    /// The ref the build was asked for (several refs may share a digest).
    pub reference: String,
    pub status: BuildStatus,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub build_time_ms: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Success,
    Warn,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Publish,
    Compile,
    Boot,
    Install,
    Snapshot,
    Ready,
    Cancel,
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Apt,
    Pip,
    Npm,
    Builder,
}

/// One line of a build's log: each SSE `data:` of `GET .../build/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildEvent {
    pub ts: String,
    pub level: Level,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    pub line: String,
}

impl BuildEvent {
    pub fn now(
        level: Level,
        phase: Phase,
        source: Option<Source>,
        line: impl Into<String>,
    ) -> BuildEvent {
        BuildEvent {
            ts: crate::store::now_iso(),
            level,
            phase,
            source,
            line: line.into(),
        }
    }
}

/// Where a runner writes its events (kept in the store, streamed to clients).
pub trait BuildLog: Send + Sync {
    fn emit(&self, event: BuildEvent);
}

/// What a runner gets for one build.
pub struct BuildJob {
    pub build_id: String,
    pub reference: TemplateRef,
    pub digest: String,
    /// The validated template; `resolved` is what to apply. It holds no secret values.
    pub template: Template,
    /// Where the golden snapshot of this digest goes (`<data>/templates/snapshots/<hex>/`).
    pub snapshot_dir: PathBuf,
}

/// A failed build: the phase it failed in and what to tell the user (the failing step and its
/// output's tail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{phase:?}: {message}")]
pub struct BuildFailure {
    pub phase: Phase,
    pub message: String,
}

pub type BuildFuture = Pin<Box<dyn Future<Output = Result<(), BuildFailure>> + Send>>;

/// Builds a template into a golden snapshot. The build manager (`builds.rs`) guarantees one
/// build per digest at a time, the time limit, cancellation (`cancel` fires; return soon after)
/// and the record; the runner boots the VM from the base image, applies `build.apt/pip/npm/run`,
/// build-time `files`, `apps` (installs, services, health checks), `terminal`,
/// `hooks.on_first_boot`, waits for health, runs `hooks.on_pre_snapshot`, and writes the
/// snapshot into `job.snapshot_dir`, logging each phase through `log`.
pub trait BuildRunner: Send + Sync + 'static {
    fn run(
        &self,
        job: BuildJob,
        log: std::sync::Arc<dyn BuildLog>,
        cancel: CancellationToken,
    ) -> BuildFuture;
}

/// The runner of a deskd without a VM template builder: every build fails at once, saying so.
pub struct NoVmBuilder;

/// What [`NoVmBuilder`] answers.
pub const NO_BUILDER: &str =
    "this deskd cannot build templates yet: the VM builder that boots the base image, \
     applies the template and takes its golden snapshot is not part of this version (issue 14). \
     The template is published and can be validated; computers still start from the stock image.";

impl BuildRunner for NoVmBuilder {
    fn run(
        &self,
        _job: BuildJob,
        log: std::sync::Arc<dyn BuildLog>,
        _cancel: CancellationToken,
    ) -> BuildFuture {
        Box::pin(async move {
            log.emit(BuildEvent::now(
                Level::Error,
                Phase::Compile,
                Some(Source::Builder),
                NO_BUILDER,
            ));
            Err(BuildFailure {
                phase: Phase::Compile,
                message: NO_BUILDER.to_string(),
            })
        })
    }
}
