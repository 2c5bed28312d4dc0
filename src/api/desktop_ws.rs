//! Section 4 WebSockets, `/desktops/{id}/ws/{terminal|events|audio|websockify}?token=...`: the
//! token is the computer's `vnc_password` (no API key: browsers cannot set headers on WebSockets).
//! Terminal and events are relayed message by message to the guest agent's own WebSockets over
//! vsock. Refusals are WebSocket close codes, sent after the upgrade so that browser clients can
//! read them: 4401 missing or bad token, 4404 computer not found or not running, 4500 the agent
//! could not be reached or the stream is not available (audio, VNC: not built yet), 1001 when the
//! agent's side ends (the computer is stopping).

use std::collections::HashMap;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use deskd_agent::protocol::{self, TerminalSize};
use futures_util::{SinkExt, StreamExt};
use subtle::ConstantTimeEq;
use tokio_tungstenite::tungstenite;

use super::error::ApiError;
use super::AppState;
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
    pub const CANNOT_START: u16 = 4500;
}

/// Why a socket is refused, decided before the upgrade and sent as its close frame.
#[derive(Debug, PartialEq)]
struct Refusal {
    code: u16,
    reason: String,
}

/// What a client asked for, once it passed the checks: the agent route to relay to.
struct Target {
    computer_id: String,
    agent_path: String,
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
    };
    let c = state
        .store
        .computer_by_id_or_instance(id)
        .map_err(|_| refuse(close::CANNOT_START, "the daemon's database failed"))?
        .ok_or_else(|| refuse(close::NOT_FOUND, "computer not found"))?;
    let token = query.get("token").map(String::as_str).unwrap_or("");
    if token.is_empty() || !bool::from(token.as_bytes().ct_eq(c.vnc_password.as_bytes())) {
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
        "audio" | "websockify" => {
            return Err(refuse(
                close::CANNOT_START,
                "this stream is not available in this deskd yet",
            ))
        }
        _ => return Err(refuse(close::NOT_FOUND, "no such stream")),
    };
    Ok(Target {
        computer_id: c.id,
        agent_path,
    })
}

/// `GET /desktops/{id}/ws/{kind}`.
pub async fn connect(
    State(state): State<AppState>,
    Path((id, kind)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Ok(upgrade) = upgrade else {
        return Err(ApiError::bad_request(
            "This is a WebSocket endpoint: connect with a WebSocket client (Upgrade: websocket).",
        ));
    };
    let target = check(&state, &id, &kind, &query);
    Ok(upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |client| async move {
            match target {
                Ok(t) => relay(&state, client, t).await,
                Err(r) => close_with(client, r.code, &r.reason).await,
            }
        }))
}

async fn close_with(mut client: WebSocket, code: u16, reason: &str) {
    let _ = client
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// Relays messages between the client and the agent until either side ends.
async fn relay(state: &AppState, client: WebSocket, target: Target) {
    // An open session keeps the computer from being suspended for disuse.
    let _session = state.lifecycle.session(&target.computer_id);
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
    let agent = match opened {
        Ok(Ok(ws)) => ws,
        Ok(Err(reason)) => return close_with(client, close::CANNOT_START, &reason).await,
        Err(_) => {
            let reason = format!(
                "the desktop's agent did not open the stream within {} s",
                AGENT_HANDSHAKE_DEADLINE.as_secs()
            );
            return close_with(client, close::CANNOT_START, &reason).await;
        }
    };
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
