//! Section 4 WebSockets, `/desktops/{id}/ws/{terminal|events|audio|websockify}?token=...`: the
//! token is the computer's `vnc_password` (no API key: browsers cannot set headers on WebSockets).
//! Terminal, events, audio and VNC are relayed message by message to the guest agent's own
//! WebSockets over vsock. Refusals are WebSocket close codes, sent after the upgrade so that
//! browser clients can read them: 4401 missing or bad token, 4404 computer not found or not
//! running, 4500 the agent could not be reached or the stream could not start, 1013 (try again later)
//! when the computer has as many relays open as `limits.max_agent_calls_per_key`, 1001 when the
//! agent's side ends (the computer is stopping). Audio says why in an `error` message before its
//! 4500 (the contract's `Failed to start audio capture`, or what is wrong with `sample_rate` or
//! `channels`), as the agent does for a capture that fails.
//!
//! VNC (`websockify`, also at `/desktops/{id}/websockify`, the path `orgo-vnc` builds) is RFB in
//! binary messages. Viewers do not send a token (noVNC and `orgo-vnc` give the password to VNC
//! authentication instead), so for it a token is optional and, if given, must be right. The daemon
//! ends RFB's security handshake itself ([`vnc_auth`]): it checks the viewer's VNC password, counting
//! wrong ones against the peer like wrong API keys, and only then hands the agent the password
//! (so a rotated, restored or cloned guest never holds a stale one), opens the stream and logs in
//! to the guest's VNC server with it.

use std::collections::HashMap;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use deskd_agent::protocol::audio::{AudioFormat, AudioOut, CAPTURE_FAILED};
use deskd_agent::protocol::{self, TerminalSize};
use futures_util::{SinkExt, StreamExt};
use subtle::ConstantTimeEq;
use tokio_tungstenite::tungstenite;

use super::bad_keys::{ConnPeer, Peer};
use super::error::ApiError;
use super::AppState;
use crate::computers::agent_client::AgentCall;
use crate::store::ComputerStatus;

/// Largest WebSocket message relayed either way. Terminal input and events are small; a VNC
/// frame update of a 4K screen is the largest thing that will cross here.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Largest single frame either way.
pub const MAX_FRAME_BYTES: usize = 4 << 20;
/// Opening the agent's side (vsock connection and WebSocket hand-shake) must finish within this.
const AGENT_HANDSHAKE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Close codes of section 4.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const BAD_TOKEN: u16 = 4401;
    pub const NOT_FOUND: u16 = 4404;
    /// RFC 6455's "Try Again Later": the computer has as many relays open as it may.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const CANNOT_START: u16 = 4500;
}

/// Why a socket is refused, decided before the upgrade and sent as its close frame.
#[derive(Debug, PartialEq)]
struct Refusal {
    code: u16,
    reason: String,
    /// A text message sent before the close (audio's `error`).
    first: Option<String>,
}

/// What a client asked for, once it passed the checks: the agent route to relay to.
struct Target {
    computer_id: String,
    agent_path: String,
    /// For VNC: the password the guest must hold before the viewer is relayed.
    vnc_password: Option<String>,
    /// Audio: a failure to open the agent's side is a capture failure, said in an `error`.
    audio: bool,
    /// Who connected, for the budget of wrong VNC passwords.
    peer: Peer,
}

/// Audio's `error` message (api.md section 4).
fn audio_error(message: &str, detail: Option<String>) -> Option<String> {
    serde_json::to_string(&AudioOut::Error {
        message: message.to_string(),
        detail,
    })
    .ok()
}

