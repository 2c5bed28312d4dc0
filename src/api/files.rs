//! The files API (api.md section 7): uploads (multipart, streamed to the data directory and on to
//! the guest agents, never held in memory), the list, exports from a running computer, signed
//! download URLs and the route that serves them without an API key, and deletes.
//!
//! An upload with `desktopId` goes into that computer (now if it runs, else when it next starts);
//! one to a workspace goes into every computer of the workspace that runs now, and into the
//! others when they start (`files::delivery`).

use std::collections::HashMap;
use std::path::PathBuf;

use axum::body::Body;
use axum::extract::multipart::{Field, Multipart, MultipartError, MultipartRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use deskd_agent::protocol::files::{sanitize_filename, FileWritten, ReadQuery, READ};
use deskd_agent::protocol::ErrorBody;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::access::{self, ScopedComputer};
use super::actions;
use super::body::{check_uuid, field, JsonObject};
use super::error::ApiError;
use super::middleware::AuthKey;
use super::AppState;
use crate::computers::agent_client::AgentError;
use crate::computers::agent_files::Transfer;
use crate::files::delivery::{self, DeliveryError};
use crate::files::signing::{unix_now, SigningError, URL_LIFETIME_SECS};
use crate::store::{ApiKey, Computer, ComputerStatus, FileSource, NewFile, StoreError, StoredFile};

type Answer = Result<Json<Value>, ApiError>;

/// Bytes of a body still read (and dropped) after an upload was refused, so that a client still
/// sending gets to read the answer; past this the connection is cut.
const DRAIN_MAX: u64 = 64 << 20;
/// Longest text part (ids) of an upload.
const MAX_TEXT_PART: usize = 1024;
/// Longest export path.
const MAX_PATH_CHARS: usize = 4096;

/// A file's JSON shape.
fn view(f: &StoredFile) -> Value {
    json!({
        "id": f.id,
        "filename": f.filename,
        "size_bytes": f.size_bytes,
        "content_type": f.content_type,
        "created_at": f.created_at,
        "source": f.source,
        "desktop_id": f.computer_id,
        "project_id": f.workspace_id,
        "workspace_id": f.workspace_id,
    })
}

/// A body being received into the incoming directory: removed when dropped unless kept.
struct Incoming {
    path: PathBuf,
    kept: bool,
}

impl Incoming {
    fn new(state: &AppState) -> Incoming {
        Incoming {
            path: crate::files::incoming_dir(state.lifecycle.data_dir())
                .join(uuid::Uuid::new_v4().to_string()),
            kept: false,
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn storage_error(what: &str, e: std::io::Error) -> ApiError {
    tracing::error!("files: cannot {what}: {e}");
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "The daemon's disk is full; delete files or free space on the host.",
        )
        .with("code", "disk_full");
    }
    ApiError::internal(format!("The daemon cannot {what}; see its log."))
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "The file is larger than the upload limit of {limit} bytes ({:.1} MB; \
             limits.max_upload_bytes in the daemon's config).",
            limit as f64 / 1e6
        ),
    )
    .with("code", "file_too_large")
    .with("limit_bytes", limit)
}

fn bad_multipart(e: MultipartError) -> ApiError {
    ApiError::bad_request(format!(
        "The multipart body is malformed: {}.",
        e.body_text()
    ))
}

fn quota_error(e: StoreError) -> ApiError {
    match e {
        StoreError::QuotaExceeded(m) => {
            ApiError::new(StatusCode::INSUFFICIENT_STORAGE, m).with("code", "files_quota_exceeded")
        }
        other => other.into(),
    }
}

/// Text parts an upload may carry, and the name each stands for.
const UPLOAD_PARTS: &[(&str, &str)] = &[
    ("projectId", "projectId"),
    ("project_id", "projectId"),
    ("workspaceId", "projectId"),
    ("workspace_id", "projectId"),
    ("desktopId", "desktopId"),
    ("desktop_id", "desktopId"),
];

/// What a multipart upload carried.
struct Received {
    incoming: Incoming,
    filename: String,
    content_type: String,
    size: u64,
    /// Text parts by the name they stand for, with the name they came under.
    parts: HashMap<&'static str, (String, String)>,
}

