//! The one client of the guest agents: every request the daemon makes of an agent (actions, the
//! readiness probe, the desktop proxy) and every stream it opens to one (the WebSocket relay) goes
//! through [`AgentClient`]. The agent is reached through its VM's hybrid vsock socket
//! ([`crate::vmm::vsock_client`]) and speaks HTTP/1.1.
//!
//! - **Connections are kept and reused**: after a complete answer the connection goes back to a
//!   small idle pool per agent, so a call costs one HTTP exchange, not a vsock hand-shake plus a
//!   new connection (the rig showed 1.43x the direct cost for a screenshot without this). A request
//!   that a pooled connection could not even send is sent again on a fresh one; a request that may
//!   have reached the agent is never repeated.
//! - **Everything under one deadline**: connecting (with its short retry), sending and reading
//!   the whole answer share the caller's timeout; nothing waits on a guest without one.
//! - **Bounded memory**: each answer has a size cap chosen by its caller ([`limits`]), and all
//!   answers being read at once share one budget ([`IN_FLIGHT_BUDGET`]): a guest can make the
//!   daemon hold at most a cap's worth, and all guests together at most the budget.
//!
//! Failure classes matter to API clients: could not connect (the VM is down or the agent not
//! listening) is [`AgentError::Unreachable`] (HTTP 503); no answer in time is
//! [`AgentError::TimedOut`] (HTTP 504); an answer over its cap is [`AgentError::TooLarge`] (502).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::vmm::vsock_client;
use deskd_agent::protocol::VSOCK_PORT;

/// Size caps of agent answers, by kind.
pub mod limits {
    /// `/health`: a few hundred bytes of JSON.
    pub const HEALTH: usize = 64 << 10;
    /// JSON answers: bash and exec output is capped by the agent at 10 MiB of text, which JSON
    /// escaping can grow.
    pub const JSON: usize = 32 << 20;
    /// A screenshot: a 4K PNG of a busy screen is about 25 MiB.
    pub const SCREENSHOT: usize = 48 << 20;
}

/// All agent answers being read at once may hold at most this many bytes.
pub const IN_FLIGHT_BUDGET: usize = 256 << 20;
/// The budget is counted in units of this many bytes.
const BUDGET_UNIT: usize = 1024;
/// Idle connections kept per agent.
const MAX_IDLE_PER_AGENT: usize = 4;
/// An idle connection older than this is dropped instead of reused.
const IDLE_LIFETIME: Duration = Duration::from_secs(60);
/// How long a refused connection is retried (within the caller's deadline). A guest under load,
/// or an agent restarting, refuses now and then; nothing has been sent at that point, so trying
/// again is safe for every request.
const CONNECT_RETRY_WINDOW: Duration = Duration::from_secs(3);
/// First pause between connection attempts; doubled after each failure.
const CONNECT_FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Why the agent gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Connecting or talking failed: the VM is not running, the agent does not listen (yet), or
    /// the connection broke.
    #[error("Could not reach the desktop. Try again in a moment. ({0})")]
    Unreachable(String),
    /// The agent took longer than the limit for this call.
    #[error("The desktop did not answer within {0} s.")]
    TimedOut(u64),
    /// The answer was larger than this kind of answer may be.
    #[error("The desktop's answer is larger than the {0} bytes such an answer may have.")]
    TooLarge(usize),
}

/// One request to an agent.
#[derive(Debug, Clone)]
pub struct AgentCall {
    pub method: Method,
    /// Path and query, e.g. `/screenshot?format=jpeg`.
    pub path: String,
    /// A JSON body, if any.
    pub body: Option<Bytes>,
    /// Deadline for the whole exchange.
    pub timeout: Duration,
    /// Largest answer body accepted ([`limits`]).
    pub max_answer: usize,
}

impl AgentCall {
    pub fn get(path: impl Into<String>, timeout: Duration, max_answer: usize) -> AgentCall {
        AgentCall {
            method: Method::GET,
            path: path.into(),
            body: None,
            timeout,
            max_answer,
        }
    }

    pub fn post_json(path: impl Into<String>, body: Bytes, timeout: Duration) -> AgentCall {
        AgentCall {
            method: Method::POST,
            path: path.into(),
            body: Some(body),
            timeout,
            max_answer: limits::JSON,
        }
    }
}

