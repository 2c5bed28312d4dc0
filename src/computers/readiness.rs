//! Whether each booting VM's desktop is usable yet, found by a task of its own per VM that asks the
//! guest agent's `/health` (with one deadline per probe) until the agent says the desktop is ready.
//! The supervisor only reads the answer: no probe ever runs under a lifecycle lock or holds up
//! another computer, and a guest that never answers costs one sleeping task.
//!
//! A VM restored from a saved VM is ready once its agent has also taken what the restore needs
//! (`POST /resumed`: the host's wall clock, and for a copy its new identity): nobody uses a
//! restored computer whose clock is behind or a clone that still has its source's identity.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deskd_agent::protocol::resumed::{NewIdentity, Resumed, ResumedDone};
use deskd_agent::protocol::Health;

use super::agent_client::{limits, AgentCall, AgentClient};

/// Deadline of one probe (connect, ask, read).
const PROBE_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between probes of a VM that is not ready yet.
const PROBE_EVERY: Duration = Duration::from_secs(1);

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
}

impl Readiness {
    pub fn new(agents: Arc<AgentClient>) -> Readiness {
        Readiness {
            agents,
            watches: Mutex::new(HashMap::new()),
            restored: Mutex::new(HashMap::new()),
        }
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
        let task = tokio::spawn(probe_until_ready(
            self.agents.clone(),
            socket,
            ready.clone(),
            id.to_string(),
            after,
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
    }
}

/// Asks the agent until it says the desktop is ready, then records that and ends.
async fn probe_until_ready(
    agents: Arc<AgentClient>,
    socket: PathBuf,
    ready: Arc<AtomicBool>,
    id: String,
    after: Option<AfterRestore>,
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
                ready.store(true, Ordering::Release);
                return;
            }
            Err(why) => tracing::debug!(computer = %id, "not ready yet: {why}"),
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
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
}
