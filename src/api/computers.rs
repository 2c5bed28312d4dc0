//! Section 2: computers.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use deskd_agent::protocol;
use serde_json::{json, Map, Value};

use super::access::{self, ScopedComputer};
use super::body::{
    check_uuid, field, kind, optional_int, optional_string, required_name, JsonObject,
};
use super::error::ApiError;
use super::middleware::AuthKey;
use super::{views, AppState};
use crate::computers::{new_vnc_password, quota, LifecycleError};
use crate::network::EgressPolicy;
use crate::store::{Commitment, Computer, ComputerStatus, NewComputer};

type Answer = Result<Json<Value>, ApiError>;

/// Template used when a create names none.
pub const DEFAULT_TEMPLATE: &str = "system/desktop@1.0.0";
/// Smallest disk: the default desktop image fits in it.
pub const MIN_DISK_GB: i64 = 8;
const DEFAULT_RESOLUTION: &str = "1280x720x24";
pub(super) const CPU_CHOICES: [u32; 5] = [1, 2, 4, 8, 16];
const RAM_CHOICES: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];
pub(super) const RESIZE_MEM_CHOICES: [u32; 4] = [4, 8, 16, 32];
/// How long `ensure-running` waits for a VM to come up (the rig is slow).
const ENSURE_RUNNING_TIMEOUT: Duration = Duration::from_secs(180);

fn show(state: &AppState, c: &Computer) -> Result<Value, ApiError> {
    Ok(views::computer(
        state,
        c,
        &access::workspace_name(state, &c.workspace_id)?,
    ))
}

pub(super) fn reload(state: &AppState, id: &str) -> Result<Computer, ApiError> {
    state
        .store
        .computer(id)?
        .ok_or_else(|| ApiError::not_found("Computer not found"))
}

/// `workspace_id` or its alias `project_id`.
fn workspace_field(body: &Map<String, Value>, required: bool) -> Result<Option<String>, ApiError> {
    let ws = field(body, "workspace_id")
        .map(|v| check_uuid(v, "workspace_id"))
        .transpose()?;
    let pj = field(body, "project_id")
        .map(|v| check_uuid(v, "project_id"))
        .transpose()?;
    match (ws, pj) {
        (Some(a), Some(b)) if a != b => Err(ApiError::bad_request(
            "workspace_id and project_id name different workspaces; send one of them.",
        )),
        (Some(a), _) | (None, Some(a)) => Ok(Some(a)),
        (None, None) if required => Err(ApiError::bad_request(
            "workspace_id (or project_id) is required.",
        )),
        (None, None) => Ok(None),
    }
}

fn parse_cpu(v: &Value) -> Result<u32, ApiError> {
    let msg = "cpu must be one of 1, 2, 4, 8, 16 (vCPUs; 0.5 is taken as 1).";
    let f = v
        .as_f64()
        .ok_or_else(|| ApiError::bad_request(format!("{msg} Got {}.", kind(v))))?;
    if f == 0.5 {
        return Ok(1);
    }
    CPU_CHOICES
        .into_iter()
        .find(|&c| f64::from(c) == f)
        .ok_or_else(|| ApiError::bad_request(msg))
}

pub(super) fn parse_ram(v: &Value, choices: &[u32], name: &str) -> Result<u32, ApiError> {
    let list = choices
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let msg = format!("{name} must be one of {list} (GB).");
    let f = v
        .as_f64()
        .ok_or_else(|| ApiError::bad_request(msg.clone()))?;
    choices
        .iter()
        .copied()
        .find(|&c| f64::from(c) == f)
        .ok_or_else(|| ApiError::bad_request(msg))
}

