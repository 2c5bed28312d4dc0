//! Putting stored uploads into computers: one upload into one computer's `~/Desktop` (claimed
//! in the store first, so no computer gets an upload twice, and released when it fails so the
//! next start tries again), and the listener that gives a computer the uploads waiting for it
//! when it becomes running.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deskd_agent::protocol::files::{sanitize_filename, FileWritten, WriteQuery, WRITE};
use deskd_agent::protocol::ErrorBody;

use crate::computers::agent_client::AgentError;
use crate::computers::agent_files::Transfer;
use crate::computers::Lifecycle;
use crate::store::{Store, StoreError, StoredFile};

/// Time a transfer to or from an agent gets: a base for the connection and the agent's own
/// work, and one second per MiB on top (the rig's guests run 50-100x slower than hardware).
pub fn transfer_timeout(size_bytes: u64) -> Duration {
    Duration::from_secs(120 + (size_bytes >> 20))
}

/// Most time the uploads waiting for a computer that just started get, all together.
const ON_START_DEADLINE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The agent answered with an error status (its message).
    #[error("the desktop refused the file ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("cannot read the stored file {path}: {reason}")]
    Local { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Puts the stored upload `file` into computer `computer_id`'s `~/Desktop`. `Ok(None)`: it is
/// there already (or being put there by another task).
pub async fn deliver(
    store: &Store,
    lifecycle: &Lifecycle,
    data_dir: &Path,
    file: &StoredFile,
    computer_id: &str,
) -> Result<Option<FileWritten>, DeliveryError> {
    if !store.claim_delivery(&file.id, computer_id)? {
        return Ok(None);
    }
    let mut claim = Claim {
        store,
        file_id: &file.id,
        computer_id,
        kept: false,
    };
    let written = push(lifecycle, data_dir, file, computer_id).await?;
    claim.kept = true;
    Ok(Some(written))
}

/// A claimed delivery, released unless it was kept: also when the work is dropped half-way
/// (a deadline), so a failed delivery is tried again at the computer's next start.
struct Claim<'a> {
    store: &'a Store,
    file_id: &'a str,
    computer_id: &'a str,
    kept: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Err(e) = self.store.release_delivery(self.file_id, self.computer_id) {
            tracing::warn!(file = %self.file_id, computer = %self.computer_id, "cannot release a failed delivery: {e}");
        }
    }
}

async fn push(
    lifecycle: &Lifecycle,
    data_dir: &Path,
    file: &StoredFile,
    computer_id: &str,
) -> Result<FileWritten, DeliveryError> {
    let blob: PathBuf = super::blob_path(data_dir, &file.workspace_id, &file.id);
    let local = |e: std::io::Error| DeliveryError::Local {
        path: blob.display().to_string(),
        reason: e.to_string(),
    };
    // Stored names are sanitised already; sanitising again keeps the agent's check happy even
    // for a record written by an older daemon.
    let name = sanitize_filename(&file.filename).map_err(|reason| DeliveryError::Local {
        path: blob.display().to_string(),
        reason,
    })?;
    let query =
        serde_urlencoded::to_string(WriteQuery { name }).map_err(|e| DeliveryError::Local {
            path: blob.display().to_string(),
            reason: e.to_string(),
        })?;
    let handle = tokio::fs::File::open(&blob).await.map_err(local)?;
    let size = handle.metadata().await.map_err(local)?.len();
    let transfer = lifecycle
        .agent_send_file(
            computer_id,
            &format!("{WRITE}?{query}"),
            handle,
            size,
            transfer_timeout(size),
        )
        .await?;
    match transfer {
        Transfer::Done { answer, .. } => {
            serde_json::from_slice::<FileWritten>(&answer).map_err(|e| DeliveryError::Refused {
                status: 502,
                message: format!("the agent's answer is not a file-written answer: {e}"),
            })
        }
        Transfer::Refused { status, body } => Err(DeliveryError::Refused {
            status: status.as_u16(),
            message: serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(300).collect()),
        }),
    }
}

/// Puts every upload waiting for computer `computer_id` into it, one after the other.
pub async fn deliver_pending(
    store: &Store,
    lifecycle: &Lifecycle,
    data_dir: &Path,
    computer_id: &str,
) -> Result<usize, DeliveryError> {
    let mut delivered = 0;
    for file in store.pending_uploads(computer_id)? {
        match deliver(store, lifecycle, data_dir, &file, computer_id).await {
            Ok(Some(w)) => {
                delivered += 1;
                tracing::info!(file = %file.id, computer = %computer_id, path = %w.path, "upload put in the computer it was waiting for");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(file = %file.id, computer = %computer_id, "could not put a waiting upload in the computer (tried again at its next start): {e}")
            }
        }
    }
    Ok(delivered)
}

/// Listens for computers that become running and gives each, in a task of its own and within
/// [`ON_START_DEADLINE`], the uploads waiting for it. Ends when the lifecycle is dropped.
pub fn spawn_on_start(
    store: Arc<Store>,
    lifecycle: Arc<Lifecycle>,
    data_dir: PathBuf,
) -> tokio::task::JoinHandle<()> {
    let mut started = lifecycle.subscribe_running();
    let lifecycle = Arc::downgrade(&lifecycle);
    tokio::spawn(async move {
        loop {
            let id = match started.recv().await {
                Ok(id) => id,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("{n} computers became running unseen: their waiting uploads come at their next start");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let Some(lifecycle) = lifecycle.upgrade() else {
                return;
            };
            let (store, data_dir) = (store.clone(), data_dir.clone());
            tokio::spawn(async move {
                let work = deliver_pending(&store, &lifecycle, &data_dir, &id);
                match tokio::time::timeout(ON_START_DEADLINE, work).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(computer = %id, "cannot list the uploads waiting for it: {e}")
                    }
                    Err(_) => tracing::warn!(
                        computer = %id,
                        "its waiting uploads took over {} s; the rest come at its next start",
                        ON_START_DEADLINE.as_secs()
                    ),
                }
            });
        }
    })
}
