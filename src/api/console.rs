//! `GET /api/computers/{id}/console`: the guest's serial console log (written by our VMM):
//! `{"id", "log", "size", "truncated"}`, or the log alone as plain text with `?format=text`.
//! `?bytes=N` returns only the last N bytes (default and maximum 1 MiB), so a long-running
//! computer's log never becomes one huge answer.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::access::ScopedComputer;
use super::error::ApiError;
use super::AppState;

const MAX_BYTES: u64 = 1 << 20;

pub async fn serial_log(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let want = match query.get("bytes") {
        None => MAX_BYTES,
        Some(n) => match n.parse::<u64>() {
            Ok(n) if (1..=MAX_BYTES).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "bytes must be a whole number from 1 to {MAX_BYTES}."
                )))
            }
        },
    };
    let as_text = match query.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("text") => true,
        Some(_) => return Err(ApiError::bad_request("format must be json or text.")),
    };
    let path = state.lifecycle.console_log(&c.id);
    // The VMM caps the log by rotating it to `console.log.1`: the latest bytes may span both.
    let mut rotated = path.clone().into_os_string();
    rotated.push(".1");
    let read = move || -> std::io::Result<(Vec<u8>, u64)> {
        let (mut out, len) = tail(&path, want)?;
        // `size` counts both files, whether or not the answer reaches into the older one.
        let rotated = std::path::Path::new(&rotated);
        let older_len = std::fs::metadata(rotated).map(|m| m.len()).unwrap_or(0);
        if (out.len() as u64) < want {
            let (mut older, _) = tail(rotated, want - out.len() as u64)?;
            older.append(&mut out);
            return Ok((older, len + older_len));
        }
        Ok((out, len + older_len))
    };
    let (bytes, size) = tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| ApiError::internal(format!("reading the console log failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("cannot read the console log: {e}")))?;
    if !as_text {
        return Ok(Json(json!({
            "id": c.id,
            "log": String::from_utf8_lossy(&bytes),
            "size": size,
            "truncated": size > bytes.len() as u64,
        }))
        .into_response());
    }
    let mut response = Response::new(Body::from(bytes));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

/// The last `want` bytes of a file and its length; a missing file (never booted, deleted, never
/// rotated) is empty.
fn tail(path: &std::path::Path, want: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(want)))?;
    let mut out = Vec::new();
    file.take(want).read_to_end(&mut out)?;
    Ok((out, len))
}
