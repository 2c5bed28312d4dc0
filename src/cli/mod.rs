//! The operator's command line (`deskd ls`, `create`, `show`, `start`, `stop`, `rm`, `screenshot`,
//! `bash`, `console`): a client of the daemon's API over its Unix socket.
//!
//! Layout: this file holds the clap definitions and the dispatch; `client` (HTTP over the
//! socket), `key` (where the API key comes from), `error` (the one error type and the exit
//! codes), `output` (tables, summaries, stdout), `computers` (the lifecycle verbs), `desktop`
//! (screenshot, bash, console) and `follow` (what `console --follow` prints next).

mod client;
mod computers;
mod desktop;
mod error;
mod follow;
mod key;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

pub use error::{exit, CliError};
pub use key::KEY_VARS;

use crate::api::DEFAULT_SOCKET;
use crate::store::DEFAULT_DATA_DIR;

/// How to reach the daemon; every client verb takes these.
#[derive(clap::Args, Debug, Clone)]
pub struct Connection {
    /// The daemon's Unix socket.
    #[arg(long, env = "DESKD_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// API key. Without it: $DESKD_API_KEY, then $ORGO_API_KEY, then (as root only)
    /// DATA_DIR/initial-api-key.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// The daemon's data directory (where root finds the first API key).
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Print the daemon's JSON instead of a human summary.
    #[arg(long)]
    pub json: bool,
}

/// One computer, by ID, name or instance ID.
#[derive(clap::Args, Debug)]
pub struct Target {
    #[command(flatten)]
    pub conn: Connection,
    /// The computer: its ID, its name (when unique) or its instance ID.
    #[arg(value_name = "ID")]
    pub computer: String,
}

/// Waiting for a computer to get where it was sent.
#[derive(clap::Args, Debug)]
pub struct Wait {
    /// Wait until the computer is running (`stop`: stopped); fail if it ends in `error`.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600, requires = "wait")]
    pub wait_timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Only the computers of this workspace (name or ID).
    #[arg(long, visible_alias = "project", value_name = "NAME|ID")]
    pub workspace: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub conn: Connection,
    /// Workspace name or ID; a name that does not exist yet is created. Default: the only
    /// workspace there is, else the one named `default` (created if there is none).
    #[arg(long, visible_alias = "project", value_name = "NAME|ID")]
    pub workspace: Option<String>,
    /// Computer name (default: computer-NNNN, as the SDK does).
    #[arg(long)]
    pub name: Option<String>,
    /// vCPUs: 1, 2, 4, 8 or 16 (default 1).
    #[arg(long)]
    pub cpu: Option<u32>,
    /// RAM in GB: 1, 2, 4, 8, 16, 32 or 64 (default 4).
    #[arg(long, visible_alias = "memory", value_name = "GB")]
    pub ram: Option<u32>,
    /// Disk in GB (default 8).
    #[arg(long, value_name = "GB")]
    pub disk: Option<u32>,
    /// WIDTHxHEIGHTxDEPTH (default 1280x720x24).
    #[arg(long)]
    pub resolution: Option<String>,
    /// Template, namespace/name@version (default system/desktop@1.0.0).
    #[arg(long, value_name = "REF")]
    pub template: Option<String>,
    /// Suspend after this many idle minutes (0 = never).
    #[arg(long, value_name = "MINUTES")]
    pub auto_stop: Option<u32>,
    #[command(flatten)]
    pub wait: Wait,
}

#[derive(clap::Args, Debug)]
pub struct TransitionArgs {
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub wait: Wait,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum ImageFormat {
    Png,
    Jpeg,
}

#[derive(clap::Args, Debug)]
pub struct ScreenshotArgs {
    #[command(flatten)]
    pub target: Target,
    /// Write the image to FILE (without it, to stdout, which must not be a terminal).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Image format.
    #[arg(long, value_enum, default_value = "png")]
    pub format: ImageFormat,
}

#[derive(clap::Args, Debug)]
pub struct BashArgs {
    #[command(flatten)]
    pub target: Target,
    /// Seconds the command may run (the daemon's default: 200).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// The command: one argument is a shell line as it is (`'ls | wc -l'`); several are quoted
    /// as words (`-- sh -c 'exit 7'`).
    #[arg(
        value_name = "CMD",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub target: Target,
    /// Keep printing what the guest writes (until Ctrl-C).
    #[arg(short, long, conflicts_with = "json")]
    pub follow: bool,
    /// Only the last BYTES of the log (the daemon's maximum: 1 MiB).
    #[arg(long, value_name = "BYTES")]
    pub tail: Option<u64>,
}

/// The client verbs, flattened into `deskd`'s own subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// List computers (a table; --json for the daemon's answer).
    Ls(LsArgs),
    /// Create a computer (it starts at once; --wait until it runs).
    Create(Box<CreateArgs>),
    /// Show one computer.
    Show(Target),
    /// Start (or resume) a computer.
    Start(TransitionArgs),
    /// Stop a computer.
    Stop(TransitionArgs),
    /// Delete a computer and its disk.
    Rm(Target),
    /// Take a screenshot: PNG bytes to stdout or to -o FILE.
    Screenshot(ScreenshotArgs),
    /// Run a shell command in the computer; exits with the command's status (255: deskd could
    /// not run it).
    Bash(BashArgs),
    /// Print the computer's serial console log.
    Console(ConsoleArgs),
}

/// Runs a client verb; prints any error as `deskd: MESSAGE` on stderr and exits with its code.
pub fn run(cmd: ClientCommand) -> ExitCode {
    let bash = matches!(cmd, ClientCommand::Bash(_));
    match dispatch(cmd) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("deskd: {e}");
            ExitCode::from(if bash {
                exit::BASH_FAILED
            } else {
                e.exit_code()
            })
        }
    }
}

fn connect(conn: &Connection) -> Result<client::Client, CliError> {
    let key = key::resolve(
        conn.api_key.as_deref(),
        |var| std::env::var(var).ok(),
        &conn.data_dir,
        key::running_as_root(),
    )?;
    client::Client::new(&conn.socket, key)
}

fn dispatch(cmd: ClientCommand) -> Result<u8, CliError> {
    let done = |r: Result<(), CliError>| r.map(|()| exit::OK);
    match cmd {
        ClientCommand::Ls(a) => done(computers::ls(&connect(&a.conn)?, &a)),
        ClientCommand::Create(a) => done(computers::create(&connect(&a.conn)?, &a)),
        ClientCommand::Show(t) => done(computers::show(&connect(&t.conn)?, &t)),
        ClientCommand::Start(a) => done(computers::transition(
            &connect(&a.target.conn)?,
            &a,
            computers::Transition::Start,
        )),
        ClientCommand::Stop(a) => done(computers::transition(
            &connect(&a.target.conn)?,
            &a,
            computers::Transition::Stop,
        )),
        ClientCommand::Rm(t) => done(computers::rm(&connect(&t.conn)?, &t)),
        ClientCommand::Screenshot(a) => {
            desktop::check_destination(&a)?;
            done(desktop::screenshot(&connect(&a.target.conn)?, &a))
        }
        ClientCommand::Bash(a) => desktop::bash(&connect(&a.target.conn)?, &a),
        ClientCommand::Console(a) => done(desktop::console(&connect(&a.target.conn)?, &a)),
    }
}
