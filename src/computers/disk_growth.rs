//! The guest's side of growing a running computer's disk: once the VMM has grown the device
//! (`super::live_resize::grow_disk`), the guest agent grows the root filesystem onto it
//! (`POST /root-fs/grow`, [`deskd_agent::protocol::growfs`]) and says how large it is now. The
//! daemon waits for that answer a bounded time.

use std::path::Path;
use std::time::Duration;

use deskd_agent::protocol::growfs::{GrowRootFs, RootFsGrown, DEADLINE_SECS};
use deskd_agent::protocol::paths;
use http::StatusCode;

use super::agent_client::{AgentCall, AgentClient, AgentError};

/// Why the guest's filesystem was not grown (its disk was: a restart grows the filesystem at
/// boot, `x-systemd.growfs`, and a repeated resize to the same size asks the guest again).
#[derive(Debug, thiserror::Error)]
pub enum GuestGrowError {
    #[error("{0}")]
    Agent(#[from] AgentError),
    #[error("the guest agent answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the guest agent's answer is not a filesystem size ({0}); is the image older than this deskd?")]
    BadAnswer(String),
}

/// How long the daemon waits for the guest (the agent's own waits fit inside it).
pub const GUEST_DEADLINE: Duration = Duration::from_secs(DEADLINE_SECS);

/// Asks the agent behind `socket` to grow the root filesystem onto a disk of `disk_bytes`.
pub async fn grow_root_fs(
    agents: &AgentClient,
    socket: &Path,
    disk_bytes: u64,
) -> Result<RootFsGrown, GuestGrowError> {
    let body = serde_json::to_vec(&GrowRootFs { disk_bytes })
        .map_err(|e| GuestGrowError::BadAnswer(e.to_string()))?;
    let reply = agents
        .request(
            socket,
            AgentCall::post_json(paths::GROW_ROOT_FS, body.into(), GUEST_DEADLINE),
        )
        .await?;
    if !reply.status.is_success() {
        // The agent's error body is `{"error": "..."}`; anything else is shown as it came.
        let message = serde_json::from_slice::<deskd_agent::protocol::ErrorBody>(&reply.body)
            .map(|b| b.error)
            .unwrap_or_else(|_| {
                String::from_utf8_lossy(&reply.body)
                    .chars()
                    .take(500)
                    .collect()
            });
        return Err(GuestGrowError::Refused {
            status: reply.status,
            message,
        });
    }
    serde_json::from_slice(&reply.body).map_err(|e| GuestGrowError::BadAnswer(e.to_string()))
}
