//! Section 3 actions, forwarded to the computer's guest agent (whose routes mirror them), and
//! the desktop proxy. Also the SDK's legacy Docker build calls, answered with a 400 that points to
//! templates.
//!
//! Actions sent while the computer is still on its way up (`creating`, `starting`, `restarting`)
//! wait for it, at most [`BOOT_WAIT`]: the SDK acts right after create without polling the
//! status, and an answer once the desktop is up is what such a client expects. A computer that is
//! not running (or not up within that time) gets the contract's 400 "Desktop instance not
//! available". Agent unreachable: 503; agent too slow: 504 with `upstream_status`; an agent error
//! keeps its status (400 rejected input, 503 display unavailable, 500 failed) with
//! `upstream_status`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use deskd_agent::protocol::{self, ErrorBody, ScreenshotQuery};
use serde_json::{json, Map, Value};

use super::access;
use super::body::JsonObject;
use super::error::ApiError;
use super::middleware::AuthKey;
use super::storage;
use super::AppState;
use crate::computers::agent_client::{limits, AgentCall, AgentError, AgentReply};
use crate::store::{ApiKey, Computer, ComputerStatus};

/// How long an action waits for a computer that is still booting. The rig runs guests 50-100x
/// slower than hardware; a desktop boots there in a few minutes.
pub const BOOT_WAIT: Duration = Duration::from_secs(600);
/// Time the agent gets for a call on top of what the call itself asks for (a bash timeout, a
/// wait, typing at a given speed).
pub(super) const AGENT_MARGIN: Duration = Duration::from_secs(60);
/// Longest time any call may ask for.
const MAX_ASKED_SECS: f64 = 3600.0;

fn not_available(c: &Computer) -> ApiError {
    let mut e =
        ApiError::bad_request("Desktop instance not available").with("status", c.status.as_str());
    if let Some(reason) = &c.status_reason {
        e = e.with("status_reason", reason.as_str());
    }
    e
}

/// The computer `id`, once it runs (waiting while it boots).
pub(super) async fn running(
    state: &AppState,
    key: &ApiKey,
    id: &str,
) -> Result<Computer, ApiError> {
    let c = access::computer(state, key, id)?;
    // An action is use of the computer: auto-stop counts from the last one.
    state.lifecycle.touch(&c.id);
    let c = state.lifecycle.wait_while_booting(&c.id, BOOT_WAIT).await?;
    if c.status != ComputerStatus::Running {
        return Err(not_available(&c));
    }
    Ok(c)
}

/// The API error for an agent that gave no answer.
pub fn agent_error(e: AgentError) -> ApiError {
    match e {
        AgentError::Unreachable(why) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Could not reach the desktop. Try again in a moment.",
        )
        .with("reason", why),
        e @ AgentError::TimedOut(_) => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string()).with("upstream_status", 504)
        }
        e @ AgentError::TooLarge(_) => ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// [`agent_error`], counted in the metrics.
fn failed(state: &AppState, e: AgentError) -> ApiError {
    state.metrics.agent_error(match e {
        AgentError::Unreachable(_) => "unreachable",
        AgentError::TimedOut(_) => "timed_out",
        AgentError::TooLarge(_) => "too_large",
    });
    agent_error(e)
}

/// The API error for an agent answer that is not a success.
fn upstream_error(reply: &AgentReply) -> ApiError {
    let message = serde_json::from_slice::<ErrorBody>(&reply.body)
        .map(|b| b.error)
        .unwrap_or_else(|_| {
            format!(
                "The desktop's agent answered {} without an explanation.",
                reply.status
            )
        });
    let status = match reply.status.as_u16() {
        400..=499 if reply.status != StatusCode::REQUEST_TIMEOUT => reply.status,
        408 | 504 => StatusCode::GATEWAY_TIMEOUT,
        503 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, message).with("upstream_status", reply.status.as_u16())
}

/// Seconds a call asks for in `field` (missing or nonsense: `default`), bounded.
fn asked_secs(body: &Map<String, Value>, fields: &[&str], default: f64) -> f64 {
    fields
        .iter()
        .find_map(|f| body.get(*f).and_then(Value::as_f64))
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(default)
        .min(MAX_ASKED_SECS)
}