/// `WIDTHxHEIGHTxDEPTH` (depth optional, default 24) within 640x480..3840x2160, depth 16 or 24.
pub fn parse_resolution(v: &Value) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "resolution must look like WIDTHxHEIGHTxDEPTH, e.g. 1280x720x24 (width 640-3840, height 480-2160, depth 16 or 24).",
        )
    };
    let s = v.as_str().ok_or_else(bad)?.trim().to_ascii_lowercase();
    let parts: Vec<&str> = s.split('x').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return Err(bad());
    }
    let num = |p: &str| p.parse::<u32>().ok().filter(|_| p.len() <= 5);
    let (w, h) = (
        num(parts[0]).ok_or_else(bad)?,
        num(parts[1]).ok_or_else(bad)?,
    );
    let d = match parts.get(2) {
        Some(p) => num(p).ok_or_else(bad)?,
        None => 24,
    };
    if !(640..=3840).contains(&w) || !(480..=2160).contains(&h) || !(d == 16 || d == 24) {
        return Err(bad());
    }
    Ok(format!("{w}x{h}x{d}"))
}

/// `namespace/name@version`: lowercase kebab names, a version of digits, letters, `.`, `-`, `+`.
pub fn is_template_ref(s: &str) -> bool {
    let Some((path, version)) = s.split_once('@') else {
        return false;
    };
    let Some((ns, name)) = path.split_once('/') else {
        return false;
    };
    let kebab = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !p.starts_with('-')
    };
    kebab(ns)
        && kebab(name)
        && !version.is_empty()
        && version.len() <= 64
        && version.as_bytes()[0].is_ascii_digit()
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
}

pub(super) fn parse_auto_stop(body: &Map<String, Value>) -> Result<Option<u32>, ApiError> {
    Ok(optional_int(body, "auto_stop_minutes", 0, 525_600)?.map(|n| n as u32))
}

/// `egress_policy`: 400 naming the rule that is wrong.
fn parse_egress_policy(v: &Value) -> Result<EgressPolicy, ApiError> {
    EgressPolicy::from_json(v).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The quota check run inside the create transaction.
pub(super) fn admit(
    state: &AppState,
    cpu: u32,
    ram_gb: u32,
) -> impl FnOnce(&Commitment) -> Result<(), String> {
    let quotas = state.config.quotas.clone();
    let host = state.host;
    move |now: &Commitment| quota::admit(&quotas, host, cpu, ram_gb, now)
}

pub(super) fn check_disk_quota(state: &AppState, disk_gb: u32) -> Result<(), ApiError> {
    quota::check_disk(&state.config.quotas, disk_gb)
        .map_err(|e| ApiError::forbidden(e).with("code", "quota_exceeded"))?;
    check_free_space(state)
}

/// 507 when the data directory's filesystem is down to its reserve.
fn check_free_space(state: &AppState) -> Result<(), ApiError> {
    check_free_space_for(state, 0)
}

/// [`check_free_space`] with room for `needed_bytes` more (a saved VM is at most its RAM).
fn check_free_space_for(state: &AppState, needed_bytes: u64) -> Result<(), ApiError> {
    quota::check_free_space(
        &state.config.quotas,
        state.lifecycle.data_dir(),
        needed_bytes,
    )
    .map_err(|e| {
        ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e).with("code", "insufficient_storage")
    })
}

