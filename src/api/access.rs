//! Loading the workspace or computer a request names, with the key's scope checked.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde_json::Value;

use super::error::ApiError;
use super::middleware::AuthKey;
use super::AppState;
use crate::store::{ApiKey, Computer, Workspace};

/// The computer a request's `{id}` names, found (404) and within the key's scope (403), with the
/// key: what every handler that acts on one computer starts from.
pub struct ScopedComputer {
    pub computer: Computer,
    pub key: ApiKey,
}

impl FromRequestParts<AppState> for ScopedComputer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<ScopedComputer, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("Bad computer id in the path: {e}")))?;
        // The auth middleware runs before every handler that uses this; without it, no access.
        let key = parts
            .extensions
            .get::<AuthKey>()
            .map(|AuthKey(key)| key.clone())
            .ok_or_else(|| ApiError::internal("the request carries no authenticated key"))?;
        let computer = computer(state, &key, &id)?;
        Ok(ScopedComputer { computer, key })
    }
}

/// 403 `workspace_scope_mismatch` unless `key` may act on `workspace_id` (`None`: an action
/// that is not about one workspace, such as creating one).
pub fn check_scope(key: &ApiKey, workspace_id: Option<&str>) -> Result<(), ApiError> {
    let Some(scope) = key.workspace_id.as_deref() else {
        return Ok(());
    };
    if workspace_id == Some(scope) {
        return Ok(());
    }
    let message = match workspace_id {
        Some(target) => format!(
            "This API key is scoped to workspace {scope} and cannot act on workspace {target}."
        ),
        None => format!(
            "This API key is scoped to workspace {scope}; use an account-wide key for this."
        ),
    };
    Err(ApiError::forbidden(message)
        .with("code", "workspace_scope_mismatch")
        .with("key_workspace_id", scope)
        .with(
            "target_workspace_id",
            workspace_id.map_or(Value::Null, |t| Value::String(t.to_string())),
        ))
}

/// The workspace `id` if it exists (404) and the key may use it (403).
pub fn workspace(state: &AppState, key: &ApiKey, id: &str) -> Result<Workspace, ApiError> {
    let ws = state
        .store
        .workspace(id)?
        .ok_or_else(|| ApiError::not_found("Workspace not found"))?;
    check_scope(key, Some(&ws.id))?;
    Ok(ws)
}

/// The computer `id` if it exists (404) and the key may use its workspace (403).
pub fn computer(state: &AppState, key: &ApiKey, id: &str) -> Result<Computer, ApiError> {
    let c = state
        .store
        .computer(id)?
        .ok_or_else(|| ApiError::not_found("Computer not found"))?;
    check_scope(key, Some(&c.workspace_id))?;
    Ok(c)
}

/// Name of a computer's workspace (for `project_name`).
pub fn workspace_name(state: &AppState, workspace_id: &str) -> Result<String, ApiError> {
    Ok(state
        .store
        .workspace(workspace_id)?
        .map(|w| w.name)
        .unwrap_or_default())
}
