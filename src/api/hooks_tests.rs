//! A template's `hooks.on_every_boot`, `hooks.on_shutdown` and autostart `streaming` entry
//! through the daemon's real router, lifecycle, supervisor and readiness probe, with the real
//! guest agent doing the guest's part: `/files/install` writes `/root/.env` and the runtime files,
//! `/bash` runs the hooks, `/stream/start` spawns the encoder.
//!
//! The agent runs in a child process (this test binary again, the test's own name with
//! [`CHILD`] set) in a mount namespace of its own with a tmpfs on `/root`, so `/root/.env` and
//! what the hooks write there never touch this host's. On its `PATH`, scripts stand in for two
//! programs of the image: `sudo` (the agent is root here: it drops the options and runs the
//! command) and `ffmpeg` (it records its arguments, then runs like an encoder pushing a stream
//! until it is stopped); they are also mounted on `/usr/local/sbin` there, first on the `PATH`
//! of the login shells the agent's `/bash` runs. Between the daemon and the agent a stand-in VM ([`Backend`]): its hybrid
//! vsock socket answers `/health` (no desktop runs here) and `/resumed` (no clock or identity of
//! this host's to change) itself and passes every other request to the agent, keeping a copy.
//! Its starts are cold boots, except a start after a suspend (its own saved VM: a restore).
//!
//! Needs root and `unshare` (util-linux); skipped, loudly, without them.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use deskd_agent::protocol::{DesktopParts, Health};

/// Set in the child process: the agent's socket path.
const CHILD: &str = "DESKD_TEST_HOOKS_AGENT";
/// A secret of the launch tests' kind: quotes and a `$` that the shell must keep.
const SECRET: &str = "sk-hooks-5551234-it's $HOME";
/// A stream key, as a computer's secret.
const STREAM_KEY: &str = "live_Hooks-Key.42";
/// How long `hooks.on_shutdown` may hold a stop here (the daemon's is 60 s).
const CAP: Duration = Duration::from_secs(3);

/// In the child process ([`CHILD`] set): serves the real agent on that socket until killed, and
/// never returns. Otherwise returns at once.
fn serve_agent_if_child() {
    let Some(socket) = std::env::var_os(CHILD) else {
        return;
    };
    // Gone with the test that started it, however that ends.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).unwrap();
    let home = PathBuf::from("/root");
    let cfg = deskd_agent::Config {
        listen: deskd_agent::Listen::Unix(PathBuf::from(socket)),
        display: ":999".into(),
        user: None,
        home: Some(home.clone()),
        output_cap: 1 << 20,
        idle_after: Duration::from_secs(30),
        x_call_limit: Duration::from_secs(30),
        vnc_socket: home.join("no-rfb.sock"),
        vnc_password_file: home.join("vnc-passwd"),
        pulse: deskd_agent::audio::Pulse::default(),
    };
    // A runtime of its own on a thread of its own: the test's runtime is already running here.
    let served = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let agent = deskd_agent::build(&cfg).unwrap();
            deskd_agent::server::serve(&cfg.listen, agent)
                .await
                .unwrap();
        });
    })
    .join();
    std::process::exit(i32::from(served.is_err()));
}

