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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::computers::VmmProcessBackend;
    use crate::store::{FileSource, NewComputer, NewFile, WorkspaceStatus};
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    /// A VM socket at computer `id`'s place with an HTTP server behind it that takes uploads
    /// like the agent's `WRITE` (hashing the body; `refuse.txt` is a 400) and answers a
    /// [`FileWritten`] whose path carries the body's SHA-256; each upload taken leaves
    /// `got-<name>` beside the socket.
    fn fake_agent(lifecycle: &Lifecycle, id: &str) {
        let socket = lifecycle.agent_socket(id);
        let seen = socket.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&seen).unwrap();
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(stream);
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    let mut stream = reader.into_inner();
                    stream.write_all(b"OK 1073741824\n").await.unwrap();
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                use sha2::Digest;
                                assert_eq!(req.uri().path(), WRITE);
                                let q: WriteQuery =
                                    serde_urlencoded::from_str(req.uri().query().unwrap()).unwrap();
                                let mut hash = sha2::Sha256::new();
                                let mut n = 0u64;
                                let mut body = req.into_body();
                                while let Some(Ok(f)) = body.frame().await {
                                    if let Ok(d) = f.into_data() {
                                        n += d.len() as u64;
                                        hash.update(&d);
                                    }
                                }
                                std::fs::write(seen.join(format!("got-{}", q.name)), b"").unwrap();
                                let (status, answer) = if q.name == "refuse.txt" {
                                    (400, r#"{"error":"no such name"}"#.to_string())
                                } else {
                                    let w = FileWritten {
                                        success: true,
                                        path: format!(
                                            "/home/user/Desktop/{}#{}",
                                            q.name,
                                            hex::encode(hash.finalize())
                                        ),
                                        name: q.name,
                                        size_bytes: n,
                                    };
                                    (200, serde_json::to_string(&w).unwrap())
                                };
                                Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(http_body_util::Full::new(Bytes::from(answer)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    fn setup() -> (
        tempfile::TempDir,
        Arc<Store>,
        Arc<Lifecycle>,
        String,
        Vec<String>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let backend = Arc::new(VmmProcessBackend::new(
            "/nonexistent/deskd".into(),
            dir.path(),
            false,
        ));
        let lc = Arc::new(Lifecycle::new(
            store.clone(),
            backend,
            dir.path().to_path_buf(),
        ));
        let ws = store
            .create_workspace("w", WorkspaceStatus::Active, None)
            .unwrap();
        let computers = ["a", "b"]
            .iter()
            .map(|name| {
                let new = NewComputer {
                    workspace_id: ws.id.clone(),
                    name: name.to_string(),
                    os: "linux".into(),
                    cpu: 1,
                    ram_gb: 1,
                    gpu: "none".into(),
                    disk_size_gb: 8,
                    resolution: "1280x720x24".into(),
                    auto_stop_minutes: None,
                    template_ref: "system/desktop@1.0.0".into(),
                    image: None,
                    vnc_password: "pw".into(),
                    egress_policy: None,
                };
                store.insert_computer(&new, |_| Ok(())).unwrap().id
            })
            .collect();
        (dir, store, lc, ws.id, computers)
    }

    fn stored(store: &Store, data: &Path, ws: &str, name: &str, bytes: &[u8]) -> StoredFile {
        let id = uuid::Uuid::new_v4().to_string();
        let blob = super::super::blob_path(data, ws, &id);
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, bytes).unwrap();
        let new = NewFile {
            id,
            workspace_id: ws.into(),
            computer_id: None,
            filename: name.into(),
            size_bytes: bytes.len() as u64,
            content_type: "application/octet-stream".into(),
            source: FileSource::Upload,
        };
        store.insert_file(&new, u64::MAX >> 1).unwrap()
    }

    #[tokio::test]
    async fn an_upload_goes_into_each_computer_once_and_failures_are_tried_again() {
        use sha2::Digest;
        let (dir, store, lc, ws, computers) = setup();
        let (a, b) = (&computers[0], &computers[1]);
        fake_agent(&lc, a);
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 256) as u8).collect();
        let file = stored(&store, dir.path(), &ws, "report & co (1).pdf", &data);

        let w = deliver(&store, &lc, dir.path(), &file, a)
            .await
            .unwrap()
            .expect("delivered");
        assert_eq!(w.name, "report & co (1).pdf", "the name survives the query");
        assert_eq!(w.size_bytes, data.len() as u64);
        assert!(
            w.path.ends_with(&hex::encode(sha2::Sha256::digest(&data))),
            "{}",
            w.path
        );
        // Once only.
        assert!(deliver(&store, &lc, dir.path(), &file, a)
            .await
            .unwrap()
            .is_none());
        assert!(store.pending_uploads(a).unwrap().is_empty());

        // Computer b has no VM: the delivery fails and stays pending for its next start.
        let e = deliver(&store, &lc, dir.path(), &file, b)
            .await
            .unwrap_err();
        assert!(
            matches!(e, DeliveryError::Agent(AgentError::Unreachable(_))),
            "{e}"
        );
        assert_eq!(store.pending_uploads(b).unwrap().len(), 1);
        // Its VM comes up: the waiting uploads go in.
        fake_agent(&lc, b);
        let refused = stored(&store, dir.path(), &ws, "refuse.txt", b"x");
        assert_eq!(
            deliver_pending(&store, &lc, dir.path(), b).await.unwrap(),
            1
        );
        let pending: Vec<String> = store
            .pending_uploads(b)
            .unwrap()
            .into_iter()
            .map(|f| f.id)
            .collect();
        assert_eq!(pending, vec![refused.id.clone()], "the refused one waits");
        let e = deliver(&store, &lc, dir.path(), &refused, b)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, DeliveryError::Refused { status: 400, message } if message == "no such name"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_computer_that_becomes_running_gets_its_waiting_uploads() {
        let (dir, store, lc, ws, computers) = setup();
        let a = &computers[0];
        let file = stored(&store, dir.path(), &ws, "waiting.txt", b"for later");
        let listener = spawn_on_start(store.clone(), lc.clone(), dir.path().to_path_buf());
        fake_agent(&lc, a);
        lc.announce_running(a);
        let taken = lc.agent_socket(a).with_file_name("got-waiting.txt");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !taken.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the waiting upload was not put in"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Kept (a failed delivery gives its claim up at once): nothing is put in again.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(store.pending_uploads(a).unwrap().is_empty());
        assert!(!store.claim_delivery(&file.id, a).unwrap());
        listener.abort();
    }

    #[test]
    fn transfers_get_more_time_for_more_bytes() {
        assert_eq!(transfer_timeout(0), Duration::from_secs(120));
        assert_eq!(transfer_timeout(200 << 20), Duration::from_secs(320));
    }
}
