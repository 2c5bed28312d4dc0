//! The CLI's one error type and the exit codes it maps to (documented in README.md, "Command line").

/// Exit codes of the client verbs. `bash` exits with its command's own status instead, and with
/// [`exit::BASH_FAILED`] when deskd could not run the command at all.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// The daemon answered an error, or the computer did not get where it was asked to go.
    pub const FAILED: u8 = 1;
    /// The command line is wrong (clap uses 2 for its own parse errors too).
    pub const USAGE: u8 = 2;
    /// The daemon's socket cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// No such computer or workspace.
    pub const NOT_FOUND: u8 = 4;
    /// No API key was found, or the daemon refused the one given.
    pub const AUTH: u8 = 5;
    /// `--wait` ran out of time (the operation goes on in the daemon).
    pub const TIMED_OUT: u8 = 6;
    /// `deskd bash` could not run the command (as `ssh` does; the reason is on stderr).
    pub const BASH_FAILED: u8 = 255;
}

/// Why a client verb failed; each variant says which exit code it means.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    NoKey(String),
    /// A non-2xx answer: its HTTP status and the daemon's message (with its details).
    #[error("{message}")]
    Daemon { status: u16, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    TimedOut(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Unreachable(_) => exit::UNREACHABLE,
            CliError::NoKey(_) => exit::AUTH,
            CliError::Daemon { status: 401, .. } => exit::AUTH,
            CliError::Daemon { status: 404, .. } | CliError::NotFound(_) => exit::NOT_FOUND,
            CliError::Daemon { .. } | CliError::Failed(_) => exit::FAILED,
            CliError::TimedOut(_) => exit::TIMED_OUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_their_exit_codes() {
        let daemon = |status| CliError::Daemon {
            status,
            message: String::new(),
        };
        assert_eq!(daemon(404).exit_code(), exit::NOT_FOUND);
        assert_eq!(daemon(401).exit_code(), exit::AUTH);
        assert_eq!(daemon(400).exit_code(), exit::FAILED);
        assert_eq!(daemon(409).exit_code(), exit::FAILED);
        assert_eq!(daemon(503).exit_code(), exit::FAILED);
        assert_eq!(CliError::NoKey(String::new()).exit_code(), exit::AUTH);
        assert_eq!(
            CliError::Unreachable(String::new()).exit_code(),
            exit::UNREACHABLE
        );
        assert_eq!(CliError::Usage(String::new()).exit_code(), exit::USAGE);
        assert_eq!(
            CliError::TimedOut(String::new()).exit_code(),
            exit::TIMED_OUT
        );
    }
}
