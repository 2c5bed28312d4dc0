//! Section 6, templates (shared/spec/templates.md): the schema, validate, publish, read, list,
//! delete, builds and their event stream, and throwaway test computers. Documents arrive as
//! YAML or JSON; the checks are `crate::templates`'.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::access::check_scope;
use super::body::{field, JsonObject};
use super::error::ApiError;
use super::middleware::AuthKey;
use super::{computers, views, AppState};
use crate::store::{BuildStart, NewComputer, Published, StoredTemplate};
use crate::templates::build::{BuildRecord, BuildStatus};
use crate::templates::refs::{TemplateRef, USER_NAMESPACE};
use crate::templates::{schema, validate_bytes, Rejection, Template};

type Answer = Result<Json<Value>, ApiError>;

/// Workspace of the throwaway computers of `POST /templates/run`.
pub const RUN_WORKSPACE: &str = "template-runs";
/// Idle minutes after which a throwaway computer is suspended.
const RUN_IDLE_MINUTES: u32 = 15;
/// How often the event stream looks for new lines of a running build.
const EVENT_POLL: Duration = Duration::from_millis(250);

/// A template body: raw bytes, YAML or JSON, within the JSON body limit.
pub struct TemplateBody(pub axum::body::Bytes);

impl FromRequest<AppState> for TemplateBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.config.limits.max_json_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Template too large: the limit is {limit} bytes (limits.max_json_body_bytes)."),
            )
        })?;
        Ok(TemplateBody(bytes))
    }
}

/// 400 for a body that is no document, 422 with every finding for an invalid one.
fn check(bytes: &[u8]) -> Result<Template, ApiError> {
    match validate_bytes(bytes) {
        Ok(t) => Ok(t),
        Err(Rejection::Unparseable(e)) => {
            Err(ApiError::bad_request(format!("{e}.")).with("code", "unparseable"))
        }
        Err(Rejection::Invalid(issues)) => Err(invalid(&issues)),
    }
}

fn invalid(issues: &[crate::templates::Issue]) -> ApiError {
    let summary = issues
        .first()
        .map(|i| format!("{}: {}", i.field, i.message))
        .unwrap_or_default();
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!(
            "The template is not valid ({} problem(s)); first: {summary}",
            issues.len()
        ),
    )
    .with("ok", false)
    .with(
        "errors",
        serde_json::to_value(issues).unwrap_or(Value::Null),
    )
}

/// `GET /template-schema`: no key needed (editors fetch it through `$schema`).
pub async fn schema_doc() -> Response {
    (
        [(header::CONTENT_TYPE, "application/schema+json")],
        schema::schema().to_string(),
    )
        .into_response()
}

/// `POST /templates/validate`: no side effects.
pub async fn validate(TemplateBody(bytes): TemplateBody) -> Answer {
    let t = check(&bytes)?;
    Ok(Json(
        json!({"ok": true, "template": t.canonical, "digest": t.digest}),
    ))
}

fn truthy(q: &HashMap<String, String>, key: &str) -> Result<bool, ApiError> {
    match q.get(key).map(|s| s.to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v.is_empty() || v == "true" || v == "1" || v == "yes" => Ok(true),
        Some(v) if v == "false" || v == "0" || v == "no" => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!(
            "{key} must be true or false, not {v:?}."
        ))),
    }
}

fn entry(t: &StoredTemplate) -> Value {
    json!({
        "ref": t.reference.to_string(),
        "namespace": t.reference.namespace,
        "name": t.reference.name,
        "version": t.reference.version,
        "digest": t.digest,
        "published": t.published_at,
        "published_at": t.published_at,
        "template": t.document,
    })
}

