//! The launch side of templates through the daemon's real router, lifecycle, supervisor and
//! readiness probe on a temporary Unix socket, with everything below the lifecycle a stand-in:
//! a VM backend whose every start "restores" (a copy at a computer's first start, as a golden
//! launch is; its own saved VM after a suspend) and, behind each VM's hybrid vsock socket, an
//! agent that answers `/health` and `/resumed` and records every other request. Checks the
//! create's `secrets` (400s naming the field), that no answer and no log line (at any level)
//! holds a secret, and that after a launch and after a resume the agent gets `/root/.env`
//! (0600, root) and the runtime files, then `hooks.on_resume`, in that order; a failing hook
//! leaves the computer running with the failure and its output (secrets masked) in the launch log.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::api::router;
use crate::computers::golden::Seeded;
use crate::computers::{
    files, BackendError, Hotplug, Lifecycle, Saved, Started, VmBackend, VmSpec, VmState,
};
use crate::store::{Store, WorkspaceStatus};
use deskd_agent::protocol::resumed::{Resumed, ResumedDone};
use deskd_agent::protocol::{BashResponse, DesktopParts, Health};

const SECRET: &str = "sk-live-0123456789-it's $HOME";

const TEMPLATE: &str = r#"
api_version: orgo.ai/v1
name: with-secrets@1.0.0
env: {GREETING: hi, OPENAI_API_KEY: {secret: api-key}}
secrets: [{name: api-key, description: the key}, {name: extra, optional: true}]
files:
  - {to: /etc/baked.conf, inline: "build time"}
  - {to: "~/.config/app.json", inline: '{"a": 1}', when: runtime}
  - {to: /etc/app/key.pem, from: "secret://api-key", mode: "0400", when: runtime}
hooks: {on_resume: "echo resumed; cat /root/.env"}
"#;

/// One request the stand-in agent got: which computer's, its path, its JSON body.
#[derive(Debug, Clone)]
struct Seen {
    computer: String,
    path: String,
    body: Value,
}

#[derive(Default)]
struct Agent {
    seen: Mutex<Vec<Seen>>,
    /// The hook's last command exits 3.
    fail_hook: AtomicBool,
}

impl Agent {
    fn take(&self, computer: &str) -> Vec<Seen> {
        let mut seen = self.seen.lock().unwrap();
        let (mine, rest): (Vec<Seen>, Vec<Seen>) =
            seen.drain(..).partition(|s| s.computer == computer);
        *seen = rest;
        mine
    }

