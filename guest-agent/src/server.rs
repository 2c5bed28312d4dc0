//! HTTP routes and the listener (vsock in the guest, Unix socket in tests).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, FromRequest, Query, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::events::EventHub;
use crate::files::FileError;
use crate::protocol::audio::AudioFormat;
use crate::protocol::files::{self, FileWritten, ReadQuery, WriteQuery};
use crate::protocol::growfs::{GrowRootFs, RootFsGrown};
use crate::protocol::resumed::{Resumed, ResumedDone};
use crate::protocol::stream::{self, StreamStartRequest, StreamStarted, StreamStatus};
use crate::protocol::*;
use crate::run::{self, DesktopUser};
use crate::x11::clipboard::Clipboard;
use crate::x11::{capture, input, keys, readiness, Desktop, X11Error, XSession};
use crate::{encode, terminal};

/// Where to listen.
#[derive(Debug, Clone, PartialEq)]
pub enum Listen {
    Unix(PathBuf),
    Vsock(u32),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: needs a path, e.g. unix:/run/deskd-agent.sock".into());
            }
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        if let Some(port) = s.strip_prefix("vsock:") {
            return port
                .parse()
                .map(Listen::Vsock)
                .map_err(|_| format!("bad vsock port {port:?}, e.g. vsock:1024"));
        }
        Err(format!("--listen {s:?}: use vsock:PORT or unix:PATH"))
    }
}

/// Everything a request handler needs.
pub struct Agent {
    pub desktop: Desktop,
    /// The CLIPBOARD selection, read and owned on connections of its own.
    pub clipboard: Arc<Clipboard>,
    pub user: DesktopUser,
    pub output_cap: usize,
    pub events: EventHub,
    /// How long a plain X call may take before the server counts as hung.
    pub x_call_limit: Duration,
    /// The X server's RFB Unix socket (`/ws/vnc`).
    pub vnc_socket: PathBuf,
    /// The VNC password file the X server reads (`/vnc/password`).
    pub vnc_password_file: PathBuf,
    /// Where the desktop's sound is (`/ws/audio`).
    pub pulse: crate::audio::Pulse,
    /// The computer's RTMP stream (`/stream/*`).
    pub streamer: crate::stream::Streamer,
}

type Shared = Arc<Agent>;