/// Reads (and drops) the rest of a part of a refused body, taking from `left`.
async fn drain_part(part: &mut Field<'_>, left: &mut u64) {
    while *left > 0 {
        match part.chunk().await {
            Ok(Some(chunk)) => *left = left.saturating_sub(chunk.len() as u64),
            _ => return,
        }
    }
}

/// The `file` part as received so far.
type ReceivedFile = (Incoming, String, String, u64);

/// Receives an upload: the `file` part streamed to the incoming directory (at most
/// `limits.max_upload_bytes`), the text parts named in `allowed`. Any other part is refused.
/// A refused body is read to its end (within [`DRAIN_MAX`]) so the client reads the answer.
async fn receive(
    state: &AppState,
    multipart: Result<Multipart, MultipartRejection>,
    allowed: &[(&str, &'static str)],
) -> Result<Received, ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::bad_request(format!(
            "Send the upload as multipart/form-data with a `file` part: {}.",
            e.body_text()
        ))
    })?;
    let mut file: Option<ReceivedFile> = None;
    let mut parts: HashMap<&'static str, (String, String)> = HashMap::new();
    loop {
        let mut part = match multipart.next_field().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => return Err(bad_multipart(e)),
        };
        if let Err(e) = take_part(state, &mut part, allowed, &mut file, &mut parts).await {
            // The rest of the body (at most DRAIN_MAX bytes) is read and dropped.
            let mut left = DRAIN_MAX;
            drain_part(&mut part, &mut left).await;
            drop(part);
            while left > 0 {
                let Ok(Some(mut next)) = multipart.next_field().await else {
                    break;
                };
                drain_part(&mut next, &mut left).await;
            }
            return Err(e);
        }
    }
    let Some((incoming, filename, content_type, size)) = file else {
        return Err(ApiError::bad_request(
            "The upload has no `file` part: send the file as multipart/form-data under the name `file`.",
        ));
    };
    Ok(Received {
        incoming,
        filename,
        content_type,
        size,
        parts,
    })
}

/// Reads one part of an upload into `file` or `parts`.
async fn take_part(
    state: &AppState,
    part: &mut Field<'_>,
    allowed: &[(&str, &'static str)],
    file: &mut Option<ReceivedFile>,
    parts: &mut HashMap<&'static str, (String, String)>,
) -> Result<(), ApiError> {
    let name = part.name().unwrap_or_default().to_string();
    if name == "file" {
        if file.is_some() {
            return Err(ApiError::bad_request(
                "Send one `file` part per upload (this one has several).",
            ));
        }
        *file = Some(take_file(state, part).await?);
        return Ok(());
    }
    let Some(&(_, canonical)) = allowed.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = std::iter::once("file")
            .chain(allowed.iter().map(|(n, _)| *n))
            .collect();
        return Err(ApiError::bad_request(format!(
            "Unknown part {:?} in the upload: the parts are {}.",
            name.chars().take(60).collect::<String>(),
            names.join(", ")
        )));
    };
    let mut text = Vec::new();
    while let Some(c) = part.chunk().await.map_err(bad_multipart)? {
        if text.len() + c.len() > MAX_TEXT_PART {
            return Err(ApiError::bad_request(format!(
                "The part {name} is longer than {MAX_TEXT_PART} bytes."
            )));
        }
        text.extend_from_slice(&c);
    }
    let text = String::from_utf8(text)
        .map_err(|_| ApiError::bad_request(format!("The part {name} is not UTF-8 text.")))?;
    let text = text.trim().to_string();
    if let Some((other, before)) = parts.get(canonical) {
        if *before != text {
            return Err(ApiError::bad_request(format!(
                "{other} and {name} name different things; send one of them."
            )));
        }
    }
    parts.insert(canonical, (name, text));
    Ok(())
}

/// Streams the `file` part to a new file in the incoming directory, counting its bytes.
async fn take_file(state: &AppState, part: &mut Field<'_>) -> Result<ReceivedFile, ApiError> {
    let limit = state.config.limits.max_upload_bytes as u64;
    let raw = part.file_name().map(str::to_string).ok_or_else(|| {
        ApiError::bad_request(
            "The `file` part has no filename: send it as a file \
             (Content-Disposition: form-data; name=\"file\"; filename=\"...\").",
        )
    })?;
    let filename = sanitize_filename(&raw)
        .map_err(|why| ApiError::bad_request(format!("Bad filename: {why}.")))?;
    let content_type = part
        .content_type()
        .filter(|t| {
            *t != "application/octet-stream"
                && t.len() <= 255
                && t.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        })
        .map(str::to_string)
        .unwrap_or_else(|| {
            mime_guess::from_path(&filename)
                .first_or_octet_stream()
                .to_string()
        });
    let incoming = Incoming::new(state);
    let mut out = tokio::fs::File::create(&incoming.path)
        .await
        .map_err(|e| storage_error("receive the upload", e))?;
    let mut size = 0u64;
    while let Some(chunk) = part.chunk().await.map_err(bad_multipart)? {
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large(limit));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| storage_error("receive the upload", e))?;
    }
    out.sync_all()
        .await
        .map_err(|e| storage_error("receive the upload", e))?;
    if size == 0 {
        return Err(ApiError::bad_request(format!(
            "The file {filename:?} is empty (0 bytes); send a file with content."
        )));
    }
    Ok((incoming, filename, content_type, size))
}

