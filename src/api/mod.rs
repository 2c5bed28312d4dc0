//! The public Orgo API served by `deskd serve`.

use std::process::ExitCode;

/// Options of `deskd serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {}

/// Runs the daemon until it is told to stop.
pub fn serve(_args: ServeArgs) -> ExitCode {
    eprintln!("deskd serve: not implemented yet");
    ExitCode::from(2)
}
