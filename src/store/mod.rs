//! SQLite state: keys, workspaces, computers, templates, files.

use std::process::ExitCode;

/// `deskd keys ...`
#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// List keys (never their secrets).
    List,
}

/// Runs one `deskd keys` command.
pub fn keys_command(_cmd: KeysCommand) -> ExitCode {
    eprintln!("deskd keys: not implemented yet");
    ExitCode::from(2)
}