/// Starts a computer just made; a failure leaves it in `error` with the reason (see
/// `crate::computers`), which is what the create answer then shows.
pub(super) async fn start_new(state: &AppState, id: &str) -> Result<(), ApiError> {
    match state.lifecycle.start(id).await {
        Ok(_) | Err(LifecycleError::CannotStart(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Starts a computer just made, from its template's golden snapshot when the template is built
/// (`crate::templates::launch`); a computer whose snapshot cannot be copied is removed again and
/// the create fails saying why.
pub(super) async fn launch_new(state: &AppState, c: &Computer) -> Result<(), ApiError> {
    match crate::templates::launch::prepare(&state.store, &state.builds, &state.lifecycle, c).await
    {
        Ok(from) => {
            tracing::info!(computer = %c.id, template = %c.template_ref, ?from, "launching")
        }
        Err(e) => {
            let _ = state.lifecycle.destroy(&c.id).await;
            return Err(ApiError::internal(e.to_string()));
        }
    }
    start_new(state, &c.id).await
}

/// The create's `secrets` (ours), checked against the template `template_ref` names: 400 when
/// the published template asks for what this host cannot give (a GPU, a region, a runtime file
/// from afar), a required secret is missing, a secret is not the template's, or a value breaks
/// the limits (`crate::templates::secrets`); each error names its fields. A ref that names no
/// published template takes no secrets.
pub(super) fn check_template_launch(
    state: &AppState,
    template_ref: &str,
    body: &Map<String, Value>,
) -> Result<crate::templates::secrets::Secrets, ApiError> {
    let secrets = crate::templates::secrets::parse(field(body, "secrets"))
        .map_err(|e| ApiError::bad_request(e.message).with("fields", vec![e.field]))?;
    let Some(t) = crate::templates::find_for_launch(&state.store, template_ref)? else {
        if let Some(name) = secrets.0.keys().next() {
            return Err(ApiError::bad_request(format!(
                "secrets.{name}: {template_ref} is not a published template, so it declares no secrets; remove secrets from the request."
            ))
            .with("fields", vec![format!("secrets.{name}")]));
        }
        return Ok(secrets);
    };
    let Ok(valid) = crate::templates::validate_value(t.document.clone()) else {
        return Err(ApiError::internal(format!(
            "the stored document of {} no longer validates",
            t.reference
        )));
    };
    let refuse = |e: crate::templates::LaunchRefused| {
        ApiError::bad_request(e.message).with("fields", e.fields)
    };
    crate::templates::check_hardware(
        &t.reference,
        &valid.document,
        &crate::templates::HostCapabilities::default(),
    )
    .map_err(refuse)?;
    crate::templates::check_runtime_files(&t.reference, &valid.document).map_err(refuse)?;
    crate::templates::check_secrets(&t.reference, &valid.document, &secrets.0).map_err(refuse)?;
    Ok(secrets)
}

/// Keeps a new computer's secrets before its first start (which writes them to `/root/.env`); a
/// computer whose secrets cannot be kept is removed again and the create fails.
pub(super) async fn keep_secrets(
    state: &AppState,
    c: &Computer,
    secrets: &crate::templates::secrets::Secrets,
) -> Result<(), ApiError> {
    if secrets.is_empty() {
        return Ok(());
    }
    if let Err(e) = state.store.set_computer_secrets(&c.id, secrets) {
        let _ = state.lifecycle.destroy(&c.id).await;
        return Err(e.into());
    }
    Ok(())
}

/// `POST /computers`.
pub async fn create(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let workspace_id = workspace_field(&body, true)?.unwrap_or_default();
    let name = required_name(&body, "name", 64)?;
    let os =
        match field(&body, "os") {
            None => "linux".to_string(),
            Some(Value::String(s)) if s == "linux" => s.clone(),
            Some(Value::String(s)) if s == "windows" => return Err(ApiError::bad_request(
                "os \"windows\" is not available: deskd runs Linux desktops only; use \"linux\".",
            )),
            Some(_) => return Err(ApiError::bad_request("os must be \"linux\".")),
        };
    let cpu = field(&body, "cpu").map(parse_cpu).transpose()?;
    let ram_gb = field(&body, "ram")
        .map(|v| parse_ram(v, &RAM_CHOICES, "ram"))
        .transpose()?;
    let gpu = match field(&body, "gpu") {
        None => "none".to_string(),
        Some(Value::String(s)) if s == "none" => s.clone(),
        Some(Value::String(s)) => {
            return Err(ApiError::bad_request(format!(
                "gpu {:?} is not available: this host has no GPUs to give computers; use \"none\".",
                s.chars().take(40).collect::<String>()
            )))
        }
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "gpu must be the string \"none\", not {}.",
                kind(v)
            )))
        }
    };
    let disk_size_gb =
        optional_int(&body, "disk_size_gb", MIN_DISK_GB, 1_000_000)?.map(|n| n as u32);
    let resolution = field(&body, "resolution")
        .map(parse_resolution)
        .transpose()?;
    let auto_stop_minutes = parse_auto_stop(&body)?;
    let image = optional_string(&body, "image", 256)?;
    let template_ref =
        match optional_string(&body, "template_ref", 200)? {
            Some(t) if is_template_ref(&t) => t,
            Some(_) => return Err(ApiError::bad_request(
                "template_ref must look like namespace/name@version, e.g. system/desktop@1.0.0.",
            )),
            // The legacy `image` may name a template (the SDK sends a bare template name); any
            // other image name gets the default desktop.
            None => match &image {
                Some(i) if is_template_ref(i) => i.clone(),
                Some(i) => crate::templates::find_for_launch(&state.store, i)?
                    .map(|t| t.reference.to_string())
                    .unwrap_or_else(|| DEFAULT_TEMPLATE.to_string()),
                None => DEFAULT_TEMPLATE.to_string(),
            },
        };
    let secrets = check_template_launch(&state, &template_ref, &body)?;
    // The template's hardware fills what the request leaves out (templates.md); a computer of
    // that hardware can restore the template's golden snapshot.
    let template_doc = crate::templates::find_for_launch(&state.store, &template_ref)?
        .and_then(|t| crate::templates::validate_value(t.document).ok())
        .map(|v| v.document);
    let (t_cpu, t_ram, t_disk, t_resolution) = template_doc
        .as_ref()
        .map(crate::templates::vm_builder::template_hardware)
        .unwrap_or((1, 4, MIN_DISK_GB as u32, DEFAULT_RESOLUTION.to_string()));
    let defaults = match &template_doc {
        Some(d) => template_launch_defaults(d, &template_ref)?,
        None => Default::default(),
    };
    let cpu = cpu.unwrap_or(t_cpu);
    let ram_gb = ram_gb.unwrap_or(t_ram);
    let disk_size_gb = disk_size_gb.unwrap_or(t_disk);
    let resolution = resolution.unwrap_or(t_resolution);
    let auto_stop_minutes = auto_stop_minutes.or(defaults.auto_stop_minutes);
    let egress_policy = field(&body, "egress_policy")
        .map(parse_egress_policy)
        .transpose()?
        .or(defaults.egress_policy);
    // Ours: the card's limit from its first boot (resize changes it live).
    let bandwidth = optional_int(
        &body,
        "bandwidth_limit_mbps",
        1,
        crate::templates::defaults::MAX_BANDWIDTH_MBPS as i64,
    )?
    .map(|n| n as u32)
    .or(defaults.bandwidth_limit_mbps);
    check_disk_quota(&state, disk_size_gb)?;
    let ws = access::workspace(&state, &key, &workspace_id)?;
    let new = NewComputer {
        workspace_id: ws.id.clone(),
        name,
        os,
        cpu,
        ram_gb,
        gpu,
        disk_size_gb,
        resolution,
        auto_stop_minutes,
        template_ref,
        image,
        vnc_password: new_vnc_password(),
        egress_policy,
    };
    let c = state
        .store
        .insert_computer(&new, admit(&state, cpu, ram_gb))?;
    if bandwidth.is_some() {
        state.store.set_bandwidth_limit(&c.id, bandwidth)?;
    }
    keep_secrets(&state, &c, &secrets).await?;
    launch_new(&state, &c).await?;
    let c = reload(&state, &c.id)?;
    Ok((
        StatusCode::CREATED,
        Json(views::computer(&state, &c, &ws.name)),
    ))
}