    fn answer(&self, computer: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        match path {
            "/health" => {
                let parts = DesktopParts {
                    x_server: true,
                    window_manager: true,
                    panel: true,
                    desktop: true,
                };
                let h = Health::new("stand-in", Some((1280, 720)), parts);
                return (200, serde_json::to_vec(&h).unwrap());
            }
            "/vnc/password" => return (200, b"{}".to_vec()),
            _ => {}
        }
        self.seen.lock().unwrap().push(Seen {
            computer: computer.to_string(),
            path: path.to_string(),
            body: json.clone(),
        });
        match path {
            "/resumed" => {
                let r: Resumed = serde_json::from_value(json).unwrap();
                let done = ResumedDone {
                    clock_step_ms: 0,
                    identity_applied: r.identity.is_some(),
                };
                (200, serde_json::to_vec(&done).unwrap())
            }
            "/files/install" => {
                let paths: Vec<Value> = json["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["path"].clone())
                    .collect();
                (
                    200,
                    json!({"success": true, "paths": paths})
                        .to_string()
                        .into_bytes(),
                )
            }
            "/bash" => {
                let command = json["command"].as_str().unwrap().to_string();
                let runs = command.contains("sudo -n -H bash -l");
                let exit_code = if runs && self.fail_hook.load(Ordering::SeqCst) {
                    3
                } else {
                    0
                };
                // What `cat /root/.env` would print: the secret, which the log must mask.
                let output = if runs {
                    format!("resumed\nOPENAI_API_KEY='{SECRET}'\n")
                } else {
                    String::new()
                };
                let r = BashResponse {
                    success: true,
                    action: "bash".into(),
                    command,
                    output,
                    exit_code,
                    truncated: false,
                    timed_out: false,
                    error: None,
                };
                (200, serde_json::to_vec(&r).unwrap())
            }
            _ => (404, br#"{"error":"no such route"}"#.to_vec()),
        }
    }
}

/// Serves the hybrid vsock of computer `id` at `socket`: `CONNECT 1024`, `OK`, then HTTP.
fn serve_vsock(rt: &tokio::runtime::Handle, agent: Arc<Agent>, id: String, socket: &Path) {
    let _ = std::fs::remove_file(socket);
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    rt.spawn(async move {
        let listener = tokio::net::UnixListener::from_std(listener).unwrap();
        while let Ok((s, _)) = listener.accept().await {
            let (agent, id) = (agent.clone(), id.clone());
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
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (agent, id) = (agent.clone(), id.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let (status, out) = agent.answer(&id, &path, &body);
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(out)))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
}

/// VMs that exist only as a pid and a vsock socket served by [`Agent`].
struct Backend {
    rt: tokio::runtime::Handle,
    agent: Arc<Agent>,
    alive: Mutex<HashMap<String, i32>>,
    saved: Mutex<HashSet<String>>,
    next_pid: AtomicI32,
}

impl VmBackend for Backend {
    fn host_check(&self) -> Result<(), BackendError> {
        Ok(())
    }
    fn start(&self, spec: &VmSpec) -> Result<Started, BackendError> {
        let socket = spec.dir.join(files::VSOCK);
        serve_vsock(
            &self.rt,
            self.agent.clone(),
            spec.computer_id.clone(),
            &socket,
        );
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
        self.alive
            .lock()
            .unwrap()
            .insert(spec.computer_id.clone(), pid);
        // Its own saved VM after a suspend; otherwise a copy, as a golden launch or a clone is.
        let own = self.saved.lock().unwrap().remove(&spec.computer_id);
        Ok(Started::Restored { copy: !own })
    }
    fn suspend(&self, id: &str) -> Result<Saved, BackendError> {
        self.alive.lock().unwrap().remove(id);
        self.saved.lock().unwrap().insert(id.to_string());
        Ok(Saved {
            memory_bytes: 4 << 30,
            disk_bytes: 1 << 20,
            snapshot_ms: 1,
        })
    }
    fn clone_running(&self, _: &str, _: &str) -> Result<(), BackendError> {
        Err(BackendError::Process("not in this test".into()))
    }
    fn saved_bytes(&self, id: &str) -> Option<u64> {
        self.saved.lock().unwrap().contains(id).then_some(1 << 20)
    }
    fn discard_saved(&self, id: &str) -> Result<(), BackendError> {
        self.saved.lock().unwrap().remove(id);
        Ok(())
    }
    fn unpause(&self, _: &str) {}
    fn stop(&self, id: &str, _: Duration) -> Result<(), BackendError> {
        self.alive.lock().unwrap().remove(id);
        Ok(())
    }
    fn state(&self, id: &str) -> VmState {
        match self.alive.lock().unwrap().get(id) {
            Some(pid) => VmState::Alive { pid: *pid },
            None => VmState::Absent,
        }
    }
    fn attach(&self, id: &str) -> VmState {
        self.state(id)
    }
    fn stop_strays(&self, _: &dyn Fn(&str) -> bool) -> usize {
        0
    }
    fn destroy(&self, id: &str) -> Result<(), BackendError> {
        self.alive.lock().unwrap().remove(id);
        Ok(())
    }
    fn clone_disk(&self, _: &str, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
    fn hotplug(&self, _: &str, _: Hotplug) -> Result<u64, BackendError> {
        Err(BackendError::Process("not in this test".into()))
    }
    fn keep_as_golden(&self, _: &str, _: &Path, _: &[u8]) -> Result<(), BackendError> {
        Err(BackendError::Process("not in this test".into()))
    }
    fn seed_from_golden(&self, _: &str, _: &Path, _: bool) -> Result<Seeded, BackendError> {
        Err(BackendError::Process("not in this test".into()))
    }
}

/// Everything the daemon printed, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Daemon {
    api: PathBuf,
    key: String,
    store: Arc<Store>,
    agent: Arc<Agent>,
    workspace: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn daemon() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Arc::new(Store::open(&data).unwrap());
    crate::templates::seed(&store).unwrap();
    let t = crate::templates::validate_bytes(TEMPLATE.as_bytes()).unwrap();
    store
        .publish_template(&t.reference("default"), &t.digest, &t.canonical, false)
        .unwrap();
    let agent = Arc::new(Agent::default());
    let backend = Arc::new(Backend {
        rt: tokio::runtime::Handle::current(),
        agent: agent.clone(),
        alive: Mutex::new(HashMap::new()),
        saved: Mutex::new(HashSet::new()),
        next_pid: AtomicI32::new(1000),
    });
    let lifecycle = Arc::new(Lifecycle::new(store.clone(), backend, data.clone()));
    let supervised = lifecycle.clone();
    tokio::spawn(async move {
        loop {
            supervised.supervise().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let workspace = store
        .create_workspace("w", WorkspaceStatus::Active, None)
        .unwrap()
        .id;
    let key = store.create_key("test", None).unwrap().secret;
    let state = crate::api::test_rig::app_state(store.clone(), lifecycle, &data);
    let api = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&api).unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::api::server::serve(
        listener,
        router(state),
        stop,
        Duration::from_secs(1),
    ));
    Daemon {
        api,
        key,
        store,
        agent,
        workspace,
        _dir: dir,
        _stop: stop_tx,
    }
}

impl Daemon {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        let s = tokio::net::UnixStream::connect(&self.api).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "deskd")
            .header("authorization", format!("Bearer {}", self.key))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let answer = sender.send_request(req).await.unwrap();
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn create(&self, name: &str, secrets: Value) -> (u16, Value) {
        let (status, text) = self
            .call(
                "POST",
                "/api/computers",
                Some(json!({
                    "workspace_id": self.workspace,
                    "name": name,
                    "template_ref": "default/with-secrets@1.0.0",
                    "secrets": secrets,
                })),
            )
            .await;
        assert!(!text.contains(SECRET), "an answer holds the secret: {text}");
        (status, serde_json::from_str(&text).unwrap())
    }

    /// Waits (bounded) for computer `id` to be `status`; returns its GET answer.
    async fn until(&self, id: &str, status: &str) -> Value {
        for _ in 0..400 {
            let (code, text) = self
                .call("GET", &format!("/api/computers/{id}"), None)
                .await;
            assert_eq!(code, 200, "{text}");
            assert!(!text.contains(SECRET), "GET holds the secret: {text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["status"] == status {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("computer {id} never became {status}");
    }

    async fn launch_log(&self, id: &str) -> Vec<Value> {
        let (code, text) = self
            .call("GET", &format!("/api/computers/{id}/launch-log"), None)
            .await;
        assert_eq!(code, 200, "{text}");
        assert!(
            !text.contains(SECRET),
            "the launch log holds the secret: {text}"
        );
        serde_json::from_str::<Value>(&text).unwrap()["events"]
            .as_array()
            .unwrap()
            .clone()
    }
}

/// The agent's requests after one start, in order: `/resumed`, `/files/install` with
/// `/root/.env` first and the runtime files, then the hook's `/bash` commands (the last runs it).
fn assert_start_sequence(seen: &[Seen], copy: bool) {
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths[0], "/resumed", "{paths:?}");
    assert_eq!(seen[0].body["identity"].is_object(), copy, "{:?}", seen[0]);
    assert_eq!(paths[1], "/files/install", "{paths:?}");
    assert!(
        paths.len() > 2 && paths[2..].iter().all(|p| *p == "/bash"),
        "{paths:?}"
    );
    let last = seen.last().unwrap().body["command"].as_str().unwrap();
    assert!(last.contains("sudo -n -H bash -l"), "{last}");
    let files = seen[1].body["files"].as_array().unwrap();
    let shape: Vec<(&str, &str, &str, &str)> = files
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap(),
                f["mode"].as_str().unwrap(),
                f["owner"].as_str().unwrap(),
                f["group"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("/root/.env", "0600", "root", "root"),
            ("/home/user/.config/app.json", "0644", "user", "user"),
            ("/etc/app/key.pem", "0400", "root", "root"),
        ]
    );
    let env = files[0]["content"].as_str().unwrap();
    let quoted = SECRET.replace('\'', r"'\''");
    assert!(env.contains(&format!("\nAPI_KEY='{quoted}'\n")), "{env}");
    assert!(
        env.contains(&format!("\nOPENAI_API_KEY='{quoted}'\n")),
        "{env}"
    );
    assert!(!env.contains("GREETING"), "{env}");
    assert_eq!(files[1]["content"], r#"{"a": 1}"#);
    assert_eq!(files[2]["content"], SECRET);
}

#[tokio::test]
async fn secrets_reach_the_guest_after_every_restore_and_nowhere_else() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let d = daemon().await;

    // The create's checks, each naming its field.
    for (secrets, status, field, says) in [
        (
            json!(null),
            400,
            "secrets.api-key",
            "needs the secret api-key",
        ),
        (
            json!({}),
            400,
            "secrets.api-key",
            "needs the secret api-key",
        ),
        (json!({"api-key": ""}), 400, "secrets.api-key", "api-key"),
        (
            json!({"api-key": "v", "stray": "x"}),
            400,
            "secrets.stray",
            "declares no secret named stray",
        ),
        (
            json!({"api-key": 5}),
            400,
            "secrets.api-key",
            "must be a string",
        ),
        (json!(["api-key"]), 400, "secrets", "must be an object"),
        (
            json!({"api-key": "x".repeat(64 * 1024 + 1)}),
            400,
            "secrets.api-key",
            "at most 65536 bytes",
        ),
    ] {
        let (code, v) = d.create("refused", secrets.clone()).await;
        assert_eq!(code, status, "{secrets}: {v}");
        assert_eq!(v["fields"][0], field, "{secrets}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(says),
            "{secrets}: {v}"
        );
    }
    // Secrets for a template that declares none.
    let (code, text) = d
        .call(
            "POST",
            "/api/computers",
            Some(json!({"workspace_id": d.workspace, "name": "plain", "secrets": {"k": "v"}})),
        )
        .await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("secrets.k"), "{text}");

    // A launch: the copy restored, then .env, runtime files and on_resume, in that order.
    let (code, c) = d.create("c", json!({"api-key": SECRET})).await;
    assert_eq!(code, 201, "{c}");
    let id = c["id"].as_str().unwrap().to_string();
    d.until(&id, "running").await;
    assert_start_sequence(&d.agent.take(&id), true);
    let log = d.launch_log(&id).await;
    let lines: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|e| {
            (
                e["level"].as_str().unwrap(),
                e["step"].as_str().unwrap(),
                e["line"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(lines[0].1, "files", "{lines:?}");
    assert!(lines[0].2.starts_with("wrote /root/.env, "), "{lines:?}");
    assert!(
        lines.contains(&(
            "info",
            "hooks.on_resume",
            "OPENAI_API_KEY='[secret api-key]'"
        )),
        "the hook's output is recorded, the secret masked: {lines:?}"
    );
    let (level, step, line) = *lines.last().unwrap();
    assert_eq!((level, step), ("success", "hooks.on_resume"), "{lines:?}");
    assert!(line.starts_with("hooks.on_resume done in"), "{line}");

    // A resume after a suspend: its own VM (no new identity), the same sequence; a failing hook
    // leaves it running with the failure recorded.
    d.agent.fail_hook.store(true, Ordering::SeqCst);
    let (code, text) = d
        .call("POST", &format!("/api/computers/{id}/suspend"), None)
        .await;
    assert_eq!(code, 200, "{text}");
    d.until(&id, "suspended").await;
    let (code, text) = d
        .call("POST", &format!("/api/computers/{id}/start"), None)
        .await;
    assert_eq!(code, 200, "{text}");
    d.until(&id, "running").await;
    assert_start_sequence(&d.agent.take(&id), false);
    let log = d.launch_log(&id).await;
    let last = log.last().unwrap();
    assert_eq!(last["level"], "error", "{log:?}");
    assert_eq!(last["step"], "hooks.on_resume");
    assert_eq!(
        last["line"],
        "hooks.on_resume exited with status 3; the computer runs on"
    );

    // A clone has its source's secrets, and its start writes them.
    d.agent.fail_hook.store(false, Ordering::SeqCst);
    let (code, text) = d
        .call("POST", &format!("/api/computers/{id}/stop"), None)
        .await;
    assert_eq!(code, 200, "{text}");
    d.until(&id, "stopped").await;
    let (code, text) = d
        .call(
            "POST",
            &format!("/api/computers/{id}/clone"),
            Some(json!({})),
        )
        .await;
    assert_eq!(code, 201, "{text}");
    assert!(!text.contains(SECRET));
    let clone: Value = serde_json::from_str(&text).unwrap();
    let clone_id = clone["id"].as_str().unwrap().to_string();
    assert_eq!(
        d.store.computer_secrets(&clone_id).unwrap(),
        d.store.computer_secrets(&id).unwrap()
    );
    d.until(&clone_id, "running").await;
    assert_start_sequence(&d.agent.take(&clone_id), true);

    // A test run of the template (recorded as built; its golden snapshot is missing, so it
    // starts from the image, which here is the stand-in's restore too) takes the same secrets.
    let digest = crate::templates::validate_bytes(TEMPLATE.as_bytes())
        .unwrap()
        .digest;
    let crate::store::BuildStart::Started(b) = d
        .store
        .begin_build(&digest, "default/with-secrets@1.0.0")
        .unwrap()
    else {
        panic!("a build was already recorded");
    };
    d.store
        .finish_build(&b.id, crate::templates::build::BuildStatus::Ready, 1, None)
        .unwrap();
    let run = |secrets: Value| {
        d.call(
            "POST",
            "/api/templates/run",
            Some(json!({"ref": "default/with-secrets@1.0.0", "secrets": secrets})),
        )
    };
    let (code, text) = run(json!({})).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("secrets.api-key"), "{text}");
    let (code, text) = run(json!({"api-key": SECRET})).await;
    assert_eq!(code, 201, "{text}");
    assert!(!text.contains(SECRET), "{text}");
    let run_id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    d.until(&run_id, "running").await;
    assert_start_sequence(&d.agent.take(&run_id), true);

    // The list answer holds no secret either; nor did any log line, at any level.
    let (code, text) = d.call("GET", "/api/computers", None).await;
    assert_eq!(code, 200);
    assert!(!text.contains(SECRET), "{text}");
    let logged = captured.text();
    assert!(
        logged.contains("restored its saved VM"),
        "the capture works: {logged}"
    );
    assert!(!logged.contains(SECRET), "a log line holds the secret");
    assert!(
        !logged.contains("sk-live-0123456789"),
        "a log line holds the secret"
    );
}
