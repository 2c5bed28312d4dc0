//! `deskd serve`: the daemon's start-up and shutdown. Opens the store, makes the first key, binds
//! the API's sockets and says READY to systemd, then re-attaches to the VMs a previous daemon left
//! (in the background) and supervises them until SIGTERM, SIGINT or SIGHUP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::api::listen::{self, ListenError};
use crate::api::rate_limit::RateLimiter;
use crate::api::server;
use crate::api::{router, AppState, HostFacts, DEFAULT_SOCKET, INITIAL_KEY_FILE};
use crate::computers::{Lifecycle, VmmProcessBackend};
use crate::config::Config;
use crate::store::{Store, DEFAULT_DATA_DIR};

/// How long requests still running at shutdown may take to finish.
const DRAIN: Duration = Duration::from_secs(10);
/// How often the supervisor compares every computer's status with its VM.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);

/// Options of `deskd serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Unix socket to serve the API on (created with mode 0660).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Also listen on this TCP address (e.g. 127.0.0.1:8080, for a reverse proxy).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where the database, disks and VM files live.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Configuration file (default: /etc/deskd/deskd.toml if it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Confines every VMM: its own uid, no capabilities, a mount namespace with only its files,
    /// seccomp filters per thread, a cgroup of its own (docs/vmm-confinement.md). On by default
    /// when the daemon runs as root; `--confine=false` (or DESKD_CONFINE=0) runs VMMs unconfined,
    /// as root: for debugging only.
    #[arg(
        long,
        env = "DESKD_CONFINE",
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub confine: bool,
    /// First uid/gid of the confined VMMs' identities (VMM N runs as BASE+N, 1000 of them). The
    /// default, 70000, sits where systemd assigns no one (https://systemd.io/UIDS-GIDS/); the
    /// daemon refuses to start if a user, group or subuid/subgid range of this host holds one.
    #[arg(long, env = "DESKD_VMM_UID_BASE", default_value_t = crate::computers::vmm_identity::FIRST_POOL_ID)]
    pub vmm_uid_base: u32,
}

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("guest networking: {0} (or set [network] enabled = false)")]
    Network(#[from] crate::network::NetworkError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot write the first API key to {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find the deskd executable to run VMs with: {0}")]
    Exe(std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Signing(#[from] crate::files::signing::SigningError),
    #[error("cannot prepare the files directory {path}: {source}; check the data directory")]
    FilesDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identities(#[from] crate::computers::vmm_identity::IdentityError),
    #[error("cannot catch SIGTERM, SIGINT and SIGHUP (the daemon would not stop cleanly): {0}")]
    Signals(std::io::Error),
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
}

/// Runs the daemon until SIGTERM, SIGINT or SIGHUP.
pub fn serve(args: ServeArgs) -> ExitCode {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{}", ServeError::Runtime(e));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("deskd serve: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // journald and log files get plain text; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Makes a key on first start (no key ever created) and writes it to a root-only file.
fn ensure_first_key(store: &Store, data_dir: &Path) -> Result<(), ServeError> {
    if !store.list_keys()?.is_empty() {
        return Ok(());
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(INITIAL_KEY_FILE);
    let created = store.create_key("initial", None)?;
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        writeln!(f, "{}", created.secret)?;
        f.sync_all()
    };
    write().map_err(|source| ServeError::KeyFile {
        path: path.clone(),
        source,
    })?;
    tracing::info!(
        "created the first API key (id {}); it is in {} (readable by root only)",
        created.key.id,
        path.display()
    );
    Ok(())
}

async fn run(args: ServeArgs) -> Result<(), ServeError> {
    let mut signals = StopSignals::install()?;
    let config = Config::load(args.config.as_deref())?;
    let store = Arc::new(Store::open(&args.data_dir)?);
    ensure_first_key(&store, &args.data_dir)?;

    let hardware = crate::vmm::host::cpu_has_hardware_virtualization();
    if !hardware {
        tracing::warn!(
            "this CPU has no hardware virtualization (no vmx/svm in /proc/cpuinfo): the API is served, \
             but computers cannot start here. Run deskd inside the rig (tests/rig/serve) to run VMs."
        );
    }
    let exe = std::env::current_exe().map_err(ServeError::Exe)?;
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let confine = root && args.confine;
    if confine {
        // Before anything runs as a pool identity: one that is someone's already would hand a
        // VMM escape that someone's files.
        crate::computers::vmm_identity::check_pool(args.vmm_uid_base, Path::new("/etc"))?;
        tracing::info!(
            "VMMs are confined: each in its own mount namespace, as its own user (uids {} to {}), \
             without capabilities, with seccomp filters",
            args.vmm_uid_base,
            args.vmm_uid_base + crate::computers::vmm_identity::POOL_SIZE - 1
        );
    } else if root {
        tracing::warn!(
            "VMM confinement is off (--confine=false or DESKD_CONFINE=0): a VMM escape owns this host"
        );
    } else {
        tracing::warn!(
            "deskd runs as a user, not root: VMMs are not confined (confinement needs root)"
        );
    }
    let cgroups = if confine {
        crate::computers::cgroup::Cgroups::init()
            .with_io(&config.vm_io, &args.data_dir.join("computers"))
    } else {
        if config.vm_io.any() {
            tracing::warn!(
                "[vm_io] sets disk limits, but they apply only to confined VMMs (the default): no \
                 VM's disk I/O is limited"
            );
        }
        crate::computers::cgroup::Cgroups::disabled()
    };
    let backend = Arc::new(
        VmmProcessBackend::new(exe, &args.data_dir, hardware)
            .with_confinement(confine, cgroups)
            .with_uid_base(args.vmm_uid_base),
    );
    // Guest networking (issue 12): on where the host can do it (`[network] enabled = "auto"`),
    // required with `true` (a host that cannot provide it then refuses to start rather than run
    // guests unfiltered), off with `false`; the log says which and why.
    let networking = crate::network::switch::start(&config.network, hardware).await?;
    let network = networking.network.clone();
    let lifecycle = Arc::new(
        Lifecycle::new(store.clone(), backend, args.data_dir.clone())
            .with_network(networking.network, networking.required),
    );
    crate::files::reset_incoming(&args.data_dir).map_err(|source| ServeError::FilesDir {
        path: crate::files::incoming_dir(&args.data_dir),
        source,
    })?;
    let signer = Arc::new(crate::files::signing::Signer::load_or_create(
        &args.data_dir,
    )?);
    // Uploads waiting for computers that were not running go in when they start.
    let _deliveries = crate::files::delivery::spawn_on_start(
        store.clone(),
        lifecycle.clone(),
        args.data_dir.clone(),
    );
    // The curated system/... templates of this deskd, and the template build manager with the
    // VM builder (build computers boot the base image; crate::templates::vm_builder).
    crate::templates::seed(&store)?;
    let builder =
        crate::templates::VmBuilder::new(store.clone(), lifecycle.clone(), config.build.clone());
    // Build computers of builds the last daemon was running (those builds are failed below).
    let leftovers = builder.remove_leftovers();
    let builds = crate::templates::Builds::new(
        store.clone(),
        Arc::new(builder.clone()),
        &args.data_dir,
        crate::templates::builds::DEFAULT_TIME_LIMIT,
    )?;
    tokio::spawn(leftovers);
    let state = AppState {
        builds,
        network,
        signer,
        account_id: store.account_id()?.into(),
        store: store.clone(),
        lifecycle: lifecycle.clone(),
        limiter: Arc::new(RateLimiter::new(
            config.rate_limit.requests_per_second,
            config.rate_limit.burst,
        )),
        bad_keys: Arc::new(crate::api::bad_keys::BadKeyLimiter::new(
            config.rate_limit.bad_key_per_second,
            config.rate_limit.bad_key_burst,
        )),
        agent_calls: crate::api::InFlight::new(config.limits.max_agent_calls_per_key),
        config: Arc::new(config),
        host: HostFacts::detect(),
        metrics: Default::default(),
    };
    let app = router(state);

    let unix = listen::bind_unix(&args.socket)?;
    let tcp = match args.listen {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    "listening on non-loopback {addr}: put TLS and a firewall in front of it"
                );
            }
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ListenError::Io {
                        what: addr.to_string(),
                        source,
                    })?,
            )
        }
        None => None,
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(server::serve(unix, app.clone(), stop_rx.clone(), DRAIN));
    if let Some(tcp) = tcp {
        servers.spawn(server::serve(tcp, app, stop_rx.clone(), DRAIN));
    }
    tracing::info!(
        socket = %args.socket.display(),
        tcp = ?args.listen,
        data_dir = %args.data_dir.display(),
        "deskd is serving the API"
    );
    listen::sd_notify("READY=1\nSTATUS=serving the API");
    // Re-attaching to the VMs a previous daemon left and supervising them happen after the API
    // answers, in the background: no guest, however slow, delays the start-up.
    let supervisor = lifecycle.spawn_recovery_then_supervisor(SUPERVISE_EVERY);

    let mut result = Ok(());
    tokio::select! {
        name = signals.recv() => tracing::info!("{name} received"),
        Some(done) = servers.join_next() => {
            result = match done {
                Ok(()) => Err(ServeError::Serve(std::io::Error::other("a listener stopped"))),
                Err(e) => Err(ServeError::Serve(std::io::Error::other(e))),
            };
        }
    }
    listen::sd_notify("STOPPING=1");
    tracing::info!("shutting down (running VMs keep running; the next deskd re-attaches)");
    let _ = stop_tx.send(true);
    // Each server lets its requests finish for DRAIN; this is only the backstop.
    let drain = async { while servers.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), drain).await;
    supervisor.abort();
    let _ = std::fs::remove_file(&args.socket);
    result
}

