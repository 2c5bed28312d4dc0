//! The daemon's bounds on what it does for guests, end to end but for the VM: the real router on
//! a Unix socket, one running computer whose VM is a stand-in for its hybrid vsock socket, and
//! behind it a stand-in agent that holds its answers, refuses WebSocket hand-shakes, or never
//! answers them. Shown here: the per-key limit on agent calls in flight (429 with Retry-After),
//! and that refused WebSocket relays leave no descriptor behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::api::testing::{test_api, TestApi};
use crate::api::{router, AppState, InFlight};
use crate::config::Config;
use crate::store::ComputerStatus;

/// How the stand-in agent behaves.
mod mode {
    /// Answers each call once `release` turns true; refuses WebSocket hand-shakes with a 503.
    pub const HOLD: u8 = 0;
    /// Takes the vsock connection and reads, but never answers anything.
    pub const SILENT: u8 = 1;
    /// Accepts WebSocket hand-shakes and keeps the stream open until the daemon closes it.
    pub const WEBSOCKET: u8 = 2;
}

struct Rig {
    state: AppState,
    computer: crate::store::Computer,
    api: PathBuf,
    mode: Arc<AtomicU8>,
    release: tokio::sync::watch::Sender<bool>,
    _stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn rig(max_agent_calls: usize) -> Rig {
    let mut config = Config::default();
    config.limits.max_agent_calls_per_key = max_agent_calls;
    let TestApi {
        state,
        computer,
        dir,
        ..
    } = test_api(config);
    state
        .store
        .set_computer_status(&computer.id, ComputerStatus::Running, None)
        .unwrap();
    let mode = Arc::new(AtomicU8::new(mode::HOLD));
    let (release, released) = tokio::sync::watch::channel(false);
    fake_agent(
        state.lifecycle.agent_socket(&computer.id),
        mode.clone(),
        released,
    );
    let api = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&api).unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::api::server::serve(
        listener,
        router(state.clone()),
        stop,
        Duration::from_secs(1),
    ));
    Rig {
        state,
        computer,
        api,
        mode,
        release,
        _stop: stop_tx,
        _dir: dir,
    }
}

