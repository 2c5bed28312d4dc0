//! Stored screenshots (`response_format=url`): written under `<data dir>/storage/screenshots/` and
//! served at `/api/storage/screenshots/<id>.<ext>` with the same API key. Each file has an
//! `<file>.owner` next to it naming the workspace, so a workspace-scoped key reads only its own.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Extension;

use super::access;
use super::error::ApiError;
use super::middleware::AuthKey;
use super::AppState;
use crate::store::Computer;

/// What a stored screenshot is called and where.
pub struct Stored {
    pub id: String,
    pub url: String,
    pub timestamp: String,
    pub storage_path: String,
}

fn dir(state: &AppState) -> PathBuf {
    state
        .lifecycle
        .data_dir()
        .join("storage")
        .join("screenshots")
}

/// Writes a screenshot of computer `c` and returns where it is served.
pub fn store_screenshot(
    state: &AppState,
    c: &Computer,
    mime: &str,
    bytes: &[u8],
) -> Result<Stored, ApiError> {
    let ext = if mime == "image/jpeg" { "jpg" } else { "png" };
    let id = uuid::Uuid::new_v4().to_string();
    let file = format!("{id}.{ext}");
    let dir = dir(state);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{file}.owner")), &c.workspace_id)?;
        let tmp = dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, dir.join(&file))
    };
    write().map_err(|e| {
        ApiError::internal(format!(
            "cannot store the screenshot in {}: {e}",
            dir.display()
        ))
    })?;
    Ok(Stored {
        url: format!("/api/storage/screenshots/{file}"),
        storage_path: format!("screenshots/{file}"),
        id,
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// Whether `name` is `<uuid>.png` or `<uuid>.jpg` (nothing else is ever served).
fn valid_name(name: &str) -> Option<&'static str> {
    let (id, ext) = name.rsplit_once('.')?;
    uuid::Uuid::parse_str(id).ok()?;
    match ext {
        "png" => Some("image/png"),
        "jpg" => Some("image/jpeg"),
        _ => None,
    }
}

/// `GET /api/storage/screenshots/{file}`.
pub async fn screenshot(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("No such stored screenshot.");
    let mime = valid_name(&file).ok_or_else(not_found)?;
    let dir = dir(&state);
    let owner =
        std::fs::read_to_string(dir.join(format!("{file}.owner"))).map_err(|_| not_found())?;
    if access::check_scope(&key, Some(owner.trim())).is_err() {
        // Not yours: the same answer as absent.
        return Err(not_found());
    }
    let bytes = std::fs::read(dir.join(&file)).map_err(|_| not_found())?;
    let mut response = Response::new(Body::from(bytes));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uuid_image_names_are_served() {
        assert_eq!(
            valid_name("0b8a3c1e-6f5e-4a57-9a43-2f7f6a7a0c11.png"),
            Some("image/png")
        );
        assert_eq!(
            valid_name("0b8a3c1e-6f5e-4a57-9a43-2f7f6a7a0c11.jpg"),
            Some("image/jpeg")
        );
        for bad in [
            "../../etc/passwd",
            "x.png",
            "0b8a3c1e-6f5e-4a57-9a43-2f7f6a7a0c11.png.owner",
            "0b8a3c1e-6f5e-4a57-9a43-2f7f6a7a0c11",
        ] {
            assert_eq!(valid_name(bad), None, "{bad}");
        }
    }
}
