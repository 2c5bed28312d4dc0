//! Middleware around every request: request ids, error bodies, panic safety, access logs (the
//! outermost, [`finish`]); API key check with the per-peer limit on requests without a valid key
//! ([`authenticate`], `bad_keys`); per-key rate limit ([`rate_limit`]); per-key limit on calls
//! to guest agents in flight ([`agent_calls`]).

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use super::bad_keys::{ConnPeer, Peer};
use super::error::{default_message, ApiError};
use super::AppState;
use crate::store::ApiKey;

/// The key that authenticated a request (request extension for handlers).
#[derive(Debug, Clone)]
pub struct AuthKey(pub ApiKey);

/// Which key made the request, for the access log (response extension; the id, never the key).
#[derive(Debug, Clone)]
struct KeyIdForLog(String);

/// On the answer to a request without a valid key (response extension): whether the access log
/// gets its line. `Some(n)`: yes, with the peer and the `n` such answers to it left out since its
/// last line; `None`: no (one line per peer per minute, `bad_keys::LOG_EVERY`).
#[derive(Debug, Clone)]
struct BadKeyLog {
    peer: Peer,
    unlogged: Option<u64>,
}

/// Longest key string [`authenticate`] hashes for the known-good check (ours are 48 characters).
const MAX_KEY_LEN: usize = 64;

/// Routes that need no key.
fn is_public(path: &str) -> bool {
    // WebSockets authenticate with the computer's token (browsers cannot send headers).
    // Signed download URLs carry their own proof (files::signing).
    // The template schema is public so that editors can fetch it through `$schema`.
    path == "/api/openapi.json"
        || path == "/api/template-schema"
        || path.starts_with("/desktops/")
        || path.starts_with(crate::files::signing::CONTENT_PREFIX)
}

/// Outermost layer: gives the request an id, turns panics into 500s, renders every error as the
/// section 0 JSON body, and writes one access-log line (method, path without query, status, time,
/// key id; never headers, query strings or bodies, so keys and tokens never reach the log).
pub async fn finish(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    let method = req.method().clone();
    let path = req.uri().path().to_string();

    let mut response = match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(%request_id, %method, %path, "handler panicked: {what}");
            ApiError::internal(
                "The daemon hit a bug handling this request; it is in the daemon's log.",
            )
            .into_response()
        }
    };

    let status = response.status();
    if let Some(err) = response.extensions_mut().remove::<ApiError>() {
        response = json_error(err, &request_id, response);
    } else if status.is_client_error() || status.is_server_error() {
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if !is_json {
            let err = ApiError::new(status, default_message(status));
            response = json_error(err, &request_id, response);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let key = response
        .extensions()
        .get::<KeyIdForLog>()
        .map(|k| k.0.clone())
        .unwrap_or_else(|| "-".into());
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Some(bad) = response.extensions().get::<BadKeyLog>() {
        // Anyone can send these: a bounded number of lines, whatever the rate.
        if let Some(unlogged) = bad.unlogged {
            let peer = bad.peer.to_string();
            tracing::info!(%request_id, %method, %path, status = status.as_u16(), ms, key, peer, unlogged,
                "request without a valid API key (at most one line per peer per minute; `unlogged` more since the last)");
        }
    } else if status.is_server_error() {
        tracing::warn!(%request_id, %method, %path, status = status.as_u16(), ms, key, "request");
    } else {
        tracing::info!(%request_id, %method, %path, status = status.as_u16(), ms, key, "request");
    }
    response
}

/// Replaces `old`'s body with the JSON error body, keeping its status and headers.
fn json_error(err: ApiError, request_id: &str, old: Response) -> Response {
    let (mut parts, _) = old.into_parts();
    parts.status = err.status;
    let body = serde_json::to_vec(&err.body(request_id)).unwrap_or_else(|_| b"{}".to_vec());
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// Checks `Authorization: Bearer <key>`: 401 `Missing API key.` / `Invalid API key.`, or 429
/// once the peer has sent too many of those (`bad_keys`).
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let peer = Peer::of(
        req.extensions().get::<ConnPeer>().copied(),
        req.headers()
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.as_bytes()),
        state.config.rate_limit.trust_forwarded_for,
    );
    let secret = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .unwrap_or("");
    if secret.is_empty() {
        return refuse(&state, peer, "Missing API key.");
    }
    let now = std::time::Instant::now();
    // An empty bucket: only keys that have worked before are looked up (module docs of
    // `bad_keys`: honest clients sharing the peer keep working, a flood costs no lookups). Keys
    // are 48 characters: a longer string is never hashed.
    if state.bad_keys.limited(&peer, now) {
        let known = secret.len() <= MAX_KEY_LEN
            && state.bad_keys.known_good(&crate::store::hash_key(secret));
        if !known {
            return refuse(&state, peer, "Invalid API key.");
        }
    }
    let key = match state.store.authenticate(secret) {
        Ok(Some(key)) => key,
        Ok(None) => return refuse(&state, peer, "Invalid API key."),
        Err(e) => return ApiError::from(e).into_response(),
    };
    state
        .bad_keys
        .remember_good(crate::store::hash_key(secret), now);
    let key_id = key.id.clone();
    // Nothing downstream needs the secret: drop the header before handlers see the request.
    req.headers_mut().remove(header::AUTHORIZATION);
    req.extensions_mut().insert(AuthKey(key));
    let mut response = next.run(req).await;
    response.extensions_mut().insert(KeyIdForLog(key_id));
    response
}

