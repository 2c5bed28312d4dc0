//! Stored screenshots (`response_format=url`): written under `<data dir>/storage/screenshots/` and
//! served at `/api/storage/screenshots/<id>.<ext>` with the same API key. Each file has an
//! `<file>.owner` next to it naming the workspace (first line) and the computer (second), so a
//! workspace-scoped key reads only its own and a deleted computer's screenshots go with it.
//! Retention: a screenshot is kept [`MAX_AGE`] at most, and all of them together at most
//! [`MAX_TOTAL_BYTES`] (the oldest go first), so stored screenshots can never fill the disk.

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

/// How long a stored screenshot is kept.
pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Most bytes all stored screenshots together may take.
pub const MAX_TOTAL_BYTES: u64 = 512 << 20;

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
        std::fs::write(
            dir.join(format!("{file}.owner")),
            format!("{}\n{}\n", c.workspace_id, c.id),
        )?;
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
    prune(&dir, MAX_AGE, MAX_TOTAL_BYTES, |_| false);
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
    let workspace = owner.lines().next().unwrap_or("").trim();
    if access::check_scope(&key, Some(workspace)).is_err() {
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

/// Deletes the stored screenshots of computer `computer_id` (it was deleted).
pub fn forget_computer(state: &AppState, computer_id: &str) {
    prune(&dir(state), MAX_AGE, MAX_TOTAL_BYTES, |owner| {
        owner.lines().nth(1).map(str::trim) == Some(computer_id)
    });
}

/// Removes screenshots older than `max_age`, those whose owner file `doomed` picks, then the
/// oldest until all together take at most `max_total` bytes. Errors are logged: retention must
/// never fail a request.
fn prune(
    dir: &std::path::Path,
    max_age: std::time::Duration,
    max_total: u64,
    doomed: impl Fn(&str) -> bool,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    let mut kept = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| valid_name(n).is_some()) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        let modified = meta.modified().unwrap_or(now);
        let old = now.duration_since(modified).unwrap_or_default() > max_age;
        let owner = std::fs::read_to_string(dir.join(format!("{name}.owner"))).unwrap_or_default();
        if old || doomed(&owner) {
            remove(dir, name);
        } else {
            kept.push((modified, meta.len(), name.to_string()));
        }
    }
    kept.sort();
    let mut total: u64 = kept.iter().map(|(_, len, _)| len).sum();
    for (_, len, name) in kept {
        if total <= max_total {
            break;
        }
        remove(dir, &name);
        total = total.saturating_sub(len);
    }
}

fn remove(dir: &std::path::Path, name: &str) {
    for path in [dir.join(name), dir.join(format!("{name}.owner"))] {
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(
                    "cannot remove the stored screenshot {}: {e}",
                    path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;

    fn shot(dir: &std::path::Path, computer: &str, len: usize, age_s: u64) -> String {
        let name = format!("{}.png", uuid::Uuid::new_v4());
        std::fs::write(dir.join(&name), vec![7u8; len]).unwrap();
        std::fs::write(
            dir.join(format!("{name}.owner")),
            format!("ws\n{computer}\n"),
        )
        .unwrap();
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(age_s);
        std::fs::File::options()
            .write(true)
            .open(dir.join(&name))
            .unwrap()
            .set_modified(when)
            .unwrap();
        name
    }

    #[test]
    fn old_doomed_and_excess_screenshots_go_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let ancient = shot(dir, "a", 10, 100_000);
        let other = shot(dir, "b", 10, 10);
        let oldest = shot(dir, "a", 100, 50);
        let newer = shot(dir, "a", 100, 40);
        let newest = shot(dir, "a", 100, 30);
        prune(dir, std::time::Duration::from_secs(3600), 250, |owner| {
            owner.contains("\nb\n")
        });
        let exists = |n: &str| dir.join(n).exists();
        assert!(!exists(&ancient), "older than the maximum age");
        assert!(!exists(&other), "its computer was deleted");
        assert!(
            !exists(&oldest),
            "the oldest goes first to get under the total"
        );
        assert!(!dir.join(format!("{oldest}.owner")).exists());
        assert!(exists(&newer) && exists(&newest));
    }
}