/// What a launch of template `reference` (its document `doc`) takes from it; a template whose
/// defaults cannot be applied is the publisher's to correct.
pub(crate) fn template_launch_defaults(
    doc: &crate::templates::document::Document,
    reference: &str,
) -> Result<crate::templates::defaults::LaunchDefaults, ApiError> {
    crate::templates::defaults::launch_defaults(doc).map_err(|e| {
        ApiError::bad_request(format!("{e}; publish a corrected version of {reference}."))
    })
}

/// `GET /computers?workspace_id=` (or `project_id=`; all the key may see without either).
pub async fn list(
    State(state): State<AppState>,
    Extension(AuthKey(key)): Extension<AuthKey>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let wanted = query
        .get("workspace_id")
        .or_else(|| query.get("project_id"));
    let computers = match wanted {
        Some(id) => {
            let ws = access::workspace(&state, &key, id)?;
            state.store.computers_in_workspace(&ws.id)?
        }
        None => match key.workspace_id.as_deref() {
            Some(scope) => state.store.computers_in_workspace(scope)?,
            None => {
                // Template build computers are deskd's own, not a user's.
                let hidden: Vec<String> = state
                    .store
                    .list_workspaces()?
                    .into_iter()
                    .filter(|w| w.name == crate::templates::vm_builder::BUILD_WORKSPACE)
                    .map(|w| w.id)
                    .collect();
                let mut all = state.store.all_computers()?;
                all.retain(|c| !hidden.contains(&c.workspace_id));
                all
            }
        },
    };
    let mut names: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(computers.len());
    for c in &computers {
        if !names.contains_key(&c.workspace_id) {
            names.insert(
                c.workspace_id.clone(),
                access::workspace_name(&state, &c.workspace_id)?,
            );
        }
        out.push(views::computer(&state, c, &names[&c.workspace_id]));
    }
    Ok(Json(json!({ "computers": out })))
}