/// The agent's `/stream/start` with `req`: one call for `POST /computers/{id}/stream/start` and
/// a template's autostart stream, so both start the encoder the same way.
pub fn stream_start_call(
    req: &deskd_agent::protocol::stream::StreamStartRequest,
    timeout: Duration,
) -> Result<AgentCall, serde_json::Error> {
    let body = serde_json::to_vec(req)?;
    Ok(AgentCall::post_json(
        deskd_agent::protocol::stream::paths::START,
        Bytes::from(body),
        timeout,
    ))
}

/// One answer from the agent. It holds its share of the in-flight budget until dropped.
#[derive(Debug)]
pub struct AgentReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

impl AgentReply {
    /// An answer that holds no share of the budget (for answers made up in tests).
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes) -> AgentReply {
        AgentReply {
            status,
            headers,
            body,
            _budget: None,
        }
    }
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// Pooled, deadline-bound, size-capped HTTP over hybrid vsock to every VM's agent.
pub struct AgentClient {
    idle: Mutex<HashMap<PathBuf, Vec<Idle>>>,
    budget: Arc<Semaphore>,
    budget_units: usize,
}

impl Default for AgentClient {
    fn default() -> Self {
        AgentClient::new(IN_FLIGHT_BUDGET)
    }
}

impl AgentClient {
    /// A client whose answers in flight share `budget_bytes`.
    pub fn new(budget_bytes: usize) -> AgentClient {
        let budget_units = (budget_bytes / BUDGET_UNIT).max(1);
        AgentClient {
            idle: Mutex::new(HashMap::new()),
            budget: Arc::new(Semaphore::new(budget_units)),
            budget_units,
        }
    }

    /// Sends `call` to the agent behind `socket` and reads the whole answer, all within
    /// `call.timeout`.
    pub async fn request(&self, socket: &Path, call: AgentCall) -> Result<AgentReply, AgentError> {
        let timeout = call.timeout;
        tokio::time::timeout(timeout, self.exchange(socket, call))
            .await
            .map_err(|_| AgentError::TimedOut(timeout.as_secs()))?
    }

    /// Opens a raw stream to the agent's port (for the WebSocket relay), within `timeout`.
    pub async fn open_stream(
        &self,
        socket: &Path,
        timeout: Duration,
    ) -> Result<UnixStream, AgentError> {
        tokio::time::timeout(timeout, connect_retrying(socket))
            .await
            .map_err(|_| AgentError::TimedOut(timeout.as_secs()))?
    }

    /// Bytes of answers being read (or held by their callers) right now, to the budget's unit.
    pub fn bytes_in_flight(&self) -> usize {
        self.budget_units
            .saturating_sub(self.budget.available_permits())
            * BUDGET_UNIT
    }

    /// Drops the idle connections to an agent whose VM is gone.
    pub fn forget(&self, socket: &Path) {
        self.idle_pool().remove(socket);
    }

