//! HTTP client for a computer's guest agent, reached through the VMM's hybrid vsock socket:
//! connect to `<computer dir>/vsock.sock`, send `CONNECT 1024\n`, read `OK <port>\n`, then speak
//! HTTP/1.1 over the same stream (one request per connection: the agent is cheap to reach and a
//! fresh stream per call cannot be left half-read by an earlier failure).
//!
//! Failure classes matter to API clients: could not connect (the VM is down or the agent not
//! listening) is [`AgentError::Unreachable`] (HTTP 503); no answer in time is
//! [`AgentError::TimedOut`] (HTTP 504). Everything the guest sends is untrusted: the hand-shake line
//! and answer bodies are size-limited, and nothing here panics on what comes back.

use std::path::Path;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::vmm_config::AGENT_VSOCK_PORT;

/// Largest answer accepted from an agent (a 4K PNG screenshot, or 10 MiB of bash output escaped).
const MAX_ANSWER_BYTES: usize = 64 << 20;
/// Longest `OK <port>` line the VMM sends.
const MAX_HANDSHAKE_LINE: usize = 64;
/// How long a failed connection to the agent is retried before the caller hears 503. A guest
/// under load (or an agent restarting) refuses a connection now and then; nothing has been sent at
/// that point, so trying again is safe for every request.
const CONNECT_RETRY_WINDOW: Duration = Duration::from_secs(3);
/// First pause between connection attempts; doubled after each failure.
const CONNECT_FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Why the agent gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Connecting or talking failed: the VM is not running, the agent does not listen (yet), or
    /// the connection broke.
    #[error("Could not reach the desktop. Try again in a moment. ({0})")]
    Unreachable(String),
    /// The agent took longer than the limit for this call.
    #[error("The desktop did not answer within {0} s.")]
    TimedOut(u64),
}

/// One answer from the agent.
#[derive(Debug)]
pub struct AgentReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Opens a stream to `port` inside the VM through its hybrid vsock socket.
pub async fn connect_vsock(socket: &Path, port: u32) -> Result<UnixStream, AgentError> {
    let mut stream = UnixStream::connect(socket).await.map_err(|e| {
        AgentError::Unreachable(format!("the VM's vsock socket does not answer: {e}"))
    })?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| AgentError::Unreachable(format!("vsock hand-shake failed: {e}")))?;
    // Byte by byte: whatever follows the newline belongs to the agent's stream.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        let n = stream
            .read(&mut b)
            .await
            .map_err(|e| AgentError::Unreachable(format!("vsock hand-shake failed: {e}")))?;
        if n == 0 {
            return Err(AgentError::Unreachable(format!(
                "nothing listens on vsock port {port} in the guest (yet)"
            )));
        }
        if b[0] == b'\n' {
            break;
        }
        if line.len() >= MAX_HANDSHAKE_LINE {
            return Err(AgentError::Unreachable(
                "the VMM's vsock hand-shake line is too long".into(),
            ));
        }
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(AgentError::Unreachable(format!(
            "the VMM refused the vsock connection: {}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(stream)
}

/// [`connect_vsock`], tried again for up to [`CONNECT_RETRY_WINDOW`] while the VM's socket exists
/// (a missing socket means the VM is not running: no point waiting).
pub async fn connect_vsock_retrying(socket: &Path, port: u32) -> Result<UnixStream, AgentError> {
    let started = tokio::time::Instant::now();
    let mut backoff = CONNECT_FIRST_BACKOFF;
    loop {
        match connect_vsock(socket, port).await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                let give_up =
                    !socket.exists() || started.elapsed() + backoff > CONNECT_RETRY_WINDOW;
                if give_up {
                    return Err(e);
                }
                tracing::debug!("agent connection failed, trying again in {backoff:?}: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(800));
            }
        }
    }
}

/// Sends one request to the agent of the VM whose vsock socket is `socket` and reads the whole
/// answer, all within `timeout`.
pub async fn request(
    socket: &Path,
    method: Method,
    path_and_query: &str,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<AgentReply, AgentError> {
    let work = async {
        let stream = connect_vsock_retrying(socket, AGENT_VSOCK_PORT).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AgentError::Unreachable(format!("HTTP hand-shake failed: {e}")))?;
        // The connection task ends when the answer is read or the request is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let has_body = body.is_some();
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, "deskd-agent");
        if has_body {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| AgentError::Unreachable(format!("bad request to the agent: {e}")))?;
        let answer = sender
            .send_request(req)
            .await
            .map_err(|e| AgentError::Unreachable(format!("the agent dropped the request: {e}")))?;
        let (parts, body) = answer.into_parts();
        let body = Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                AgentError::Unreachable(format!("the agent's answer could not be read: {e}"))
            })?
            .to_bytes();
        Ok(AgentReply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| AgentError::TimedOut(timeout.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A stand-in for the VMM's vsock socket: checks the hand-shake, then answers like the agent.
    async fn fake_vmm(listener: UnixListener, reply_ok: bool, http_answer: &'static [u8]) {
        let (stream, _) = listener.accept().await.unwrap();
        let mut reader = tokio::io::BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert_eq!(line, "CONNECT 1024\n");
        let mut stream = reader.into_inner();
        if !reply_ok {
            return; // closed: nothing listens in the guest
        }
        stream.write_all(b"OK 1073741824\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("POST /bash HTTP/1.1\r\n"), "{head}");
        stream.write_all(http_answer).await.unwrap();
    }

    async fn post_bash(sock: &Path) -> AgentReply {
        request(
            sock,
            Method::POST,
            "/bash",
            Some(Bytes::from_static(b"{}")),
            Duration::from_secs(5),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn request_goes_through_the_hand_shake_and_reads_the_answer() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("vsock.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(fake_vmm(
            listener,
            true,
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
        ));
        let reply = post_bash(&sock).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(&reply.body[..], b"{\"ok\":true}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_connection_is_tried_again() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("vsock.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        // The first connection finds nothing listening in the guest; the second reaches the agent.
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            drop(stream);
            fake_vmm(
                listener,
                true,
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            )
            .await;
        });
        let reply = post_bash(&sock).await;
        assert_eq!(&reply.body[..], b"ok");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_a_silent_agent_times_out() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("vsock.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(fake_vmm(listener, false, b""));
        let err = request(&sock, Method::GET, "/health", None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Unreachable(_)), "{err}");
        server.await.unwrap();

        // No socket at all.
        let err = request(
            &d.path().join("none"),
            Method::GET,
            "/health",
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, AgentError::Unreachable(_)), "{err}");

        // Accepts and says OK, then never answers the HTTP request.
        let sock2 = d.path().join("slow.sock");
        let listener = UnixListener::bind(&sock2).unwrap();
        let _silent = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 13];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(b"OK 5\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let err = request(
            &sock2,
            Method::GET,
            "/health",
            None,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, AgentError::TimedOut(_)), "{err}");
    }
}
