//! The `deskd` command line: one binary for the daemon, its VMM processes, admin commands and
//! the operator's client verbs (`src/cli`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "deskd",
    version,
    about = "Self-hosted Orgo computer API on KVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Orgo API on a Unix socket (and optionally TCP).
    Serve(deskd::serve::ServeArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(deskd::store::KeysCommand),
    /// Run one virtual machine (started by the daemon; usable by hand for debugging).
    Vmm(Box<deskd::vmm::VmmArgs>),
    /// Run a tiny real-mode guest on /dev/kvm and report its instruction rate.
    ProbeKvm(deskd::vmm::kvmprobe::ProbeArgs),
    #[command(flatten)]
    Client(deskd::cli::ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => deskd::serve::serve(args),
        Command::Keys(cmd) => deskd::store::keys_command(cmd),
        Command::Vmm(args) => deskd::vmm::run(*args),
        Command::ProbeKvm(args) => deskd::vmm::kvmprobe::run(args),
        Command::Client(cmd) => deskd::cli::run(cmd),
    }
}