    fn idle_pool(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live idle connection to `socket`, if one is kept.
    fn take_idle(&self, socket: &Path) -> Option<SendRequest<Full<Bytes>>> {
        let mut pool = self.idle_pool();
        let list = pool.get_mut(socket)?;
        while let Some(idle) = list.pop() {
            if idle.since.elapsed() < IDLE_LIFETIME && idle.sender.is_ready() {
                return Some(idle.sender);
            }
        }
        None
    }

    fn put_idle(&self, socket: &Path, sender: SendRequest<Full<Bytes>>) {
        if !sender.is_ready() {
            return;
        }
        let mut pool = self.idle_pool();
        let list = pool.entry(socket.to_path_buf()).or_default();
        list.retain(|i| i.since.elapsed() < IDLE_LIFETIME && !i.sender.is_closed());
        if list.len() < MAX_IDLE_PER_AGENT {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn exchange(&self, socket: &Path, call: AgentCall) -> Result<AgentReply, AgentError> {
        let mut request = build_request(&call)?;
        // A pooled connection first; if it could not even take the request (closed meanwhile),
        // the same request goes out on a fresh connection.
        let (mut sender, answer) = loop {
            match self.take_idle(socket) {
                Some(mut sender) => match sender.try_send_request(request).await {
                    Ok(answer) => break (sender, answer),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => request = unsent,
                        None => {
                            return Err(AgentError::Unreachable(format!(
                                "the agent dropped the request: {}",
                                e.error()
                            )))
                        }
                    },
                },
                None => {
                    let mut sender = handshake(connect_retrying(socket).await?).await?;
                    let answer = sender.send_request(request).await.map_err(|e| {
                        AgentError::Unreachable(format!("the agent dropped the request: {e}"))
                    })?;
                    break (sender, answer);
                }
            }
        };
        let (parts, mut body) = answer.into_parts();
        if let Some(len) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
        {
            if len > call.max_answer {
                return Err(AgentError::TooLarge(call.max_answer));
            }
        }
        let mut collected = Vec::new();
        let mut budget: Option<OwnedSemaphorePermit> = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                AgentError::Unreachable(format!("the agent's answer could not be read: {e}"))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if collected.len() + data.len() > call.max_answer {
                return Err(AgentError::TooLarge(call.max_answer));
            }
            let units = u32::try_from(data.len().div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX);
            let permit = self
                .budget
                .clone()
                .acquire_many_owned(units)
                .await
                .map_err(|_| AgentError::Unreachable("the daemon is shutting down".into()))?;
            match budget.as_mut() {
                Some(held) => held.merge(permit),
                None => budget = Some(permit),
            }
            collected.extend_from_slice(&data);
        }
        // The connection is reusable once hyper has seen the end of the answer; it says so at
        // once (or the agent asked to close it, and it is dropped).
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(100), sender.ready()).await {
            self.put_idle(socket, sender);
        }
        Ok(AgentReply {
            status: parts.status,
            headers: parts.headers,
            body: Bytes::from(collected),
            _budget: budget,
        })
    }
}

fn build_request(call: &AgentCall) -> Result<Request<Full<Bytes>>, AgentError> {
    let mut req = Request::builder()
        .method(call.method.clone())
        .uri(&call.path)
        .header(header::HOST, "deskd-agent");
    if call.body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    req.body(Full::new(call.body.clone().unwrap_or_default()))
        .map_err(|e| AgentError::Unreachable(format!("bad request to the agent: {e}")))
}

async fn handshake(stream: UnixStream) -> Result<SendRequest<Full<Bytes>>, AgentError> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| AgentError::Unreachable(format!("HTTP hand-shake failed: {e}")))?;
    // The connection task ends when its sender (pooled or not) is dropped or the agent closes it.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A vsock stream to the agent, tried again for up to [`CONNECT_RETRY_WINDOW`] while the VM's
/// socket exists (a missing socket means the VM is not running: no point waiting).
pub(crate) async fn connect_retrying(socket: &Path) -> Result<UnixStream, AgentError> {
    let started = tokio::time::Instant::now();
    let mut backoff = CONNECT_FIRST_BACKOFF;
    loop {
        match vsock_client::connect(socket, VSOCK_PORT).await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                let give_up =
                    !socket.exists() || started.elapsed() + backoff > CONNECT_RETRY_WINDOW;
                if give_up {
                    return Err(AgentError::Unreachable(e.to_string()));
                }
                tracing::debug!("agent connection failed, trying again in {backoff:?}: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(800));
            }
        }
    }
}