/// A UUID part or query value, as [`check_uuid`] says.
fn uuid_value(value: &str, name: &str) -> Result<String, ApiError> {
    check_uuid(&Value::String(value.to_string()), name)
}

/// Moves received bytes to their blob path and records them (the workspace's files quota
/// checked); on any failure nothing is kept.
fn keep(state: &AppState, mut incoming: Incoming, new: NewFile) -> Result<StoredFile, ApiError> {
    let data = state.lifecycle.data_dir();
    let blob = crate::files::blob_path(data, &new.workspace_id, &new.id);
    let moved = blob
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::rename(&incoming.path, &blob));
    moved.map_err(|e| storage_error("store the file", e))?;
    incoming.kept = true;
    match state
        .store
        .insert_file(&new, state.config.limits.max_workspace_files_bytes)
    {
        Ok(f) => Ok(f),
        Err(e) => {
            let _ = std::fs::remove_file(&blob);
            Err(quota_error(e))
        }
    }
}

/// Forgets a stored file and removes its bytes.
fn forget(state: &AppState, file: &StoredFile) -> Result<(), ApiError> {
    state.store.delete_file(&file.id)?;
    let blob = crate::files::blob_path(state.lifecycle.data_dir(), &file.workspace_id, &file.id);
    if let Err(e) = std::fs::remove_file(&blob) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove the bytes of file {}: {e}", file.id);
        }
    }
    Ok(())
}

/// The API error for a delivery into a computer that failed.
fn delivery_error(e: DeliveryError) -> ApiError {
    match e {
        DeliveryError::Agent(e) => actions::agent_error(e),
        DeliveryError::Refused { status, message } => {
            let code = StatusCode::from_u16(status)
                .ok()
                .filter(|s| s.is_client_error() || *s == StatusCode::INSUFFICIENT_STORAGE)
                .unwrap_or(StatusCode::BAD_GATEWAY);
            ApiError::new(code, format!("The desktop refused the file: {message}"))
                .with("upstream_status", status)
        }
        DeliveryError::Local { .. } => {
            tracing::error!("files: {e}");
            ApiError::internal("The daemon cannot read the stored file; see its log.")
        }
        DeliveryError::Store(e) => e.into(),
    }
}

fn written(c: &str, w: &FileWritten) -> Value {
    json!({ "desktop_id": c, "name": w.name, "path": w.path, "size_bytes": w.size_bytes })
}

