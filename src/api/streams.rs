//! Section 5, RTMP streaming: the stream-connections API (ours: the service keeps them in its
//! dashboard) and a computer's `stream/start|status|stop`, forwarded to the guest agent, which
//! runs and supervises the encoder (one stream per computer: the agent answers 409 to a second).
//!
//! A connection's stream key is a secret: it is stored in the root-only database, sent only to
//! the agent that pushes the stream, masked ([`KEY_MASK`]) in every answer, quoted in no error
//! message, and never logged (the access log has paths only; the agent removes the key from the
//! encoder's error lines).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};
use deskd_agent::protocol::stream::{
    self, check_key, check_name, check_url, parse_resolution, StreamSettings, StreamStartRequest,
    DEFAULT_SETTINGS, KEY_MASK,
};
use serde_json::{json, Map, Value};

use super::access;
use super::actions::{forward_call, AGENT_MARGIN};
use super::body::{field, kind, JsonObject};
use super::error::ApiError;
use super::middleware::AuthKey;
use super::AppState;
use crate::computers::agent_client::{limits, stream_start_call, AgentCall};
use crate::store::StreamConnection;

/// A connection as answers show it: everything but the key.
fn view(c: &StreamConnection) -> Value {
    json!({
        "name": c.name,
        "rtmp_url": c.rtmp_url,
        "stream_key": KEY_MASK,
        "stream_key_set": true,
        "bitrate_kbps": c.settings.bitrate_kbps,
        "resolution": c.settings.resolution(),
        "framerate": c.settings.framerate,
        "created_at": c.created_at,
    })
}

/// The first of `names` present in the body (aliases), with the name it came under.
fn first<'a>(
    body: &'a Map<String, Value>,
    names: &[&'static str],
) -> Option<(&'static str, &'a Value)> {
    names.iter().find_map(|n| field(body, n).map(|v| (*n, v)))
}

/// A required string under one of `names`. Messages name the field, never its value (the key).
fn required_str(body: &Map<String, Value>, names: &[&'static str]) -> Result<String, ApiError> {
    match first(body, names) {
        None => Err(ApiError::bad_request(format!("{} is required.", names[0]))),
        Some((_, Value::String(s))) => Ok(s.clone()),
        Some((n, v)) => Err(ApiError::bad_request(format!(
            "{n} must be a string, not {}.",
            kind(v)
        ))),
    }
}

/// A whole number under one of `names`, or `default`.
fn number(
    body: &Map<String, Value>,
    names: &[&'static str],
    default: u32,
) -> Result<u32, ApiError> {
    match first(body, names) {
        None => Ok(default),
        Some((n, v)) => v
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{n} must be a whole number, not {}.",
                    match v {
                        Value::Number(x) => x.to_string(),
                        other => kind(other).to_string(),
                    }
                ))
            }),
    }
}

/// `GET /stream-connections`: `{"stream_connections": [...]}`, keys masked.
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let all: Vec<Value> = state.store.stream_connections()?.iter().map(view).collect();
    Ok(Json(json!({ "stream_connections": all })))
}

/// `POST /stream-connections {name, rtmp_url, stream_key, bitrate_kbps?, resolution?,
/// framerate?}` → 201 with the connection (key masked). Aliases: `url`; `key`; `bitrate`;
/// `fps`, `frame_rate`. Account-wide keys only: a connection serves every workspace.
pub async fn create(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    access::check_scope(&key, None)?;
    let name = required_str(&body, &["name"])?;
    check_name(&name).map_err(ApiError::bad_request)?;
    let url = required_str(&body, &["rtmp_url", "url"])?;
    check_url(&url).map_err(ApiError::bad_request)?;
    let stream_key = required_str(&body, &["stream_key", "key"])?;
    check_key(&stream_key).map_err(ApiError::bad_request)?;
    let (width, height) = match first(&body, &["resolution"]) {
        None => (DEFAULT_SETTINGS.width, DEFAULT_SETTINGS.height),
        Some((_, Value::String(s))) => parse_resolution(s).map_err(ApiError::bad_request)?,
        Some((_, v)) => {
            return Err(ApiError::bad_request(format!(
                "resolution must be a string like \"1280x720\", not {}.",
                kind(v)
            )))
        }
    };
    let settings = StreamSettings {
        bitrate_kbps: number(
            &body,
            &["bitrate_kbps", "bitrate"],
            DEFAULT_SETTINGS.bitrate_kbps,
        )?,
        width,
        height,
        framerate: number(
            &body,
            &["framerate", "fps", "frame_rate"],
            DEFAULT_SETTINGS.framerate,
        )?,
    };
    settings.check().map_err(ApiError::bad_request)?;
    let c = state
        .store
        .create_stream_connection(&name, &url, &stream_key, settings)?;
    Ok((StatusCode::CREATED, Json(view(&c))))
}

/// `DELETE /stream-connections/{name}` → `{"success": true}`; 404 when there is none.
pub async fn delete(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    access::check_scope(&key, None)?;
    if !state.store.delete_stream_connection(&name)? {
        return Err(no_connection(&name));
    }
    Ok(Json(json!({"success": true})))
}

fn no_connection(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "No stream connection named {:?}; create one with POST /api/stream-connections.",
        name.chars().take(80).collect::<String>()
    ))
}

/// `POST /computers/{id}/stream/start {"connection_name"}` →
/// `{"success":true,"status":"streaming","pid","start_time"}`.
pub async fn start(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let name = required_str(&body, &["connection_name"])?;
    // Checked before a booting computer is waited for.
    access::computer(&state, &key, &id)?;
    let c = state
        .store
        .stream_connection(&name)?
        .ok_or_else(|| no_connection(&name))?;
    let request = StreamStartRequest {
        url: c.rtmp_url,
        stream_key: c.stream_key,
        settings: c.settings,
    };
    let call = stream_start_call(&request, AGENT_MARGIN)
        .map_err(|e| ApiError::internal(format!("cannot encode the stream request: {e}")))?;
    forward_call(&state, &key, &id, "stream_start", call).await
}

/// `GET /computers/{id}/stream/status` → `{"status":"idle"}` | `{"status":"streaming",
/// "start_time","pid"}` | `{"status":"terminated","message"}`.
pub async fn status(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let call = AgentCall::get(stream::paths::STATUS, AGENT_MARGIN, limits::JSON);
    forward_call(&state, &key, &id, "stream_status", call).await
}

/// `POST /computers/{id}/stream/stop` → `{"success":true}` (also when nothing streams).
pub async fn stop(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let call = AgentCall::post_json(stream::paths::STOP, Bytes::from_static(b"{}"), AGENT_MARGIN);
    forward_call(&state, &key, &id, "stream_stop", call).await
}
