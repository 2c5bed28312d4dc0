//! The host side of the VMM's hybrid vsock (Firecracker's model): connect to the VM's Unix socket,
//! send `CONNECT <port>\n`, read `OK <host port>\n`; the stream then carries the guest port's bytes.
//! This is the one implementation; the daemon's agent client, its readiness probe and its
//! WebSocket relay all open streams through it.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest `OK <port>` line the VMM sends.
const MAX_HANDSHAKE_LINE: usize = 64;

/// Why no stream to the guest port was opened.
#[derive(Debug, thiserror::Error)]
pub enum VsockConnectError {
    #[error("the VM's vsock socket {path} does not answer: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock hand-shake failed: {0}")]
    Io(std::io::Error),
    #[error("nothing listens on vsock port {0} in the guest (yet)")]
    NotListening(u32),
    #[error("the VMM's vsock hand-shake line is too long")]
    LineTooLong,
    #[error("the VMM refused the vsock connection: {0}")]
    Refused(String),
}

/// Opens a stream to `port` inside the VM whose hybrid vsock socket is `socket`. No deadline of
/// its own: callers put the whole exchange under theirs.
pub async fn connect(socket: &Path, port: u32) -> Result<UnixStream, VsockConnectError> {
    let mut stream =
        UnixStream::connect(socket)
            .await
            .map_err(|source| VsockConnectError::Socket {
                path: socket.to_path_buf(),
                source,
            })?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(VsockConnectError::Io)?;
    // Byte by byte: whatever follows the newline belongs to the guest's stream.
    let mut line = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        let n = stream.read(&mut b).await.map_err(VsockConnectError::Io)?;
        if n == 0 {
            return Err(VsockConnectError::NotListening(port));
        }
        if b[0] == b'\n' {
            break;
        }
        if line.len() >= MAX_HANDSHAKE_LINE {
            return Err(VsockConnectError::LineTooLong);
        }
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(VsockConnectError::Refused(
            String::from_utf8_lossy(&line).into_owned(),
        ));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn hand_shake_then_the_guest_stream() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("v.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut r = tokio::io::BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 77\n");
            // The OK line and the guest's first bytes in one write: nothing may be lost.
            r.into_inner().write_all(b"OK 99\nhello").await.unwrap();
        });
        let mut s = connect(&sock, 77).await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn refusals_and_floods_are_errors() {
        let d = tempfile::tempdir().unwrap();
        for (answer, want) in [
            (&b""[..], "nothing listens"),
            (&b"NO\n"[..], "refused"),
            (&[b'x'; 200][..], "too long"),
        ] {
            let sock = d.path().join("v.sock");
            let _ = std::fs::remove_file(&sock);
            let listener = UnixListener::bind(&sock).unwrap();
            let answer = answer.to_vec();
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut b = [0u8; 13]; // "CONNECT 1024\n"
                let _ = s.read_exact(&mut b).await;
                let _ = s.write_all(&answer).await;
            });
            let err = connect(&sock, 1024).await.unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
