//! Test support: the daemon's real router in front of a real guest agent, everything but the VM.
//! One running computer whose VM is a stand-in for the VMM's hybrid vsock (the `CONNECT`
//! hand-shake, then the bytes of the agent's Unix socket), served on a Unix socket and on
//! loopback TCP. Used by the relay tests (VNC, audio) and the streaming tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::api::rate_limit::RateLimiter;
use crate::api::{router, AppState, HostFacts};
use crate::computers::{Lifecycle, VmmProcessBackend};
use crate::config::Config;
use crate::store::{Computer, ComputerStatus, NewComputer, Store, WorkspaceStatus};

/// The VMM's side of hybrid vsock for port 1024: after `CONNECT 1024` and `OK`, the stream is the
/// agent's (here: its Unix socket).
/// The daemon's state for in-process API tests: no network, a builder that boots nothing, and
/// request limits no test reaches.
pub fn app_state(
    store: Arc<crate::store::Store>,
    lifecycle: Arc<crate::computers::Lifecycle>,
    data: &std::path::Path,
) -> AppState {
    let builds = crate::templates::Builds::new(
        store.clone(),
        Arc::new(crate::templates::NoVmBuilder),
        data,
        crate::templates::builds::DEFAULT_TIME_LIMIT,
    )
    .unwrap();
    AppState {
        builds,
        network: None,
        signer: Arc::new(crate::files::signing::Signer::load_or_create(data).unwrap()),
        account_id: store.account_id().unwrap().into(),
        store,
        lifecycle,
        limiter: Arc::new(RateLimiter::new(1e6, 1_000_000)),
        bad_keys: Arc::new(crate::api::bad_keys::BadKeyLimiter::new(1e9, u32::MAX)),
        agent_calls: crate::api::InFlight::new(32),
        config: Arc::new(Config::default()),
        host: HostFacts::detect(),
        metrics: Default::default(),
    }
}

pub fn fake_vsock(vsock: PathBuf, agent: PathBuf) {
    std::fs::create_dir_all(vsock.parent().unwrap()).unwrap();
    let listener = tokio::net::UnixListener::bind(&vsock).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let agent = agent.clone();
            tokio::spawn(async move {
                let mut r = tokio::io::BufReader::new(s);
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                assert_eq!(line, "CONNECT 1024\n");
                let mut s = r.into_inner();
                s.write_all(b"OK 1073741824\n").await.unwrap();
                let mut a = tokio::net::UnixStream::connect(&agent).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut s, &mut a).await;
            });
        }
    });
}

/// The daemon serving one running computer backed by a real agent.
pub struct Served {
    pub store: Arc<Store>,
    pub c: Computer,
    /// The API's Unix socket.
    pub api: PathBuf,
    /// The API on loopback TCP (for browsers).
    pub tcp: SocketAddr,
    /// A key for the REST routes.
    pub key: String,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// Starts the agent configured by `cfg` (listening on a Unix socket) and the daemon (data in
/// `dir/data`) with one running computer of `resolution` whose `vnc_password` is `password`.
pub async fn serve_one_computer(
    dir: &Path,
    cfg: deskd_agent::Config,
    password: &str,
    resolution: &str,
) -> Served {
    serve_one_computer_with(dir, cfg, password, resolution, &Options::default()).await
}

/// How [`serve_one_computer_with`] sets the daemon up beyond the defaults.
#[derive(Debug, Default)]
pub struct Options {
    /// The daemon's `public_url` (the base of `connection_url` and `hostname`, which viewers
    /// behind a proxy connect to).
    pub public_url: Option<String>,
    /// Wrong credentials a peer may send before it waits (`rate_limit.bad_key_burst`; the tests'
    /// default is unlimited), then one a second.
    pub bad_key_burst: Option<u32>,
}

/// [`serve_one_computer`] with `options`.
pub async fn serve_one_computer_with(
    dir: &Path,
    cfg: deskd_agent::Config,
    password: &str,
    resolution: &str,
    options: &Options,
) -> Served {
    let deskd_agent::Listen::Unix(agent_sock) = cfg.listen.clone() else {
        panic!("the test agent listens on a Unix socket");
    };
    let agent = deskd_agent::build(&cfg).unwrap();
    let listen = cfg.listen.clone();
    tokio::spawn(async move { deskd_agent::server::serve(&listen, agent).await });

    let data = dir.join("data");
    let store = Arc::new(Store::open(&data).unwrap());
    let backend = Arc::new(VmmProcessBackend::new(
        "/nonexistent/deskd".into(),
        &data,
        false,
    ));
    let lifecycle = Arc::new(Lifecycle::new(store.clone(), backend, data.clone()));
    let ws = store
        .create_workspace("w", WorkspaceStatus::Active, None)
        .unwrap();
    let c = store
        .insert_computer(
            &NewComputer {
                workspace_id: ws.id,
                name: "c".into(),
                os: "linux".into(),
                cpu: 1,
                ram_gb: 4,
                gpu: "none".into(),
                disk_size_gb: 8,
                resolution: resolution.into(),
                auto_stop_minutes: None,
                template_ref: "system/desktop@1.0.0".into(),
                image: None,
                vnc_password: password.into(),
                egress_policy: None,
            },
            |_| Ok(()),
        )
        .unwrap();
    store
        .set_computer_status(&c.id, ComputerStatus::Running, None)
        .unwrap();
    let key = store.create_key("test", None).unwrap().secret;
    // Until the agent takes connections (its socket file appears a moment before it listens).
    while tokio::net::UnixStream::connect(&agent_sock).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake_vsock(lifecycle.agent_socket(&c.id), agent_sock);
    let mut state = app_state(store.clone(), lifecycle, &data);
    if let Some(url) = &options.public_url {
        let mut config = (*state.config).clone();
        config.public_url = url.clone();
        state.config = Arc::new(config);
    }
    if let Some(burst) = options.bad_key_burst {
        state.bad_keys = Arc::new(crate::api::bad_keys::BadKeyLimiter::new(1.0, burst));
    }
    let api = dir.join("api.sock");
    let listener = tokio::net::UnixListener::bind(&api).unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let app = router(state);
    tokio::spawn(crate::api::server::serve(
        listener,
        app.clone(),
        stop.clone(),
        Duration::from_secs(1),
    ));
    let tcp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = tcp_listener.local_addr().unwrap();
    tokio::spawn(crate::api::server::serve(
        tcp_listener,
        app,
        stop,
        Duration::from_secs(1),
    ));
    Served {
        store,
        c,
        api,
        tcp,
        key,
        _stop: stop_tx,
    }
}
