//! File transfers with a guest agent, streamed both ways so the daemon's memory does not grow
//! with the file: a local file becomes the body of an agent request (`protocol::files::WRITE`),
//! and an agent's answer (`protocol::files::READ`) is written to a local file as it arrives,
//! stopping at a size cap. Each transfer has a connection of its own (a long transfer must not
//! hold a pooled one) and one deadline for all of it, as every agent call does.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::agent_client::{connect_retrying, AgentError};

/// Most bytes of a refusal (a JSON error) read from an agent.
const MAX_REFUSAL: usize = 64 << 10;

/// How a transfer ended when the agent answered.
#[derive(Debug)]
pub enum Transfer {
    /// 2xx: for a send, the agent's (JSON) answer; for a fetch, the bytes went to the file.
    Done {
        status: StatusCode,
        size: u64,
        answer: Bytes,
    },
    /// The agent refused (its status and error body); nothing was kept.
    Refused { status: StatusCode, body: Bytes },
}

async fn sender<B>(socket: &Path) -> Result<hyper::client::conn::http1::SendRequest<B>, AgentError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = connect_retrying(socket).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| AgentError::Unreachable(format!("HTTP hand-shake failed: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Reads at most `cap` bytes of a body (the rest is dropped with the connection).
async fn small_body(mut body: hyper::body::Incoming, cap: usize) -> Result<Bytes, AgentError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| AgentError::Unreachable(format!("the agent's answer broke off: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > cap {
                return Err(AgentError::TooLarge(cap));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

/// `POST path` to the agent behind `socket` with the `size` bytes of `file` as the body,
/// streamed; the agent's answer is read up to `max_answer` bytes. All within `timeout`.
pub async fn send_file(
    socket: &Path,
    path: &str,
    file: tokio::fs::File,
    size: u64,
    timeout: Duration,
    max_answer: usize,
) -> Result<Transfer, AgentError> {
    let work = async {
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, 256 << 10).map_ok(Frame::data);
        let body = StreamBody::new(stream);
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, "agent")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .body(body)
            .map_err(|e| AgentError::Unreachable(format!("bad request: {e}")))?;
        let mut sender = sender(socket).await?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| AgentError::Unreachable(format!("the agent dropped the upload: {e}")))?;
        let status = answer.status();
        let body = small_body(answer.into_body(), max_answer.max(MAX_REFUSAL)).await?;
        Ok(if status.is_success() {
            Transfer::Done {
                status,
                size,
                answer: body,
            }
        } else {
            Transfer::Refused { status, body }
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| AgentError::TimedOut(timeout.as_secs()))?
}

/// `GET path` from the agent behind `socket`, its answer's body written to a new file `dest`
/// (which must not exist) as it arrives; more than `max_bytes` is `TooLarge`. On any failure
/// `dest` is removed. All within `timeout`.
pub async fn fetch_file(
    socket: &Path,
    path: &str,
    dest: &Path,
    max_bytes: u64,
    timeout: Duration,
) -> Result<Transfer, AgentError> {
    let result = tokio::time::timeout(timeout, fetch(socket, path, dest, max_bytes))
        .await
        .map_err(|_| AgentError::TimedOut(timeout.as_secs()))
        .and_then(|r| r);
    if !matches!(result, Ok(Transfer::Done { .. })) {
        let _ = tokio::fs::remove_file(dest).await;
    }
    result
}

async fn fetch(
    socket: &Path,
    path: &str,
    dest: &Path,
    max_bytes: u64,
) -> Result<Transfer, AgentError> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(header::HOST, "agent")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| AgentError::Unreachable(format!("bad request: {e}")))?;
    let mut sender = sender(socket).await?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| AgentError::Unreachable(format!("the agent dropped the request: {e}")))?;
    let status = answer.status();
    if !status.is_success() {
        let body = small_body(answer.into_body(), MAX_REFUSAL).await?;
        return Ok(Transfer::Refused { status, body });
    }
    let cap = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    let announced = answer
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max_bytes) {
        return Err(AgentError::TooLarge(cap));
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .await
        .map_err(|e| local(dest, e))?;
    let mut body = answer.into_body();
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| AgentError::Unreachable(format!("the agent's answer broke off: {e}")))?;
        if let Ok(data) = frame.into_data() {
            size += data.len() as u64;
            if size > max_bytes {
                return Err(AgentError::TooLarge(cap));
            }
            file.write_all(&data).await.map_err(|e| local(dest, e))?;
        }
    }
    file.sync_all().await.map_err(|e| local(dest, e))?;
    Ok(Transfer::Done {
        status,
        size,
        answer: Bytes::new(),
    })
}