/// `GET /computers/{id}`.
pub async fn get(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
) -> Answer {
    Ok(Json(show(&state, &c)?))
}

/// `DELETE /computers/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
) -> Answer {
    state.lifecycle.destroy(&c.id).await?;
    super::storage::forget_computer(&state, &c.id);
    Ok(Json(json!({ "success": true })))
}

/// `GET /computers/{id}/vnc-password`.
pub async fn vnc_password(ScopedComputer { computer: c, .. }: ScopedComputer) -> Answer {
    Ok(Json(json!({ "password": c.vnc_password })))
}

fn transition_answer(c: &Computer) -> Json<Value> {
    Json(json!({ "success": true, "status": c.status.as_str(), "id": c.id }))
}

/// `POST /computers/{id}/start`.
pub async fn start(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
    JsonObject(_): JsonObject,
) -> Answer {
    let c = state.lifecycle.start(&c.id).await?;
    Ok(transition_answer(&c))
}

/// `POST /computers/{id}/stop`.
pub async fn stop(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
    JsonObject(_): JsonObject,
) -> Answer {
    let c = state.lifecycle.stop(&c.id).await?;
    Ok(transition_answer(&c))
}

/// `POST /computers/{id}/restart`.
pub async fn restart(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
    JsonObject(_): JsonObject,
) -> Answer {
    let c = state.lifecycle.restart(&c.id).await?;
    Ok(transition_answer(&c))
}

/// `POST /computers/{id}/suspend` (ours): saves the running VM and frees its memory; `start`
/// resumes it with its processes.
pub async fn suspend(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
    JsonObject(_): JsonObject,
) -> Answer {
    if c.status == ComputerStatus::Running {
        check_free_space_for(&state, u64::from(c.ram_gb) << 30)?;
    }
    let c = state.lifecycle.suspend(&c.id).await?;
    Ok(transition_answer(&c))
}

/// `POST /computers/{id}/ensure-running`: the computer, once it runs.
pub async fn ensure_running(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
    JsonObject(_): JsonObject,
) -> Answer {
    let c = state
        .lifecycle
        .ensure_running(&c.id, ENSURE_RUNNING_TIMEOUT)
        .await?;
    Ok(Json(show(&state, &c)?))
}

/// `GET /computers/{id}/auto-stop`.
pub async fn auto_stop_get(ScopedComputer { computer: c, .. }: ScopedComputer) -> Answer {
    Ok(Json(json!({
        "auto_stop_minutes": c.auto_stop_minutes.unwrap_or(0),
        "configurable": true,
    })))
}

