//! The embedded VMM run as `deskd vmm` (one process per VM).

pub mod devices;

use std::process::ExitCode;

/// Options of `deskd vmm`.
#[derive(clap::Args, Debug)]
pub struct VmmArgs {}

/// Boots and runs one VM until it powers off; the exit status says how it ended.
pub fn run(_args: VmmArgs) -> ExitCode {
    eprintln!("deskd vmm: not implemented yet");
    ExitCode::from(2)
}