/// The answer to a request of `peer` without a valid key: 401 with `message` while its bucket
/// has tokens, then 429 with `Retry-After`; logged per [`BadKeyLog`].
fn refuse(state: &AppState, peer: Peer, message: &str) -> Response {
    let refusal = state.bad_keys.refuse(peer, std::time::Instant::now());
    let err = match refusal.retry_after {
        None => ApiError::new(StatusCode::UNAUTHORIZED, message),
        Some(wait) => {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let rl = &state.config.rate_limit;
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Too many requests without a valid API key from {peer}: {} are answered, then {} \
                     per second (rate_limit.bad_key_burst, rate_limit.bad_key_per_second). Retry \
                     after {secs} s with a valid key (this request: {message})",
                    rl.bad_key_burst, rl.bad_key_per_second
                ),
            )
            .with("code", "too_many_bad_keys");
            err.retry_after_secs = Some(secs);
            err
        }
    };
    let mut response = err.into_response();
    response.extensions_mut().insert(BadKeyLog {
        peer,
        unlogged: refusal.log,
    });
    response
}

/// Per-key token bucket: 429 with `Retry-After` when a key's bucket is empty.
pub async fn rate_limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(AuthKey(key)) = req.extensions().get::<AuthKey>() {
        if let Err(wait) = state.limiter.take(&key.id) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let rl = &state.config.rate_limit;
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Rate limit exceeded: this key may make {} requests per second (bursts of {}). Retry after {secs} s.",
                    rl.requests_per_second, rl.burst
                ),
            );
            err.retry_after_secs = Some(secs);
            return err.into_response();
        }
    }
    next.run(req).await
}

/// Seconds a client refused by [`agent_calls`] is told to wait: calls to desktops take about that
/// long, and none can be predicted better.
const AGENT_CALLS_RETRY_SECS: u64 = 1;

/// Per-key limit on calls forwarded to guest agents (layered on those routes only): 429 with
/// `Retry-After` when the key has `limits.max_agent_calls_per_key` of them in flight already.
pub async fn agent_calls(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(AuthKey(key)) = req.extensions().get::<AuthKey>() else {
        return next.run(req).await;
    };
    let Some(slot) = state.agent_calls.try_take(&key.id) else {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many calls to desktops in flight: this key may have {} at once \
                 (limits.max_agent_calls_per_key). Retry after {AGENT_CALLS_RETRY_SECS} s, once earlier calls have answered.",
                state.agent_calls.max()
            ),
        )
        .with("code", "too_many_agent_calls");
        err.retry_after_secs = Some(AGENT_CALLS_RETRY_SECS);
        return err.into_response();
    };
    // Agent answers are read whole before the handler returns, so the call ends with it.
    let response = next.run(req).await;
    drop(slot);
    response
}
