//! RFB's security handshake, ended in the daemon: the daemon checks a viewer's VNC password itself
//! and only then logs in to the guest's VNC server with the same password.
//!
//! Why not pass the handshake through to the guest: every viewer reaches the guest's Xvnc from
//! one source (the agent), and Xvnc blocks a source for a while after five failed attempts, so
//! anyone who could reach the daemon could lock every viewer out of a computer with a few wrong
//! passwords; and the guest would do work for viewers that never authenticate. Here wrong
//! passwords never reach the guest, and they count against the peer that sent them in the same
//! per-peer budget as wrong API keys (`rate_limit.bad_key_*`, [`super::super::bad_keys`]).
//!
//! Versions: the daemon offers RFB 3.8 and accepts a viewer's 3.7 or 3.8 (noVNC, TigerVNC and
//! every current viewer); older ones are refused with a reason. Security type: VNC
//! authentication only (DES of a 16-byte challenge with the first 8 bytes of the password).

use std::time::Duration;

use des::cipher::{BlockEncrypt, KeyInit};
use subtle::ConstantTimeEq;

/// The version both sides are offered.
const VERSION_3_8: &[u8; 12] = b"RFB 003.008\n";
const VERSION_3_7: &[u8; 12] = b"RFB 003.007\n";
/// RFB's security type "VNC Authentication".
const VNC_AUTH: u8 = 2;
/// The largest security-type list or failure reason read from a guest (RFB sends a u8 count of
/// types; reasons carry a u32 length, which a guest controls).
const MAX_REASON: usize = 1024;

/// Longest a viewer may take from its connection to its password (noVNC asks its user for the
/// password only once the handshake asks for it).
pub const VIEWER_DEADLINE: Duration = Duration::from_secs(300);

/// Why a handshake ended without a session.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("the viewer closed the connection during the VNC handshake")]
    ViewerGone,
    #[error("the viewer speaks {0:?}; deskd's VNC relay speaks RFB 3.7 and 3.8 only")]
    ViewerVersion(String),
    #[error("the viewer chose security type {0}; only VNC authentication (2) is offered")]
    ViewerSecurityType(u8),
    #[error("wrong VNC password")]
    WrongPassword,
    #[error("too many wrong passwords or keys from {peer}; retry after {retry_after_secs} s")]
    Limited { peer: String, retry_after_secs: u64 },
    #[error("the viewer did not finish the VNC handshake within {} s", VIEWER_DEADLINE.as_secs())]
    ViewerTimeout,
    #[error("the desktop's VNC server closed the connection during the handshake")]
    DesktopGone,
    #[error("the desktop's VNC server {0}")]
    Desktop(String),
}

/// One side of a relay as RFB bytes: WebSocket messages, whatever their boundaries.
pub trait RfbIo {
    /// The next binary message's bytes; None when the other end has closed.
    fn recv(&mut self) -> impl std::future::Future<Output = Option<Vec<u8>>> + Send;
    /// Sends `bytes` as one binary message; false if the other end is gone.
    fn send(&mut self, bytes: Vec<u8>) -> impl std::future::Future<Output = bool> + Send;
}

/// Reads exact byte counts across message boundaries, keeping what comes after.
pub struct Reader<'a, T: RfbIo> {
    io: &'a mut T,
    buf: Vec<u8>,
}

impl<'a, T: RfbIo + Send> Reader<'a, T> {
    pub fn new(io: &'a mut T) -> Self {
        Reader {
            io,
            buf: Vec::new(),
        }
    }

    /// The next `n` bytes, or None if the other end closed first.
    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            let more = self.io.recv().await?;
            self.buf.extend_from_slice(&more);
        }
        Some(self.buf.drain(..n).collect())
    }

    async fn send(&mut self, bytes: Vec<u8>) -> bool {
        self.io.send(bytes).await
    }

    /// What was read past the handshake (to be relayed first).
    pub fn leftover(self) -> Vec<u8> {
        self.buf
    }
}

/// DES as VNC authentication uses it: the key is the password's first 8 bytes (zero-padded),
/// each with its bits reversed.
pub fn vnc_response(password: &str, challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(password.bytes()) {
        *k = b.reverse_bits();
    }
    let cipher = des::Des::new(&key.into());
    let mut out = *challenge;
    for block in out.chunks_mut(8) {
        cipher.encrypt_block(block.into());
    }
    out
}

