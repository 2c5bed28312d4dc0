//! Whether each booting VM's desktop is usable yet, found by a task of its own per VM that asks the
//! guest agent's `/health` (with one deadline per probe) until the agent says the desktop is ready.
//! The supervisor only reads the answer: no probe ever runs under a lifecycle lock or holds up
//! another computer, and a guest that never answers costs one sleeping task.
//!
//! A VM restored from a saved VM is ready once its agent has also taken what the restore needs
//! (`POST /resumed`: the host's wall clock, and for a copy its new identity): nobody uses a
//! restored computer whose clock is behind or a clone that still has its source's identity.
//!
//! A template's computer then gets its [`GuestSetup`] (built by `crate::templates::launch`):
//! `/root/.env` and the runtime files through the agent's `/files/install`, then its start's hook
//! as root with `set -e` through `/bash` (`hooks.on_resume` after a restore, `hooks.on_every_boot`
//! after a cold boot), then its autostart stream through the agent's `/stream/start` (the call
//! `POST /computers/{id}/stream/start` makes). It counts as ready only once that is over, so the
//! first call after `running` sees what the template set up; a failure does not keep it from
//! running (its desktop works), it is written to the computer's launch log ([`SetupLog`],
//! `GET /computers/{id}/launch-log`) with the hook's output, secrets masked, and warned about in
//! the daemon's log without that output.
//!
//! [`run_shutdown_hook`] runs `hooks.on_shutdown` the same way before a stop, a restart or a
//! delete powers the VM off, within [`SHUTDOWN_HOOK_CAP`] at most.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deskd_agent::protocol::files::{
    FilesInstalled, InstallFile, InstallFiles, INSTALL, MAX_INSTALL_BYTES, MAX_INSTALL_FILES,
};
use deskd_agent::protocol::resumed::{NewIdentity, Resumed, ResumedDone};
use deskd_agent::protocol::stream::StreamStarted;
use deskd_agent::protocol::{BashRequest, BashResponse, ErrorBody, Health};

use super::agent_client::{limits, stream_start_call, AgentCall, AgentClient};
use crate::templates::secrets::AutoStream;

/// Deadline of one probe (connect, ask, read).
const PROBE_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between probes of a VM that is not ready yet.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Deadline of the `/files/install` call (a few small files written by a root shell each).
const INSTALL_DEADLINE: Duration = Duration::from_secs(120);
/// Tries of `/files/install` when the agent cannot be reached (it just answered `/health`, so a
/// refusal is a hiccup, not an absence).
const INSTALL_TRIES: u32 = 3;
/// Extra time a hook's `/bash` call gets beyond the hook's own limit (the agent ends the hook at
/// its limit and answers).
const HOOK_CALL_SLACK: Duration = Duration::from_secs(60);
/// At most this many lines of a hook's output go to the launch log (the rest is counted).
const MAX_HOOK_LINES: usize = 400;
/// A longer line of a hook's output is cut to this many bytes in the launch log.
const MAX_HOOK_LINE_BYTES: usize = 4096;
/// The longest `hooks.on_shutdown` may hold a stop, whatever its own `timeout` (10 minutes by
/// default): a stop is asked for when the computer should go, and a hung hook must not keep it.
pub const SHUTDOWN_HOOK_CAP: Duration = Duration::from_secs(60);
/// What the agent gets beyond a shutdown hook's limit to answer (it ends the hook at its limit);
/// past it the stop goes on without the answer.
const SHUTDOWN_ANSWER_SLACK: Duration = Duration::from_secs(5);
/// Deadline of the autostart stream's `/stream/start` (the agent spawns the encoder and answers).
const STREAM_START_DEADLINE: Duration = Duration::from_secs(30);

/// How bad a launch-log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupLevel {
    Info,
    Success,
    Warn,
    Error,
}

impl SetupLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            SetupLevel::Info => "info",
            SetupLevel::Success => "success",
            SetupLevel::Warn => "warn",
            SetupLevel::Error => "error",
        }
    }
}

/// Where what a [`GuestSetup`] did is recorded (the store's launch log).
pub trait SetupLog: Send + Sync {
    fn record(&self, computer_id: &str, level: SetupLevel, step: &str, line: &str);
}