/// The VMM's side of hybrid vsock for port 1024 and, behind it, a stand-in agent (see [`mode`]).
fn fake_agent(vsock: PathBuf, mode: Arc<AtomicU8>, released: tokio::sync::watch::Receiver<bool>) {
    std::fs::create_dir_all(vsock.parent().unwrap()).unwrap();
    let listener = tokio::net::UnixListener::bind(&vsock).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (mode, released) = (mode.load(Ordering::SeqCst), released.clone());
            tokio::spawn(async move {
                let mut r = tokio::io::BufReader::new(s);
                let mut line = String::new();
                if r.read_line(&mut line).await.is_err() || line != "CONNECT 1024\n" {
                    return;
                }
                let mut s = r.into_inner();
                if s.write_all(b"OK 1073741824\n").await.is_err() {
                    return;
                }
                if mode == mode::WEBSOCKET {
                    if let Ok(mut ws) = tokio_tungstenite::accept_async(s).await {
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                    return;
                }
                if mode == mode::SILENT {
                    // Reads whatever comes until the daemon hangs up; answers nothing.
                    let mut buf = [0u8; 4096];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                    return;
                }
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let mut released = released.clone();
                    async move {
                        if req.uri().path().starts_with("/ws/") {
                            return hyper::Response::builder().status(503).body(Full::new(
                                Bytes::from_static(br#"{"error":"stream refused"}"#),
                            ));
                        }
                        let _ = released.wait_for(|r| *r).await;
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(br#"{"x":1,"y":2}"#)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
}

/// One request over a new connection to the API socket: status, `Retry-After`, body.
async fn call(api: &Path, path: &str, key: &str) -> (u16, Option<String>, String) {
    let s = tokio::net::UnixStream::connect(api).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "deskd")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = sender.send_request(req).await.unwrap();
    let status = answer.status().as_u16();
    let retry = answer
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    (status, retry, String::from_utf8_lossy(&body).into_owned())
}

/// Waits (bounded) until `key` holds `n` slots.
async fn until_held(limit: &InFlight, key: &str, n: usize) {
    for _ in 0..500 {
        if limit.held(key) == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{key} holds {} calls, expected {n}", limit.held(key));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_with_its_calls_in_flight_gets_429_with_retry_after_and_others_are_served() {
    let r = rig(2).await;
    let a = r.state.store.create_key("a", None).unwrap();
    let b = r.state.store.create_key("b", None).unwrap();
    let path = format!("/api/computers/{}/cursor_position", r.computer.id);
    let limit = r.state.agent_calls.clone();

    // Two calls of key a wait for the agent's answer.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (api, path, key) = (r.api.clone(), path.clone(), a.secret.clone());
            tokio::spawn(async move { call(&api, &path, &key).await })
        })
        .collect();
    until_held(&limit, &a.key.id, 2).await;

    // A third is refused at once, saying why and when to come back.
    let (status, retry, body) = call(&r.api, &path, &a.secret).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(body.contains("max_agent_calls_per_key"), "{body}");
    assert!(body.contains("too_many_agent_calls"), "{body}");

    // Another key is not held back by a's calls.
    let other = {
        let (api, path, key) = (r.api.clone(), path.clone(), b.secret.clone());
        tokio::spawn(async move { call(&api, &path, &key).await })
    };
    until_held(&limit, &b.key.id, 1).await;

    // The agent answers: every held call gets its answer and gives its slot back.
    r.release.send(true).unwrap();
    for h in held {
        let (status, _, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, r#"{"x":1,"y":2}"#);
    }
    assert_eq!(other.await.unwrap().0, 200);
    until_held(&limit, &a.key.id, 0).await;
    assert_eq!(call(&r.api, &path, &a.secret).await.0, 200);
}

/// Descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Opens a relay to `path` and returns the close code it ends with.
async fn relay_close_code(api: &Path, path: &str) -> u16 {
    let s = tokio::net::UnixStream::connect(api).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://deskd{path}"), s)
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("the relay ends within 30 s")
        {
            Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// `n` relays to `path` at once, each expected to close with `code`.
async fn refused_relays(api: &Path, path: &str, n: usize, code: u16) {
    let all: Vec<_> = (0..n)
        .map(|_| {
            let (api, path) = (api.to_path_buf(), path.to_string());
            tokio::spawn(async move { relay_close_code(&api, &path).await })
        })
        .collect();
    for h in all {
        assert_eq!(h.await.unwrap(), code, "close code of {path}");
    }
}

/// Waits (bounded) for the descriptor count to come down to at most `limit`; returns the count.
async fn fds_settle_to(limit: usize) -> usize {
    let mut n = open_fds();
    for _ in 0..100 {
        if n <= limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        n = open_fds();
    }
    n
}

/// The body of [`refused_relays_leave_no_descriptor_behind`], run in a process of its own so
/// that other tests' descriptors do not blur the count.
async fn refused_relays_body() {
    let r = rig(1000).await;
    let id = &r.computer.id;
    let bad_token = format!("/desktops/{id}/ws/terminal?token=wrong");
    let good = format!("/desktops/{id}/ws/terminal?token=token-of-c");
    // One of each first, so that what stays open by design (the database's connections, the
    // runtime's threads) is open before counting.
    refused_relays(&r.api, &bad_token, 1, super::desktop_ws::close::BAD_TOKEN).await;
    refused_relays(&r.api, &good, 1, super::desktop_ws::close::CANNOT_START).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = open_fds();

    const N: usize = 40;
    // Refused by the daemon (bad token), by the agent (its hand-shake answers 503), and by the
    // deadline (an agent that never answers the hand-shake).
    refused_relays(&r.api, &bad_token, N, super::desktop_ws::close::BAD_TOKEN).await;
    refused_relays(&r.api, &good, N, super::desktop_ws::close::CANNOT_START).await;
    r.mode.store(mode::SILENT, Ordering::SeqCst);
    refused_relays(&r.api, &good, N, super::desktop_ws::close::CANNOT_START).await;

    // A few may lag (a connection task that has not seen its peer's close yet); a leak per
    // attempt would be 3 x N or more.
    let after = fds_settle_to(before + 4).await;
    eprintln!("descriptors: {before} before, {after} after 3 x {N} refused relays");
    assert!(
        after <= before + 4,
        "{after} descriptors open after 3 x {N} refused relays, {before} before"
    );
}

#[test]
fn refused_relays_leave_no_descriptor_behind() {
    const CHILD: &str = "DESKD_TEST_FD_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(refused_relays_body());
        return;
    }
    let name = concat!(
        module_path!(),
        "::refused_relays_leave_no_descriptor_behind"
    );
    let name = name.split_once("::").map_or(name, |(_, rest)| rest);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .status()
        .unwrap();
    assert!(status.success(), "the descriptor count failed: {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_computer_holds_at_most_its_share_of_relays_and_more_are_told_to_try_later() {
    let r = rig(2).await;
    r.mode.store(mode::WEBSOCKET, Ordering::SeqCst);
    let path = format!("/desktops/{}/ws/terminal?token=token-of-c", r.computer.id);
    let slots = format!("computer:{}", r.computer.id);
    let open = |api: PathBuf, path: String| async move {
        let s = tokio::net::UnixStream::connect(&api).await.unwrap();
        tokio_tungstenite::client_async(format!("ws://deskd{path}"), s)
            .await
            .unwrap()
            .0
    };
    let first = open(r.api.clone(), path.clone()).await;
    let _second = open(r.api.clone(), path.clone()).await;
    until_held(&r.state.agent_calls, &slots, 2).await;
    // A third is refused with RFC 6455's "try again later", saying why.
    assert_eq!(
        relay_close_code(&r.api, &path).await,
        super::desktop_ws::close::TRY_AGAIN_LATER
    );
    // One ends: its slot is free again.
    drop(first);
    until_held(&r.state.agent_calls, &slots, 1).await;
    let _third = open(r.api.clone(), path.clone()).await;
    until_held(&r.state.agent_calls, &slots, 2).await;
}
