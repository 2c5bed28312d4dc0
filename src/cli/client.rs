//! A blocking HTTP client for the daemon's Unix socket (hyperlocal over hyper 1): one request at
//! a time, errors turned into [`CliError`]s that carry the daemon's own message.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client as HttpClient;
use hyperlocal::{UnixClientExt, UnixConnector};
use serde_json::Value;

use super::error::CliError;
use super::key::Key;

/// One answer of the daemon.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

pub struct Client {
    socket: PathBuf,
    key: Key,
    http: HttpClient<UnixConnector, Full<Bytes>>,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(socket: &Path, key: Key) -> Result<Client, CliError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
        // The pool spawns connection tasks: build it inside the runtime.
        let http = {
            let _enter = runtime.enter();
            HttpClient::unix()
        };
        Ok(Client {
            socket: socket.to_path_buf(),
            key,
            http,
            runtime,
        })
    }

    /// Sends one request (`path` starts with `/api/`); any status comes back as a [`Reply`].
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, CliError> {
        let uri: hyper::Uri = hyperlocal::Uri::new(&self.socket, path).into();
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            // Otherwise the Host header would be the hex-encoded socket path.
            .header("host", "deskd")
            .header("authorization", format!("Bearer {}", self.key.secret));
        let bytes = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| CliError::Usage(format!("cannot build a request for {path}: {e}")))?;
        self.runtime.block_on(async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| self.unreachable(&e))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| {
                    CliError::Unreachable(format!(
                        "the daemon on {} broke off its answer: {e}",
                        self.socket.display()
                    ))
                })?
                .to_bytes();
            Ok(Reply { status, body })
        })
    }

    /// Sends one request and returns the JSON of a 2xx answer; any other answer is an error
    /// with the daemon's message.
    pub fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let reply = self.ok(method, path, body)?;
        serde_json::from_slice(&reply.body).map_err(|e| {
            CliError::Failed(format!(
                "the daemon's answer to {path} is not JSON ({e}): {}",
                String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)])
            ))
        })
    }

    /// Sends one request and returns a 2xx answer, or the daemon's error.
    pub fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply, CliError> {
        let reply = self.call(method, path, body)?;
        if (200..300).contains(&reply.status) {
            return Ok(reply);
        }
        Err(self.daemon_error(&reply))
    }

    fn daemon_error(&self, reply: &Reply) -> CliError {
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let mut message = match body.get("error").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => format!(
                "the daemon answered HTTP {} without an error message: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)])
            ),
        };
        // "Desktop instance not available" says more with the computer's state.
        if let Some(status) = body.get("status").and_then(Value::as_str) {
            message.push_str(&format!(" (the computer's status is {status}"));
            if let Some(reason) = body.get("status_reason").and_then(Value::as_str) {
                message.push_str(&format!(": {reason}"));
            }
            message.push(')');
        }
        if let Some(reason) = body.get("reason").and_then(Value::as_str) {
            message.push_str(&format!(" ({reason})"));
        }
        if reply.status == 401 {
            message.push_str(&format!(" (the key came from {})", self.key.source));
        }
        CliError::Daemon {
            status: reply.status,
            message,
        }
    }

    fn unreachable(&self, e: &hyper_util::client::legacy::Error) -> CliError {
        let socket = self.socket.display();
        let io = io_cause(e);
        let message = match io.map(std::io::Error::kind) {
            Some(std::io::ErrorKind::NotFound) => format!(
                "cannot reach the daemon: no socket at {socket}. Is `deskd serve` running? (--socket or $DESKD_SOCKET names another)"
            ),
            Some(std::io::ErrorKind::ConnectionRefused) => format!(
                "cannot reach the daemon: nothing listens on {socket} (a stale socket?). Is `deskd serve` running?"
            ),
            Some(std::io::ErrorKind::PermissionDenied) => format!(
                "cannot reach the daemon: permission denied on {socket}. Run as root or as a member of the socket's group."
            ),
            _ if e.is_connect() => format!("cannot reach the daemon on {socket}: {}", chain(e)),
            _ => format!("the daemon on {socket} did not answer: {}", chain(e)),
        };
        CliError::Unreachable(message)
    }
}

/// The I/O error at the root of a client error, if there is one.
fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// An error and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}
