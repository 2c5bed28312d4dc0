//! For the noVNC test: headless Chromium driven over the DevTools protocol in pipe mode
//! (`--remote-debugging-pipe`: JSON messages ended by NUL, commands on its fd 3, answers and
//! events on its fd 4), and a static HTTP server for Debian's noVNC files and the test's page (ES
//! modules do not load from `file://`).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where Debian's `novnc` package puts noVNC.
pub const NOVNC_DIR: &str = "/usr/share/novnc";

pub struct Chromium {
    child: Child,
    to: File,
    from: BufReader<File>,
    next_id: u64,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
}

impl Chromium {
    /// Starts headless Chromium, or None (printing why) without it.
    pub fn start() -> Option<Chromium> {
        if Command::new("chromium")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!("\n*** SKIPPED noVNC browser test: chromium is not installed (apt-get install -y chromium) ***\n");
            return None;
        }
        let profile = tempfile::tempdir().unwrap();
        let (cmd_r, cmd_w) = pipe();
        let (out_r, out_w) = pipe();
        let (a, b) = (cmd_r.as_raw_fd(), out_w.as_raw_fd());
        // dup2 onto 3 and 4 must not overwrite the other source first.
        assert!(a > 4 && b > 4, "pipe fds collide with 3/4");
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-pipe",
            "--window-size=800,600",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: dup2 is async-signal-safe; it hands the child the two pipe ends as fds 3
        // and 4 without CLOEXEC.
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::dup2(a, 3) < 0 || nix::libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop((cmd_r, out_w));
        Some(Chromium {
            child,
            to: File::from(cmd_w),
            from: BufReader::new(File::from(out_r)),
            next_id: 1,
            session: None,
            _profile: profile,
        })
    }

    /// Sends one command and waits for its answer (events on the way are dropped).
    fn call(&mut self, method: &str, params: Value, in_page: bool) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if in_page {
            msg["sessionId"] = json!(self.session.clone().expect("a page is open"));
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.from.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "chromium closed its DevTools pipe");
            buf.pop();
            let v: Value = serde_json::from_slice(&buf).unwrap();
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in a new page and attaches to it.
    pub fn open(&mut self, url: &str) {
        let t = self.call("Target.createTarget", json!({"url": url}), false);
        let a = self.call(
            "Target.attachToTarget",
            json!({"targetId": t["targetId"], "flatten": true}),
            false,
        );
        self.session = a["sessionId"].as_str().map(str::to_string);
    }

    /// The value of a JavaScript expression in the page.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
            true,
        );
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until `done` holds for its value (or panics after `limit`).
    pub fn wait_for(
        &mut self,
        expr: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(expr);
            if done(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {expr}: last {v}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The test's page: noVNC's RFB object on the WebSocket `ws` with password `pw` (from the query),
/// its progress in `window.vnc`.
const PAGE: &str = r#"<!doctype html><html><body style="margin:0">
<div id="screen" style="width:640px;height:480px"></div>
<script type="module">
import RFB from './core/rfb.js';
const q = new URLSearchParams(location.search);
window.vnc = { state: 'connecting' };
const rfb = new RFB(document.getElementById('screen'), q.get('ws'),
    { credentials: { username: 'user', password: q.get('pw'), target: '' }, shared: true });
rfb.addEventListener('connect', () => { window.vnc.state = 'connected'; });
rfb.addEventListener('disconnect', e => { window.vnc.state = 'disconnected'; window.vnc.clean = e.detail.clean; });
rfb.addEventListener('securityfailure', e => { window.vnc.security = e.detail.status; window.vnc.reason = e.detail.reason; });
</script></body></html>"#;

/// Serves the page at `/page.html` and noVNC's files from [`NOVNC_DIR`] on loopback; returns its
/// address.
pub async fn serve_novnc() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req);
                let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                let path = path.split('?').next().unwrap_or("/").to_string();
                let (status, ctype, body) = file_for(&path);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&body).await;
            });
        }
    });
    addr
}

fn file_for(path: &str) -> (&'static str, &'static str, Vec<u8>) {
    if path == "/page.html" {
        return ("200 OK", "text/html", PAGE.as_bytes().to_vec());
    }
    if path.contains("..") {
        return ("404 Not Found", "text/plain", Vec::new());
    }
    let file: PathBuf = Path::new(NOVNC_DIR).join(path.trim_start_matches('/'));
    let ctype = match file.extension().and_then(|e| e.to_str()) {
        Some("js") => "text/javascript",
        Some("html") => "text/html",
        Some("css") => "text/css",
        _ => "application/octet-stream",
    };
    match std::fs::read(&file) {
        Ok(b) => ("200 OK", ctype, b),
        Err(_) => ("404 Not Found", "text/plain", Vec::new()),
    }
}
