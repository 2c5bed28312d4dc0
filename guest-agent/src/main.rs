//! deskd-agent: the HTTP server inside each computer's VM that does the desktop work.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use deskd_agent::protocol::{DEFAULT_OUTPUT_CAP, VSOCK_PORT};
use deskd_agent::{Config, Listen};

#[derive(Parser, Debug)]
#[command(name = "deskd-agent", version, about = "deskd guest agent")]
struct Args {
    /// Where to listen: vsock:PORT (in the guest) or unix:PATH (tests).
    #[arg(long, default_value_t = format!("vsock:{VSOCK_PORT}"))]
    listen: String,
    /// X display to drive.
    #[arg(long, default_value = ":0")]
    display: String,
    /// Desktop user that bash, exec and the terminal run as (default: the agent's own user).
    #[arg(long)]
    user: Option<String>,
    /// Override the desktop user's home directory.
    #[arg(long)]
    home: Option<PathBuf>,
    /// Cap on captured bash/exec output, in bytes.
    #[arg(long, default_value_t = DEFAULT_OUTPUT_CAP)]
    output_cap: usize,
    /// Seconds without input before an `idle` event.
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// Seconds one X call may take before the request fails with 503 (a hung X server).
    #[arg(long, default_value_t = 30)]
    x_timeout: u64,
    /// Run as the root helper of `POST /resumed` instead: one request on stdin, the answer on
    /// stdout (started by deskd-restore.socket; see deskd_agent::resumed).
    #[arg(long)]
    apply_resumed: bool,
    /// Run as the root helper of `POST /root-fs/grow` instead: one request on stdin, the answer
    /// on stdout (started by deskd-growfs.socket; see deskd_agent::growfs).
    #[arg(long, conflicts_with = "apply_resumed")]
    grow_root_fs: bool,
    /// The X server's RFB (VNC) Unix socket, bridged to /ws/vnc.
    #[arg(long, default_value = deskd_agent::vnc::DEFAULT_RFB_SOCKET)]
    vnc_socket: PathBuf,
    /// The VNC password file the X server reads (-rfbauth), written by POST /vnc/password.
    #[arg(long, default_value = deskd_agent::vnc::DEFAULT_PASSWORD_FILE)]
    vnc_password_file: PathBuf,
    /// PulseAudio server for the audio stream and RTMP (default: the session's, found through
    /// $XDG_RUNTIME_DIR as every PulseAudio client does).
    #[arg(long)]
    pulse_server: Option<String>,
    /// PulseAudio source of the desktop's sound.
    #[arg(long, default_value = deskd_agent::protocol::audio::SPEAKER_MONITOR)]
    audio_source: String,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.apply_resumed {
        return deskd_agent::resumed::serve_helper();
    }
    if args.grow_root_fs {
        return deskd_agent::growfs::serve_helper();
    }
    let listen: Listen = match args.listen.parse() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("deskd-agent: {e}");
            std::process::exit(2);
        }
    };
    let cfg = Config {
        listen,
        display: args.display,
        user: args.user,
        home: args.home,
        output_cap: args.output_cap,
        idle_after: Duration::from_secs(args.idle_seconds.max(1)),
        x_call_limit: Duration::from_secs(args.x_timeout.max(1)),
        vnc_socket: args.vnc_socket,
        vnc_password_file: args.vnc_password_file,
        pulse: deskd_agent::audio::Pulse {
            server: args.pulse_server,
            source: args.audio_source,
        },
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deskd-agent: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(deskd_agent::run_agent(cfg)) {
        eprintln!("deskd-agent: {e}");
        std::process::exit(1);
    }
    std::process::ExitCode::SUCCESS
}
