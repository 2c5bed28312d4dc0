//! Section 1: workspaces, also served under `/projects`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::access;
use super::body::{field, optional_string, required_name, JsonObject};
use super::error::ApiError;
use super::middleware::AuthKey;
use super::{views, AppState};
use crate::computers::LifecycleError;
use crate::store::{StoreError, WorkspaceStatus};

type Answer = Result<Json<Value>, ApiError>;

/// `POST /workspaces` (and `/projects`).
pub async fn create(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    access::check_scope(&key, None)?;
    let name = required_name(&body, "name", 64)?;
    if name == crate::templates::vm_builder::BUILD_WORKSPACE {
        return Err(ApiError::bad_request(format!(
            "The workspace name {name} is reserved for deskd's template builds; choose another."
        )));
    }
    let icon_url = optional_string(&body, "icon_url", 2048)?;
    let status = match field(&body, "status") {
        None => WorkspaceStatus::Active,
        Some(v) => v
            .as_str()
            .and_then(WorkspaceStatus::parse)
            .ok_or_else(|| ApiError::bad_request("status must be \"active\" or \"inactive\"."))?,
    };
    // The hosted service documents 400 for a duplicate name (as for an empty one), not 409.
    let ws = state
        .store
        .create_workspace(&name, status, icon_url.as_deref())
        .map_err(|e| match e {
            StoreError::NameTaken(m) => ApiError::bad_request(m),
            other => other.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(views::workspace(&state, &ws, &[])),
    ))
}

/// `GET /workspaces`: both list keys (`workspaces`, and `projects` that the SDK reads).
pub async fn list(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
) -> Answer {
    let mut out = Vec::new();
    for ws in state.store.list_workspaces()? {
        if key.workspace_id.as_deref().is_some_and(|s| s != ws.id) {
            continue;
        }
        // Template build computers are deskd's own, not a user's.
        if ws.name == crate::templates::vm_builder::BUILD_WORKSPACE {
            continue;
        }
        let computers = state.store.computers_in_workspace(&ws.id)?;
        out.push(views::workspace(&state, &ws, &computers));
    }
    Ok(Json(json!({ "workspaces": out.clone(), "projects": out })))
}

/// `GET /workspaces/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
) -> Answer {
    let ws = access::workspace(&state, &key, &id)?;
    let computers = state.store.computers_in_workspace(&ws.id)?;
    Ok(Json(views::workspace(&state, &ws, &computers)))
}

/// `DELETE /workspaces/{id}`: stops and deletes its computers, then the workspace.
pub async fn delete(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
) -> Answer {
    let ws = access::workspace(&state, &key, &id)?;
    let computers = state.store.mark_workspace_deleting(&ws.id)?;
    for c in &computers {
        state.lifecycle.destroy_vm(&c.id).await?;
        super::storage::forget_computer(&state, &c.id);
    }
    state.store.delete_workspace(&ws.id)?;
    // The records are gone; bytes left behind by a failure here are unreachable, not served.
    if let Err(e) = crate::files::remove_workspace(state.lifecycle.data_dir(), &ws.id) {
        tracing::warn!(
            "could not remove the stored files of workspace {}: {e}",
            ws.id
        );
    }
    Ok(Json(json!({ "success": true })))
}

/// Which bulk operation `POST /workspaces/{id}/{op}` runs.
#[derive(Clone, Copy)]
pub enum Bulk {
    Start,
    Stop,
    Restart,
}

async fn bulk(state: AppState, key: crate::store::ApiKey, id: String, op: Bulk) -> Answer {
    let ws = access::workspace(&state, &key, &id)?;
    let computers = state.store.computers_in_workspace(&ws.id)?;
    let mut failures = Vec::new();
    for c in &computers {
        let result = match op {
            Bulk::Start => state.lifecycle.start(&c.id).await.map(drop),
            // Stopping what is already stopped is not a failure of a bulk stop.
            Bulk::Stop => match state.lifecycle.stop(&c.id).await {
                Err(LifecycleError::Conflict(_)) => Ok(()),
                other => other.map(drop),
            },
            Bulk::Restart => state.lifecycle.restart(&c.id).await.map(drop),
        };
        if let Err(e) = result {
            failures.push((c.name.clone(), e));
        }
    }
    match failures.into_iter().next() {
        None => Ok(Json(json!({ "success": true, "count": computers.len() }))),
        Some((name, first)) => {
            let mut err = ApiError::from(first);
            err.message = format!("Computer {name:?}: {}", err.message);
            Err(err)
        }
    }
}

pub async fn start(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
    JsonObject(_): JsonObject,
) -> Answer {
    bulk(state, key, id, Bulk::Start).await
}

pub async fn stop(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
    JsonObject(_): JsonObject,
) -> Answer {
    bulk(state, key, id, Bulk::Stop).await
}

pub async fn restart(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
    JsonObject(_): JsonObject,
) -> Answer {
    bulk(state, key, id, Bulk::Restart).await
}