/// A hook run as root with `set -e` through the agent's `/bash`.
#[derive(Debug, Clone)]
pub struct SetupHook {
    /// The document field, e.g. `hooks.on_resume`.
    pub label: String,
    /// The `/bash` commands that carry and run it (`crate::templates::vm_builder::commands_for`).
    pub commands: Vec<String>,
    pub timeout: Duration,
    /// What happens after a failure, for the launch log: `the computer runs on`, `the stop goes
    /// on`.
    pub on_failure: &'static str,
}

/// What a template's computer gets once its agent answers.
pub struct GuestSetup {
    /// Written in order (`/root/.env` first); may hold secrets.
    pub files: Vec<InstallFile>,
    pub hook: Option<SetupHook>,
    /// Started last; its key is a secret (`AutoStream`'s `Debug` hides it).
    pub stream: Option<AutoStream>,
    /// Masks secret values out of what is recorded.
    pub mask: Arc<dyn Fn(&str) -> String + Send + Sync>,
    pub log: Arc<dyn SetupLog>,
}

// By hand: the files may hold secrets, and the closures print nothing useful.
impl std::fmt::Debug for GuestSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestSetup")
            .field("files", &self.files)
            .field("hook", &self.hook.as_ref().map(|h| &h.label))
            .field("stream", &self.stream.as_ref().map(|s| &s.label))
            .finish_non_exhaustive()
    }
}

/// One VM being watched: which VMM process (a new process is a new boot), and what was found.
struct Watch {
    pid: i32,
    ready: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a restored VM's agent must be told before the VM counts as ready.
#[derive(Debug, Clone)]
pub struct AfterRestore {
    /// For a copy of another computer's VM.
    pub identity: Option<NewIdentity>,
}

/// The readiness of every booting VM.
pub struct Readiness {
    agents: Arc<AgentClient>,
    watches: Mutex<HashMap<String, Watch>>,
    /// Restores whose probe has not started yet, by computer.
    restored: Mutex<HashMap<String, AfterRestore>>,
    /// Guest setups whose probe has not started yet, by computer.
    setups: Mutex<HashMap<String, GuestSetup>>,
}

impl Readiness {
    pub fn new(agents: Arc<AgentClient>) -> Readiness {
        Readiness {
            agents,
            watches: Mutex::new(HashMap::new()),
            restored: Mutex::new(HashMap::new()),
            setups: Mutex::new(HashMap::new()),
        }
    }