/// `PATCH /computers/{id}/auto-stop` `{"auto_stop_minutes": N}` (0 = never).
pub async fn auto_stop_patch(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
    JsonObject(body): JsonObject,
) -> Answer {
    let minutes = parse_auto_stop(&body)?.ok_or_else(|| {
        ApiError::bad_request("auto_stop_minutes is required (a whole number >= 0; 0 = never).")
    })?;
    state.store.set_auto_stop(&c.id, Some(minutes))?;
    Ok(Json(
        json!({ "auto_stop_minutes": minutes, "configurable": true }),
    ))
}

/// `PATCH /computers/{id}/move` `{"project_id"}` (or `workspace_id`).
pub async fn move_to(
    State(state): State<AppState>,
    ScopedComputer { computer: c, key }: ScopedComputer,
    JsonObject(body): JsonObject,
) -> Answer {
    let target = workspace_field(&body, false)?
        .ok_or_else(|| ApiError::bad_request("project_id (or workspace_id) is required."))?;
    if target == c.workspace_id {
        return Err(ApiError::bad_request(format!(
            "The computer is already in workspace {target}."
        )));
    }
    let ws = access::workspace(&state, &key, &target)?;
    state.store.move_computer(&c.id, &ws.id)?;
    Ok(Json(
        json!({ "success": true, "project_id": ws.id, "workspace_id": ws.id }),
    ))
}

/// `POST /computers/{id}/clone`: a new computer with a copy of the disk, then started.
pub async fn clone(
    State(state): State<AppState>,
    ScopedComputer { computer: src, .. }: ScopedComputer,
    JsonObject(_): JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // A running source is copied live (paused for a moment); one on its way up or down is not.
    if src.status.expects_vm() && src.status != ComputerStatus::Running {
        return Err(LifecycleError::Conflict(format!(
            "The computer is {}; clone it once it is running or stopped.",
            src.status.as_str()
        ))
        .into());
    }
    // A live copy writes the source's memory too (at most its RAM; sparse in practice).
    let live_copy_bytes = if src.status == ComputerStatus::Running {
        u64::from(src.ram_gb) << 30
    } else {
        0
    };
    check_free_space_for(&state, live_copy_bytes)?;
    let taken = state
        .store
        .computer_names_like(&src.workspace_id, &format!("{} (clone", src.name))?;
    let name = (1..)
        .map(|n| {
            if n == 1 {
                format!("{} (clone)", src.name)
            } else {
                format!("{} (clone {n})", src.name)
            }
        })
        .find(|n| !taken.contains(n))
        .unwrap_or_default();
    if name.chars().count() > 64 {
        return Err(ApiError::bad_request(format!(
            "The clone's name {name:?} would be over 64 characters; rename the computer first."
        )));
    }
    let new = NewComputer {
        workspace_id: src.workspace_id.clone(),
        name,
        os: src.os.clone(),
        cpu: src.cpu,
        ram_gb: src.ram_gb,
        gpu: src.gpu.clone(),
        disk_size_gb: src.disk_size_gb,
        resolution: src.resolution.clone(),
        auto_stop_minutes: src.auto_stop_minutes,
        template_ref: src.template_ref.clone(),
        image: src.image.clone(),
        vnc_password: new_vnc_password(),
        // A clone keeps its source's egress policy (explicitly, so it survives later changes).
        egress_policy: Some(state.store.egress_policy(&src.id)?),
    };
    let c = state
        .store
        .insert_computer(&new, admit(&state, src.cpu, src.ram_gb))?;
    if let Err(e) = state.lifecycle.clone_disk(&src, &c.id).await {
        // No half-made clone: remove the record and whatever was copied.
        let _ = state.lifecycle.destroy(&c.id).await;
        return Err(e.into());
    }
    // The clone's disk holds the uploads its source got: they are not put in again.
    state.store.copy_deliveries(&src.id, &c.id)?;
    // And its card the source's limit (a live clone restores the source's card state).
    state
        .store
        .set_bandwidth_limit(&c.id, state.store.bandwidth_limit(&src.id)?)?;
    // And its secrets: its disk (and a live copy's memory) holds them already, and its every
    // start writes /root/.env again from these.
    state.store.copy_computer_secrets(&src.id, &c.id)?;
    start_new(&state, &c.id).await?;
    let c = reload(&state, &c.id)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": c.id,
            "name": c.name,
            "status": c.status.as_str(),
            "status_reason": c.status_reason,
            "source_id": src.id,
        })),
    ))
}