/// What the viewer's side agreed to, for the last step ([`finish_viewer`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewerVersion {
    /// RFB 3.8 sends a reason with a failed SecurityResult; 3.7 does not.
    pub sends_reason: bool,
}

/// The server's side of the handshake with a viewer, up to and including the check of its
/// answer to a fresh challenge. `allowed()` is asked before the challenge is sent (the peer's
/// budget of wrong credentials); `wrong()` is called for a wrong answer and says when to retry if
/// the budget is now spent. A failure is told to the viewer (with a reason in 3.8) before the
/// error returns.
pub async fn check_viewer<T: RfbIo + Send>(
    viewer: &mut Reader<'_, T>,
    password: &str,
    allowed: impl FnOnce() -> Result<(), AuthError>,
    wrong: impl FnOnce() -> Option<AuthError>,
) -> Result<ViewerVersion, AuthError> {
    if !viewer.send(VERSION_3_8.to_vec()).await {
        return Err(AuthError::ViewerGone);
    }
    let version = viewer.take(12).await.ok_or(AuthError::ViewerGone)?;
    let v = if version == VERSION_3_8 {
        ViewerVersion { sends_reason: true }
    } else if version == VERSION_3_7 {
        ViewerVersion {
            sends_reason: false,
        }
    } else {
        let err = AuthError::ViewerVersion(String::from_utf8_lossy(&version).trim().to_string());
        // RFB 3.3's failure: security type 0 and a reason; the best any older viewer can read.
        let reason = err.to_string().into_bytes();
        let mut msg = 0u32.to_be_bytes().to_vec();
        msg.extend_from_slice(&(reason.len() as u32).to_be_bytes());
        msg.extend_from_slice(&reason);
        viewer.send(msg).await;
        return Err(err);
    };
    if !viewer.send(vec![1, VNC_AUTH]).await {
        return Err(AuthError::ViewerGone);
    }
    let chosen = viewer.take(1).await.ok_or(AuthError::ViewerGone)?[0];
    if chosen != VNC_AUTH {
        let err = AuthError::ViewerSecurityType(chosen);
        fail_viewer(viewer, v, &err).await;
        return Err(err);
    }
    if let Err(err) = allowed() {
        fail_viewer(viewer, v, &err).await;
        return Err(err);
    }
    let mut challenge = [0u8; 16];
    getrandom::fill(&mut challenge)
        .map_err(|e| AuthError::Desktop(format!("(no randomness: {e})")))?;
    if !viewer.send(challenge.to_vec()).await {
        return Err(AuthError::ViewerGone);
    }
    let answer = viewer.take(16).await.ok_or(AuthError::ViewerGone)?;
    let expected = vnc_response(password, &challenge);
    if !bool::from(answer.as_slice().ct_eq(&expected)) {
        let err = wrong().unwrap_or(AuthError::WrongPassword);
        fail_viewer(viewer, v, &err).await;
        return Err(err);
    }
    Ok(v)
}

/// SecurityResult "failed", with the reason where the viewer's version carries one.
async fn fail_viewer<T: RfbIo + Send>(
    viewer: &mut Reader<'_, T>,
    v: ViewerVersion,
    err: &AuthError,
) {
    let mut msg = 1u32.to_be_bytes().to_vec();
    if v.sends_reason {
        let reason = match err {
            // noVNC shows this text; the viewers' own wording for a wrong password.
            AuthError::WrongPassword => "Authentication failure".to_string(),
            other => other.to_string(),
        };
        msg.extend_from_slice(&(reason.len() as u32).to_be_bytes());
        msg.extend_from_slice(reason.as_bytes());
    }
    viewer.send(msg).await;
}

/// SecurityResult "OK" to a viewer that [`check_viewer`] let in, once the desktop has let the
/// daemon in; or the desktop's failure.
pub async fn finish_viewer<T: RfbIo + Send>(
    viewer: &mut Reader<'_, T>,
    v: ViewerVersion,
    desktop: Result<(), &AuthError>,
) -> bool {
    match desktop {
        Ok(()) => viewer.send(0u32.to_be_bytes().to_vec()).await,
        Err(err) => {
            fail_viewer(viewer, v, err).await;
            false
        }
    }
}