/// Stores an upload for workspace `workspace_id` (into `computer` only, when given) and puts it
/// into the computers that run now.
async fn store_upload(
    state: &AppState,
    received: Received,
    workspace_id: String,
    computer: Option<Computer>,
) -> Answer {
    let new = NewFile {
        id: uuid::Uuid::new_v4().to_string(),
        workspace_id: workspace_id.clone(),
        computer_id: computer.as_ref().map(|c| c.id.clone()),
        filename: received.filename,
        size_bytes: received.size,
        content_type: received.content_type,
        source: FileSource::Upload,
    };
    let file = keep(state, received.incoming, new)?;
    let targets: Vec<Computer> = match &computer {
        Some(c) => vec![c.clone()],
        None => state.store.computers_in_workspace(&workspace_id)?,
    };
    let (running, waiting): (Vec<Computer>, Vec<Computer>) = targets
        .into_iter()
        .partition(|c| c.status == ComputerStatus::Running);
    let data = state.lifecycle.data_dir();
    let results = futures_util::future::join_all(running.iter().map(|c| {
        state.lifecycle.touch(&c.id);
        delivery::deliver(&state.store, &state.lifecycle, data, &file, &c.id)
    }))
    .await;
    let mut deliveries = Vec::new();
    for (c, result) in running.iter().zip(results) {
        match result {
            Ok(Some(w)) => deliveries.push(written(&c.id, &w)),
            Ok(None) => {}
            Err(e) if computer.is_some() => {
                // Into one computer: it failed, so the upload did (nothing is kept).
                let _ = forget(state, &file);
                return Err(delivery_error(e));
            }
            Err(e) => {
                tracing::warn!(file = %file.id, computer = %c.id, "upload not put in a running computer of its workspace (tried again at its next start): {e}");
                deliveries.push(json!({ "desktop_id": c.id, "error": e.to_string() }));
            }
        }
    }
    let waiting: Vec<&str> = waiting.iter().map(|c| c.id.as_str()).collect();
    Ok(Json(json!({
        "success": true,
        "file": view(&file),
        "deliveries": deliveries,
        "pending_desktop_ids": waiting,
    })))
}

