//! Section 3 action routes and the desktop proxy, as far as the daemon can answer them without a
//! guest agent: a computer that is not running gets the contract's 400 "Desktop instance not
//! available"; a running one gets 501 until forwarding to the agent exists (issue 7). Also the
//! SDK's legacy Docker build calls, answered with a 400 that points to templates.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::Value;

use super::access;
use super::error::ApiError;
use super::middleware::AuthKey;
use super::AppState;
use crate::store::{Computer, ComputerStatus};

fn gate(c: &Computer) -> ApiError {
    if c.status != ComputerStatus::Running {
        return ApiError::bad_request("Desktop instance not available")
            .with("status", c.status.as_str());
    }
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "This deskd cannot forward actions to the guest agent yet.",
    )
}

/// Any `/computers/{id}/<action>` of section 3.
pub async fn computer_action(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let c = access::computer(&state, &key, &id)?;
    Err(gate(&c))
}

/// `/desktops/{instance_id}/proxy/{endpoint}`.
pub async fn desktop_proxy(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path((instance, _endpoint)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let c = state
        .store
        .computer_by_id_or_instance(&instance)?
        .ok_or_else(|| ApiError::not_found("Computer not found"))?;
    access::check_scope(&key, Some(&c.workspace_id))?;
    Err(gate(&c))
}

/// `POST /builds/create`, `POST /builds/update`, `GET /builds/latest` (old SDK, Docker builds).
pub async fn legacy_builds() -> Result<Json<Value>, ApiError> {
    Err(ApiError::bad_request(
        "Docker-based builds are not supported by deskd: describe the computer as an orgo.ai/v1 \
         template (POST /api/templates) and create computers with template_ref.",
    ))
}