/// `GET /computers/{id}/events`: the catalogue of event types of the events WebSocket (the
/// agent's own, with the shapes of their data).
/// `GET /computers/{id}/launch-log` (ours): what each start and stop did in the guest for the
/// template (`/root/.env`, runtime files, the hooks with their output, the autostart stream;
/// secrets masked), oldest first.
pub async fn launch_log(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
) -> Answer {
    let events = state.store.launch_events(&c.id)?;
    Ok(Json(json!({"id": c.id, "events": events})))
}

pub async fn events(ScopedComputer { computer: c, .. }: ScopedComputer) -> Answer {
    Ok(Json(json!({
        "computer_id": c.id,
        "websocket": format!("/desktops/{}/ws/events", c.instance_id),
        "event_types": protocol::event_catalogue(),
        "max_buffered_per_client": protocol::EVENT_QUEUE_SIZE,
    })))
}

/// `GET /computers/{id}/egress-policy` (ours).
pub async fn egress_policy(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
) -> Answer {
    Ok(Json(state.store.egress_policy(&c.id)?.to_json()))
}

/// `PUT /computers/{id}/egress-policy` (ours): stores the policy and, when the computer has a
/// network now, applies it live as one nftables transaction.
pub async fn put_egress_policy(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
    JsonObject(body): JsonObject,
) -> Answer {
    let policy = parse_egress_policy(&Value::Object(body))?;
    state.store.set_egress_policy(&c.id, &policy)?;
    let applied = match &state.network {
        Some(net) => net.set_policy(&c.id, &policy).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("The policy was stored but could not be applied to the running computer: {e}. Restart the computer to apply it."),
            )
        })?,
        None => false,
    };
    let mut out = policy.to_json();
    if let Value::Object(m) = &mut out {
        m.insert("applied".into(), Value::Bool(applied));
    }
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions() {
        assert_eq!(
            parse_resolution(&json!("1280x720x24")).unwrap(),
            "1280x720x24"
        );
        assert_eq!(
            parse_resolution(&json!("1920X1080")).unwrap(),
            "1920x1080x24"
        );
        for bad in [
            "",
            "1280",
            "100x100x24",
            "1280x720x8",
            "1280x720x24x1",
            "axbxc",
            "99999999x1x1",
        ] {
            assert!(parse_resolution(&json!(bad)).is_err(), "{bad}");
        }
        assert!(parse_resolution(&json!(5)).is_err());
    }

    #[test]
    fn template_refs() {
        assert!(is_template_ref("system/desktop@1.0.0"));
        assert!(is_template_ref("default/my-app@2.1.0-rc.1"));
        for bad in [
            "desktop",
            "system/desktop",
            "System/desktop@1",
            "a/b@",
            "a/b@x1",
            "../x@1",
            "a/b/c@1",
        ] {
            assert!(!is_template_ref(bad), "{bad}");
        }
    }

    #[test]
    fn cpu_and_ram_choices() {
        assert_eq!(parse_cpu(&json!(0.5)).unwrap(), 1);
        assert_eq!(parse_cpu(&json!(4)).unwrap(), 4);
        assert!(parse_cpu(&json!(3)).is_err());
        assert!(parse_cpu(&json!("2")).is_err());
        assert_eq!(parse_ram(&json!(2), &RAM_CHOICES, "ram").unwrap(), 2);
        assert!(parse_ram(&json!(3), &RAM_CHOICES, "ram")
            .unwrap_err()
            .message
            .contains("1, 2, 4"));
    }
}