/// `POST /files/upload`: multipart `file`, `projectId` (or `workspaceId`), optional `desktopId`.
pub async fn upload(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Answer {
    let received = receive(&state, multipart, UPLOAD_PARTS).await?;
    let project = received
        .parts
        .get("projectId")
        .map(|(n, v)| uuid_value(v, n))
        .transpose()?;
    let desktop = received
        .parts
        .get("desktopId")
        .map(|(n, v)| uuid_value(v, n))
        .transpose()?;
    match (project, desktop) {
        (project, Some(desktop)) => {
            let c = access::computer(&state, &key, &desktop)?;
            if project.as_ref().is_some_and(|p| *p != c.workspace_id) {
                return Err(ApiError::bad_request(format!(
                    "Desktop {} is in workspace {}, not in the projectId sent.",
                    c.id, c.workspace_id
                )));
            }
            let ws = c.workspace_id.clone();
            store_upload(&state, received, ws, Some(c)).await
        }
        (Some(project), None) => {
            let ws = access::workspace(&state, &key, &project)?;
            store_upload(&state, received, ws.id, None).await
        }
        (None, None) => Err(ApiError::bad_request(
            "Say where the file goes: a projectId (or workspaceId) part, or a desktopId part.",
        )),
    }
}

/// `POST /computers/{id}/files/upload`: multipart `file`, into that computer.
pub async fn upload_to_computer(
    State(state): State<AppState>,
    ScopedComputer { computer, .. }: ScopedComputer,
    multipart: Result<Multipart, MultipartRejection>,
) -> Answer {
    let received = receive(&state, multipart, &[]).await?;
    let ws = computer.workspace_id.clone();
    store_upload(&state, received, ws, Some(computer)).await
}

/// Query values by name; names not in `allowed` are refused (a misspelt filter must not
/// silently list everything).
fn query_values(
    query: HashMap<String, String>,
    allowed: &[(&str, &'static str)],
) -> Result<HashMap<&'static str, (String, String)>, ApiError> {
    let mut out: HashMap<&'static str, (String, String)> = HashMap::new();
    for (name, value) in query {
        let Some(&(_, canonical)) = allowed.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
            return Err(ApiError::bad_request(format!(
                "Unknown query parameter {:?}: the parameters are {}.",
                name.chars().take(60).collect::<String>(),
                names.join(", ")
            )));
        };
        if let Some((other, before)) = out.get(canonical) {
            if *before != value {
                return Err(ApiError::bad_request(format!(
                    "{other} and {name} name different things; send one of them."
                )));
            }
        }
        out.insert(canonical, (name, value));
    }
    Ok(out)
}

/// `GET /files?projectId=&desktopId=`.
pub async fn list(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let q = query_values(query, UPLOAD_PARTS)?;
    let project = q
        .get("projectId")
        .map(|(n, v)| uuid_value(v, n))
        .transpose()?;
    let desktop = q
        .get("desktopId")
        .map(|(n, v)| uuid_value(v, n))
        .transpose()?;
    let files = match (project, desktop) {
        (project, Some(desktop)) => {
            let c = access::computer(&state, &key, &desktop)?;
            if project.as_ref().is_some_and(|p| *p != c.workspace_id) {
                return Err(ApiError::bad_request(format!(
                    "Desktop {} is in workspace {}, not in the projectId sent.",
                    c.id, c.workspace_id
                )));
            }
            state.store.files(Some(&c.workspace_id), Some(&c.id))?
        }
        (Some(project), None) => {
            let ws = access::workspace(&state, &key, &project)?;
            state.store.files(Some(&ws.id), None)?
        }
        // A scoped key sees its workspace's files only.
        (None, None) => state.store.files(key.workspace_id.as_deref(), None)?,
    };
    let files: Vec<Value> = files.iter().map(view).collect();
    Ok(Json(json!({ "files": files })))
}

/// The file a query's `id` names, found (404) and within the key's scope (403).
fn file_by_query(
    state: &AppState,
    key: &ApiKey,
    query: HashMap<String, String>,
) -> Result<StoredFile, ApiError> {
    let q = query_values(query, &[("id", "id")])?;
    let (name, id) = q
        .get("id")
        .ok_or_else(|| ApiError::bad_request("id is required (?id=<file id>)."))?;
    let id = uuid_value(id, name)?;
    let file = state
        .store
        .file(&id)?
        .ok_or_else(|| ApiError::not_found("File not found"))?;
    access::check_scope(key, Some(&file.workspace_id))?;
    Ok(file)
}

/// The absolute signed URL of a file.
fn signed_url(state: &AppState, file_id: &str) -> String {
    format!(
        "{}{}",
        state.config.public_base(),
        state.signer.url(file_id, unix_now())
    )
}

/// `GET /files/download?id=` → `{"url"}`, a signed URL valid for an hour.
pub async fn download(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let file = file_by_query(&state, &key, query)?;
    Ok(Json(json!({
        "url": signed_url(&state, &file.id),
        "expires_in": URL_LIFETIME_SECS,
    })))
}

/// `DELETE /files/delete?id=`.
pub async fn delete(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let file = file_by_query(&state, &key, query)?;
    forget(&state, &file)?;
    Ok(Json(json!({ "success": true })))
}

/// `POST /files/export {desktopId, path}`: a file below the desktop user's home, copied out of
/// the running computer into the workspace's files.
pub async fn export(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    JsonObject(body): JsonObject,
) -> Answer {
    let desktop = ["desktopId", "desktop_id"]
        .iter()
        .find_map(|n| field(&body, n).map(|v| (*n, v)))
        .ok_or_else(|| ApiError::bad_request("desktopId is required."))?;
    let desktop = check_uuid(desktop.1, desktop.0)?;
    let path = match field(&body, "path") {
        None => return Err(ApiError::bad_request("path is required.")),
        Some(Value::String(p)) => p.clone(),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "path must be a string, not {}.",
                super::body::kind(v)
            )))
        }
    };
    if path.trim().is_empty() || path.chars().count() > MAX_PATH_CHARS || path.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "path must be 1-{MAX_PATH_CHARS} characters without NUL."
        )));
    }
    let filename = sanitize_filename(&path).map_err(|why| {
        ApiError::bad_request(format!("path must name a file below /home/user: {why}."))
    })?;
    let c = actions::running(&state, &key, &desktop).await?;
    let quota = state.config.limits.max_workspace_files_bytes;
    let room = quota.saturating_sub(state.store.workspace_files_bytes(&c.workspace_id)?);
    let quota_full = || {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "The file does not fit in the workspace's files quota ({room} of {quota} bytes \
                 free; limits.max_workspace_files_bytes): delete files first."
            ),
        )
        .with("code", "files_quota_exceeded")
    };
    let query = serde_urlencoded::to_string(ReadQuery { path })
        .map_err(|e| ApiError::bad_request(format!("path cannot be sent: {e}.")))?;
    let incoming = Incoming::new(&state);
    let transfer = state
        .lifecycle
        .agent_fetch_file(
            &c.id,
            &format!("{READ}?{query}"),
            &incoming.path,
            room,
            delivery::transfer_timeout(room.min(state.config.limits.max_upload_bytes as u64)),
        )
        .await;
    let size = match transfer {
        Ok(Transfer::Done { size, .. }) => size,
        Ok(Transfer::Refused { status, body }) => {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| format!("the desktop's agent answered {status}"));
            let code = if status.is_client_error() {
                status
            } else {
                StatusCode::BAD_GATEWAY
            };
            return Err(ApiError::new(code, message).with("upstream_status", status.as_u16()));
        }
        Err(AgentError::TooLarge(_)) => return Err(quota_full()),
        Err(e) => return Err(actions::agent_error(e)),
    };
    let content_type = mime_guess::from_path(&filename)
        .first_or_octet_stream()
        .to_string();
    let file = keep(
        &state,
        incoming,
        NewFile {
            id: uuid::Uuid::new_v4().to_string(),
            workspace_id: c.workspace_id.clone(),
            computer_id: Some(c.id.clone()),
            filename,
            size_bytes: size,
            content_type,
            source: FileSource::Export,
        },
    )?;
    Ok(Json(json!({
        "success": true,
        "file": view(&file),
        "url": signed_url(&state, &file.id),
    })))
}