/// How long the agent may take for `action` with this body (the agent's own defaults when the
/// body names nothing).
fn agent_timeout(action: &str, body: &Map<String, Value>) -> Duration {
    let asked = match action {
        "bash" => asked_secs(body, &["timeout"], protocol::BASH_TIMEOUT.default),
        "exec" => asked_secs(body, &["timeout"], protocol::EXEC_TIMEOUT.default),
        "wait" => asked_secs(body, &["seconds", "duration"], protocol::WAIT.default),
        "drag" => asked_secs(body, &["duration"], protocol::DRAG_DURATION.default),
        "hold_key" => asked_secs(body, &["duration"], protocol::HOLD_KEY_DURATION.default),
        "type" => {
            let chars = body
                .get("text")
                .and_then(Value::as_str)
                .map_or(0, |t| t.chars().count()) as f64;
            let delay_ms = asked_secs(body, &["delay_ms"], protocol::DEFAULT_TYPE_DELAY_MS as f64);
            (chars * delay_ms / 1000.0).min(MAX_ASKED_SECS)
        }
        _ => 0.0,
    };
    AGENT_MARGIN + Duration::from_secs_f64(asked)
}

/// Forwards a JSON action to the agent and returns its JSON answer as the public answer (the
/// agent's answers already have the public shapes).
async fn forward_json(
    state: &AppState,
    key: &ApiKey,
    id: &str,
    action: &'static str,
    body: Map<String, Value>,
) -> Result<Response, ApiError> {
    let timeout = agent_timeout(action, &body);
    let bytes = serde_json::to_vec(&Value::Object(body))
        .map_err(|e| ApiError::internal(format!("cannot encode the request: {e}")))?;
    let call = AgentCall::post_json(format!("/{action}"), Bytes::from(bytes), timeout);
    forward_call(state, key, id, action, call).await
}