/// A failed request: status and a message saying what to do.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
    fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<X11Error> for ApiError {
    fn from(e: X11Error) -> ApiError {
        let status = match &e {
            X11Error::Unreachable { .. } | X11Error::Connection(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            X11Error::BadInput(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> ApiError {
        let status = match &e {
            FileError::BadRequest(_) => StatusCode::BAD_REQUEST,
            FileError::Outside(_) => StatusCode::FORBIDDEN,
            FileError::NotFound(_) => StatusCode::NOT_FOUND,
            FileError::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            FileError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl From<run::RunError> for ApiError {
    fn from(e: run::RunError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Largest request body accepted (a long `type` text or `exec` program fits easily).
const MAX_BODY: usize = 16 * 1024 * 1024;

fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    if body.is_empty() {
        return Err(ApiError::bad("request body is empty; send a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

/// A JSON request body whose every failure (too large, unreadable, not JSON, wrong fields) is an
/// `ApiError` with a JSON body, never a plain-text rejection.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError {
                status: e.status(),
                message: format!("could not read the request body: {}", e.body_text()),
            })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Runs blocking X11 work off the async threads, so a slow X call never stalls other requests.
async fn on_desktop<T: Send + 'static>(
    agent: &Shared,
    f: impl Fn(&XSession) -> Result<T, X11Error> + Send + 'static,
) -> ApiResult<T> {
    on_desktop_within(agent, agent.x_call_limit, f).await
}

/// Like `on_desktop`, with a time limit: an X server that stopped answering (but kept its
/// socket open) gets a 503 instead of a request that never ends.
async fn on_desktop_within<T: Send + 'static>(
    agent: &Shared,
    limit: Duration,
    f: impl Fn(&XSession) -> Result<T, X11Error> + Send + 'static,
) -> ApiResult<T> {
    let agent = agent.clone();
    let display = agent.desktop.display_name().to_string();
    let task = tokio::task::spawn_blocking(move || agent.desktop.with(f));
    match tokio::time::timeout(limit, task).await {
        Ok(joined) => joined
            .map_err(|e| ApiError::internal(format!("desktop task failed: {e}")))?
            .map_err(ApiError::from),
        Err(_) => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "the X server on display {display} did not answer within {:.1} s; it may be hung",
                limit.as_secs_f64()
            ),
        }),
    }
}

fn parse_button(b: Option<&str>) -> ApiResult<Button> {
    match b.map(str::to_ascii_lowercase).as_deref() {
        None | Some("left") => Ok(Button::Left),
        Some("right") => Ok(Button::Right),
        Some("middle") => Ok(Button::Middle),
        Some(other) => Err(ApiError::bad(format!(
            "unknown button {other:?}; use left, right or middle"
        ))),
    }
}

fn action(name: &str, details: serde_json::Value) -> Json<ActionResponse> {
    Json(ActionResponse {
        success: true,
        action: name.to_string(),
        details: Some(details),
    })
}

pub fn router(agent: Shared) -> Router {
    Router::new()
        .route(paths::HEALTH, get(health))
        .route(paths::SCREENSHOT, get(screenshot))
        .route("/click", post(click))
        .route("/mouse_down", post(mouse_down))
        .route("/mouse_up", post(mouse_up))
        .route("/hold_key", post(hold_key))
        .route(paths::CURSOR_POSITION, get(cursor_position))
        .route(paths::CLIPBOARD, get(clipboard_get).post(clipboard_set))
        .route(files::WRITE, post(file_write))
        .route(files::READ, get(file_read))
        .route(files::INSTALL, post(file_install))
        .route("/move", post(move_pointer))
        .route("/drag", post(drag))
        .route("/scroll", post(scroll))
        .route("/type", post(type_text))
        .route("/key", post(key))
        .route("/wait", post(wait))
        .route("/bash", post(bash))
        .route("/exec", post(exec))
        .route(paths::RESUMED, post(resumed))
        .route(paths::GROW_ROOT_FS, post(grow_root_fs))
        .route(paths::WS_TERMINAL, get(ws_terminal))
        .route(paths::WS_EVENTS, get(ws_events))
        .route(paths::WS_VNC, get(ws_vnc))
        .route(paths::VNC_PASSWORD, post(vnc_password))
        .route(paths::WS_AUDIO, get(ws_audio))
        .route(stream::paths::START, post(stream_start))
        .route(stream::paths::STATUS, get(stream_status))
        .route(stream::paths::STOP, post(stream_stop))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such route".into(),
            }
        })
        .method_not_allowed_fallback(|| async {
            ApiError {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: "method not allowed on this route".into(),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(agent)
}

/// Always 200: what the agent sees of the desktop, `ready` once every part is up (the readiness
/// contract in `protocol::health`). An X server that does not answer is a desktop with no parts.
async fn health(State(agent): State<Shared>) -> Json<Health> {
    let seen = on_desktop(&agent, |s| {
        let (w, h) = s.screen_size()?;
        Ok(((u32::from(w), u32::from(h)), readiness::desktop_parts(s)?))
    })
    .await;
    let (size, parts) = match seen {
        Ok((size, parts)) => (Some(size), parts),
        Err(e) => {
            tracing::debug!("health: the desktop does not answer: {}", e.message);
            (None, DesktopParts::default())
        }
    };
    Json(Health::new(env!("CARGO_PKG_VERSION"), size, parts))
}

async fn screenshot(
    State(agent): State<Shared>,
    query: Result<Query<ScreenshotQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query.map_err(|e| ApiError::bad(format!("bad query: {e}")))?;
    let options = q.parse().map_err(ApiError::bad)?;
    let (format, quality, region) = (options.format, options.quality, options.region);
    let frame = on_desktop(&agent, move |s| capture::capture_area(s, region)).await?;
    let (w, h, scale) = match options.max_pixels {
        Some(max) => scaled_size(frame.width, frame.height, max),
        None => (frame.width, frame.height, 1.0),
    };
    let bytes = tokio::task::spawn_blocking(move || {
        let frame = encode::scale(frame, w, h)?;
        match format {
            ImageFormat::Png => encode::png(&frame),
            ImageFormat::Jpeg => encode::jpeg(&frame, quality),
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("encoder task failed: {e}")))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut response = (
        [
            (header::CONTENT_TYPE, format.mime().to_string()),
            (header::HeaderName::from_static(HEADER_WIDTH), w.to_string()),
            (
                header::HeaderName::from_static(HEADER_HEIGHT),
                h.to_string(),
            ),
        ],
        Body::from(bytes),
    )
        .into_response();
    if options.max_pixels.is_some() {
        if let Ok(v) = header::HeaderValue::from_str(&scale.to_string()) {
            response
                .headers_mut()
                .insert(header::HeaderName::from_static(HEADER_SCALE), v);
        }
    }
    Ok(response)
}

async fn click(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<ClickRequest>,
) -> ApiResult<Json<ActionResponse>> {
    let button = parse_button(req.button.as_deref())?;
    let clicks = req.click_count().map_err(ApiError::bad)?;
    let (x, y, double) = (req.x, req.y, req.double);
    on_desktop(&agent, move |s| {
        let (xi, yi) = input::check_on_screen(s, x, y)?;
        input::click(s, xi, yi, button, clicks)
    })
    .await?;
    let mut details = json!({"x": x, "y": y, "button": button, "double": double});
    // Answers to requests without `clicks` keep the contract's shape exactly.
    if req.clicks.is_some() {
        details["clicks"] = json!(clicks);
    }
    Ok(action(ClickRequest::action_name(clicks), details))
}

/// `/mouse_down` and `/mouse_up`.
async fn mouse_button(
    agent: Shared,
    req: MouseButtonRequest,
    down: bool,
) -> ApiResult<Json<ActionResponse>> {
    let button = parse_button(req.button.as_deref())?;
    let at = req.position().map_err(ApiError::bad)?;
    on_desktop(&agent, move |s| {
        if let Some((x, y)) = at {
            let (xi, yi) = input::check_on_screen(s, x, y)?;
            input::move_to(s, xi, yi)?;
        }
        input::mouse_button(s, button, down)
    })
    .await?;
    let mut details = json!({"button": button});
    if let Some((x, y)) = at {
        details["x"] = json!(x);
        details["y"] = json!(y);
    }
    Ok(action(
        if down { "mouse_down" } else { "mouse_up" },
        details,
    ))
}

async fn mouse_down(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<MouseButtonRequest>,
) -> ApiResult<Json<ActionResponse>> {
    mouse_button(agent, req, true).await
}

async fn mouse_up(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<MouseButtonRequest>,
) -> ApiResult<Json<ActionResponse>> {
    mouse_button(agent, req, false).await
}

async fn cursor_position(State(agent): State<Shared>) -> ApiResult<Json<CursorPosition>> {
    let (x, y) = on_desktop(&agent, input::cursor_position).await?;
    Ok(Json(CursorPosition {
        success: true,
        action: "cursor_position".into(),
        x: x.into(),
        y: y.into(),
    }))
}

/// Runs clipboard work off the async threads; the clipboard's own waits are bounded, and this
/// bounds them again in case the X server itself stops answering.
async fn on_clipboard<T: Send + 'static>(
    agent: &Shared,
    f: impl FnOnce(&Clipboard) -> Result<T, X11Error> + Send + 'static,
) -> ApiResult<T> {
    let clipboard = agent.clipboard.clone();
    let limit = agent.x_call_limit + Duration::from_secs(15);
    let task = tokio::task::spawn_blocking(move || f(&clipboard));
    match tokio::time::timeout(limit, task).await {
        Ok(joined) => joined
            .map_err(|e| ApiError::internal(format!("clipboard task failed: {e}")))?
            .map_err(ApiError::from),
        Err(_) => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "the clipboard did not answer within {:.1} s; the X server may be hung",
                limit.as_secs_f64()
            ),
        }),
    }
}

async fn clipboard_get(State(agent): State<Shared>) -> ApiResult<Json<ClipboardText>> {
    let text = on_clipboard(&agent, |c| c.get()).await?;
    Ok(Json(ClipboardText {
        success: true,
        owned: text.is_some(),
        text: text.unwrap_or_default(),
    }))
}

async fn clipboard_set(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<ClipboardSet>,
) -> ApiResult<Json<ActionResponse>> {
    let chars = req.text.chars().count();
    let bytes = req.text.len();
    on_clipboard(&agent, move |c| c.set(req.text)).await?;
    Ok(action(
        "clipboard_set",
        json!({"text_length": chars, "bytes": bytes}),
    ))
}

/// `POST /files/write?name=`: the body, streamed to the Desktop (not through the body limit).
async fn file_write(
    State(agent): State<Shared>,
    query: Result<Query<WriteQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> ApiResult<Json<FileWritten>> {
    let Query(q) = query.map_err(|e| ApiError::bad(format!("bad query: {e}")))?;
    Ok(Json(crate::files::write(&agent.user, &q.name, body).await?))
}

/// `POST /files/install`: files written as root, each with its mode and owner (see
/// `crate::files::install`); the body is never logged, it may hold secrets.
async fn file_install(
    JsonBody(req): JsonBody<files::InstallFiles>,
) -> ApiResult<Json<files::FilesInstalled>> {
    let done = crate::files::install(&req).await?;
    tracing::info!(paths = ?done.paths, "installed files");
    Ok(Json(done))
}

/// `GET /files/read?path=`: a file below the home, streamed.
async fn file_read(
    State(agent): State<Shared>,
    query: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query.map_err(|e| ApiError::bad(format!("bad query: {e}")))?;
    let (file, size) = crate::files::open(&agent.user.home, &q.path).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 << 10));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::HeaderName::from_static(files::HEADER_FILE_SIZE),
                size.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

async fn hold_key(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<HoldKeyRequest>,
) -> ApiResult<Json<ActionResponse>> {
    let combo = keys::parse_combo(&req.key).map_err(|e| ApiError::bad(e.to_string()))?;
    let duration = HOLD_KEY_DURATION
        .check(req.duration)
        .map_err(ApiError::bad)?;
    let limit = agent.x_call_limit + Duration::from_secs_f64(duration);
    on_desktop_within(&agent, limit, move |s| {
        input::hold_combo(s, &combo, Duration::from_secs_f64(duration))
    })
    .await?;
    Ok(action(
        "hold_key",
        json!({"key": req.key, "duration": duration}),
    ))
}

async fn move_pointer(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<MoveRequest>,
) -> ApiResult<Json<ActionResponse>> {
    let (x, y) = (req.x, req.y);
    on_desktop(&agent, move |s| {
        let (xi, yi) = input::check_on_screen(s, x, y)?;
        input::move_to(s, xi, yi)
    })
    .await?;
    Ok(action("move", json!({"x": x, "y": y})))
}

async fn drag(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<DragRequest>,
) -> ApiResult<Json<ActionResponse>> {
    let button = parse_button(req.button.as_deref())?;
    let duration = DRAG_DURATION.check(req.duration).map_err(ApiError::bad)?;
    let r = req.clone();
    let limit = agent.x_call_limit + Duration::from_secs_f64(duration);
    on_desktop_within(&agent, limit, move |s| {
        let from = input::check_on_screen(s, r.start_x, r.start_y)?;
        let to = input::check_on_screen(s, r.end_x, r.end_y)?;
        input::drag(s, from, to, button, Duration::from_secs_f64(duration))
    })
    .await?;
    Ok(action(
        "drag",
        json!({"start_x": req.start_x, "start_y": req.start_y, "end_x": req.end_x,
               "end_y": req.end_y, "button": button, "duration": duration}),
    ))
}

async fn scroll(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<ScrollRequest>,
) -> ApiResult<Json<ActionResponse>> {
    let direction = req.direction.to_ascii_lowercase();
    let wheel = match direction.as_str() {
        "up" => 4,
        "down" => 5,
        "left" => 6,
        "right" => 7,
        other => {
            return Err(ApiError::bad(format!(
                "unknown direction {other:?}; use up, down, left or right"
            )))
        }
    };
    let amount = req.amount.unwrap_or(DEFAULT_SCROLL_AMOUNT);
    if !SCROLL_AMOUNT.contains(&amount) {
        return Err(ApiError::bad(format!(
            "amount must be between {} and {}",
            SCROLL_AMOUNT.start(),
            SCROLL_AMOUNT.end()
        )));
    }
    let at = if req.x.is_some() || req.y.is_some() {
        Some((req.x.unwrap_or(0), req.y.unwrap_or(0)))
    } else {
        None
    };
    on_desktop(&agent, move |s| {
        if let Some((x, y)) = at {
            let (xi, yi) = input::check_on_screen(s, x, y)?;
            input::move_to(s, xi, yi)?;
        }
        input::scroll(s, wheel, amount as u32)
    })
    .await?;
    Ok(action(
        "scroll",
        json!({"direction": direction, "amount": amount}),
    ))
}

async fn type_text(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<TypeRequest>,
) -> ApiResult<Json<ActionResponse>> {
    let delay = req.delay_ms.unwrap_or(DEFAULT_TYPE_DELAY_MS);
    if delay > MAX_TYPE_DELAY_MS {
        return Err(ApiError::bad(format!(
            "delay_ms must be at most {MAX_TYPE_DELAY_MS}"
        )));
    }
    let n = req.text.chars().count();
    let text = req.text;
    // Each character costs its delay plus a little X traffic.
    let limit = agent.x_call_limit + Duration::from_millis((delay + 5).saturating_mul(n as u64));
    on_desktop_within(&agent, limit, move |s| {
        input::type_text(s, &text, Duration::from_millis(delay))
    })
    .await?;
    Ok(action("type", json!({"text_length": n})))
}

async fn key(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<KeyRequest>,
) -> ApiResult<Json<ActionResponse>> {
    let combo = keys::parse_combo(&req.key).map_err(|e| ApiError::bad(e.to_string()))?;
    on_desktop(&agent, move |s| input::press_combo(s, &combo)).await?;
    Ok(action("key_press", json!({"key": req.key})))
}

async fn wait(body: Bytes) -> ApiResult<Json<ActionResponse>> {
    let req: WaitRequest = if body.is_empty() {
        WaitRequest {
            seconds: None,
            duration: None,
        }
    } else {
        parse(&body)?
    };
    let s = WAIT
        .check(req.seconds.or(req.duration))
        .map_err(ApiError::bad)?;
    tokio::time::sleep(Duration::from_secs_f64(s)).await;
    Ok(action("wait", json!({"seconds": s})))
}

async fn bash(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<BashRequest>,
) -> ApiResult<Json<BashResponse>> {
    let timeout = Duration::from_secs_f64(BASH_TIMEOUT.check(req.timeout).map_err(ApiError::bad)?);
    let out = run::bash::bash(&agent.user, &req.command, timeout, agent.output_cap).await?;
    Ok(Json(out))
}

async fn exec(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<ExecRequest>,
) -> ApiResult<Json<ExecResponse>> {
    let timeout = Duration::from_secs_f64(EXEC_TIMEOUT.check(req.timeout).map_err(ApiError::bad)?);
    let out = run::python::exec(&agent.user, &req.code, timeout, agent.output_cap).await?;
    Ok(Json(out))
}

/// After a restore: the wall clock, and for a copy its new identity (see `crate::resumed`).
async fn resumed(JsonBody(req): JsonBody<Resumed>) -> ApiResult<Json<ResumedDone>> {
    match crate::resumed::apply_through_helper(&req).await {
        Ok(done) => {
            tracing::info!(
                "restored: clock stepped {} ms, new identity: {}",
                done.clock_step_ms,
                done.identity_applied
            );
            Ok(Json(done))
        }
        Err(crate::resumed::ResumedError::BadRequest(m)) => Err(ApiError::bad(m)),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

/// After the host grew the disk: the root filesystem onto it (see `crate::growfs`).
async fn grow_root_fs(JsonBody(req): JsonBody<GrowRootFs>) -> ApiResult<Json<RootFsGrown>> {
    let socket = std::path::Path::new(crate::growfs::HELPER_SOCKET);
    match crate::growfs::grow_through_helper(socket, &req).await {
        Ok(grown) => {
            tracing::info!(
                "root filesystem grown: {} bytes on a {}-byte disk",
                grown.filesystem_bytes,
                grown.disk_bytes
            );
            Ok(Json(grown))
        }
        Err(crate::growfs::GrowFsError::BadRequest(m)) => Err(ApiError::bad(m)),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

async fn ws_terminal(
    State(agent): State<Shared>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let size = TerminalSize::from_query(q.as_deref());
    let user = agent.user.clone();
    ws.on_upgrade(move |socket| terminal::serve(socket, user, size.cols, size.rows))
}

async fn ws_events(State(agent): State<Shared>, ws: WebSocketUpgrade) -> Response {
    let hub = agent.events.clone();
    ws.on_upgrade(move |socket| crate::events::serve_client(socket, hub))
}

async fn ws_vnc(State(agent): State<Shared>, ws: WebSocketUpgrade) -> Response {
    let rfb = agent.vnc_socket.clone();
    // A framebuffer update of a large screen arrives in CHUNK-sized messages; the default
    // limits only bound what a viewer may send, which is small (input events, client cut text).
    ws.on_upgrade(move |socket| crate::vnc::bridge(socket, rfb))
}

async fn ws_audio(
    State(agent): State<Shared>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let format = AudioFormat::from_query(q.as_deref());
    let (pulse, events) = (agent.pulse.clone(), agent.events.clone());
    ws.on_upgrade(move |socket| crate::audio::serve(socket, format, pulse, events))
}

async fn stream_start(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<StreamStartRequest>,
) -> ApiResult<Json<StreamStarted>> {
    use crate::stream::StreamError;
    agent.streamer.start(req).map(Json).map_err(|e| match e {
        StreamError::BadRequest(m) => ApiError::bad(m),
        e @ StreamError::AlreadyStreaming(_) => ApiError {
            status: StatusCode::CONFLICT,
            message: e.to_string(),
        },
        e @ StreamError::Spawn(_) => ApiError::internal(e.to_string()),
    })
}

async fn stream_status(State(agent): State<Shared>) -> Json<StreamStatus> {
    Json(agent.streamer.status())
}

async fn stream_stop(State(agent): State<Shared>) -> Json<serde_json::Value> {
    agent.streamer.stop().await;
    Json(json!({"success": true}))
}

async fn vnc_password(
    State(agent): State<Shared>,
    JsonBody(req): JsonBody<VncPasswordRequest>,
) -> ApiResult<Json<ActionResponse>> {
    let path = agent.vnc_password_file.clone();
    tokio::task::spawn_blocking(move || crate::vnc::write_password(&path, &req.password))
        .await
        .map_err(|e| ApiError::internal(format!("password task failed: {e}")))?
        .map_err(|e| match e {
            crate::vnc::VncError::EmptyPassword => ApiError::bad(e.to_string()),
            other => ApiError::internal(other.to_string()),
        })?;
    Ok(action("vnc_password", json!({})))
}

/// Accepts connections forever. Each connection gets its own task, so a stuck request blocks
/// nothing else. Only a listener that cannot be set up is an error.
pub async fn serve(listen: &Listen, agent: Shared) -> std::io::Result<()> {
    let app = router(agent);
    match listen {
        Listen::Unix(path) => {
            // A socket file left by a previous run would make bind fail. Only a socket is
            // removed: a mistyped path must not cost the file that is there (the agent is root).
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        format!(
                            "{} exists and is not a socket; pick another --listen path",
                            path.display()
                        ),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            let listener = tokio::net::UnixListener::bind(path)?;
            tracing::info!("listening on unix:{}", path.display());
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => spawn_connection(stream, app.clone()),
                    Err(e) => accept_failed(e).await,
                }
            }
        }
        Listen::Vsock(port) => {
            let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
            let listener = tokio_vsock::VsockListener::bind(addr)?;
            tracing::info!("listening on vsock:{port}");
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => spawn_connection(stream, app.clone()),
                    Err(e) => accept_failed(e).await,
                }
            }
        }
    }
}

/// An accept error (out of file descriptors, a connection aborted before it was taken) is about
/// one client or a passing shortage, never a reason to stop serving: log it and pause briefly so
/// a lasting shortage does not spin the loop.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(
        "accepting a connection failed: {e}; retrying (check the open file limit if this repeats)"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn spawn_connection<S>(stream: S, app: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = TowerToHyperService::new(app);
        // Clients such as `socat` shut down their write side once the request is sent; without
        // half-close support hyper would take that EOF as the end of the connection and drop
        // the answer.
        let conn = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!("connection ended: {e}");
        }
    });
}