/// `filename*` of a Content-Disposition (RFC 8187: UTF-8, percent-encoded).
fn disposition(filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in filename.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// `GET /files/content/{id}?expires=&signature=`: the bytes, for a signed URL (no API key).
pub async fn content(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    state
        .signer
        .verify(
            &id,
            query.get("expires").map(String::as_str),
            query.get("signature").map(String::as_str),
            unix_now(),
        )
        .map_err(|e| {
            let code = match e {
                SigningError::Expired => "link_expired",
                _ => "link_invalid",
            };
            ApiError::forbidden(e.to_string()).with("code", code)
        })?;
    let gone = || ApiError::not_found("This file was deleted.").with("code", "file_deleted");
    let file = state.store.file(&id)?.ok_or_else(gone)?;
    let blob = crate::files::blob_path(state.lifecycle.data_dir(), &file.workspace_id, &file.id);
    let handle = tokio::fs::File::open(&blob).await.map_err(|_| gone())?;
    let size = handle
        .metadata()
        .await
        .map_err(|e| storage_error("read the file", e))?
        .len();
    let stream = tokio_util::io::ReaderStream::with_capacity(handle, 256 << 10);
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    let content_type = HeaderValue::from_str(&file.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&disposition(&file.filename)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_quote_nothing_a_client_could_misread() {
        assert_eq!(
            disposition("a b.txt"),
            "attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt"
        );
        let d = disposition("é\"x;.pdf");
        assert!(
            d.starts_with("attachment; filename=\"__x;.pdf\"; filename*=UTF-8''%C3%A9%22x%3B.pdf"),
            "{d}"
        );
    }

    #[test]
    fn unknown_and_conflicting_query_names_are_refused() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let ok =
            query_values(q(&[("workspaceId", "a"), ("projectId", "a")]), UPLOAD_PARTS).unwrap();
        assert_eq!(ok["projectId"].1, "a");
        let e = query_values(q(&[("project", "a")]), UPLOAD_PARTS).unwrap_err();
        assert!(e.message.contains("projectId"), "{}", e.message);
        let e =
            query_values(q(&[("workspaceId", "a"), ("projectId", "b")]), UPLOAD_PARTS).unwrap_err();
        assert!(e.message.contains("different"), "{}", e.message);
    }
}