    /// Records that computer `id`'s next VM gets `setup` once its agent answers (after a
    /// restore's `/resumed`), before it counts as ready.
    pub fn expect_setup(&self, id: &str, setup: GuestSetup) {
        self.setups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), setup);
    }

    /// Records that computer `id`'s next VM is a restore: its probe tells the agent `after`
    /// before it reports the VM ready.
    pub fn expect_restore(&self, id: &str, after: AfterRestore) {
        self.restored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), after);
        self.forget(id);
    }

    fn watches(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watch>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the desktop of computer `id`, booted by VMM process `pid`, is ready. The first call
    /// for a boot starts its probe task (and answers false); a new pid starts over.
    pub fn is_ready(&self, id: &str, pid: i32, socket: PathBuf) -> bool {
        let mut watches = self.watches();
        if let Some(w) = watches.get(id) {
            if w.pid == pid {
                return w.ready.load(Ordering::Acquire);
            }
        }
        let ready = Arc::new(AtomicBool::new(false));
        let after = self
            .restored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let setup = self
            .setups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let task = tokio::spawn(probe_until_ready(
            self.agents.clone(),
            socket,
            ready.clone(),
            id.to_string(),
            after,
            setup,
        ));
        watches.insert(id.to_string(), Watch { pid, ready, task });
        false
    }

    /// Stops watching `id` (it runs, stopped, or is gone).
    pub fn forget(&self, id: &str) {
        self.watches().remove(id);
    }

    /// Forgets `id` altogether (deleted).
    pub fn forget_all(&self, id: &str) {
        self.forget(id);
        self.restored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.setups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// Asks the agent until it says the desktop is ready, then records that and ends.
async fn probe_until_ready(
    agents: Arc<AgentClient>,
    socket: PathBuf,
    ready: Arc<AtomicBool>,
    id: String,
    after: Option<AfterRestore>,
    mut setup: Option<GuestSetup>,
) {
    loop {
        let outcome = match probe(&agents, &socket).await {
            Ok(()) => match &after {
                None => Ok(()),
                Some(after) => tell_restored(&agents, &socket, after).await.map(|done| {
                    tracing::info!(
                        computer = %id,
                        clock_step_ms = done.clock_step_ms,
                        new_identity = done.identity_applied,
                        "restored VM's agent is up to date"
                    );
                }),
            },
            Err(why) => Err(why),
        };
        match outcome {
            Ok(()) => {
                if let Some(setup) = setup.take() {
                    run_setup(&agents, &socket, &id, setup).await;
                }
                ready.store(true, Ordering::Release);
                return;
            }
            Err(why) => tracing::debug!(computer = %id, "not ready yet: {why}"),
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Carries out `setup` once: the files, then the hook (not run when the files it follows could
/// not be written), then the stream (which needs neither). Every outcome goes to the launch log;
/// nothing here fails the computer.
async fn run_setup(agents: &AgentClient, socket: &std::path::Path, id: &str, setup: GuestSetup) {
    let record = |level: SetupLevel, step: &str, line: &str| {
        setup.log.record(id, level, step, &(setup.mask)(line));
    };
    let mut files_written = true;
    if !setup.files.is_empty() {
        let paths: Vec<&str> = setup.files.iter().map(|f| f.path.as_str()).collect();
        match install(agents, socket, &setup.files).await {
            Ok(done) => record(
                SetupLevel::Success,
                "files",
                &format!("wrote {}", done.paths.join(", ")),
            ),
            Err(why) => {
                tracing::warn!(computer = %id, "could not write its launch files ({}): {why}", paths.join(", "));
                record(
                    SetupLevel::Error,
                    "files",
                    &format!("could not write {}: {why}", paths.join(", ")),
                );
                files_written = false;
            }
        }
    }
    if let Some(h) = &setup.hook {
        if files_written {
            run_hook(agents, socket, id, h, &record).await;
        } else {
            record(
                SetupLevel::Error,
                &h.label,
                &format!(
                    "{} was not run: the files it follows were not written",
                    h.label
                ),
            );
        }
    }
    if let Some(s) = &setup.stream {
        start_stream(agents, socket, id, s, &record).await;
    }
}

/// Starts `s` through the agent's `/stream/start`, as `POST /computers/{id}/stream/start` does.
/// A stream already running (a resumed VM whose encoder was saved with it) is left as it is.
async fn start_stream(
    agents: &AgentClient,
    socket: &std::path::Path,
    id: &str,
    s: &AutoStream,
    record: &(dyn Fn(SetupLevel, &str, &str) + Sync),
) {
    let outcome = async {
        let call = stream_start_call(&s.request, STREAM_START_DEADLINE)
            .map_err(|e| format!("the request does not serialize: {e}"))?;
        let reply = agents
            .request(socket, call)
            .await
            .map_err(|e| e.to_string())?;
        if reply.status == http::StatusCode::CONFLICT {
            return Ok(None);
        }
        if !reply.status.is_success() {
            return Err(format!(
                "the agent answered {}: {}",
                reply.status,
                agent_error(&reply.body)
            ));
        }
        serde_json::from_slice::<StreamStarted>(&reply.body)
            .map(Some)
            .map_err(|e| format!("the agent's answer: {e}"))
    };
    match outcome.await {
        Ok(Some(started)) => record(
            SetupLevel::Success,
            &s.label,
            &format!("{} streaming (encoder pid {})", s.label, started.pid),
        ),
        Ok(None) => record(
            SetupLevel::Info,
            &s.label,
            &format!("{} was not started: a stream runs already", s.label),
        ),
        Err(why) => {
            tracing::warn!(computer = %id, "{} could not start; the computer runs on (see GET /api/computers/{id}/launch-log)", s.label);
            record(
                SetupLevel::Error,
                &s.label,
                &format!("{} could not start: {why}; the computer runs on", s.label),
            );
        }
    }
}

/// Runs `hooks.on_shutdown` (`hook`) of computer `id` before its VM is powered off: at most
/// `min(its timeout, cap)` (the agent ends it then) plus [`SHUTDOWN_ANSWER_SLACK`] for the
/// answer. Its output and outcome go to the launch log; whatever it did, the caller goes on.
pub async fn run_shutdown_hook(
    agents: &AgentClient,
    socket: &std::path::Path,
    id: &str,
    hook: SetupHook,
    cap: Duration,
    mask: &(dyn Fn(&str) -> String + Sync),
    log: &dyn SetupLog,
) {
    let limit = hook.timeout.min(cap);
    let hook = SetupHook {
        timeout: limit,
        ..hook
    };
    let record = |level: SetupLevel, step: &str, line: &str| {
        log.record(id, level, step, &mask(line));
    };
    let run = run_hook(agents, socket, id, &hook, &record);
    if tokio::time::timeout(limit + SHUTDOWN_ANSWER_SLACK, run)
        .await
        .is_err()
    {
        tracing::warn!(computer = %id, "{} did not end within {} s; {}", hook.label, limit.as_secs(), hook.on_failure);
        record(
            SetupLevel::Error,
            &hook.label,
            &format!(
                "{} did not end within {} s; {}",
                hook.label,
                limit.as_secs(),
                hook.on_failure
            ),
        );
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `files` in order as requests within the agent's limits ([`MAX_INSTALL_FILES`],
/// [`MAX_INSTALL_BYTES`]; a single file over the byte limit goes alone, for the agent to refuse
/// by name).
fn batches(files: &[InstallFile]) -> Vec<&[InstallFile]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, f) in files.iter().enumerate() {
        let full = i - start >= MAX_INSTALL_FILES || bytes + f.content.len() > MAX_INSTALL_BYTES;
        if i > start && full {
            out.push(&files[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += f.content.len();
    }
    if start < files.len() {
        out.push(&files[start..]);
    }
    out
}

/// Writes `files` in order through `/files/install`, in as many requests as the agent's limits
/// need; the first failure ends it.
async fn install(
    agents: &AgentClient,
    socket: &std::path::Path,
    files: &[InstallFile],
) -> Result<FilesInstalled, String> {
    let mut paths = Vec::with_capacity(files.len());
    for batch in batches(files) {
        paths.extend(install_batch(agents, socket, batch).await?.paths);
    }
    Ok(FilesInstalled {
        success: true,
        paths,
    })
}

/// One `POST /files/install`, tried again while the agent cannot be reached.
async fn install_batch(
    agents: &AgentClient,
    socket: &std::path::Path,
    files: &[InstallFile],
) -> Result<FilesInstalled, String> {
    let body = serde_json::to_vec(&InstallFiles {
        files: files.to_vec(),
    })
    .map_err(|e| format!("the request does not serialize: {e}"))?;
    let body = bytes::Bytes::from(body);
    let mut tries = 0;
    let reply = loop {
        tries += 1;
        match agents
            .request(
                socket,
                AgentCall::post_json(INSTALL, body.clone(), INSTALL_DEADLINE),
            )
            .await
        {
            Ok(reply) => break reply,
            Err(e) if tries < INSTALL_TRIES => {
                tracing::debug!("launch files: the agent could not be reached, trying again: {e}");
                tokio::time::sleep(PROBE_EVERY).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    if !reply.status.is_success() {
        return Err(format!(
            "the agent answered {}: {}",
            reply.status,
            agent_error(&reply.body)
        ));
    }
    serde_json::from_slice(&reply.body).map_err(|e| format!("the agent's answer: {e}"))
}

/// The message of an agent's error body (its text when it is not the usual JSON).
fn agent_error(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

/// Runs `h` through `/bash`: its output lines and its outcome go to the launch log.
async fn run_hook(
    agents: &AgentClient,
    socket: &std::path::Path,
    id: &str,
    h: &SetupHook,
    record: &(dyn Fn(SetupLevel, &str, &str) + Sync),
) {
    let started = std::time::Instant::now();
    record(SetupLevel::Info, &h.label, &format!("running {}", h.label));
    let last = h.commands.len().saturating_sub(1);
    for (k, command) in h.commands.iter().enumerate() {
        let outcome = bash(agents, socket, command, h.timeout).await;
        let out = match outcome {
            Ok(out) if k < last && out.exit_code == 0 => continue,
            Ok(out) => out,
            Err(why) => {
                tracing::warn!(computer = %id, "{} could not be run: {why}", h.label);
                record(
                    SetupLevel::Error,
                    &h.label,
                    &format!("{} could not be run: {why}; {}", h.label, h.on_failure),
                );
                return;
            }
        };
        let lines: Vec<&str> = out.output.lines().collect();
        for line in lines.iter().take(MAX_HOOK_LINES) {
            record(SetupLevel::Info, &h.label, cut(line, MAX_HOOK_LINE_BYTES));
        }
        if lines.len() > MAX_HOOK_LINES {
            record(
                SetupLevel::Warn,
                &h.label,
                &format!("({} more lines not shown)", lines.len() - MAX_HOOK_LINES),
            );
        }
        if out.exit_code != 0 || out.timed_out {
            let how = if out.timed_out {
                format!("timed out after {} s", h.timeout.as_secs())
            } else {
                format!("exited with status {}", out.exit_code)
            };
            tracing::warn!(computer = %id, "{} {how}; {} (its output is in GET /api/computers/{id}/launch-log)", h.label, h.on_failure);
            record(
                SetupLevel::Error,
                &h.label,
                &format!("{} {how}; {}", h.label, h.on_failure),
            );
            return;
        }
    }
    record(
        SetupLevel::Success,
        &h.label,
        &format!("{} done in {} ms", h.label, started.elapsed().as_millis()),
    );
}

/// One `/bash` call of a hook.
async fn bash(
    agents: &AgentClient,
    socket: &std::path::Path,
    command: &str,
    timeout: Duration,
) -> Result<BashResponse, String> {
    let body = serde_json::to_vec(&BashRequest {
        command: command.to_string(),
        timeout: Some(timeout.as_secs_f64()),
    })
    .map_err(|e| e.to_string())?;
    let reply = agents
        .request(
            socket,
            AgentCall::post_json("/bash", body.into(), timeout + HOOK_CALL_SLACK),
        )
        .await
        .map_err(|e| e.to_string())?;
    if !reply.status.is_success() {
        return Err(format!(
            "the agent answered {}: {}",
            reply.status,
            agent_error(&reply.body)
        ));
    }
    serde_json::from_slice(&reply.body)
        .map_err(|e| format!("the agent's answer is not a bash result: {e}"))
}

/// `POST /resumed` with the host's clock read now, and the copy's identity if any.
async fn tell_restored(
    agents: &AgentClient,
    socket: &std::path::Path,
    after: &AfterRestore,
) -> Result<ResumedDone, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| format!("the host's clock is before 1970: {e}"))?;
    let body = Resumed {
        host_time_unix_ns: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
        identity: after.identity.clone(),
    };
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let reply = agents
        .request(
            socket,
            AgentCall::post_json(
                deskd_agent::protocol::paths::RESUMED,
                body.into(),
                PROBE_DEADLINE * 4,
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    if !reply.status.is_success() {
        return Err(format!(
            "the agent answered {} to /resumed: {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ));
    }
    serde_json::from_slice(&reply.body).map_err(|e| format!("the agent's /resumed answer: {e}"))
}

/// One probe: `Ok` when the agent answers 200 with a health report that says ready.
async fn probe(agents: &AgentClient, socket: &std::path::Path) -> Result<(), String> {
    let reply = agents
        .request(
            socket,
            AgentCall::get(
                deskd_agent::protocol::paths::HEALTH,
                PROBE_DEADLINE,
                limits::HEALTH,
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    if !reply.status.is_success() {
        return Err(format!("the agent answered {}", reply.status));
    }
    let health: Health = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("the agent's health report does not parse: {e}"))?;
    // The readiness contract (deskd_agent::protocol::health): usable means every part is up.
    if health.ready {
        Ok(())
    } else {
        Err(format!(
            "the desktop is not up yet (waiting for {})",
            health.desktop.missing().join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::computers::agent_client::testing::fake_vm;
    use deskd_agent::protocol::DesktopParts;
    use std::sync::atomic::AtomicBool;

    static PANEL_UP: AtomicBool = AtomicBool::new(false);

    fn agent(_: &str) -> (u16, Vec<u8>) {
        let parts = DesktopParts {
            x_server: true,
            window_manager: true,
            panel: PANEL_UP.load(Ordering::SeqCst),
            desktop: true,
        };
        let health = Health::new("test", Some((1280, 720)), parts);
        (200, serde_json::to_vec(&health).unwrap())
    }

    fn file(n: usize) -> InstallFile {
        InstallFile {
            path: "/f".into(),
            content: "x".repeat(n),
            mode: "0600".into(),
            owner: "root".into(),
            group: "root".into(),
        }
    }

    #[test]
    fn launch_files_go_in_requests_the_agent_takes_and_long_lines_are_cut() {
        let sizes = |files: &[InstallFile]| -> Vec<usize> {
            batches(files).iter().map(|b| b.len()).collect()
        };
        assert_eq!(sizes(&[file(1), file(2)]), [2]);
        assert!(sizes(&[]).is_empty());
        let half = MAX_INSTALL_BYTES / 2;
        assert_eq!(sizes(&[file(half), file(half), file(1)]), [2, 1]);
        assert_eq!(sizes(&[file(MAX_INSTALL_BYTES + 1), file(1)]), [1, 1]);
        let many: Vec<InstallFile> = (0..MAX_INSTALL_FILES + 1).map(|_| file(1)).collect();
        assert_eq!(sizes(&many), [MAX_INSTALL_FILES, 1]);
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("abc", 10), "abc");
    }

    #[tokio::test]
    async fn ready_only_once_the_agent_says_every_part_is_up() {
        let vm = fake_vm(agent);
        let readiness = Readiness::new(Arc::new(AgentClient::default()));
        assert!(
            !readiness.is_ready("c", 1, vm.socket.clone()),
            "first ask starts the probe"
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !readiness.is_ready("c", 1, vm.socket.clone()),
            "the panel is not up yet"
        );
        PANEL_UP.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !readiness.is_ready("c", 1, vm.socket.clone()) {
            assert!(tokio::time::Instant::now() < deadline, "never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A new VMM process is a new boot: it starts over.
        assert!(!readiness.is_ready("c", 2, vm.socket.clone()));
        readiness.forget("c");
    }

    /// The launch log as lines of `(level, step, line)`.
    #[derive(Default)]
    struct Lines(Mutex<Vec<(String, String, String)>>);

    impl SetupLog for Lines {
        fn record(&self, _: &str, level: SetupLevel, step: &str, line: &str) {
            self.0.lock().unwrap().push((
                level.as_str().to_string(),
                step.to_string(),
                line.to_string(),
            ));
        }
    }

    fn no_encoder(path: &str) -> (u16, Vec<u8>) {
        match path {
            "/stream/start" => (
                500,
                br#"{"error":"cannot run ffmpeg (apt-get install ffmpeg): No such file or directory"}"#
                    .to_vec(),
            ),
            "/bash" => {
                let r = BashResponse {
                    success: true,
                    action: "bash".into(),
                    command: String::new(),
                    output: "booted\n".into(),
                    exit_code: 0,
                    truncated: false,
                    timed_out: false,
                    error: None,
                };
                (200, serde_json::to_vec(&r).unwrap())
            }
            _ => (404, br#"{"error":"no such route"}"#.to_vec()),
        }
    }

    #[tokio::test]
    async fn a_stream_that_cannot_start_is_logged_masked_and_the_setup_goes_on() {
        let vm = fake_vm(no_encoder);
        let agents = AgentClient::default();
        let log = Arc::new(Lines::default());
        let key = "sk-Stream-Key-1".to_string();
        let masked = key.clone();
        let setup = GuestSetup {
            files: Vec::new(),
            hook: Some(SetupHook {
                label: "hooks.on_every_boot".into(),
                commands: vec!["echo booted".into()],
                timeout: Duration::from_secs(5),
                on_failure: "the computer runs on",
            }),
            stream: Some(AutoStream {
                label: "streaming.live".into(),
                request: deskd_agent::protocol::stream::StreamStartRequest {
                    url: "rtmp://127.0.0.1/live".into(),
                    stream_key: key.clone(),
                    settings: deskd_agent::protocol::stream::DEFAULT_SETTINGS,
                },
            }),
            mask: Arc::new(move |l: &str| l.replace(&masked, "[secret sk]")),
            log: log.clone(),
        };
        run_setup(&agents, &vm.socket, "c", setup).await;
        let lines = log.0.lock().unwrap().clone();
        let steps: Vec<(&str, &str)> = lines
            .iter()
            .map(|(l, s, _)| (l.as_str(), s.as_str()))
            .collect();
        assert_eq!(
            steps,
            [
                ("info", "hooks.on_every_boot"),
                ("info", "hooks.on_every_boot"),
                ("success", "hooks.on_every_boot"),
                ("error", "streaming.live"),
            ]
        );
        let last = &lines.last().unwrap().2;
        assert!(
            last.starts_with("streaming.live could not start: the agent answered 500")
                && last.contains("cannot run ffmpeg")
                && last.ends_with("; the computer runs on"),
            "{last}"
        );
        assert!(lines.iter().all(|(_, _, l)| !l.contains(&key)));
    }
}
