//! The daemon's client of a VMM's control socket: typed requests, typed answers, and one deadline
//! over the whole exchange (connect, write, read), so a VMM that is stuck, or a socket whose
//! backlog is full, never holds the caller.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::protocol::{ControlRequest, ControlResponse};
use super::MAX_LINE;

/// Why a control request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlClientError {
    #[error("cannot reach the VMM's control socket {path}: {source} (is the VM running?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the VMM's control socket {path} failed: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the VMM did not answer on {path} within {secs} s")]
    TimedOut { path: PathBuf, secs: u64 },
    #[error("the VMM closed its control socket {path} without answering")]
    Closed { path: PathBuf },
    #[error("the VMM's answer on {path} is not a control answer: {detail}")]
    BadAnswer { path: PathBuf, detail: String },
    #[error("the VMM refused the request: {0}")]
    Refused(String),
}

/// One VMM's control socket.
#[derive(Debug, Clone)]
pub struct ControlClient {
    path: PathBuf,
}

impl ControlClient {
    pub fn new(path: &Path) -> ControlClient {
        ControlClient {
            path: path.to_path_buf(),
        }
    }

    /// Sends `request` on a fresh connection and reads its answer, all within `timeout`. An answer
    /// with `ok: false` is [`ControlClientError::Refused`].
    pub async fn request(
        &self,
        request: &ControlRequest,
        timeout: Duration,
    ) -> Result<ControlResponse, ControlClientError> {
        match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(Ok(answer)) if answer.ok => Ok(answer),
            Ok(Ok(answer)) => Err(ControlClientError::Refused(
                answer.error.unwrap_or_else(|| "no reason given".into()),
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ControlClientError::TimedOut {
                path: self.path.clone(),
                secs: timeout.as_secs(),
            }),
        }
    }

    async fn exchange(
        &self,
        request: &ControlRequest,
    ) -> Result<ControlResponse, ControlClientError> {
        let io = |source| ControlClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.path).await.map_err(|source| {
            ControlClientError::Connect {
                path: self.path.clone(),
                source,
            }
        })?;
        let mut line = serde_json::to_vec(request).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        stream.write_all(&line).await.map_err(io)?;
        let mut answer = Vec::new();
        BufReader::new(stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut answer)
            .await
            .map_err(io)?;
        if answer.is_empty() {
            return Err(ControlClientError::Closed {
                path: self.path.clone(),
            });
        }
        serde_json::from_slice(&answer).map_err(|e| ControlClientError::BadAnswer {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::protocol::{RunState, VmStatus};
    use super::super::{ControlServer, Controllable};
    use super::*;
    use std::sync::Arc;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    struct Fixed;
    impl Controllable for Fixed {
        fn status(&self) -> VmStatus {
            VmStatus {
                state: RunState::Paused,
                vcpus: 2,
                memory_mib: 128,
                uptime_ms: 5,
                pid: 42,
            }
        }
        fn pause(&self) -> Result<(), String> {
            Err("cannot pause".into())
        }
        fn resume(&self) {}
        fn snapshot(&self, dir: &Path) -> Result<super::super::SnapshotDone, String> {
            Err(format!("not paused, so no snapshot to {}", dir.display()))
        }
        fn set_net_limit(
            &self,
            _: usize,
            _: crate::vmm::config::NetRateLimit,
        ) -> Result<(), String> {
            Err("no network card".into())
        }
        fn grow_disk(&self, _: usize, size_bytes: u64) -> Result<u64, String> {
            Err(format!("the disk is read-only, so not {size_bytes} bytes"))
        }
        fn shutdown(&self) {}
        fn force_stop(&self) {}
    }

    #[tokio::test]
    async fn talks_to_the_real_server() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("control.sock");
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let _server = ControlServer::start(&path, Arc::new(Fixed), wake).unwrap();
        let client = ControlClient::new(&path);
        let t = Duration::from_secs(5);
        let status = client.request(&ControlRequest::STATUS, t).await.unwrap();
        assert_eq!(status.status.unwrap().state, RunState::Paused);
        let err = client.request(&ControlRequest::PAUSE, t).await.unwrap_err();
        assert!(
            matches!(err, ControlClientError::Refused(ref e) if e == "cannot pause"),
            "{err}"
        );
        assert!(client.request(&ControlRequest::RESUME, t).await.is_ok());
        let snap = ControlRequest::Snapshot {
            dir: d.path().join("snap"),
        };
        let err = client.request(&snap, t).await.unwrap_err();
        assert!(err.to_string().contains("not paused"), "{err}");
        let grow = ControlRequest::GrowDisk {
            disk: 0,
            size_bytes: 4096,
        };
        let err = client.request(&grow, t).await.unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_or_absent_vmm_is_an_error_in_time() {
        let d = tempfile::tempdir().unwrap();
        let missing = ControlClient::new(&d.path().join("none.sock"));
        let err = missing
            .request(&ControlRequest::STATUS, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ControlClientError::Connect { .. }), "{err}");
        // Accepts and never answers.
        let path = d.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let _hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let started = std::time::Instant::now();
        let err = ControlClient::new(&path)
            .request(&ControlRequest::STATUS, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, ControlClientError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