/// `POST /templates?auto_build=&force=`: publishes into `default/`.
pub async fn publish(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Query(q): Query<HashMap<String, String>>,
    TemplateBody(bytes): TemplateBody,
) -> Result<Response, ApiError> {
    check_scope(&key, None)?;
    let force = truthy(&q, "force")?;
    let auto_build = truthy(&q, "auto_build")?;
    let t = check(&bytes)?;
    let r = t.reference(USER_NAMESPACE);
    let (stored, outcome) = state
        .store
        .publish_template(&r, &t.digest, &t.canonical, force)?;
    let mut body = json!({
        "ref": r.to_string(),
        "digest": stored.digest,
        "published": stored.published_at,
        "published_at": stored.published_at,
        "created": outcome == Published::Created,
        "replaced": outcome == Published::Replaced,
    });
    if auto_build {
        let status = match state.builds.start(&stored)? {
            BuildStart::Ready(_) => "ready",
            BuildStart::Started(_) | BuildStart::AlreadyBuilding(_) => "building",
        };
        body["auto_build"] = json!(status);
    }
    let code = if outcome == Published::Unchanged {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((code, Json(body)).into_response())
}

/// `GET /templates?namespace=` (default: the users' `default` namespace).
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let ns = q
        .get("namespace")
        .map(String::as_str)
        .unwrap_or(USER_NAMESPACE);
    let all = state.store.templates(Some(ns))?;
    Ok(Json(
        json!({"templates": all.iter().map(entry).collect::<Vec<_>>()}),
    ))
}

/// `GET /templates/global`: the curated `system/...` templates.
pub async fn global(State(state): State<AppState>) -> Answer {
    let all = state
        .store
        .templates(Some(crate::templates::refs::SYSTEM_NAMESPACE))?;
    Ok(Json(
        json!({"templates": all.iter().map(entry).collect::<Vec<_>>()}),
    ))
}

/// `GET /templates/{ns}/{name}`: every version.
pub async fn versions(
    State(state): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
) -> Answer {
    let all = state.store.template_versions(&ns, &name)?;
    if all.is_empty() {
        return Err(ApiError::not_found(format!(
            "Template {ns}/{name} not found: GET /api/templates lists the published ones."
        )));
    }
    Ok(Json(json!({
        "ref": format!("{ns}/{name}"),
        "versions": all.iter().map(entry).collect::<Vec<_>>(),
    })))
}

fn path_ref(ns: &str, name: &str, version: &str) -> Result<TemplateRef, ApiError> {
    let s = format!("{ns}/{name}@{version}");
    TemplateRef::parse(&s).ok_or_else(|| {
        ApiError::not_found(format!(
            "Template {s} not found: a ref is namespace/name@version with a semantic version."
        ))
    })
}

fn stored(state: &AppState, r: &TemplateRef) -> Result<StoredTemplate, ApiError> {
    match state.store.template(r) {
        Ok(t) => Ok(t),
        Err(crate::store::StoreError::NotFound { .. }) => Err(ApiError::not_found(format!(
            "Template {r} not found: publish it with POST /api/templates."
        ))),
        Err(e) => Err(e.into()),
    }
}

/// `GET /templates/{ns}/{name}/{version}`.
pub async fn get_one(
    State(state): State<AppState>,
    Path((ns, name, version)): Path<(String, String, String)>,
) -> Answer {
    let t = stored(&state, &path_ref(&ns, &name, &version)?)?;
    let mut v = entry(&t);
    v["build"] = build_view(&t, state.store.latest_build(&t.digest)?.as_ref());
    Ok(Json(v))
}

/// `DELETE /templates/{ns}/{name}/{version}`: curated ones are 403; computers keep running.
pub async fn delete(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path((ns, name, version)): Path<(String, String, String)>,
) -> Answer {
    check_scope(&key, None)?;
    let r = path_ref(&ns, &name, &version)?;
    if r.is_system() {
        return Err(ApiError::forbidden(format!(
            "{r} is a curated template shipped with deskd and cannot be deleted."
        )));
    }
    stored(&state, &r)?;
    state.store.delete_template(&r)?;
    Ok(Json(json!({"deleted": true, "ref": r.to_string()})))
}

