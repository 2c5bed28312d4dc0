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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    /// A VM's vsock socket at `socket` with an agent behind it that answers every
    /// `POST /root-fs/grow` with `status` and `body` (after checking the request's shape).
    pub(crate) fn fake_agent(socket: &Path, status: u16, body: &'static str) {
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(stream);
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    let mut stream = reader.into_inner();
                    stream.write_all(b"OK 1073741824\n").await.unwrap();
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| async move {
                            use http_body_util::BodyExt;
                            assert_eq!(req.uri().path(), paths::GROW_ROOT_FS);
                            let asked = req.into_body().collect().await.unwrap().to_bytes();
                            let asked: GrowRootFs = serde_json::from_slice(&asked).unwrap();
                            assert!(asked.check().is_ok(), "{asked:?}");
                            let answer = http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(Bytes::from_static(
                                    body.as_bytes(),
                                )))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(answer)
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    #[tokio::test]
    async fn the_guests_answer_or_its_reason_comes_back() {
        let d = tempfile::tempdir().unwrap();
        let agents = AgentClient::default();
        let ok = d.path().join("ok/vsock.sock");
        fake_agent(
            &ok,
            200,
            r#"{"disk_bytes":12884901888,"filesystem_bytes":12600000000}"#,
        );
        let grown = grow_root_fs(&agents, &ok, 12 << 30).await.unwrap();
        assert_eq!(grown.filesystem_bytes, 12_600_000_000);

        let refused = d.path().join("refused/vsock.sock");
        fake_agent(
            &refused,
            500,
            r#"{"error":"cannot reach the root helper at /run/deskd-growfs.sock"}"#,
        );
        let err = grow_root_fs(&agents, &refused, 12 << 30).await.unwrap_err();
        assert!(
            err.to_string().contains("500") && err.to_string().contains("deskd-growfs.sock"),
            "{err}"
        );

        let old = d.path().join("old/vsock.sock");
        fake_agent(&old, 200, "<html>no such route</html>");
        let err = grow_root_fs(&agents, &old, 12 << 30).await.unwrap_err();
        assert!(err.to_string().contains("older than this deskd"), "{err}");

        let nobody = d.path().join("none/vsock.sock");
        let err = grow_root_fs(&agents, &nobody, 12 << 30).await.unwrap_err();
        assert!(matches!(err, GuestGrowError::Agent(_)), "{err}");
    }
}
