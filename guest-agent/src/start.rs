//! Agent configuration and start-up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::server::{Agent, Listen};
use crate::{events, run, server, x11};

/// Everything the agent is configured with (the CLI fills it; tests build it directly).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub display: String,
    /// Desktop user; `None` runs commands as the agent's own user.
    pub user: Option<String>,
    /// Overrides the user's home directory (commands' working directory, watched folders).
    pub home: Option<PathBuf>,
    pub output_cap: usize,
    pub idle_after: Duration,
    /// How long one X call may take before the request fails with 503 (default 30 s).
    pub x_call_limit: Duration,
    /// The X server's RFB (VNC) Unix socket, bridged to `/ws/vnc`.
    pub vnc_socket: PathBuf,
    /// The VNC password file the X server reads, written by `POST /vnc/password`.
    pub vnc_password_file: PathBuf,
    /// The PulseAudio server and the speaker's monitor source (`/ws/audio`, RTMP streams).
    pub pulse: crate::audio::Pulse,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    User(#[from] run::RunError),
    #[error("could not listen: {0}")]
    Listen(#[from] std::io::Error),
}

/// Builds the shared state and starts the event sources (needs a tokio runtime).
pub fn build(cfg: &Config) -> Result<Arc<Agent>, StartError> {
    let user = run::DesktopUser::resolve(cfg.user.as_deref(), cfg.home.clone(), &cfg.display)?;
    let events = events::EventHub::new();
    events::start_sources(&events, &cfg.display, user.home.clone(), cfg.idle_after);
    Ok(Arc::new(Agent {
        desktop: x11::Desktop::new(&cfg.display),
        clipboard: Arc::new(x11::clipboard::Clipboard::new(&cfg.display)),
        user,
        output_cap: cfg.output_cap,
        events,
        x_call_limit: cfg.x_call_limit,
        vnc_socket: cfg.vnc_socket.clone(),
        vnc_password_file: cfg.vnc_password_file.clone(),
        pulse: cfg.pulse.clone(),
        streamer: crate::stream::Streamer::new(&cfg.display, cfg.pulse.clone(), "ffmpeg"),
    }))
}

/// Runs the agent until the listener fails.
pub async fn run_agent(cfg: Config) -> Result<(), StartError> {
    let agent = build(&cfg)?;
    server::serve(&cfg.listen, agent).await?;
    Ok(())
}
