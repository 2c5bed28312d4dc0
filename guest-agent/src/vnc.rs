//! The desktop's live view: the X server is TigerVNC's `Xvnc`, whose RFB stream listens on a Unix
//! socket only the guest can reach; `/ws/vnc` bridges that stream to binary WebSocket messages
//! (the daemon relays them to noVNC or `orgo-vnc`), and `POST /vnc/password` rewrites the VNC
//! password file that Xvnc reads at every authentication (`-rfbauth`), so the password changes
//! without restarting the session.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use des::cipher::{BlockEncrypt, KeyInit};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::protocol::VNC_PASSWORD_SIGNIFICANT;

/// Where the image's Xvnc listens (`-rfbunixpath` in images/rootfs/usr/local/lib/deskd/xvnc).
pub const DEFAULT_RFB_SOCKET: &str = "/run/deskd-vnc/rfb.sock";
/// The password file the image's Xvnc reads (`-rfbauth` there).
pub const DEFAULT_PASSWORD_FILE: &str = "/run/deskd-vnc/passwd";

/// Largest piece of the RFB stream read before it is sent on: one message in flight per direction
/// is all the bridge holds, so a slow viewer slows the server's writes instead of filling memory.
const CHUNK: usize = 64 << 10;
/// Close code for "could not start" (api.md section 4).
const CLOSE_COULD_NOT_START: u16 = 4500;

/// The fixed key with which VNC password files are obfuscated (TigerVNC `d3desObfuscationKey`,
/// 23 82 107 6 35 78 88 7), with each byte's bits reversed: VNC's DES takes key bits in the
/// opposite order of standard DES.
const OBFUSCATION_KEY: [u8; 8] = [0xe8, 0x4a, 0xd6, 0x60, 0xc4, 0x72, 0x1a, 0xe0];

#[derive(Debug, thiserror::Error)]
pub enum VncError {
    #[error("the VNC password is empty; send the computer's vnc_password")]
    EmptyPassword,
    #[error("could not write the VNC password file {path}: {source}; check that the directory exists and belongs to the agent's user")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A password as a VNC password file holds it (what `vncpasswd -f` writes): the first 8 bytes,
/// zero-padded, DES-encrypted with the fixed obfuscation key.
pub fn obfuscate(password: &str) -> [u8; 8] {
    let mut block = [0u8; 8];
    let bytes = password.as_bytes();
    let n = bytes.len().min(VNC_PASSWORD_SIGNIFICANT);
    block[..n].copy_from_slice(&bytes[..n]);
    let cipher = des::Des::new(&OBFUSCATION_KEY.into());
    let mut b = block.into();
    cipher.encrypt_block(&mut b);
    b.into()
}

/// Replaces the password file at `path` in one step (a new file renamed over the old one), so
/// Xvnc reading it during an authentication sees the old or the new password, never half of one.
pub fn write_password(path: &Path, password: &str) -> Result<(), VncError> {
    if password.is_empty() {
        return Err(VncError::EmptyPassword);
    }
    let fail = |source| VncError::PasswordFile {
        path: path.to_path_buf(),
        source,
    };
    // One name per call: two viewers arriving at once each write (the same password) in full.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("new.{}.{seq}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(&obfuscate(password)).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// Bridges one viewer's WebSocket to a new connection to the RFB server at `rfb` until either
/// side ends. Each viewer has its own RFB connection: the server shares the desktop among them.
pub async fn bridge(mut ws: WebSocket, rfb: PathBuf) {
    let stream = match tokio::net::UnixStream::connect(&rfb).await {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("the desktop's VNC server does not answer: {e}");
            tracing::warn!("{reason} ({})", rfb.display());
            let _ = ws
                .send(Message::Close(Some(CloseFrame {
                    code: CLOSE_COULD_NOT_START,
                    reason: reason.into(),
                })))
                .await;
            return;
        }
    };
    let (mut from_rfb, mut to_rfb) = stream.into_split();
    let (mut to_ws, mut from_ws) = ws.split();
    let upstream = async {
        while let Some(Ok(m)) = from_ws.next().await {
            match m {
                Message::Binary(b) => {
                    if to_rfb.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                // RFB is binary; websockify's text (base64) mode is long gone from noVNC.
                Message::Text(_) | Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        let _ = to_rfb.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from_rfb.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = axum::body::Bytes::copy_from_slice(&buf[..n]);
                    if to_ws.send(Message::Binary(chunk)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = to_ws
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "the VNC server ended the session".into(),
            })))
            .await;
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obfuscation_matches_known_vnc_password_files() {
        // "password" as `vncpasswd -f` (TigerVNC 1.12) writes it; a published test vector too.
        assert_eq!(
            obfuscate("password"),
            [0xdb, 0xd8, 0x3c, 0xfd, 0x72, 0x7a, 0x14, 0x58]
        );
        // Only 8 bytes count; shorter passwords are zero-padded.
        assert_eq!(obfuscate("password"), obfuscate("password-and-more"));
        assert_ne!(obfuscate("pass"), obfuscate("password"));
    }

    #[test]
    fn the_file_is_replaced_whole_and_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = std::env::temp_dir().join(format!("deskd-vnc-unit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("passwd");
        write_password(&p, "first-pw").unwrap();
        write_password(&p, "second-pw").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), obfuscate("second-pw"));
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "no temp file left"
        );
        assert!(matches!(
            write_password(&p, ""),
            Err(VncError::EmptyPassword)
        ));
        // Viewers arriving together write at the same moment; every write succeeds.
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || write_password(&p, "together"))
            })
            .collect();
        for w in writers {
            w.join().unwrap().unwrap();
        }
        assert_eq!(std::fs::read(&p).unwrap(), obfuscate("together"));
        let missing = d.join("no-such-dir").join("passwd");
        assert!(write_password(&missing, "x").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
