//! A real `deskd serve` process on a temporary socket and data directory, and a small blocking
//! HTTP/1.1 client for its Unix socket (raw, so tests can also send malformed requests).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Rate limits high enough that tests which do not test them never meet them.
pub const RELAXED: &str =
    "[rate_limit]\nrequests_per_second = 100000.0\nburst = 100000\nbad_key_burst = 100000\n";

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub data: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub key: String,
    /// Extra arguments of `deskd serve` (e.g. `--listen`).
    pub extra_args: Vec<String>,
    child: Option<Child>,
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and, for errors, the section 0 error body; returns the JSON.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        if status >= 400 {
            assert!(v["error"].is_string(), "no error message: {v}");
            assert!(v["request_id"].is_string(), "no request_id: {v}");
            assert_eq!(
                Some(v["request_id"].as_str().unwrap()),
                self.header("x-request-id")
            );
        }
        v
    }

    /// The error message of an error answer.
    #[track_caller]
    pub fn error(&self, status: u16) -> String {
        self.expect(status)["error"].as_str().unwrap().to_string()
    }
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with_config(RELAXED)
    }

    pub fn start_with_config(config: &str) -> Daemon {
        Daemon::start_with_args(config, &[])
    }

    pub fn start_with_args(config: &str, extra_args: &[String]) -> Daemon {
        Daemon::start_in(config, extra_args, None)
    }

    /// A daemon whose data directory is `data` (e.g. on a filesystem of the test's making).
    pub fn start_with_data_dir(config: &str, data: PathBuf) -> Daemon {
        Daemon::start_in(config, &[], Some(data))
    }

    fn start_in(config: &str, extra_args: &[String], data: Option<PathBuf>) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("run/deskd.sock");
        let data = data.unwrap_or_else(|| dir.path().join("data"));
        let config_path = dir.path().join("deskd.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.path().join("deskd.log");
        let mut d = Daemon {
            socket,
            data,
            config: config_path,
            log,
            key: String::new(),
            extra_args: extra_args.to_vec(),
            child: None,
            dir,
        };
        d.spawn();
        d.key = std::fs::read_to_string(d.data.join("initial-api-key"))
            .expect("the first start writes initial-api-key")
            .trim()
            .to_string();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_deskd"))
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--config")
            .arg(&self.config)
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            // A root daemon would move the test's own processes into cgroup leaves of its
            // group (VMM confinement, the default): these daemons start no VM.
            .env("DESKD_CONFINE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn deskd serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("deskd serve exited with {status}: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM (or SIGKILL when `hard`) and starts it again on the same
    /// socket and data directory.
    pub fn restart(&mut self, hard: bool) {
        self.stop(hard);
        self.spawn();
    }

    pub fn stop(&mut self, hard: bool) {
        if let Some(mut child) = self.child.take() {
            let sig = if hard { libc::SIGKILL } else { libc::SIGTERM };
            // SAFETY: signals our own child process by pid; no memory is involved.
            unsafe {
                libc::kill(child.id() as i32, sig);
            }
            let status = child.wait().expect("wait for deskd");
            if !hard {
                assert!(status.success(), "deskd did not exit cleanly: {status}");
            }
        }
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Sends `signal` to the daemon and waits at most `limit` for it to exit (then kills it and
    /// panics); its exit status.
    pub fn signal_and_wait(&mut self, signal: i32, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the daemon runs");
        // SAFETY: signals our own child process by pid; no memory is involved.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait for deskd") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "deskd did not exit within {limit:?} of signal {signal}: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again (after [`Daemon::signal_and_wait`]) on the same socket and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the daemon still runs");
        self.spawn();
    }

    /// Whether the daemon process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Runs `deskd <args>` (e.g. `keys create`) against this daemon's data directory.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_deskd"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .output()
            .expect("run deskd")
    }

    pub fn get(&self, path: &str) -> Resp {
        self.send("GET", path, Some(&self.key), None)
    }

    pub fn post(&self, path: &str, body: Value) -> Resp {
        self.send("POST", path, Some(&self.key), Some(&body.to_string()))
    }

    pub fn patch(&self, path: &str, body: Value) -> Resp {
        self.send("PATCH", path, Some(&self.key), Some(&body.to_string()))
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, Some(&self.key), None)
    }

    /// A JSON request with `key` (if any) and `body` (if any) as application/json.
    pub fn send(&self, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> Resp {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: deskd\r\nConnection: close\r\n");
        if let Some(k) = key {
            head.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        self.raw(&bytes)
    }

    /// Sends raw bytes and parses the answer.
    pub fn raw(&self, request: &[u8]) -> Resp {
        raw_request(&self.socket, request)
    }

    /// Creates a workspace and returns its id.
    pub fn workspace(&self, name: &str) -> String {
        let v = self
            .post("/api/workspaces", serde_json::json!({ "name": name }))
            .expect(201);
        v["id"].as_str().unwrap().to_string()
    }

    /// Creates a computer and returns its JSON.
    pub fn computer(&self, workspace: &str, name: &str) -> Value {
        self.post(
            "/api/computers",
            serde_json::json!({ "workspace_id": workspace, "name": name }),
        )
        .expect(201)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn raw_request(socket: &Path, request: &[u8]) -> Resp {
    let mut stream = UnixStream::connect(socket).expect("connect to the daemon");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream.write_all(request).expect("send request");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).expect("read answer");
    parse_response(&buf)
}

/// Sends raw bytes to a TCP listener (`deskd serve --listen`) and parses the answer.
pub fn raw_tcp_request(addr: &str, request: &[u8]) -> Resp {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the daemon over TCP");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream.write_all(request).expect("send request");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).expect("read answer");
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size");
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..end]).unwrap().trim(), 16)
                .expect("chunk size hex");
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[end + 2 + size + 2..];
        }
        body = out;
    }
    Resp {
        status,
        headers,
        body,
    }
}
