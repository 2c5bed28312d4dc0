//! API throughput and latency over the Unix socket: requests per second, p50 and p99 of
//! `GET /api/computers/{id}` and `POST /api/workspaces`, each compared with a baseline from the
//! same run (`GET /api/no-such-route`: auth, routing and an error body, no state work).
//!
//! Runs a real `deskd serve` (the bench profile's binary) on a temporary socket and data dir.
//! `cargo bench --bench api` (env: DESKD_BENCH_REQUESTS per scenario, DESKD_BENCH_CONNECTIONS).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyperlocal::UnixConnector;
use tower_service::Service;

struct Daemon {
    child: Child,
    socket: PathBuf,
    key: String,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon() -> Daemon {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("deskd.sock");
    let data = dir.path().join("data");
    let config = dir.path().join("deskd.toml");
    // The bench measures the API, not the rate limiter's refusals.
    std::fs::write(
        &config,
        "[rate_limit]\nrequests_per_second = 1000000.0\nburst = 1000000\n[quotas]\nmax_computers = 100000\nvcpu_commit_ratio = 100000.0\nram_commit_ratio = 100000.0\n",
    )
    .expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_deskd"))
        .args(["serve", "--socket"])
        .arg(&socket)
        .arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        // No VM starts here; confinement (the default for root) would rearrange cgroups.
        .env("DESKD_CONFINE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn deskd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "deskd did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let key = std::fs::read_to_string(data.join("initial-api-key"))
        .expect("key file")
        .trim()
        .to_string();
    Daemon {
        child,
        socket,
        key,
        _dir: dir,
    }
}

/// One keep-alive connection, used by one task one request at a time. hyperlocal's connector
/// opens it; hyper's own HTTP/1 connection drives it without a pool in between, so the figures
/// measure the daemon and not a client-side pool.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(socket: &Path) -> Sender {
    let stream = UnixConnector
        .call(hyperlocal::Uri::new(socket, "/").into())
        .await
        .expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(stream)
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn call(
    sender: &mut Sender,
    key: &str,
    method: &str,
    path: &str,
    body: Option<String>,
) -> (u16, Bytes) {
    sender.ready().await.expect("connection ready");
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "deskd")
        .header("authorization", format!("Bearer {key}"));
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .expect("request");
    let resp = sender.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, bytes)
}

struct Figures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Sends `total` requests over `connections` keep-alive connections; `make(i)` gives request i.
async fn run<F>(d: &Daemon, connections: usize, total: usize, expect: u16, make: F) -> Figures
where
    F: Fn(usize) -> (&'static str, String, Option<String>) + Send + Sync + Clone + 'static,
{
    let per = total / connections;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let socket = d.socket.clone();
        let key = d.key.clone();
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&socket).await;
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let (method, path, body) = make(c * per + i);
                let t = Instant::now();
                let (status, bytes) = call(&mut sender, &key, method, &path, body).await;
                lat.push(t.elapsed());
                assert_eq!(
                    status,
                    expect,
                    "{method} {path}: {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
    Figures {
        rps: all.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn print(name: &str, f: &Figures, baseline: &Figures) {
    println!(
        "{name:<34} {:>9.0} req/s   p50 {:>7.0} us   p99 {:>7.0} us   ({:.2}x the baseline's p50)",
        f.rps,
        f.p50_us,
        f.p99_us,
        f.p50_us / baseline.p50_us
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run small then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let total = env("DESKD_BENCH_REQUESTS", if quick { 200 } else { 5000 });
    let connections = env("DESKD_BENCH_CONNECTIONS", 4).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let d = start_daemon();
    rt.block_on(async {
        let mut s = connect(&d.socket).await;
        let (_, ws) = call(&mut s, &d.key, "POST", "/api/workspaces", Some(r#"{"name":"bench"}"#.into())).await;
        let ws: serde_json::Value = serde_json::from_slice(&ws).expect("workspace json");
        let body = format!(r#"{{"workspace_id":"{}","name":"bench-pc"}}"#, ws["id"].as_str().expect("id"));
        let (status, c) = call(&mut s, &d.key, "POST", "/api/computers", Some(body)).await;
        assert_eq!(status, 201);
        let c: serde_json::Value = serde_json::from_slice(&c).expect("computer json");
        let cid = c["id"].as_str().expect("id").to_string();

        println!(
            "deskd API over a Unix socket: {total} requests per scenario, {connections} keep-alive connections{}",
            if quick { " (quick run; `cargo bench --bench api` for the real one)" } else { "" }
        );
        // Warm up (page cache, SQLite statement cache).
        run(&d, connections, 200.min(total), 404, |_| ("GET", "/api/no-such-route".into(), None)).await;
        let baseline = run(&d, connections, total, 404, |_| ("GET", "/api/no-such-route".into(), None)).await;
        print("baseline GET /api/no-such-route", &baseline, &baseline);
        let path = format!("/api/computers/{cid}");
        let get = run(&d, connections, total, 200, move |_| ("GET", path.clone(), None)).await;
        print("GET /api/computers/{id}", &get, &baseline);
        let post = run(&d, connections, total, 201, |i| {
            ("POST", "/api/workspaces".into(), Some(format!(r#"{{"name":"w{i}"}}"#)))
        })
        .await;
        print("POST /api/workspaces", &post, &baseline);
    });
}