fn check(
    state: &AppState,
    id: &str,
    kind: &str,
    query: &HashMap<String, String>,
) -> Result<Target, Refusal> {
    let refuse = |code, reason: &str| Refusal {
        code,
        reason: reason.to_string(),
        first: None,
    };
    let c = state
        .store
        .computer_by_id_or_instance(id)
        .map_err(|_| refuse(close::CANNOT_START, "the daemon's database failed"))?
        .ok_or_else(|| refuse(close::NOT_FOUND, "computer not found"))?;
    let token = query.get("token").map(String::as_str).unwrap_or("");
    // VNC viewers authenticate inside RFB; every other stream needs the token.
    let token_optional = kind == "websockify" && token.is_empty();
    if !token_optional
        && (token.is_empty() || !bool::from(token.as_bytes().ct_eq(c.vnc_password.as_bytes())))
    {
        return Err(refuse(close::BAD_TOKEN, "missing or bad token"));
    }
    if c.status != ComputerStatus::Running {
        return Err(refuse(close::NOT_FOUND, "computer not running"));
    }
    let agent_path = match kind {
        "terminal" => TerminalSize::from_values(
            query.get("cols").map(String::as_str),
            query.get("rows").map(String::as_str),
        )
        .path(),
        "events" => protocol::paths::WS_EVENTS.to_string(),
        "websockify" => protocol::paths::WS_VNC.to_string(),
        "audio" => match AudioFormat::from_values(
            query.get("sample_rate").map(String::as_str),
            query.get("channels").map(String::as_str),
        ) {
            Ok(format) => format.path(),
            Err(message) => {
                return Err(Refusal {
                    code: close::CANNOT_START,
                    first: audio_error(&message, None),
                    reason: message,
                })
            }
        },
        _ => return Err(refuse(close::NOT_FOUND, "no such stream")),
    };
    Ok(Target {
        vnc_password: (kind == "websockify").then(|| c.vnc_password.clone()),
        audio: kind == "audio",
        peer: Peer::Unknown,
        computer_id: c.id,
        agent_path,
    })
}

/// `GET /desktops/{id}/ws/{kind}`.
pub async fn connect(
    State(state): State<AppState>,
    Path((id, kind)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    conn: Option<Extension<ConnPeer>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let peer = peer_of(&state, conn, &headers);
    open(state, &id, &kind, &query, peer, upgrade)
}

/// `GET /desktops/{id}/websockify`: the VNC stream at the path `orgo-vnc` builds.
pub async fn websockify(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    conn: Option<Extension<ConnPeer>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let peer = peer_of(&state, conn, &headers);
    open(state, &id, "websockify", &query, peer, upgrade)
}

fn peer_of(state: &AppState, conn: Option<Extension<ConnPeer>>, headers: &HeaderMap) -> Peer {
    Peer::of(
        conn.map(|Extension(c)| c),
        headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes()),
        state.config.rate_limit.trust_forwarded_for,
    )
}

fn open(
    state: AppState,
    id: &str,
    kind: &str,
    query: &HashMap<String, String>,
    peer: Peer,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Ok(upgrade) = upgrade else {
        return Err(ApiError::bad_request(
            "This is a WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket).",
        ));
    };
    // Each relay holds one of its computer's slots (`limits.max_agent_calls_per_key`; these
    // streams carry the computer's token, not a key) until it ends.
    let target = check(&state, id, kind, query).map(|t| Target { peer, ..t }).and_then(|t| {
        match state.agent_calls.try_take(&format!("computer:{}", t.computer_id)) {
            Some(slot) => Ok((t, slot)),
            None => Err(Refusal {
                code: close::TRY_AGAIN_LATER,
                reason: format!(
                    "this computer has {} streams open, as many as it may; close one or retry later",
                    state.agent_calls.max()
                ),
                first: None,
            }),
        }
    });
    // websockify's subprotocol; noVNC asks for it in some versions and gives up without it.
    let upgrade = if kind == "websockify" {
        upgrade.protocols(["binary"])
    } else {
        upgrade
    };
    Ok(upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |client| async move {
            match target {
                Ok((t, _slot)) => relay(&state, client, t).await,
                Err(r) => refuse_with(client, r).await,
            }
        }))
}

async fn refuse_with(mut client: WebSocket, r: Refusal) {
    if let Some(text) = r.first {
        let _ = client.send(Message::Text(text.into())).await;
    }
    close_with(client, r.code, &r.reason).await
}

/// The close for a stream whose agent side could not be opened.
async fn cannot_start(client: WebSocket, target: &Target, reason: String) {
    let first = target
        .audio
        .then(|| audio_error(CAPTURE_FAILED, Some(reason.clone())))
        .flatten();
    refuse_with(
        client,
        Refusal {
            code: close::CANNOT_START,
            reason,
            first,
        },
    )
    .await
}

/// Longest close reason: a close frame's payload is at most 125 bytes, two of them the code.
const CLOSE_REASON_MAX: usize = 123;

async fn close_with(mut client: WebSocket, code: u16, reason: &str) {
    let mut end = reason.len().min(CLOSE_REASON_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let _ = client
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason[..end].into(),
        })))
        .await;
}

