//! Runs programs for `/bash` and `/exec`: as the desktop user, in a new session (so a timeout can
//! kill the whole process group), stdout and stderr on one pipe (so their order is kept), output
//! capped, with a wall-clock timeout.

pub mod bash;
pub mod python;
pub mod user;

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::pipe;

pub use user::DesktopUser;

/// After the main process exits, how long to keep reading output that its background children
/// may still write before answering.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not create a pipe: {0}")]
    Pipe(std::io::Error),
    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("the desktop user {0:?} does not exist; create it or pass --user")]
    NoSuchUser(String),
    #[error("could not look up the desktop user: {0}")]
    UserLookup(String),
}

/// What to run and how.
pub struct RunSpec {
    pub program: String,
    pub args: Vec<OsString>,
    pub user: DesktopUser,
    pub extra_env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub output_cap: usize,
    /// Open a second pipe as fd 3 in the child and return what it wrote (for structured results).
    pub result_fd: bool,
}

#[derive(Debug)]
pub struct RunOutcome {
    pub output: Vec<u8>,
    pub truncated: bool,
    pub exit_code: i32,
    pub timed_out: bool,
    pub result: Vec<u8>,
}

fn os_pipe() -> Result<(OwnedFd, OwnedFd), RunError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RunError::Pipe(e.into()))
}

pub async fn run(spec: RunSpec) -> Result<RunOutcome, RunError> {
    let (out_r, out_w) = os_pipe()?;
    let out_w2 = out_w.try_clone().map_err(RunError::Pipe)?;
    let result_pipe = if spec.result_fd {
        Some(os_pipe()?)
    } else {
        None
    };

    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.user.env())
        .envs(spec.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&spec.user.home)
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(out_w2));
    let switch = spec.user.switch();
    let result_w_raw = result_pipe.as_ref().map(|(_, w)| w.as_raw_fd());
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (setsid, dup2, setgroups, setgid, setuid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if let Some(fd) = result_w_raw {
                // dup2 clears CLOEXEC on the new descriptor, so fd 3 survives the exec; when the
                // pipe already is fd 3, clear the flag by hand.
                let rc = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(sw) = &switch {
                sw.apply()?;
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
    // Parent keeps only the read ends (the write ends moved into Command, dropped with it above).
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    let result_r = result_pipe.map(|(r, w)| {
        drop(w);
        r
    });

    if let (Some(data), Some(mut stdin)) = (spec.stdin, child.stdin.take()) {
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
    }

    let mut reader = pipe::Receiver::from_owned_fd(out_r).map_err(RunError::Pipe)?;
    let result_task = result_r.map(|fd| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Ok(mut r) = pipe::Receiver::from_owned_fd(fd) {
                let mut chunk = [0u8; 4096];
                // Structured results are small; bound them anyway.
                while let Ok(n) = r.read(&mut chunk).await {
                    if n == 0 || buf.len() > 1 << 20 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            buf
        })
    });

    let mut output = Vec::new();
    let mut truncated = false;
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let mut timed_out = false;
    let mut status = None;
    let mut eof = false;

    let mut take = |n: usize, chunk: &[u8], output: &mut Vec<u8>| {
        let room = spec.output_cap.saturating_sub(output.len());
        if n > room {
            truncated = true;
        }
        output.extend_from_slice(&chunk[..n.min(room)]);
    };

    while status.is_none() {
        tokio::select! {
            r = reader.read(&mut chunk), if !eof => match r {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => take(n, &chunk, &mut output),
            },
            s = child.wait() => status = Some(s),
            _ = &mut deadline, if !timed_out => {
                timed_out = true;
                if let Some(pg) = pgid {
                    let _ = killpg(pg, Signal::SIGKILL);
                }
            }
        }
    }
    let grace = tokio::time::sleep(DRAIN_GRACE);
    tokio::pin!(grace);
    while !eof {
        tokio::select! {
            r = reader.read(&mut chunk) => match r {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => take(n, &chunk, &mut output),
            },
            _ = &mut grace => break,
        }
    }
    let exit_code = match status {
        Some(Ok(st)) => st
            .code()
            .or_else(|| st.signal().map(|s| 128 + s))
            .unwrap_or(-1),
        _ => -1,
    };
    let result = match result_task {
        Some(t) => tokio::time::timeout(DRAIN_GRACE, t)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
        None => Vec::new(),
    };
    Ok(RunOutcome {
        output,
        truncated,
        exit_code: if timed_out { 124 } else { exit_code },
        timed_out,
        result,
    })
}