/// The viewer's side of the handshake with the guest's VNC server: RFB 3.8, VNC authentication
/// with `password`. Everything the guest sends is bounded: it is untrusted.
pub async fn log_in_to_desktop<T: RfbIo + Send>(
    desktop: &mut Reader<'_, T>,
    password: &str,
) -> Result<(), AuthError> {
    let version = desktop.take(12).await.ok_or(AuthError::DesktopGone)?;
    if !version.starts_with(b"RFB 003.") {
        return Err(AuthError::Desktop(format!(
            "does not speak RFB (it sent {:?})",
            String::from_utf8_lossy(&version)
        )));
    }
    if version.as_slice() < VERSION_3_7.as_slice() {
        return Err(AuthError::Desktop(format!(
            "speaks {:?}, older than RFB 3.7",
            String::from_utf8_lossy(&version).trim()
        )));
    }
    if !desktop.send(VERSION_3_8.to_vec()).await {
        return Err(AuthError::DesktopGone);
    }
    let n = desktop.take(1).await.ok_or(AuthError::DesktopGone)?[0] as usize;
    if n == 0 {
        let reason = read_reason(desktop).await?;
        return Err(AuthError::Desktop(format!(
            "refused the connection: {reason}"
        )));
    }
    let types = desktop.take(n).await.ok_or(AuthError::DesktopGone)?;
    if !types.contains(&VNC_AUTH) {
        return Err(AuthError::Desktop(format!(
            "does not offer VNC authentication (it offers {types:?})"
        )));
    }
    if !desktop.send(vec![VNC_AUTH]).await {
        return Err(AuthError::DesktopGone);
    }
    let challenge: [u8; 16] = desktop
        .take(16)
        .await
        .ok_or(AuthError::DesktopGone)?
        .try_into()
        .map_err(|_| AuthError::DesktopGone)?;
    if !desktop
        .send(vnc_response(password, &challenge).to_vec())
        .await
    {
        return Err(AuthError::DesktopGone);
    }
    let result = desktop.take(4).await.ok_or(AuthError::DesktopGone)?;
    if result != [0, 0, 0, 0] {
        let reason = read_reason(desktop).await.unwrap_or_default();
        return Err(AuthError::Desktop(format!(
            "refused deskd's password for it ({reason}); start the computer again to give it a new one"
        )));
    }
    Ok(())
}