/// A local write failure; reported as the transfer failing (the agent is not at fault, but the
/// caller's answer is the same: nothing was kept).
fn local(dest: &Path, e: std::io::Error) -> AgentError {
    AgentError::Unreachable(format!("cannot write {}: {e}", dest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A VM socket with a real HTTP server behind it that hashes uploads as they stream in
    /// (answering their length and SHA-256), serves `n` pattern bytes at `/read?n=`, and
    /// refuses `/read?n=forbidden` with a 403.
    fn fake_agent() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(stream);
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    let mut stream = reader.into_inner();
                    stream.write_all(b"OK 1073741824\n").await.unwrap();
                    let service = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            use sha2::Digest;
                            let q = req.uri().query().unwrap_or("").to_string();
                            let body: http_body_util::combinators::BoxBody<Bytes, Infallible> =
                                if req.method() == Method::POST {
                                    let mut hash = sha2::Sha256::new();
                                    let mut n = 0u64;
                                    let mut b = req.into_body();
                                    while let Some(Ok(f)) = b.frame().await {
                                        if let Ok(d) = f.into_data() {
                                            n += d.len() as u64;
                                            hash.update(&d);
                                        }
                                    }
                                    let j = format!(
                                        r#"{{"n":{n},"sha":"{}"}}"#,
                                        hex::encode(hash.finalize())
                                    );
                                    http_body_util::Full::new(Bytes::from(j)).boxed()
                                } else if q == "n=forbidden" {
                                    let r = hyper::Response::builder()
                                        .status(403)
                                        .body(
                                            http_body_util::Full::new(Bytes::from_static(
                                                br#"{"error":"outside"}"#,
                                            ))
                                            .boxed(),
                                        )
                                        .unwrap();
                                    return Ok::<_, Infallible>(r);
                                } else {
                                    let n: usize = q.trim_start_matches("n=").parse().unwrap();
                                    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                                    http_body_util::Full::new(Bytes::from(data)).boxed()
                                };
                            Ok::<_, Infallible>(hyper::Response::new(body))
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (dir, socket)
    }

    #[tokio::test]
    async fn a_file_streams_to_the_agent_and_back() {
        use sha2::Digest;
        let (dir, socket) = fake_agent();
        let src = dir.path().join("src.bin");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let file = tokio::fs::File::open(&src).await.unwrap();
        let t = send_file(
            &socket,
            "/files/write?name=x",
            file,
            data.len() as u64,
            Duration::from_secs(20),
            1024,
        )
        .await
        .unwrap();
        let Transfer::Done { answer, size, .. } = t else {
            panic!("{t:?}")
        };
        assert_eq!(size, data.len() as u64);
        let j: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(j["n"], data.len());
        assert_eq!(j["sha"], hex::encode(sha2::Sha256::digest(&data)));

        let dest = dir.path().join("got.bin");
        let t = fetch_file(
            &socket,
            "/read?n=2000000",
            &dest,
            2_000_000,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        assert!(
            matches!(
                t,
                Transfer::Done {
                    size: 2_000_000,
                    ..
                }
            ),
            "{t:?}"
        );
        let got = std::fs::read(&dest).unwrap();
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    }

    #[tokio::test]
    async fn refusals_caps_and_missing_vms_keep_nothing() {
        let (dir, socket) = fake_agent();
        let dest = dir.path().join("x.bin");
        let t = fetch_file(
            &socket,
            "/read?n=forbidden",
            &dest,
            10,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(
            matches!(&t, Transfer::Refused { status, body } if status.as_u16() == 403 && body.starts_with(b"{\"error\"")),
            "{t:?}"
        );
        assert!(!dest.exists());
        let e = fetch_file(&socket, "/read?n=1001", &dest, 1000, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, AgentError::TooLarge(1000)), "{e:?}");
        assert!(!dest.exists());
        // The destination must be new: an existing file is never overwritten.
        std::fs::write(&dest, b"keep").unwrap();
        assert!(
            fetch_file(&socket, "/read?n=5", &dest, 1000, Duration::from_secs(5))
                .await
                .is_err()
        );
        let gone = dir.path().join("no-vm.sock");
        let e = fetch_file(
            &gone,
            "/read?n=5",
            &dir.path().join("y"),
            10,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, AgentError::Unreachable(_)), "{e:?}");
    }
}