fn build_view(t: &StoredTemplate, b: Option<&BuildRecord>) -> Value {
    let mut v = json!({
        "ref": t.reference.to_string(),
        "digest": t.digest,
        "status": b.map(|b| b.status).unwrap_or(BuildStatus::NotBuilt).as_str(),
    });
    if let Some(b) = b {
        v["build_id"] = json!(b.id);
        v["started_at"] = json!(b.started_at);
        if let Some(ms) = b.build_time_ms {
            v["build_time_ms"] = json!(ms);
        }
        if let Some(e) = &b.error {
            v["error"] = json!(e);
        }
    }
    v
}

/// `POST .../{version}/build`: 202 building, or 200 ready and reused.
pub async fn build_start(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path((ns, name, version)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    check_scope(&key, None)?;
    let t = stored(&state, &path_ref(&ns, &name, &version)?)?;
    Ok(match state.builds.start(&t)? {
        BuildStart::Ready(b) => {
            let mut v = build_view(&t, Some(&b));
            v["reused"] = json!(true);
            Json(v).into_response()
        }
        BuildStart::Started(b) | BuildStart::AlreadyBuilding(b) => {
            let mut v = build_view(&t, Some(&b));
            v["status"] = json!("building");
            (StatusCode::ACCEPTED, Json(v)).into_response()
        }
    })
}

/// `GET .../{version}/build`.
pub async fn build_get(
    State(state): State<AppState>,
    Path((ns, name, version)): Path<(String, String, String)>,
) -> Answer {
    let t = stored(&state, &path_ref(&ns, &name, &version)?)?;
    let b = state.store.latest_build(&t.digest)?;
    Ok(Json(build_view(&t, b.as_ref())))
}

/// `DELETE .../{version}/build`: 202 cancelling, or 404 idle.
pub async fn build_cancel(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Path((ns, name, version)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    check_scope(&key, None)?;
    let t = stored(&state, &path_ref(&ns, &name, &version)?)?;
    if state.builds.cancel(&t.digest)? {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"ref": t.reference.to_string(), "status": "cancelling"})),
        )
            .into_response());
    }
    Err(
        ApiError::not_found(format!("No build of {} is running.", t.reference))
            .with("status", "idle"),
    )
}

