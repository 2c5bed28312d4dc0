//! The agent runs as the desktop user, so work that needs root is done by a root helper: this
//! same binary with a helper flag, started by systemd as root for each connection to the
//! helper's socket (a `.socket` unit with `Accept=yes` that only the agent's user may open, and
//! an `@.service` with the socket as stdin and stdout). One exchange per connection: the agent
//! writes its request as JSON, shuts its side down and reads one [`HelperAnswer`].
//!
//! Helpers: `deskd-restore` (`--apply-resumed`, [`crate::resumed`]) and `deskd-growfs`
//! (`--grow-root-fs`, [`crate::growfs`]); each unit does only its one job.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Cap on what is read from either side of a helper socket.
pub const MAX_BYTES: u64 = 64 * 1024;

/// What a helper answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum HelperAnswer<T> {
    Done(T),
    BadRequest(String),
    Failed(String),
}

/// Why a helper did not do its work.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The request was refused (a 400 for the daemon).
    #[error("{0}")]
    BadRequest(String),
    /// The helper could not be reached, did not answer in time, or failed (a 500).
    #[error("{0}")]
    Failed(String),
}

/// Sends `request` to the helper listening on `socket` and waits up to `deadline` for its answer
/// (the agent's side).
pub async fn ask<Req: Serialize, T: DeserializeOwned>(
    socket: &Path,
    request: &Req,
    deadline: Duration,
) -> Result<T, HelperError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            format!(
                "cannot reach the root helper at {}: {e} (is its .socket unit enabled in the image?)",
                socket.display()
            )
        })?;
        let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
        stream.write_all(&body).await.map_err(|e| e.to_string())?;
        stream.shutdown().await.map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .take(MAX_BYTES)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice::<HelperAnswer<T>>(&answer).map_err(|e| {
            format!(
                "the root helper at {}'s answer does not parse ({e}); see its journal",
                socket.display()
            )
        })
    };
    match tokio::time::timeout(deadline, exchange).await {
        Err(_) => Err(HelperError::Failed(format!(
            "the root helper at {} did not answer within {} s",
            socket.display(),
            deadline.as_secs()
        ))),
        Ok(Err(e)) => Err(HelperError::Failed(e)),
        Ok(Ok(HelperAnswer::Done(done))) => Ok(done),
        Ok(Ok(HelperAnswer::BadRequest(m))) => Err(HelperError::BadRequest(m)),
        Ok(Ok(HelperAnswer::Failed(m))) => Err(HelperError::Failed(m)),
    }
}

/// The helper's side: one request on stdin, `work`'s answer on stdout (both are the socket
/// systemd accepted); the exit status says whether the work was done.
pub fn serve<Req: DeserializeOwned, T: Serialize>(
    work: impl FnOnce(Req) -> Result<T, HelperError>,
) -> std::process::ExitCode {
    use std::io::{Read, Write};
    let mut body = Vec::new();
    let read = std::io::stdin().take(MAX_BYTES).read_to_end(&mut body);
    let answer = match read {
        Err(e) => HelperAnswer::Failed(format!("cannot read the request: {e}")),
        Ok(_) => match serde_json::from_slice::<Req>(&body) {
            Err(e) => HelperAnswer::BadRequest(format!("bad request: {e}")),
            Ok(req) => match work(req) {
                Ok(done) => HelperAnswer::Done(done),
                Err(HelperError::BadRequest(m)) => HelperAnswer::BadRequest(m),
                Err(HelperError::Failed(m)) => HelperAnswer::Failed(m),
            },
        },
    };
    let ok = matches!(answer, HelperAnswer::Done(_));
    let text = serde_json::to_vec(&answer).unwrap_or_default();
    let _ = std::io::stdout().write_all(&text);
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A helper socket answering `answer` to whatever it is sent (after reading it whole).
    async fn fake_helper(dir: &Path, answer: &'static [u8]) -> std::path::PathBuf {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let path = dir.join("helper.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            s.read_to_end(&mut req).await.unwrap();
            s.write_all(answer).await.unwrap();
        });
        path
    }

    #[tokio::test]
    async fn an_absent_helper_is_named_with_what_to_check() {
        let d = tempfile_dir();
        let err = ask::<_, u64>(&d.join("none.sock"), &1u64, Duration::from_secs(5))
            .await
            .unwrap_err();
        let m = err.to_string();
        assert!(matches!(err, HelperError::Failed(_)));
        assert!(
            m.contains("cannot reach the root helper") && m.contains("none.sock"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn answers_are_told_apart() {
        let d = tempfile_dir();
        let done = fake_helper(&d, br#"{"Done":7}"#).await;
        assert_eq!(
            ask::<_, u64>(&done, &1u64, Duration::from_secs(5))
                .await
                .unwrap(),
            7
        );
        std::fs::remove_file(&done).unwrap();
        let refused = fake_helper(&d, br#"{"BadRequest":"no"}"#).await;
        assert!(matches!(
            ask::<_, u64>(&refused, &1u64, Duration::from_secs(5)).await,
            Err(HelperError::BadRequest(m)) if m == "no"
        ));
        std::fs::remove_file(&refused).unwrap();
        let garbage = fake_helper(&d, b"<html>").await;
        let err = ask::<_, u64>(&garbage, &1u64, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not parse"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_helper_is_an_error_in_time() {
        let d = tempfile_dir();
        let path = d.join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let _hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let started = std::time::Instant::now();
        let err = ask::<_, u64>(&path, &1u64, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not answer"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A fresh directory under the system's temp dir (this crate has no tempfile dependency).
    pub(crate) fn tempfile_dir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "deskd-agent-helper-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