/// The signals that stop the daemon cleanly: SIGTERM (systemd's stop), SIGINT (Ctrl-C) and
/// SIGHUP (a closed terminal, or `kill -HUP`: deskd has no configuration to reload, and the unit
/// sets no `ExecReload=`). Caught from the first moment of `run`, so that one sent while the
/// daemon starts is handled once it has (rather than killing it half-way, with its socket left).
/// SIGPIPE needs nothing here: Rust's runtime ignores it before `main`, so a client that hangs up
/// mid-answer is an `EPIPE` on its connection only.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals, ServeError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).map_err(ServeError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(ServeError::Signals)?,
            hup: signal(SignalKind::hangup()).map_err(ServeError::Signals)?,
        })
    }

    /// Waits for one of them; its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: super::ServeArgs,
    }

    fn confine(argv: &[&str]) -> bool {
        Serve::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
            .expect("parses")
            .args
            .confine
    }

    /// Confinement is the default; `--confine` alone still parses (scripts written before), and
    /// only an explicit false turns it off.
    #[test]
    fn vmms_are_confined_unless_told_otherwise() {
        // The variable would decide the default: this test needs it unset (it is in no test env).
        if std::env::var_os("DESKD_CONFINE").is_some() {
            eprintln!("*** SKIPPED: DESKD_CONFINE is set in this environment ***");
            return;
        }
        assert!(confine(&[]));
        assert!(confine(&["--confine"]));
        assert!(confine(&["--confine=true"]));
        assert!(!confine(&["--confine=false"]));
        assert!(!confine(&["--confine=0"]));
        assert!(Serve::try_parse_from(["serve", "--confine=maybe"]).is_err());
    }
}
