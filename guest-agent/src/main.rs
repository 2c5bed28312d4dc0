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