/// Sends `call` to the agent of the running computer `id` and passes its JSON answer through.
/// The answer is checked to be JSON and passed through as it came: a large answer is never built
/// into a tree of values.
pub(super) async fn forward_call(
    state: &AppState,
    key: &ApiKey,
    id: &str,
    action: &'static str,
    call: AgentCall,
) -> Result<Response, ApiError> {
    let c = running(state, key, id).await?;
    let started = std::time::Instant::now();
    let reply = state
        .lifecycle
        .agent_request(&c.id, call)
        .await
        .map_err(|e| failed(state, e))?;
    if !reply.status.is_success() {
        return Err(upstream_error(&reply));
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&reply.body) {
        return Err(ApiError::internal(format!(
            "The desktop's agent sent an answer that is not JSON: {e}"
        ))
        .with("upstream_status", reply.status.as_u16()));
    }
    let mut response = Response::new(Body::from(reply.body.clone()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    state.metrics.action(action, started.elapsed());
    Ok(response)
}

macro_rules! json_action {
    ($name:ident, $action:literal) => {
        #[doc = concat!("`POST /computers/{id}/", $action, "`, forwarded to the agent.")]
        pub async fn $name(
            State(state): State<AppState>,
            Extension(AuthKey(key)): Extension<AuthKey>,
            Path(id): Path<String>,
            JsonObject(body): JsonObject,
        ) -> Result<Response, ApiError> {
            forward_json(&state, &key, &id, $action, body).await
        }
    };
}

json_action!(click, "click");
json_action!(drag, "drag");
json_action!(move_pointer, "move");
json_action!(scroll, "scroll");
json_action!(type_text, "type");
json_action!(key, "key");
json_action!(wait, "wait");
json_action!(bash, "bash");
json_action!(hold_key, "hold_key");
json_action!(mouse_down, "mouse_down");
json_action!(mouse_up, "mouse_up");

/// `GET /computers/{id}/clipboard` (ours): the CLIPBOARD selection as text,
/// `{success, text, owned}`.
pub async fn clipboard_get(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let call = AgentCall::get(protocol::paths::CLIPBOARD, AGENT_MARGIN, limits::JSON);
    forward_call(&state, &key, &id, "clipboard", call).await
}

/// `POST /computers/{id}/clipboard {"text"}` (ours): the agent owns the CLIPBOARD selection
/// with this text until something else is copied.
pub async fn clipboard_set(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    forward_json(&state, &key, &id, "clipboard", body).await
}

/// `GET /computers/{id}/cursor_position` (ours): where the pointer is.
pub async fn cursor_position(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let call = AgentCall::get(protocol::paths::CURSOR_POSITION, AGENT_MARGIN, limits::JSON);
    forward_call(&state, &key, &id, "cursor_position", call).await
}
json_action!(exec, "exec");

/// `GET /computers/{id}/screenshot?response_format=base64|url&format=png|jpeg&quality=N`, and
/// (ours) `x, y, width, height` for a region at full resolution and `max_pixels` for a scaled
/// image; those answers add `region` and `scale` (image pixels per screen pixel), and only those.
pub async fn screenshot(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let as_url = match query.get("response_format").map(String::as_str) {
        None | Some("base64") => false,
        Some("url") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "response_format must be base64 or url (got {:?}).",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    // The agent's own rules, checked before a booting computer is waited for.
    let options = ScreenshotQuery {
        format: query.get("format").cloned(),
        quality: query.get("quality").cloned(),
        x: query.get("x").cloned(),
        y: query.get("y").cloned(),
        width: query.get("width").cloned(),
        height: query.get("height").cloned(),
        max_pixels: query.get("max_pixels").cloned(),
    }
    .parse()
    .map_err(ApiError::bad_request)?;
    let c = running(&state, &key, &id).await?;
    let started = std::time::Instant::now();
    let reply = state
        .lifecycle
        .agent_request(
            &c.id,
            AgentCall::get(options.path(), AGENT_MARGIN, limits::SCREENSHOT),
        )
        .await
        .map_err(|e| failed(&state, e))?;
    if !reply.status.is_success() {
        return Err(upstream_error(&reply));
    }
    let mime = reply
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(options.format.mime())
        .to_string();
    let dimension = |name: &str| -> Option<u32> {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let (Some(width), Some(height)) = (
        dimension(protocol::HEADER_WIDTH),
        dimension(protocol::HEADER_HEIGHT),
    ) else {
        return Err(ApiError::internal(
            "The desktop's agent sent a screenshot without its size headers.",
        )
        .with("upstream_status", reply.status.as_u16()));
    };
    let scale = match options.max_pixels {
        None => None,
        Some(_) => Some(
            reply
                .headers
                .get(protocol::HEADER_SCALE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .ok_or_else(|| {
                    ApiError::internal(
                        "The desktop's agent sent a scaled screenshot without its scale; \
                         update the agent in the image.",
                    )
                    .with("upstream_status", reply.status.as_u16())
                })?,
        ),
    };
    state.metrics.action("screenshot", started.elapsed());
    let mut answer = if as_url {
        let stored = storage::store_screenshot(&state, &c, &mime, &reply.body)?;
        json!({
            "success": true,
            "image": stored.url,
            "mime_type": mime,
            "width": width,
            "height": height,
            "metadata": {
                "id": stored.id,
                "timestamp": stored.timestamp,
                "size": reply.body.len(),
                "storage_path": stored.storage_path,
            },
        })
    } else {
        json!({
            "success": true,
            "image": base64::engine::general_purpose::STANDARD.encode(&reply.body),
            "mime_type": mime,
            "width": width,
            "height": height,
        })
    };
    if let Some(region) = options.region {
        answer["region"] = json!(region);
    }
    if let Some(scale) = scale {
        answer["scale"] = json!(scale);
    }
    Ok(Json(answer))
}

/// `GET|POST /desktops/{instance_id}/proxy/{endpoint}`: the agent's own HTTP API, same auth. No
/// waiting here: `/proxy/health` is the readiness probe, so it answers at once (with the agent's
/// `protocol::Health`, whose `ready` says whether the desktop is usable).
pub async fn desktop_proxy(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path((instance, endpoint)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let c = state
        .store
        .computer_by_id_or_instance(&instance)?
        .ok_or_else(|| ApiError::not_found("Computer not found"))?;
    access::check_scope(&key, Some(&c.workspace_id))?;
    if c.status != ComputerStatus::Running {
        return Err(not_available(&c));
    }
    if endpoint.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(ApiError::bad_request(
            "The proxied path may not contain . or .. segments.",
        ));
    }
    if headers.get(header::UPGRADE).is_some() {
        return Err(ApiError::bad_request(
            "WebSockets are served at /desktops/{id}/ws/..., not through the proxy.",
        ));
    }
    let path = match query {
        Some(q) => format!("/{endpoint}?{q}"),
        None => format!("/{endpoint}"),
    };
    let parsed: Map<String, Value> = serde_json::from_slice(&body).unwrap_or_default();
    let action = endpoint.trim_matches('/');
    let call = AgentCall {
        method,
        path,
        body: (!body.is_empty()).then_some(body),
        timeout: agent_timeout(action, &parsed),
        // The proxy carries any route, screenshots included.
        max_answer: limits::SCREENSHOT,
    };
    let reply = state
        .lifecycle
        .agent_request(&c.id, call)
        .await
        .map_err(|e| failed(&state, e))?;
    if !reply.status.is_success() {
        return Err(upstream_error(&reply));
    }
    let mut response = Response::new(Body::from(reply.body.clone()));
    *response.status_mut() = reply.status;
    for name in [
        header::CONTENT_TYPE,
        axum::http::HeaderName::from_static(protocol::HEADER_WIDTH),
        axum::http::HeaderName::from_static(protocol::HEADER_HEIGHT),
    ] {
        if let Some(v) = reply.headers.get(&name) {
            response.headers_mut().insert(name, v.clone());
        }
    }
    if !response.headers().contains_key(header::CONTENT_TYPE) {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    Ok(response.into_response())
}

/// `POST /builds/create`, `POST /builds/update`, `GET /builds/latest` (old SDK, Docker builds).
pub async fn legacy_builds() -> Result<Json<Value>, ApiError> {
    Err(ApiError::bad_request(
        "Docker-based builds are not supported by deskd: describe the computer as an orgo.ai/v1 \
         template (POST /api/templates) and create computers with template_ref.",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn timeouts_cover_what_the_call_asks_for() {
        assert_eq!(
            agent_timeout("bash", &body(json!({"command": "x"}))),
            AGENT_MARGIN + Duration::from_secs(200)
        );
        // The agent's defaults: a wait of one second, a drag of half a second, exec 10 s.
        assert_eq!(
            agent_timeout("wait", &body(json!({}))),
            AGENT_MARGIN + Duration::from_secs(1)
        );
        assert_eq!(
            agent_timeout("drag", &body(json!({}))),
            AGENT_MARGIN + Duration::from_millis(500)
        );
        assert_eq!(
            agent_timeout("exec", &body(json!({"code": "1"}))),
            AGENT_MARGIN + Duration::from_secs(10)
        );
        assert_eq!(
            agent_timeout("bash", &body(json!({"command": "x", "timeout": 5}))),
            AGENT_MARGIN + Duration::from_secs(5)
        );
        assert_eq!(
            agent_timeout("hold_key", &body(json!({"key": "a", "duration": 30}))),
            AGENT_MARGIN + Duration::from_secs(30)
        );
        assert_eq!(
            agent_timeout("hold_key", &body(json!({"key": "a"}))),
            AGENT_MARGIN + Duration::from_millis(500)
        );
        assert_eq!(
            agent_timeout("wait", &body(json!({"duration": 2}))),
            AGENT_MARGIN + Duration::from_secs(2)
        );
        // 1000 characters at 12 ms.
        let text = "a".repeat(1000);
        assert_eq!(
            agent_timeout("type", &body(json!({"text": text}))),
            AGENT_MARGIN + Duration::from_secs(12)
        );
        // Nonsense is bounded, never a panic.
        assert_eq!(
            agent_timeout("bash", &body(json!({"timeout": -1}))),
            AGENT_MARGIN + Duration::from_secs(200)
        );
        assert_eq!(
            agent_timeout("bash", &body(json!({"timeout": 1e300}))),
            AGENT_MARGIN + Duration::from_secs(3600)
        );
    }

    #[test]
    fn agent_errors_keep_their_meaning() {
        let reply = |status: u16, body: &'static str| {
            AgentReply::new(
                StatusCode::from_u16(status).unwrap(),
                Default::default(),
                Bytes::from_static(body.as_bytes()),
            )
        };
        let e = upstream_error(&reply(400, r#"{"error":"x must be >= 0"}"#));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.message, "x must be >= 0");
        assert_eq!(e.body("r")["upstream_status"], 400);
        let e = upstream_error(&reply(503, r#"{"error":"no display"}"#));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let e = upstream_error(&reply(408, ""));
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.body("r")["upstream_status"], 408);
        let e = upstream_error(&reply(500, "not json"));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        let e = agent_error(AgentError::TimedOut(60));
        assert_eq!(e.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.body("r")["upstream_status"], 504);
        let e = agent_error(AgentError::Unreachable("closed".into()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            e.message,
            "Could not reach the desktop. Try again in a moment."
        );
    }
}