/// Hands the guest the computer's current VNC password (see the module comment).
async fn give_vnc_password(
    state: &AppState,
    computer_id: &str,
    password: &str,
) -> Result<(), String> {
    let body = serde_json::to_vec(&protocol::VncPasswordRequest {
        password: password.to_string(),
    })
    .map_err(|e| e.to_string())?;
    let reply = state
        .lifecycle
        .agent_request(
            computer_id,
            AgentCall::post_json(
                protocol::paths::VNC_PASSWORD,
                body.into(),
                AGENT_HANDSHAKE_DEADLINE,
            ),
        )
        .await
        .map_err(|e| format!("could not give the desktop its VNC password: {e}"))?;
    if !reply.status.is_success() {
        return Err(format!(
            "the desktop refused its VNC password ({}): {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        ));
    }
    Ok(())
}

/// Relays messages between the client and the agent until either side ends. Each message is
/// passed on before the next is read, so a slow reader on either side holds the other back
/// (no queue grows in the daemon: at most one message per direction is held).
async fn relay(state: &AppState, client: WebSocket, target: Target) {
    // An open session keeps the computer from being suspended for disuse.
    let _session = state.lifecycle.session(&target.computer_id);
    let mut client = client;
    // VNC: the viewer's password first (nothing reaches the guest before it is right).
    let mut viewer_leftover = Vec::new();
    let mut viewer_version = None;
    if let Some(password) = &target.vnc_password {
        let mut reader = vnc_auth::Reader::new(&mut client);
        let checked = tokio::time::timeout(
            vnc_auth::VIEWER_DEADLINE,
            vnc_auth::check_viewer(
                &mut reader,
                password,
                || vnc_password_allowed(state, target.peer),
                || vnc_password_wrong(state, target.peer, &target.computer_id),
            ),
        )
        .await
        .unwrap_or(Err(vnc_auth::AuthError::ViewerTimeout));
        match checked {
            Ok(v) => viewer_version = Some(v),
            Err(e) => {
                tracing::debug!(computer = %target.computer_id, peer = %target.peer, "VNC viewer refused: {e}");
                return close_with(client, close::NORMAL, &e.to_string()).await;
            }
        }
        viewer_leftover = reader.leftover();
        if let Err(reason) = give_vnc_password(state, &target.computer_id, password).await {
            tracing::warn!(computer = %target.computer_id, "{reason}");
            return cannot_start_viewer(client, viewer_version, reason).await;
        }
    }
    let opened = tokio::time::timeout(AGENT_HANDSHAKE_DEADLINE, async {
        let stream = state
            .lifecycle
            .agent_stream(&target.computer_id, AGENT_HANDSHAKE_DEADLINE)
            .await
            .map_err(|e| e.to_string())?;
        let uri = format!("ws://deskd-agent{}", target.agent_path);
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        tokio_tungstenite::client_async_with_config(uri, stream, Some(config))
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| format!("the desktop's agent refused the stream: {e}"))
    })
    .await;
    let mut agent = match opened {
        Ok(Ok(ws)) => ws,
        Ok(Err(reason)) if viewer_version.is_some() => {
            return cannot_start_viewer(client, viewer_version, reason).await
        }
        Ok(Err(reason)) => return cannot_start(client, &target, reason).await,
        Err(_) => {
            let reason = format!(
                "the desktop's agent did not open the stream within {} s",
                AGENT_HANDSHAKE_DEADLINE.as_secs()
            );
            if viewer_version.is_some() {
                return cannot_start_viewer(client, viewer_version, reason).await;
            }
            return cannot_start(client, &target, reason).await;
        }
    };
    if let (Some(v), Some(password)) = (viewer_version, &target.vnc_password) {
        let mut reader = vnc_auth::Reader::new(&mut agent);
        let logged_in = tokio::time::timeout(
            AGENT_HANDSHAKE_DEADLINE,
            vnc_auth::log_in_to_desktop(&mut reader, password),
        )
        .await
        .unwrap_or_else(|_| {
            Err(vnc_auth::AuthError::Desktop(format!(
                "did not finish the handshake within {} s",
                AGENT_HANDSHAKE_DEADLINE.as_secs()
            )))
        });
        let desktop_leftover = reader.leftover();
        if let Err(e) = &logged_in {
            tracing::warn!(computer = %target.computer_id, "VNC relay: {e}");
        }
        let mut viewer = vnc_auth::Reader::new(&mut client);
        if !vnc_auth::finish_viewer(&mut viewer, v, logged_in.as_ref().map(|_| ())).await {
            let reason = logged_in.err().map(|e| e.to_string()).unwrap_or_default();
            return close_with(client, close::CANNOT_START, &reason).await;
        }
        // Bytes read past the handshake on either side go first.
        if !desktop_leftover.is_empty()
            && client
                .send(Message::Binary(desktop_leftover.into()))
                .await
                .is_err()
        {
            return;
        }
        if !viewer_leftover.is_empty()
            && agent
                .send(tungstenite::Message::Binary(viewer_leftover.into()))
                .await
                .is_err()
        {
            return;
        }
    }
    let (mut to_agent, mut from_agent) = agent.split();
    let (mut to_client, mut from_client) = client.split();
    let upstream = async {
        while let Some(Ok(m)) = from_client.next().await {
            let m = match m {
                Message::Text(t) => tungstenite::Message::Text(t.as_str().into()),
                Message::Binary(b) => tungstenite::Message::Binary(b),
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => break,
            };
            if to_agent.send(m).await.is_err() {
                break;
            }
        }
        let _ = to_agent.close().await;
    };
    let downstream = async {
        let mut end = (
            close::GOING_AWAY,
            "the desktop ended the stream".to_string(),
        );
        while let Some(m) = from_agent.next().await {
            let m = match m {
                Ok(tungstenite::Message::Text(t)) => Message::Text(t.as_str().into()),
                Ok(tungstenite::Message::Binary(b)) => Message::Binary(b),
                Ok(tungstenite::Message::Close(frame)) => {
                    if let Some(f) = frame {
                        end = (u16::from(f.code), f.reason.as_str().to_string());
                    } else {
                        end = (close::NORMAL, String::new());
                    }
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            };
            if to_client.send(m).await.is_err() {
                return;
            }
        }
        let _ = to_client
            .send(Message::Close(Some(CloseFrame {
                code: end.0,
                reason: end.1.into(),
            })))
            .await;
    };
    // Whichever side ends first ends the relay.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

/// Whether `peer` may try a VNC password now: wrong ones share the budget of wrong API keys.
fn vnc_password_allowed(state: &AppState, peer: Peer) -> Result<(), vnc_auth::AuthError> {
    let now = std::time::Instant::now();
    if !state.bad_keys.limited(&peer, now) {
        return Ok(());
    }
    // Asking again records this attempt too and says how long until the next is allowed.
    let refusal = state.bad_keys.refuse(peer, now);
    Err(vnc_auth::AuthError::Limited {
        peer: peer.to_string(),
        retry_after_secs: refusal
            .retry_after
            .map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64),
    })
}

/// Records a wrong VNC password of `peer` (logged at most once a minute per peer).
fn vnc_password_wrong(
    state: &AppState,
    peer: Peer,
    computer_id: &str,
) -> Option<vnc_auth::AuthError> {
    let refusal = state.bad_keys.refuse(peer, std::time::Instant::now());
    if let Some(unlogged) = refusal.log {
        tracing::warn!(
            computer = %computer_id,
            "wrong VNC password from {peer} ({unlogged} more wrong passwords or keys from it since its last line)"
        );
    }
    None
}

/// The end of a viewer that passed its password but whose desktop could not be reached: a
/// failed SecurityResult with the reason (noVNC shows it), then 4500.
async fn cannot_start_viewer(
    mut client: WebSocket,
    version: Option<vnc_auth::ViewerVersion>,
    reason: String,
) {
    if let Some(v) = version {
        let mut reader = vnc_auth::Reader::new(&mut client);
        let err = vnc_auth::AuthError::Desktop(format!("could not be reached: {reason}"));
        vnc_auth::finish_viewer(&mut reader, v, Err(&err)).await;
    }
    close_with(client, close::CANNOT_START, &reason).await
}

/// A viewer's WebSocket as RFB bytes (text, pings and pongs are not RFB).
impl vnc_auth::RfbIo for WebSocket {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.next().await? {
                Ok(Message::Binary(b)) => return Some(b.to_vec()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
    async fn send(&mut self, bytes: Vec<u8>) -> bool {
        SinkExt::send(self, Message::Binary(bytes.into()))
            .await
            .is_ok()
    }
}

/// The agent's side of a VNC relay as RFB bytes.
impl<S> vnc_auth::RfbIo for tokio_tungstenite::WebSocketStream<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.next().await? {
                Ok(tungstenite::Message::Binary(b)) => return Some(b.to_vec()),
                Ok(tungstenite::Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }
    async fn send(&mut self, bytes: Vec<u8>) -> bool {
        SinkExt::send(self, tungstenite::Message::Binary(bytes.into()))
            .await
            .is_ok()
    }
}

mod vnc_auth;

#[cfg(test)]
mod vnc_tests;