/// A u32-length reason from the guest, cut to [`MAX_REASON`].
async fn read_reason<T: RfbIo + Send>(desktop: &mut Reader<'_, T>) -> Result<String, AuthError> {
    let len = desktop.take(4).await.ok_or(AuthError::DesktopGone)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_REASON {
        return Err(AuthError::Desktop(format!(
            "sent a reason of {len} bytes (more than {MAX_REASON})"
        )));
    }
    let text = desktop.take(len).await.ok_or(AuthError::DesktopGone)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// One end of an in-memory message pipe.
    struct End {
        rx: mpsc::UnboundedReceiver<Vec<u8>>,
        tx: mpsc::UnboundedSender<Vec<u8>>,
    }

    impl RfbIo for End {
        async fn recv(&mut self) -> Option<Vec<u8>> {
            self.rx.recv().await
        }
        async fn send(&mut self, bytes: Vec<u8>) -> bool {
            self.tx.send(bytes).is_ok()
        }
    }

    fn pipe() -> (End, End) {
        let (a_tx, a_rx) = mpsc::unbounded_channel();
        let (b_tx, b_rx) = mpsc::unbounded_channel();
        (End { rx: a_rx, tx: b_tx }, End { rx: b_rx, tx: a_tx })
    }

    /// A viewer's side, written out byte by byte as RFB 3.8 says: what it read, and the result.
    async fn viewer(mut io: End, version: &[u8], chosen: u8, password: &str) -> Vec<u8> {
        let mut r = Reader::new(&mut io);
        assert_eq!(r.take(12).await.unwrap(), VERSION_3_8);
        r.send(version.to_vec()).await;
        let mut seen = Vec::new();
        let first = r.take(1).await.unwrap();
        seen.extend_from_slice(&first);
        if first[0] == 0 {
            // a 3.3-style refusal: three more zero bytes, then a reason
            seen.extend(r.take(3).await.unwrap());
            return seen;
        }
        seen.extend(r.take(first[0] as usize).await.unwrap());
        // The challenge comes in two messages, to cross message boundaries.
        r.send(vec![chosen]).await;
        let Some(challenge) = r.take(16).await else {
            return seen;
        };
        let answer = vnc_response(password, &challenge.try_into().unwrap());
        r.send(answer[..5].to_vec()).await;
        r.send(answer[5..].to_vec()).await;
        seen.extend(r.take(4).await.unwrap_or_default());
        seen
    }

    async fn run_check(
        version: &[u8],
        chosen: u8,
        typed: &str,
        limited: bool,
    ) -> (Result<ViewerVersion, AuthError>, Vec<u8>) {
        let (mut server, client) = pipe();
        let v = tokio::spawn({
            let version = version.to_vec();
            let typed = typed.to_string();
            async move { viewer(client, &version, chosen, &typed).await }
        });
        let mut r = Reader::new(&mut server);
        let result = check_viewer(
            &mut r,
            "Secret8xTAIL",
            || {
                if limited {
                    Err(AuthError::Limited {
                        peer: "127.0.0.1".into(),
                        retry_after_secs: 3,
                    })
                } else {
                    Ok(())
                }
            },
            || None,
        )
        .await;
        if let Ok(v) = &result {
            finish_viewer(&mut r, *v, Ok(())).await;
        }
        drop(server);
        (result, v.await.unwrap())
    }

    #[tokio::test]
    async fn the_right_password_passes_and_only_its_first_eight_bytes_count() {
        let (r, seen) = run_check(VERSION_3_8, VNC_AUTH, "Secret8xOTHER", false).await;
        assert_eq!(r, Ok(ViewerVersion { sends_reason: true }));
        assert_eq!(seen, vec![1, VNC_AUTH, 0, 0, 0, 0]);
        let (r, _) = run_check(VERSION_3_7, VNC_AUTH, "Secret8x", false).await;
        assert_eq!(
            r,
            Ok(ViewerVersion {
                sends_reason: false
            })
        );
    }

    #[tokio::test]
    async fn a_wrong_password_is_refused_with_the_viewers_own_wording() {
        let (r, seen) = run_check(VERSION_3_8, VNC_AUTH, "wrong", false).await;
        assert_eq!(r, Err(AuthError::WrongPassword));
        assert_eq!(&seen[..6], &[1, VNC_AUTH, 0, 0, 0, 1]);
    }

    #[tokio::test]
    async fn a_limited_peer_gets_no_challenge() {
        let (r, seen) = run_check(VERSION_3_8, VNC_AUTH, "Secret8x", true).await;
        assert!(matches!(r, Err(AuthError::Limited { .. })), "{r:?}");
        // The 16 bytes the viewer takes as its challenge are the failure and its reason.
        assert_eq!(&seen[..2], &[1, VNC_AUTH]);
    }

    #[tokio::test]
    async fn old_versions_and_other_security_types_are_refused() {
        let (r, seen) = run_check(b"RFB 003.003\n", VNC_AUTH, "Secret8x", false).await;
        assert_eq!(r, Err(AuthError::ViewerVersion("RFB 003.003".into())));
        assert_eq!(seen, vec![0, 0, 0, 0]);
        let (r, _) = run_check(VERSION_3_8, 1, "Secret8x", false).await;
        assert_eq!(r, Err(AuthError::ViewerSecurityType(1)));
    }

    #[tokio::test]
    async fn a_viewer_that_leaves_mid_handshake_ends_it() {
        let (mut server, mut client) = pipe();
        client.send(b"RFB 00".to_vec()).await;
        drop(client);
        let mut r = Reader::new(&mut server);
        let res = check_viewer(&mut r, "x", || Ok(()), || None).await;
        assert_eq!(res, Err(AuthError::ViewerGone));
    }

    /// A guest's VNC server, scripted: what it sends, in order, with the daemon's answers checked.
    async fn desktop(mut io: End, types: Vec<u8>, result: Vec<u8>) -> Option<Vec<u8>> {
        io.send(VERSION_3_8.to_vec()).await;
        let mut r = Reader::new(&mut io);
        assert_eq!(r.take(12).await?, VERSION_3_8);
        let mut t = vec![types.len() as u8];
        t.extend_from_slice(&types);
        r.send(t).await;
        assert_eq!(r.take(1).await?, vec![VNC_AUTH]);
        let challenge = [7u8; 16];
        r.send(challenge.to_vec()).await;
        let answer = r.take(16).await?;
        r.send(result).await;
        Some(answer)
    }

    #[tokio::test]
    async fn the_daemon_logs_in_to_the_desktop_with_the_password() {
        let (mut us, guest) = pipe();
        let g = tokio::spawn(desktop(guest, vec![1, 2, 16], vec![0, 0, 0, 0]));
        let mut r = Reader::new(&mut us);
        assert_eq!(log_in_to_desktop(&mut r, "Secret8x").await, Ok(()));
        assert_eq!(
            g.await.unwrap().unwrap(),
            vnc_response("Secret8x", &[7u8; 16])
        );
    }

    #[tokio::test]
    async fn a_desktop_that_refuses_or_lies_is_an_error_not_a_hang() {
        let (mut us, guest) = pipe();
        let mut reason = vec![0, 0, 0, 1, 0, 0, 0, 4];
        reason.extend_from_slice(b"nope");
        tokio::spawn(desktop(guest, vec![2], reason));
        let mut r = Reader::new(&mut us);
        let e = log_in_to_desktop(&mut r, "x").await.unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");

        let (mut us, guest) = pipe();
        tokio::spawn(desktop(guest, vec![1, 16], vec![0, 0, 0, 0]));
        let mut r = Reader::new(&mut us);
        let e = log_in_to_desktop(&mut r, "x").await.unwrap_err();
        assert!(
            e.to_string().contains("does not offer VNC authentication"),
            "{e}"
        );

        // A reason longer than anything honest, from an untrusted guest.
        let (mut us, mut guest) = pipe();
        guest.send(VERSION_3_8.to_vec()).await;
        guest.send(vec![0, 0xff, 0xff, 0xff, 0xff]).await;
        let mut r = Reader::new(&mut us);
        let e = log_in_to_desktop(&mut r, "x").await.unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");

        let (mut us, mut guest) = pipe();
        guest.send(b"HTTP/1.1 200".to_vec()).await;
        let mut r = Reader::new(&mut us);
        let e = log_in_to_desktop(&mut r, "x").await.unwrap_err();
        assert!(e.to_string().contains("does not speak RFB"), "{e}");
    }

    /// Fuzz target: whatever a guest's "VNC server" sends, in any pieces, the daemon's login
    /// ends (Ok or an error) without a panic once the guest stops; the same for a viewer's bytes
    /// against the daemon's check.
    #[test]
    fn fuzz_vnc_handshakes() {
        use crate::vmm::devices::virtio::fuzzing::{self, Input};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        bolero::check!()
            .with_test_time(fuzzing::TEST_TIME)
            .for_each(|data: &[u8]| {
                let mut input = Input::new(data);
                let to_viewer = input.u8().is_multiple_of(2);
                let (mut us, them) = pipe();
                while !input.is_empty() {
                    let n = usize::from(input.u8() % 24);
                    let piece = input.bytes(n).to_vec();
                    // A plausible start now and then, so that inputs get past the version.
                    let piece = if input.u8().is_multiple_of(4) {
                        [VERSION_3_8.as_slice(), &piece].concat()
                    } else {
                        piece
                    };
                    let _ = them.tx.send(piece);
                }
                drop(them.tx);
                runtime.block_on(async {
                    let mut r = Reader::new(&mut us);
                    let done = tokio::time::timeout(Duration::from_secs(5), async {
                        if to_viewer {
                            let _ = check_viewer(&mut r, "pw", || Ok(()), || None).await;
                        } else {
                            let _ = log_in_to_desktop(&mut r, "pw").await;
                        }
                    })
                    .await;
                    assert!(done.is_ok(), "the handshake did not end with its input");
                });
            });
    }
}