/// `GET .../{version}/build/events`: the latest build's events, kept and then followed live;
/// the stream closes once the build is ready or failed.
pub async fn build_events(
    State(state): State<AppState>,
    Path((ns, name, version)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let t = stored(&state, &path_ref(&ns, &name, &version)?)?;
    let Some(b) = state.store.latest_build(&t.digest)? else {
        return Err(ApiError::not_found(format!(
            "{} was never built: POST /api/templates/{}/{}/{}/build starts a build.",
            t.reference, t.reference.namespace, t.reference.name, t.reference.version
        ))
        .with("status", "not_built"));
    };
    let store = state.store.clone();
    let id = b.id.clone();
    // State: events read but not sent yet, the last sequence number read, and whether the
    // build had ended when they were read (then nothing more comes after them).
    let init = (std::collections::VecDeque::new(), 0i64, false);
    let stream = futures_util::stream::unfold(init, move |(mut queue, mut after, mut ended)| {
        let store = store.clone();
        let id = id.clone();
        async move {
            loop {
                if let Some(e) = queue.pop_front() {
                    let data = serde_json::to_string(&e).unwrap_or_default();
                    return Some((
                        Ok::<_, Infallible>(Event::default().data(data)),
                        (queue, after, ended),
                    ));
                }
                if ended {
                    return None;
                }
                // The status first: events read after a final status are all there will be.
                let status = store
                    .build(&id)
                    .map(|b| b.status)
                    .unwrap_or(BuildStatus::Failed);
                let events = store.build_events(&id, after).unwrap_or_default();
                ended = status.is_final();
                if let Some((last, _)) = events.last() {
                    after = *last;
                }
                queue.extend(events.into_iter().map(|(_, e)| e));
                if queue.is_empty() && !ended {
                    tokio::time::sleep(EVENT_POLL).await;
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `POST /templates/run {"ref", "secrets"?}`: a throwaway computer from a built template (409
/// unless built); `secrets` as on `POST /computers`.
pub async fn run(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    check_scope(&key, None)?;
    let Some(Value::String(s)) = field(&body, "ref") else {
        return Err(ApiError::bad_request(
            "ref is required: the template to run, e.g. default/my-app@1.0.0.",
        ));
    };
    let r = TemplateRef::parse(s).ok_or_else(|| {
        ApiError::bad_request(
            "ref must look like namespace/name@version, e.g. default/my-app@1.0.0.",
        )
    })?;
    let t = stored(&state, &r)?;
    // A ready build counts while a newer one of the same digest runs (its snapshot stays).
    if state.store.ready_build(&t.digest)?.is_none() {
        let now = state
            .store
            .latest_build(&t.digest)?
            .map(|b| b.status)
            .unwrap_or(BuildStatus::NotBuilt);
        return Err(ApiError::conflict(format!(
            "{r} is not built (build status: {}): POST /api/templates/{}/{}/{}/build first.",
            now.as_str(),
            r.namespace,
            r.name,
            r.version
        ))
        .with("code", "not_built")
        .with("status", now.as_str()));
    }
    let doc = crate::templates::validate_value(t.document.clone())
        .map_err(|_| ApiError::internal(format!("the stored document of {r} no longer validates")))?
        .document;
    // The hardware, runtime files and `secrets` (ours, as on POST /computers) checks.
    let secrets = computers::check_template_launch(&state, &r.to_string(), &body)?;
    let ws = match state
        .store
        .list_workspaces()?
        .into_iter()
        .find(|w| w.name == RUN_WORKSPACE)
    {
        Some(w) => w,
        None => state.store.create_workspace(
            RUN_WORKSPACE,
            crate::store::WorkspaceStatus::Active,
            None,
        )?,
    };
    let (cpu, ram_gb, disk, resolution) = crate::templates::vm_builder::template_hardware(&doc);
    // A throwaway computer is reaped when idle whatever the template says; its network is the
    // template's, as a launched computer's would be.
    let defaults = computers::template_launch_defaults(&doc, &r.to_string())?;
    computers::check_disk_quota(&state, disk)?;
    let new = NewComputer {
        workspace_id: ws.id.clone(),
        name: format!(
            "{}-{}",
            r.name,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
        os: "linux".into(),
        cpu,
        ram_gb,
        gpu: "none".into(),
        disk_size_gb: disk,
        resolution,
        auto_stop_minutes: Some(RUN_IDLE_MINUTES),
        template_ref: r.to_string(),
        image: None,
        vnc_password: crate::computers::new_vnc_password(),
        egress_policy: defaults.egress_policy,
    };
    let c = state
        .store
        .insert_computer(&new, computers::admit(&state, cpu, ram_gb))?;
    if defaults.bandwidth_limit_mbps.is_some() {
        state
            .store
            .set_bandwidth_limit(&c.id, defaults.bandwidth_limit_mbps)?;
    }
    computers::keep_secrets(&state, &c, &secrets).await?;
    computers::launch_new(&state, &c).await?;
    let c = computers::reload(&state, &c.id)?;
    let view = views::computer(&state, &c, &ws.name);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": c.id,
            "desktop_id": c.id,
            "status": c.status.as_str(),
            "vnc_password": c.vnc_password,
            "resolution": c.resolution,
            "ref": r.to_string(),
            "computer": view,
        })),
    )
        .into_response())
}

/// `DELETE /templates/run?id=`: deletes a throwaway computer (only those).
pub async fn run_stop(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let Some(id) = q.get("id").filter(|s| !s.is_empty()) else {
        return Err(ApiError::bad_request("id is required: DELETE /api/templates/run?id=<the id POST /api/templates/run answered>."));
    };
    let Some(c) = state.store.computer(id)? else {
        return Err(ApiError::not_found("No test computer with this id."));
    };
    let in_runs = state
        .store
        .workspace(&c.workspace_id)?
        .is_some_and(|w| w.name == RUN_WORKSPACE);
    if !in_runs {
        return Err(ApiError::not_found(
            "No test computer with this id (DELETE /api/computers/{id} deletes other computers).",
        ));
    }
    state.lifecycle.destroy(&c.id).await?;
    Ok(Json(json!({"success": true, "deleted": true})))
}