/// The agent's process, its socket, and a directory of this host's that the hooks and the
/// `ffmpeg` stand-in write to (the namespace hides only `/root`).
struct Guest {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// Starts the agent for test `test` (its name below the crate), or `None` (said loudly) where
/// no mount namespace can be made.
fn start_guest(test: &str) -> Option<Guest> {
    let can = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !can {
        eprintln!(
            "\n*** SKIPPED {test}: cannot make a mount namespace for the agent (needs root and \
             unshare from util-linux) ***\n"
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    script(
        &bin.join("sudo"),
        "while [ $# -gt 0 ]; do case \"$1\" in -*) shift ;; *) break ;; esac; done\nexec \"$@\"",
    );
    script(
        &bin.join("ffmpeg"),
        &format!(
            "printf '%s\\n' \"$@\" > {}/ffmpeg-args\nexec sleep 300",
            dir.path().display()
        ),
    );
    let socket = dir.path().join("agent.sock");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount -t tmpfs -o mode=0700 deskd-test-root /root && \
             mount --bind \"$STAND_INS\" /usr/local/sbin && exec \"$@\"",
        )
        .arg("sh")
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, &socket)
        .env("STAND_INS", &bin)
        .env("PATH", path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut guest = Guest { child, socket, dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&guest.socket).is_err() {
        if let Ok(Some(status)) = guest.child.try_wait() {
            panic!("the agent's process ended: {status}");
        }
        assert!(Instant::now() < deadline, "the agent never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(guest)
}

/// One request passed to the agent: which computer's, its path, its JSON body.
#[derive(Debug, Clone)]
struct Seen {
    computer: String,
    path: String,
    body: Value,
}

/// The stand-in VM's side of a request: `/health` and `/resumed` answered here, the rest the
/// real agent's.
async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    agent: PathBuf,
    id: String,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> hyper::Response<Full<Bytes>> {
    let json = |status: u16, body: Vec<u8>| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    match parts.uri.path() {
        "/health" => {
            let up = DesktopParts {
                x_server: true,
                window_manager: true,
                panel: true,
                desktop: true,
            };
            let h = Health::new("stand-in", Some((1280, 720)), up);
            return json(200, serde_json::to_vec(&h).unwrap());
        }
        "/resumed" => {
            let r: Resumed = serde_json::from_slice(&body).unwrap();
            let done = ResumedDone {
                clock_step_ms: 0,
                identity_applied: r.identity.is_some(),
            };
            return json(200, serde_json::to_vec(&done).unwrap());
        }
        _ => {}
    }
    seen.lock().unwrap().push(Seen {
        computer: id,
        path: parts.uri.path().to_string(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let s = tokio::net::UnixStream::connect(&agent).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::from_parts(parts, Full::new(body));
    let got = sender.send_request(req).await.unwrap();
    let (parts, body) = got.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    hyper::Response::from_parts(parts, Full::new(body))
}

/// Serves the hybrid vsock of computer `id` at `socket`: `CONNECT 1024`, `OK`, then HTTP.
fn serve_vsock(rt: &tokio::runtime::Handle, b: &Backend, id: String, socket: &Path) {
    let _ = std::fs::remove_file(socket);
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (agent, seen) = (b.agent.clone(), b.seen.clone());
    rt.spawn(async move {
        let listener = tokio::net::UnixListener::from_std(listener).unwrap();
        while let Ok((s, _)) = listener.accept().await {
            let (agent, id, seen) = (agent.clone(), id.clone(), seen.clone());
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
                let service = hyper::service::service_fn(move |req| {
                    let (agent, id, seen) = (agent.clone(), id.clone(), seen.clone());
                    async move { Ok::<_, Infallible>(answer(req, agent, id, seen).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
}

/// VMs that exist only as a pid and a vsock socket in front of the agent.
struct Backend {
    rt: tokio::runtime::Handle,
    agent: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    alive: Mutex<HashMap<String, i32>>,
    saved: Mutex<HashSet<String>>,
    next_pid: AtomicI32,
    /// At each stop (and delete) of a VM: the text of this file then, if it exists.
    watched: PathBuf,
    at_stop: Mutex<Vec<String>>,
}

impl VmBackend for Backend {
    fn host_check(&self) -> Result<(), BackendError> {
        Ok(())
    }
    fn start(&self, spec: &VmSpec) -> Result<Started, BackendError> {
        serve_vsock(
            &self.rt,
            self,
            spec.computer_id.clone(),
            &spec.dir.join(files::VSOCK),
        );
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
        self.alive
            .lock()
            .unwrap()
            .insert(spec.computer_id.clone(), pid);
        // Its own saved VM after a suspend; otherwise a boot.
        if self.saved.lock().unwrap().remove(&spec.computer_id) {
            Ok(Started::Restored { copy: false })
        } else {
            Ok(Started::Booted)
        }
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
        let now = std::fs::read_to_string(&self.watched).unwrap_or_default();
        self.at_stop.lock().unwrap().push(now);
        self.alive.lock().unwrap().remove(id);
        self.saved.lock().unwrap().remove(id);
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
        self.stop(id, Duration::ZERO)
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
    backend: Arc<Backend>,
    workspace: String,
    /// Strings no answer may hold.
    hidden: Vec<String>,
    _data: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// The daemon with `template` published, its VMs in front of `guest`'s agent, its stops
/// recording `watched` (see [`Backend`]).
async fn daemon(guest: &Guest, template: &str, watched: PathBuf) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Arc::new(Store::open(&data).unwrap());
    crate::templates::seed(&store).unwrap();
    let t = crate::templates::validate_bytes(template.as_bytes()).unwrap();
    store
        .publish_template(&t.reference("default"), &t.digest, &t.canonical, false)
        .unwrap();
    let backend = Arc::new(Backend {
        rt: tokio::runtime::Handle::current(),
        agent: guest.socket.clone(),
        seen: Arc::default(),
        alive: Mutex::new(HashMap::new()),
        saved: Mutex::new(HashSet::new()),
        next_pid: AtomicI32::new(1000),
        watched,
        at_stop: Mutex::new(Vec::new()),
    });
    let lifecycle = Arc::new(
        Lifecycle::new(store.clone(), backend.clone(), data.clone()).with_shutdown_cap(CAP),
    );
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
        backend,
        workspace,
        hidden: vec![SECRET.into(), STREAM_KEY.into()],
        _data: dir,
        _stop: stop_tx,
    }
}

impl Daemon {
    /// One call; its answer is checked for every hidden string.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
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
        let text = String::from_utf8_lossy(&body).into_owned();
        for h in &self.hidden {
            assert!(
                !text.contains(h.as_str()),
                "{method} {path} answered a secret: {text}"
            );
        }
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn create(&self, template: &str, secrets: Value) -> String {
        let (code, c) = self
            .call(
                "POST",
                "/api/computers",
                Some(json!({"workspace_id": self.workspace, "name": "c",
                            "template_ref": template, "secrets": secrets})),
            )
            .await;
        assert_eq!(code, 201, "{c}");
        c["id"].as_str().unwrap().to_string()
    }

    async fn post(&self, path: &str) {
        let (code, v) = self.call("POST", path, Some(json!({}))).await;
        assert_eq!(code, 200, "POST {path}: {v}");
    }

    /// Waits (at most `limit`) for computer `id` to be `status`.
    async fn until(&self, id: &str, status: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let (code, v) = self
                .call("GET", &format!("/api/computers/{id}"), None)
                .await;
            assert_eq!(code, 200, "{v}");
            if v["status"] == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "computer {id} is not {status} after {limit:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The launch log as `(level, step, line)`.
    async fn launch_log(&self, id: &str) -> Vec<(String, String, String)> {
        let (code, v) = self
            .call("GET", &format!("/api/computers/{id}/launch-log"), None)
            .await;
        assert_eq!(code, 200, "{v}");
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap().to_string();
                (s("level"), s("step"), s("line"))
            })
            .collect()
    }

    /// `command`'s output through `POST /computers/{id}/bash` (the agent's `/bash`).
    async fn bash(&self, id: &str, command: &str) -> String {
        let (code, v) = self
            .call(
                "POST",
                &format!("/api/computers/{id}/bash"),
                Some(json!({ "command": command })),
            )
            .await;
        assert_eq!(code, 200, "{v}");
        v["output"].as_str().unwrap().to_string()
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        let seen = self.backend.seen.lock().unwrap();
        seen.iter().filter(|s| s.path == path).cloned().collect()
    }
}

/// The steps of `log[from..]`, each once, in order of first appearance.
fn steps(log: &[(String, String, String)], from: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, step, _) in &log[from..] {
        if !out.contains(step) {
            out.push(step.clone());
        }
    }
    out
}

fn subscriber(captured: &Captured) -> tracing::subscriber::DefaultGuard {
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_default(subscriber)
}

const BOOTS: &str = r#"
api_version: orgo.ai/v1
name: boots@1.0.0
secrets: [{name: api-key}]
files:
  - {to: /root/app/runtime.txt, inline: "the runtime file", when: runtime}
hooks:
  on_every_boot: |
    test "$(stat -c %a:%U /root/.env)" = 600:root
    set -a; . /root/.env; set +a
    echo "boot: key $(printf %s "$API_KEY" | sha256sum | cut -c1-16), $(cat /root/app/runtime.txt)"
    echo boot >> /root/app/starts
  on_resume: "echo resume >> /root/app/starts"
"#;

fn sha16(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))[..16].to_string()
}

#[tokio::test]
async fn on_every_boot_runs_after_each_cold_boot_with_the_env_and_not_after_a_restore() {
    serve_agent_if_child();
    let Some(guest) = start_guest("api::hooks_tests::on_every_boot_runs_after_each_cold_boot_with_the_env_and_not_after_a_restore") else {
        return;
    };
    let captured = Captured::default();
    let _log = subscriber(&captured);
    let d = daemon(&guest, BOOTS, guest.dir.path().join("unused")).await;
    let boot = Duration::from_secs(60);

    // The first start is a cold boot (the template is not built): .env, the runtime file, then
    // on_every_boot, which reads both.
    let id = d
        .create("default/boots@1.0.0", json!({"api-key": SECRET}))
        .await;
    d.until(&id, "running", boot).await;
    let log = d.launch_log(&id).await;
    assert_eq!(
        d.bash(&id, "cat /root/app/starts").await,
        "boot\n",
        "{log:?}"
    );
    assert_eq!(steps(&log, 0), ["files", "hooks.on_every_boot"], "{log:?}");
    let saw = format!("boot: key {}, the runtime file", sha16(SECRET));
    assert!(
        log.contains(&("info".into(), "hooks.on_every_boot".into(), saw.clone())),
        "the hook read /root/.env and the runtime file: {log:?}"
    );
    let (level, _, line) = log.last().unwrap();
    assert_eq!(level, "success", "{log:?}");
    assert!(line.starts_with("hooks.on_every_boot done in"), "{line}");

    // A restore (a resume after suspend) runs on_resume, not on_every_boot.
    let mark = log.len();
    d.post(&format!("/api/computers/{id}/suspend")).await;
    d.until(&id, "suspended", boot).await;
    d.post(&format!("/api/computers/{id}/start")).await;
    d.until(&id, "running", boot).await;
    assert_eq!(d.bash(&id, "cat /root/app/starts").await, "boot\nresume\n");
    let log = d.launch_log(&id).await;
    assert_eq!(steps(&log, mark), ["files", "hooks.on_resume"], "{log:?}");

    // A stop then a start is a cold boot again.
    let mark = log.len();
    d.post(&format!("/api/computers/{id}/stop")).await;
    d.until(&id, "stopped", boot).await;
    d.post(&format!("/api/computers/{id}/start")).await;
    d.until(&id, "running", boot).await;
    assert_eq!(
        d.bash(&id, "cat /root/app/starts").await,
        "boot\nresume\nboot\n"
    );
    let log = d.launch_log(&id).await;
    assert_eq!(
        steps(&log, mark),
        ["files", "hooks.on_every_boot"],
        "{log:?}"
    );
    assert!(log[mark..].contains(&("info".into(), "hooks.on_every_boot".into(), saw)));

    // The agent got the secret (in /root/.env) and nothing the daemon printed holds it.
    let install = d.seen("/files/install");
    assert!(install[0].body["files"][0]["content"]
        .as_str()
        .unwrap()
        .contains("API_KEY="));
    let logged = captured.text();
    assert!(logged.contains("running"), "the capture works: {logged}");
    assert!(
        !logged.contains("sk-hooks-5551234"),
        "a log line holds the secret"
    );
}

fn stops_template(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
api_version: orgo.ai/v1
name: stops@1.0.0
hooks:
  on_shutdown: |
    echo "shutting down"
    echo stop >> {d}/shutdown.log
    if [ -e {d}/hang ]; then sleep 60; fi
"#
    )
}

#[tokio::test]
async fn on_shutdown_runs_before_each_power_off_and_a_hung_one_holds_no_stop() {
    serve_agent_if_child();
    let Some(guest) = start_guest(
        "api::hooks_tests::on_shutdown_runs_before_each_power_off_and_a_hung_one_holds_no_stop",
    ) else {
        return;
    };
    let dir = guest.dir.path().to_path_buf();
    let d = daemon(&guest, &stops_template(&dir), dir.join("shutdown.log")).await;
    let limit = Duration::from_secs(60);
    let id = d.create("default/stops@1.0.0", json!({})).await;
    d.until(&id, "running", limit).await;
    let at_stop = || d.backend.at_stop.lock().unwrap().clone();

    // A stop: the hook first (its line is in the file when the VM is stopped), then the stop.
    d.post(&format!("/api/computers/{id}/stop")).await;
    d.until(&id, "stopped", limit).await;
    assert_eq!(at_stop(), ["stop\n"]);
    let log = d.launch_log(&id).await;
    assert!(
        log.contains(&(
            "info".into(),
            "hooks.on_shutdown".into(),
            "shutting down".into()
        )),
        "{log:?}"
    );
    let (level, step, line) = log.last().unwrap();
    assert_eq!(
        (level.as_str(), step.as_str()),
        ("success", "hooks.on_shutdown")
    );
    assert!(line.starts_with("hooks.on_shutdown done in"), "{line}");

    // A hook that sleeps past the cap (its own limit is the default 10 minutes): the stop goes
    // on at the cap, the failure in the launch log.
    std::fs::write(dir.join("hang"), "").unwrap();
    d.post(&format!("/api/computers/{id}/start")).await;
    d.until(&id, "running", limit).await;
    let asked = Instant::now();
    d.post(&format!("/api/computers/{id}/stop")).await;
    d.until(&id, "stopped", Duration::from_secs(30)).await;
    let took = asked.elapsed();
    assert!(
        took >= CAP && took < CAP + Duration::from_secs(15),
        "the stop took {took:?} with a {CAP:?} cap"
    );
    assert_eq!(at_stop(), ["stop\n", "stop\nstop\n"]);
    let log = d.launch_log(&id).await;
    let (level, step, line) = log.last().unwrap();
    assert_eq!(
        (level.as_str(), step.as_str()),
        ("error", "hooks.on_shutdown"),
        "{log:?}"
    );
    assert!(
        line == "hooks.on_shutdown timed out after 3 s; the stop goes on"
            || line == "hooks.on_shutdown did not end within 3 s; the stop goes on",
        "{line}"
    );

    // A restart and a delete power off too: the hook runs before each.
    std::fs::remove_file(dir.join("hang")).unwrap();
    d.post(&format!("/api/computers/{id}/start")).await;
    d.until(&id, "running", limit).await;
    d.post(&format!("/api/computers/{id}/restart")).await;
    d.until(&id, "running", limit).await;
    assert_eq!(at_stop().last().unwrap(), "stop\nstop\nstop\n");
    let (code, v) = d
        .call("DELETE", &format!("/api/computers/{id}"), None)
        .await;
    assert!(code == 200 || code == 204, "{code} {v}");
    assert_eq!(at_stop().last().unwrap(), "stop\nstop\nstop\nstop\n");
}

const STREAMS: &str = r#"
api_version: orgo.ai/v1
name: streams@1.0.0
secrets: [{name: stream-key}]
streaming:
  - {name: manual, url: "rtmp://127.0.0.1:1/other", key: {secret: stream-key}}
  - {name: live, url: "rtmp://127.0.0.1:1935/live", key: {secret: stream-key}, autostart: true}
"#;

#[tokio::test]
async fn an_autostart_stream_starts_at_launch_with_its_secret_key_in_no_answer() {
    serve_agent_if_child();
    let Some(guest) = start_guest(
        "api::hooks_tests::an_autostart_stream_starts_at_launch_with_its_secret_key_in_no_answer",
    ) else {
        return;
    };
    let captured = Captured::default();
    let _log = subscriber(&captured);
    let d = daemon(&guest, STREAMS, guest.dir.path().join("unused")).await;
    let id = d
        .create("default/streams@1.0.0", json!({"stream-key": STREAM_KEY}))
        .await;
    d.until(&id, "running", Duration::from_secs(60)).await;

    // The agent's /stream/start got the entry's URL and the resolved key...
    let starts = d.seen("/stream/start");
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert_eq!(starts[0].computer, id);
    assert_eq!(starts[0].body["url"], "rtmp://127.0.0.1:1935/live");
    assert_eq!(starts[0].body["stream_key"], STREAM_KEY);
    // ...and started its encoder pushing to URL/KEY, which runs.
    let args = std::fs::read_to_string(guest.dir.path().join("ffmpeg-args")).unwrap();
    assert_eq!(
        args.lines().last(),
        Some(format!("rtmp://127.0.0.1:1935/live/{STREAM_KEY}").as_str())
    );
    let (code, status) = d
        .call("GET", &format!("/api/computers/{id}/stream/status"), None)
        .await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["status"], "streaming", "{status}");
    let pid = status["pid"].as_u64().unwrap();
    let log = d.launch_log(&id).await;
    assert_eq!(
        log.last().unwrap(),
        &(
            "success".to_string(),
            "streaming.live".to_string(),
            format!("streaming.live streaming (encoder pid {pid})")
        ),
        "{log:?}"
    );

    // The key is in no answer (each call checks) nor anything the daemon printed.
    for path in [
        format!("/api/computers/{id}"),
        "/api/computers".to_string(),
        "/api/templates/default/streams/1.0.0".to_string(),
        "/api/stream-connections".to_string(),
    ] {
        let (code, v) = d.call("GET", &path, None).await;
        assert_eq!(code, 200, "{path}: {v}");
    }
    let logged = captured.text();
    assert!(logged.contains("running"), "the capture works: {logged}");
    assert!(
        !logged.contains(STREAM_KEY),
        "a log line holds the stream key"
    );
}