/// A stand-in for a VM, for the tests of this client and of its users.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A stand-in for a VM: its hybrid vsock socket, behind which a real hyper HTTP/1.1 server
    /// answers like the agent. Counts the connections it accepted.
    pub struct FakeVm {
        pub socket: PathBuf,
        pub connections: Arc<AtomicUsize>,
        _dir: tempfile::TempDir,
    }

    pub fn fake_vm(answer: fn(&str) -> (u16, Vec<u8>)) -> FakeVm {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(stream);
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    assert_eq!(line, "CONNECT 1024\n");
                    let mut stream = reader.into_inner();
                    stream.write_all(b"OK 1073741824\n").await.unwrap();
                    let service = hyper::service::service_fn(move |req: Request<_>| async move {
                        let (status, body) = answer(req.uri().path());
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeVm {
            socket,
            connections,
            _dir: dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::fake_vm;
    use super::*;
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    fn agent(path: &str) -> (u16, Vec<u8>) {
        match path {
            "/big" => (200, vec![b'x'; 2 << 20]),
            "/slow" => {
                std::thread::sleep(Duration::from_millis(500));
                (200, b"late".to_vec())
            }
            "/fail" => (503, br#"{"error":"no display"}"#.to_vec()),
            _ => (200, br#"{"ok":true}"#.to_vec()),
        }
    }

    fn get(path: &str) -> AgentCall {
        AgentCall::get(path, Duration::from_secs(5), limits::JSON)
    }

    #[tokio::test]
    async fn answers_come_back_and_connections_are_reused() {
        let vm = fake_vm(agent);
        let client = AgentClient::default();
        for _ in 0..5 {
            let reply = client.request(&vm.socket, get("/health")).await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(&reply.body[..], br#"{"ok":true}"#);
        }
        let posted = client
            .request(
                &vm.socket,
                AgentCall::post_json("/bash", Bytes::from_static(b"{}"), Duration::from_secs(5)),
            )
            .await
            .unwrap();
        assert_eq!(posted.status, StatusCode::OK);
        // An error answer is an answer, and the connection stays usable.
        let failed = client.request(&vm.socket, get("/fail")).await.unwrap();
        assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            vm.connections.load(Ordering::SeqCst),
            1,
            "one connection for all calls"
        );
    }

    #[tokio::test]
    async fn concurrent_calls_each_get_a_connection_and_the_pool_stays_small() {
        let vm = fake_vm(agent);
        let client = Arc::new(AgentClient::default());
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (client, socket) = (client.clone(), vm.socket.clone());
                tokio::spawn(async move { client.request(&socket, get("/slow")).await })
            })
            .collect();
        for call in calls {
            assert_eq!(&call.await.unwrap().unwrap().body[..], b"late");
        }
        assert!(client.idle_pool()[&vm.socket].len() <= MAX_IDLE_PER_AGENT);
    }

    #[tokio::test]
    async fn an_answer_over_its_cap_is_refused() {
        let vm = fake_vm(agent);
        let client = AgentClient::default();
        let err = client
            .request(
                &vm.socket,
                AgentCall::get("/big", Duration::from_secs(5), 1 << 20),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, AgentError::TooLarge(n) if n == 1 << 20),
            "{err}"
        );
        // Under a larger cap the same answer is fine.
        let reply = client
            .request(
                &vm.socket,
                AgentCall::get("/big", Duration::from_secs(5), 4 << 20),
            )
            .await
            .unwrap();
        assert_eq!(reply.body.len(), 2 << 20);
    }

    #[tokio::test]
    async fn answers_in_flight_share_one_budget() {
        let vm = fake_vm(agent);
        // Room for one 2 MiB answer at a time.
        let client = Arc::new(AgentClient::new(3 << 20));
        let first = client
            .request(
                &vm.socket,
                AgentCall::get("/big", Duration::from_secs(5), 4 << 20),
            )
            .await
            .unwrap();
        // While the first answer is held, a second cannot be read in full: it waits, then times
        // out instead of growing the daemon's memory.
        let err = client
            .request(
                &vm.socket,
                AgentCall::get("/big", Duration::from_millis(500), 4 << 20),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::TimedOut(_)), "{err}");
        drop(first);
        assert!(client
            .request(
                &vm.socket,
                AgentCall::get("/big", Duration::from_secs(5), 4 << 20)
            )
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_pooled_connection_the_agent_closed_is_replaced() {
        let vm = fake_vm(agent);
        let client = AgentClient::default();
        client.request(&vm.socket, get("/health")).await.unwrap();
        // The agent restarts: every connection it had is gone. Simulated by closing the pooled
        // connection's far end through a new fake VM on the same path.
        drop(vm);
        let vm2 = fake_vm(agent);
        let err_or_ok = client.request(&vm2.socket, get("/health")).await;
        assert!(err_or_ok.is_ok(), "{err_or_ok:?}");
    }

    #[tokio::test]
    async fn no_socket_is_unreachable_and_a_silent_agent_times_out() {
        let d = tempfile::tempdir().unwrap();
        let client = AgentClient::default();
        let err = client
            .request(&d.path().join("none"), get("/health"))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Unreachable(_)), "{err}");

        // Accepts and says OK, then never answers the HTTP request.
        let sock = d.path().join("silent.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let _silent = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 13];
            tokio::io::AsyncReadExt::read_exact(&mut s, &mut b)
                .await
                .unwrap();
            s.write_all(b"OK 5\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let started = Instant::now();
        let err = client
            .request(
                &sock,
                AgentCall::get("/health", Duration::from_millis(300), limits::HEALTH),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::TimedOut(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
