//! The daemon's application state for in-process tests of the API: a real store, lifecycle and
//! router on a temporary data directory, one workspace with one computer, and an API key. The
//! VMM binary does not exist, so nothing here starts a VM.

use std::sync::Arc;

use super::rate_limit::RateLimiter;
use super::{AppState, HostFacts, InFlight};
use crate::computers::{Lifecycle, VmmProcessBackend};
use crate::config::Config;
use crate::store::{Computer, NewComputer, Store, WorkspaceStatus};

pub(crate) struct TestApi {
    pub state: AppState,
    pub computer: Computer,
    /// A key for every workspace.
    pub key: String,
    pub dir: tempfile::TempDir,
}

/// Builds the state (inside a tokio runtime: the template builds start a task); `config` is the
/// daemon's configuration, whose agent-call limit the state's [`InFlight`] takes.
pub(crate) fn test_api(config: Config) -> TestApi {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let store = Arc::new(Store::open(&data).expect("store"));
    let backend = Arc::new(VmmProcessBackend::new(
        "/nonexistent/deskd".into(),
        &data,
        false,
    ));
    let lifecycle = Arc::new(Lifecycle::new(store.clone(), backend, data.clone()));
    let ws = store
        .create_workspace("w", WorkspaceStatus::Active, None)
        .expect("workspace");
    let computer = store
        .insert_computer(
            &NewComputer {
                workspace_id: ws.id,
                name: "c".into(),
                os: "linux".into(),
                cpu: 1,
                ram_gb: 4,
                gpu: "none".into(),
                disk_size_gb: 8,
                resolution: "640x480x24".into(),
                auto_stop_minutes: None,
                template_ref: "system/desktop@1.0.0".into(),
                image: None,
                vnc_password: "token-of-c".into(),
                egress_policy: None,
            },
            |_| Ok(()),
        )
        .expect("computer");
    let key = store.create_key("test", None).expect("key").secret;
    let builds = crate::templates::Builds::new(
        store.clone(),
        Arc::new(crate::templates::NoVmBuilder),
        &data,
        crate::templates::builds::DEFAULT_TIME_LIMIT,
    )
    .expect("builds");
    let state = AppState {
        builds,
        network: None,
        signer: Arc::new(crate::files::signing::Signer::load_or_create(&data).expect("signer")),
        account_id: store.account_id().expect("account").into(),
        store,
        lifecycle,
        limiter: Arc::new(RateLimiter::new(1e9, u32::MAX)),
        bad_keys: Arc::new(super::bad_keys::BadKeyLimiter::new(1e9, u32::MAX)),
        agent_calls: InFlight::new(config.limits.max_agent_calls_per_key),
        config: Arc::new(config),
        host: HostFacts::detect(),
        metrics: Default::default(),
    };
    TestApi {
        state,
        computer,
        key,
        dir,
    }
}
