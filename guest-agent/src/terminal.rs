//! `/ws/terminal`: the desktop user's login shell on a PTY, spoken as JSON messages
//! (`input`, `resize`, `ping` in; `output`, `error`, `exit`, `pong` out).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::Stdio;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use nix::pty::{openpty, Winsize};
use tokio::io::unix::AsyncFd;

use crate::protocol::{TerminalIn, TerminalOut};
use crate::run::DesktopUser;

/// Close code for "could not start" (api.md section 4).
const CLOSE_COULD_NOT_START: u16 = 4500;
/// Client input waiting for the shell beyond which no more messages are read from the client
/// (the WebSocket then pushes back on it) until the shell has taken some.
const MAX_PENDING_INPUT: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
enum PtyError {
    #[error("could not open a PTY: {0}")]
    Open(nix::Error),
    #[error("could not start the shell {shell}: {source}")]
    Spawn {
        shell: String,
        source: std::io::Error,
    },
    #[error("PTY I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

struct Pty {
    master: AsyncFd<OwnedFd>,
    child: tokio::process::Child,
}

fn winsize(cols: u16, rows: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn spawn_shell(user: &DesktopUser, cols: u16, rows: u16) -> Result<Pty, PtyError> {
    let pty = openpty(Some(&winsize(cols, rows)), None).map_err(PtyError::Open)?;
    let slave: OwnedFd = pty.slave;
    let master: OwnedFd = pty.master;
    let mut cmd = std::process::Command::new(&user.shell);
    cmd.arg("-l")
        .env_clear()
        .envs(user.env())
        .env("TERM", "xterm-256color")
        .current_dir(&user.home)
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    let switch = user.switch();
    // SAFETY: runs in the forked child before exec; only async-signal-safe calls (setsid, ioctl,
    // setgroups/setgid/setuid), no allocation.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            // Make the PTY (now fd 0) the controlling terminal of the new session.
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(sw) = &switch {
                sw.apply()?;
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| PtyError::Spawn {
            shell: user.shell.display().to_string(),
            source,
        })?;
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| PtyError::Io(e.into()))?;
    // SAFETY: the OwnedFd moves into the AsyncFd and stays open for its whole life.
    let master = unsafe { AsyncFd::register(master) }
        .map_err(|e| PtyError::Io(std::io::Error::other(e.to_string())))?;
    Ok(Pty { master, child })
}

fn resize(master: &AsyncFd<OwnedFd>, cols: u16, rows: u16) {
    let ws = winsize(cols.clamp(1, 1000), rows.clamp(1, 1000));
    // SAFETY: TIOCSWINSZ reads one Winsize from the pointer, which is valid for the call.
    unsafe {
        libc::ioctl(master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

async fn read_master(master: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = master.readable().await?;
        match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(Into::into)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// Writes what the PTY takes now (at least one byte, once it is writable). Cancel-safe: a write
/// either happened and is reported, or did not happen.
async fn write_master(master: &AsyncFd<OwnedFd>, data: &[u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = master.writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(Into::into)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// Splits off the longest valid UTF-8 prefix, keeping an incomplete trailing sequence for the
/// next read; invalid bytes become U+FFFD.
fn take_utf8(carry: &mut Vec<u8>) -> String {
    match std::str::from_utf8(carry) {
        Ok(s) => {
            let s = s.to_string();
            carry.clear();
            s
        }
        Err(e) if e.error_len().is_none() => {
            let tail = carry.split_off(e.valid_up_to());
            let s = String::from_utf8_lossy(carry).into_owned();
            *carry = tail;
            s
        }
        Err(_) => {
            let s = String::from_utf8_lossy(carry).into_owned();
            carry.clear();
            s
        }
    }
}

async fn send(ws: &mut WebSocket, msg: &TerminalOut) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => ws.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

async fn close(ws: &mut WebSocket, code: u16, reason: &str) {
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

pub async fn serve(mut ws: WebSocket, user: DesktopUser, cols: u16, rows: u16) {
    let mut pty = match spawn_shell(&user, cols, rows) {
        Ok(p) => p,
        Err(e) => {
            let _ = send(
                &mut ws,
                &TerminalOut::Error {
                    message: e.to_string(),
                },
            )
            .await;
            close(&mut ws, CLOSE_COULD_NOT_START, "could not start the shell").await;
            return;
        }
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut carry = Vec::new();
    // Input is written as the PTY takes it, inside the same loop that reads the shell's output:
    // a shell blocked on writing output (because nobody read it) would otherwise never read the
    // input we wait to write, and the session would hang for good.
    let mut to_shell: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            r = read_master(&pty.master, &mut buf) => match r {
                Ok(n) if n > 0 => {
                    carry.extend_from_slice(&buf[..n]);
                    let data = take_utf8(&mut carry);
                    if !data.is_empty() && !send(&mut ws, &TerminalOut::Output { data }).await {
                        break;
                    }
                }
                // EOF or EIO: every holder of the slave side is gone, i.e. the shell ended.
                _ => {
                    let code = match pty.child.wait().await {
                        Ok(st) => st.code().or_else(|| st.signal().map(|s| 128 + s)).unwrap_or(-1),
                        Err(_) => -1,
                    };
                    let _ = send(&mut ws, &TerminalOut::Exit { code }).await;
                    close(&mut ws, 1000, "shell exited").await;
                    return;
                }
            },
            w = write_master(&pty.master, &to_shell), if !to_shell.is_empty() => match w {
                Ok(n) => {
                    to_shell.drain(..n);
                }
                Err(e) => {
                    to_shell.clear();
                    let message = format!("write to the shell failed: {e}");
                    if !send(&mut ws, &TerminalOut::Error { message }).await {
                        break;
                    }
                }
            },
            msg = ws.recv(), if to_shell.len() < MAX_PENDING_INPUT => match msg {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<TerminalIn>(t.as_str()) {
                    Ok(TerminalIn::Input { data }) => to_shell.extend_from_slice(data.as_bytes()),
                    Ok(TerminalIn::Resize { cols, rows }) => resize(&pty.master, cols, rows),
                    Ok(TerminalIn::Ping) => {
                        if !send(&mut ws, &TerminalOut::Pong).await {
                            break;
                        }
                    }
                    Err(e) => {
                        let message = format!("bad message ({e}); expected {{\"type\":\"input\",\"data\":...}}, resize or ping");
                        if !send(&mut ws, &TerminalOut::Error { message }).await {
                            break;
                        }
                    }
                },
                // Raw bytes are taken as keyboard input.
                Some(Ok(Message::Binary(b))) => to_shell.extend_from_slice(&b),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    // The client left: end the shell's whole session.
    if let Some(pid) = pty.child.id() {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        );
    }
    let _ = pty.child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_reads() {
        let bytes = "a✓".as_bytes();
        let mut carry = bytes[..2].to_vec();
        assert_eq!(take_utf8(&mut carry), "a");
        carry.extend_from_slice(&bytes[2..]);
        assert_eq!(take_utf8(&mut carry), "✓");
        assert!(carry.is_empty());
    }
}
