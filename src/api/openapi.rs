//! `GET /api/openapi.json`: an OpenAPI 3.1 description of the routes in `routes.rs`, built from
//! [`OPERATIONS`]. Tests keep the two in step (a scan of `routes.rs` here, live requests in
//! `tests/api_openapi.rs`).

use axum::Json;
use serde_json::{json, Map, Value};

/// One documented operation.
pub struct Operation {
    pub method: &'static str,
    /// Full path as clients use it, OpenAPI style (`{id}`).
    pub path: &'static str,
    pub summary: &'static str,
    pub success: u16,
    pub request: Option<&'static str>,
    pub response: &'static str,
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    success: u16,
    request: Option<&'static str>,
    response: &'static str,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        success,
        request,
        response,
    }
}

/// Every route of the router.
pub const OPERATIONS: &[Operation] = &[
    op(
        "get",
        "/api/openapi.json",
        "This document (no key needed)",
        200,
        None,
        "Any",
    ),
    op(
        "get",
        "/api/metrics",
        "Ours: the daemon's state in Prometheus text format (computers by status, VMs, action latencies, agent errors, agent bytes in flight, disk used by kind)",
        200,
        None,
        "Any",
    ),
    op(
        "get",
        "/api/workspaces",
        "List workspaces",
        200,
        None,
        "WorkspaceList",
    ),
    op(
        "post",
        "/api/workspaces",
        "Create a workspace",
        201,
        Some("WorkspaceCreate"),
        "Workspace",
    ),
    op(
        "get",
        "/api/workspaces/{id}",
        "Get a workspace with its computers (desktops)",
        200,
        None,
        "Workspace",
    ),
    op(
        "delete",
        "/api/workspaces/{id}",
        "Delete a workspace and its computers",
        200,
        None,
        "Success",
    ),
    op(
        "post",
        "/api/workspaces/{id}/start",
        "Start all its computers",
        200,
        None,
        "Success",
    ),
    op(
        "post",
        "/api/workspaces/{id}/stop",
        "Stop all its computers",
        200,
        None,
        "Success",
    ),
    op(
        "post",
        "/api/workspaces/{id}/restart",
        "Restart all its computers",
        200,
        None,
        "Success",
    ),
    op(
        "get",
        "/api/projects",
        "List workspaces (old name; list key `projects`)",
        200,
        None,
        "WorkspaceList",
    ),
    op(
        "post",
        "/api/projects",
        "Create a workspace (old name)",
        201,
        Some("WorkspaceCreate"),
        "Workspace",
    ),
    op(
        "get",
        "/api/projects/{id}",
        "Get a workspace (old name)",
        200,
        None,
        "Workspace",
    ),
    op(
        "delete",
        "/api/projects/{id}",
        "Delete a workspace (old name)",
        200,
        None,
        "Success",
    ),
    op(
        "post",
        "/api/projects/{id}/start",
        "Start all its computers (old name)",
        200,
        None,
        "Success",
    ),
    op(
        "post",
        "/api/projects/{id}/stop",
        "Stop all its computers (old name)",
        200,
        None,
        "Success",
    ),
    op(
        "post",
        "/api/projects/{id}/restart",
        "Restart all its computers (old name)",
        200,
        None,
        "Success",
    ),
    op(
        "get",
        "/api/computers",
        "List computers (?workspace_id= or ?project_id=)",
        200,
        None,
        "ComputerList",
    ),
    op(
        "post",
        "/api/computers",
        "Create a computer (it starts at once)",
        201,
        Some("ComputerCreate"),
        "Computer",
    ),
    op(
        "get",
        "/api/computers/{id}",
        "Get a computer",
        200,
        None,
        "Computer",
    ),
    op(
        "delete",
        "/api/computers/{id}",
        "Delete a computer (VM stopped, disk removed)",
        200,
        None,
        "Success",
    ),
    op(
        "get",
        "/api/computers/{id}/vnc-password",
        "The VNC/WebSocket token",
        200,
        None,
        "VncPassword",
    ),
    op(
        "post",
        "/api/computers/{id}/start",
        "Start (idempotent)",
        200,
        None,
        "Transition",
    ),
    op(
        "post",
        "/api/computers/{id}/stop",
        "Stop (409 if stopped)",
        200,
        None,
        "Transition",
    ),
    op(
        "post",
        "/api/computers/{id}/restart",
        "Restart",
        200,
        None,
        "Transition",
    ),
    op(
        "post",
        "/api/computers/{id}/suspend",
        "Suspend (ours): save the running VM with its processes and free its memory; start resumes it (409 unless running)",
        200,
        None,
        "Transition",
    ),
    op(
        "post",
        "/api/computers/{id}/ensure-running",
        "Start if needed and wait until running",
        200,
        None,
        "Computer",
    ),
    op(
        "get",
        "/api/computers/{id}/auto-stop",
        "Auto-stop setting",
        200,
        None,
        "AutoStop",
    ),
    op(
        "patch",
        "/api/computers/{id}/auto-stop",
        "Change auto-stop",
        200,
        Some("AutoStopPatch"),
        "AutoStop",
    ),
    op(
        "get",
        "/api/computers/{id}/egress-policy",
        "Ours: the computer's egress policy (what its guest may reach outside the host)",
        200,
        None,
        "EgressPolicy",
    ),
    op(
        "put",
        "/api/computers/{id}/egress-policy",
        "Ours: replace the egress policy; applied live to a running computer (one nftables transaction). 400 names the rule that is wrong",
        200,
        Some("EgressPolicy"),
        "EgressPolicyResult",
    ),
    op(
        "post",
        "/api/computers/{id}/clone",
        "Clone: a stopped computer's disk, a suspended one's disk and saved VM, a running one copied live (it is paused for a moment; the clone resumes that VM with a new identity)",
        201,
        None,
        "Clone",
    ),
    op(
        "patch",
        "/api/computers/{id}/move",
        "Move to another workspace",
        200,
        Some("Move"),
        "MoveResult",
    ),
    op(
        "patch",
        "/api/computers/{id}/resize",
        "Resize: a running computer's disk and bandwidth live (vCPUs and memory not yet: no hotplug), a stopped one's shape stored for its next start [ours] (200/207/422; 400 a bad value or a disk shrink, 403 over a quota, 409 suspended or on its way)",
        200,
        Some("Resize"),
        "ResizeResult",
    ),
    op(
        "get",
        "/api/computers/{id}/events",
        "The event catalogue of the events WebSocket",
        200,
        None,
        "Any",
    ),
    op(
        "get",
        "/api/computers/{id}/launch-log",
        "Ours: what each start and stop did in the guest for the computer's template: /root/.env and runtime files written, the output and outcome of hooks.on_every_boot (cold boots), hooks.on_resume (restores) and hooks.on_shutdown (before a stop, restart or delete), the autostart stream started (a failed hook or stream leaves the computer running, or the stop going on, and is recorded here); secrets masked, newest 1000 lines, oldest first",
        200,
        None,
        "LaunchLog",
    ),
    op(
        "post",
        "/api/computers/{id}/move",
        "Move the mouse pointer (needs a running computer)",
        200,
        Some("Any"),
        "Action",
    ),
    op(
        "post",
        "/api/computers/{id}/click",
        "Click (needs a running computer); ours: clicks 1-3 (3 = triple_click, `double` kept as clicks 2)",
        200,
        Some("Click"),
        "Action",
    ),
    op(
        "post",
        "/api/computers/{id}/mouse_down",
        "Ours: press a mouse button (moving to x, y first when both are given); needs a running computer",
        200,
        Some("MouseButton"),
        "Action",
    ),
    op(
        "post",
        "/api/computers/{id}/mouse_up",
        "Ours: release a mouse button (moving to x, y first when both are given); needs a running computer",
        200,
        Some("MouseButton"),
        "Action",
    ),
    op(
        "post",
        "/api/computers/{id}/hold_key",
        "Ours: hold a key or combo down for duration seconds (0-60, default 0.5); actions sent meanwhile see it held",
        200,
        Some("HoldKey"),
        "Action",
    ),
    op(
        "get",
        "/api/computers/{id}/clipboard",
        "Ours: the CLIPBOARD selection as UTF-8 text ({success, text, owned}; owned false: nobody has copied anything); needs a running computer",
        200,
        None,
        "Clipboard",
    ),
    op(
        "post",
        "/api/computers/{id}/clipboard",
        "Ours: set the CLIPBOARD selection to text (the desktop's agent owns it until something else is copied; at most max_json_body_bytes of JSON); needs a running computer",
        200,
        Some("ClipboardSet"),
        "Action",
    ),
    op(
        "get",
        "/api/computers/{id}/cursor_position",
        "Ours: where the pointer is ({success, action, x, y}); needs a running computer",
        200,
        None,
        "CursorPosition",
    ),
    op(
        "post",
        "/api/computers/{id}/drag",
        "Drag (needs a running computer)",
        200,
        Some("Any"),
        "Action",
    ),
    op(
        "post",
        "/api/computers/{id}/scroll",
        "Scroll (needs a running computer)",
        200,
        Some("Any"),
        "Action",
    ),
    op(
        "post",
        "/api/computers/{id}/type",
        "Type text (needs a running computer)",
        200,
        Some("Any"),
        "Action",
    ),
    op(
        "post",
        "/api/computers/{id}/key",
        "Press a key (needs a running computer)",
        200,
        Some("Any"),
        "Action",
    ),
    op(
        "post",
        "/api/computers/{id}/wait",
        "Wait (needs a running computer)",
        200,
        Some("Any"),
        "Action",
    ),
    op(
        "get",
        "/api/computers/{id}/screenshot",
        "Screenshot (needs a running computer). Query: response_format base64|url; ours: format png|jpeg, quality 1-100, x, y, width, height (a region at full resolution; the answer adds region), max_pixels 1024-4294967296 (scaled down to at most that many pixels; the answer adds scale, image pixels per screen pixel)",
        200,
        None,
        "Action",
    ),
    op(
        "post",
        "/api/computers/{id}/bash",
        "Run a shell command (needs a running computer)",
        200,
        Some("Any"),
        "Action",
    ),
    op(
        "post",
        "/api/computers/{id}/exec",
        "Run Python (needs a running computer)",
        200,
        Some("Any"),
        "Action",
    ),
    op(
        "post",
        "/api/computers/{id}/stream/start",
        "Start RTMP streaming of the screen and the speaker to a saved stream connection (needs a running computer; one stream per computer, 409 while one runs)",
        200,
        Some("StreamStart"),
        "StreamStarted",
    ),
    op(
        "post",
        "/api/computers/{id}/stream/stop",
        "Stop RTMP streaming (needs a running computer; success also when nothing streams)",
        200,
        None,
        "Success",
    ),
    op(
        "get",
        "/api/computers/{id}/stream/status",
        "Streaming status: idle, streaming (pid, start_time) or terminated (message: why the encoder ended) (needs a running computer)",
        200,
        None,
        "StreamStatus",
    ),
    op(
        "get",
        "/api/stream-connections",
        "Ours: the saved RTMP stream connections (stream keys masked)",
        200,
        None,
        "StreamConnectionList",
    ),
    op(
        "post",
        "/api/stream-connections",
        "Ours: save an RTMP stream connection (account-wide keys; the stream key is never shown again)",
        201,
        Some("StreamConnectionCreate"),
        "StreamConnection",
    ),
    op(
        "delete",
        "/api/stream-connections/{name}",
        "Ours: delete a stream connection",
        200,
        None,
        "Success",
    ),
    op(
        "get",
        "/api/computers/{id}/console",
        "The guest's serial console log ({id, log, size, truncated}; ?format=text, ?bytes=N)",
        200,
        None,
        "Any",
    ),
    op(
        "get",
        "/desktops/{id}/ws/{kind}",
        "WebSocket terminal|events|websockify (?token=vnc_password, optional for websockify: RFB's VNC authentication with vnc_password; close codes 4401/4404/4500)",
        101,
        None,
        "Any",
    ),
    op(
        "get",
        "/desktops/{id}/websockify",
        "WebSocket: RFB (VNC) as at /desktops/{id}/ws/websockify, at the path orgo-vnc builds from hostname",
        101,
        None,
        "Any",
    ),
    op(
        "get",
        "/api/storage/screenshots/{file}",
        "A screenshot stored by response_format=url (same key)",
        200,
        None,
        "Any",
    ),
    op(
        "post",
        "/api/files/upload",
        "Upload a file (multipart: file, projectId or workspaceId, optional desktopId; limit limits.max_upload_bytes, over it 413) into ~/Desktop of the desktop, or of every computer of the workspace (running ones now, the others when they start)",
        200,
        Some("Upload"),
        "UploadResult",
    ),
    op(
        "post",
        "/api/computers/{id}/files/upload",
        "Upload a file into ~/Desktop of this computer (older form; multipart: file)",
        200,
        Some("Upload"),
        "UploadResult",
    ),
    op(
        "get",
        "/api/files",
        "List stored files (?projectId=&desktopId=, both optional)",
        200,
        None,
        "FileList",
    ),
    op(
        "post",
        "/api/files/export",
        "Copy a file below /home/user out of a running computer (403 outside it); answers a signed URL valid 1 h",
        200,
        Some("Export"),
        "ExportResult",
    ),
    op(
        "get",
        "/api/files/download",
        "A signed URL for a stored file (?id=), valid 1 h, usable without a key",
        200,
        None,
        "DownloadUrl",
    ),
    op(
        "delete",
        "/api/files/delete",
        "Delete a stored file (?id=)",
        200,
        None,
        "Success",
    ),
    op(
        "get",
        "/api/files/content/{id}",
        "A stored file's bytes through a signed URL (?expires=&signature=; no key; forged or expired 403, deleted 404)",
        200,
        None,
        "Any",
    ),
    op(
        "get",
        "/api/desktops/{instance_id}/proxy/{endpoint}",
        "Forward a GET to the guest agent (needs a running computer)",
        200,
        None,
        "Any",
    ),
    op(
        "post",
        "/api/desktops/{instance_id}/proxy/{endpoint}",
        "Forward to the guest agent (needs a running computer)",
        200,
        Some("Any"),
        "Any",
    ),
    op(
        "get",
        "/api/template-schema",
        "JSON Schema (draft 2020-12) of the orgo.ai/v1 template document, as application/schema+json (no key needed)",
        200,
        None,
        "Any",
    ),
    op(
        "post",
        "/api/templates/validate",
        "Check a template (YAML or JSON body): 200 {ok: true, template: canonical, digest} or 422 {ok: false, errors: [{field, code, message, hint?}]}; no side effects",
        200,
        Some("TemplateDocument"),
        "TemplateValidation",
    ),
    op(
        "post",
        "/api/templates",
        "Publish a template (YAML or JSON) as default/NAME@VERSION (?force=true replaces other content under the same ref, else 409; ?auto_build=true starts its build); 201 new, 200 unchanged, 400 unparseable, 422 invalid",
        201,
        Some("TemplateDocument"),
        "TemplatePublished",
    ),
    op(
        "get",
        "/api/templates",
        "List published templates (?namespace=, default: default)",
        200,
        None,
        "TemplateList",
    ),
    op(
        "get",
        "/api/templates/global",
        "List the curated system/... templates shipped with deskd",
        200,
        None,
        "TemplateList",
    ),
    op(
        "get",
        "/api/templates/{ns}/{name}",
        "Every version of a template",
        200,
        None,
        "TemplateVersions",
    ),
    op(
        "get",
        "/api/templates/{ns}/{name}/{version}",
        "One published template with its build status",
        200,
        None,
        "TemplateEntry",
    ),
    op(
        "delete",
        "/api/templates/{ns}/{name}/{version}",
        "Delete a published template (system/... ones: 403); running computers are unaffected",
        200,
        None,
        "TemplateDeleted",
    ),
    op(
        "post",
        "/api/templates/{ns}/{name}/{version}/build",
        "Build the template's golden snapshot: 202 building, or 200 {status: ready, reused: true} when its digest is built",
        202,
        None,
        "TemplateBuild",
    ),
    op(
        "get",
        "/api/templates/{ns}/{name}/{version}/build",
        "Build status of the template's digest: not_built, building, ready or failed (with build_time_ms, error)",
        200,
        None,
        "TemplateBuild",
    ),
    op(
        "delete",
        "/api/templates/{ns}/{name}/{version}/build",
        "Cancel the running build: 202 {status: cancelling}, or 404 {status: idle}",
        202,
        None,
        "TemplateBuild",
    ),
    op(
        "get",
        "/api/templates/{ns}/{name}/{version}/build/events",
        "Server-Sent Events of the latest build: each data: is {ts, level, phase, source?, line}; closes at ready or failed",
        200,
        None,
        "BuildEvent",
    ),
    op(
        "post",
        "/api/templates/run",
        "A throwaway test computer from a built template ({ref}, ours: secrets as on create); 409 when it is not built",
        201,
        Some("TemplateRun"),
        "TemplateRunResult",
    ),
    op(
        "delete",
        "/api/templates/run",
        "Delete a throwaway test computer (?id=)",
        200,
        None,
        "Success",
    ),
    op(
        "post",
        "/api/builds/create",
        "Legacy Docker build (always 400: use templates)",
        400,
        None,
        "Error",
    ),
    op(
        "post",
        "/api/builds/update",
        "Legacy Docker build (always 400: use templates)",
        400,
        None,
        "Error",
    ),
    op(
        "get",
        "/api/builds/latest",
        "Legacy Docker build (always 400: use templates)",
        400,
        None,
        "Error",
    ),
];

/// `GET /api/openapi.json`.
pub async fn serve() -> Json<Value> {
    Json(document())
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for o in OPERATIONS {
        paths.entry(o.path.to_string()).or_insert_with(|| json!({}));
        let mut params = Vec::new();
        for name in [
            "id",
            "instance_id",
            "endpoint",
            "file",
            "kind",
            "ns",
            "name",
            "version",
        ] {
            if o.path.contains(&format!("{{{name}}}")) {
                params.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}));
            }
        }
        let mut responses = Map::new();
        responses.insert(
            o.success.to_string(),
            json!({"description": "success", "content": {"application/json": {"schema": schema_ref(o.response)}}}),
        );
        responses.insert(
            "default".into(),
            json!({"description": "error", "content": {"application/json": {"schema": schema_ref("Error")}}}),
        );
        let mut operation = json!({
            "summary": o.summary,
            "operationId": format!("{}_{}", o.method, o.path.trim_start_matches("/api/").replace(['/', '{', '}', '-', '.'], "_")),
            "parameters": params,
            "responses": responses,
        });
        if let Some(req) = o.request {
            let media = match req {
                "Upload" => "multipart/form-data",
                "TemplateDocument" => "application/yaml",
                _ => "application/json",
            };
            let mut content = json!({media: {"schema": schema_ref(req)}});
            if req == "TemplateDocument" {
                content["application/json"] = json!({"schema": schema_ref(req)});
            }
            operation["requestBody"] = json!({"required": req == "Upload" || req == "TemplateDocument", "content": content});
        }
        if o.path != "/api/openapi.json"
            && o.path != "/api/template-schema"
            && !o.path.starts_with("/api/files/content/")
        {
            operation["security"] = json!([{"bearer": []}]);
        }
        if let Some(Value::Object(item)) = paths.get_mut(o.path) {
            item.insert(o.method.to_string(), operation);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "deskd: the Orgo computer API, self-hosted",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every non-2xx answer is {\"error\", \"request_id\"}. Keys: Authorization: Bearer sk_live_..."
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
    })
}

/// The egress policy's schemas (ours; src/network/policy.rs is the type), apart from
/// `schemas()` only to stay within `json!`'s recursion limit.
fn egress_schemas() -> Value {
    let s = |t: &str| json!({"type": t});
    json!({
        "EgressPolicy": {
            "type": "object", "required": ["mode"],
            "description": "mode says what the rules do: allow = only the rules' destinations are reachable; block = the rules' destinations are not, everything else public is. Domain rules hold for every port (the computer's resolver feeds their addresses to the firewall). Private, link-local and the host's own networks are unreachable unless an ip/cidr rule of an allow policy names them; the host itself and other computers never are.",
            "properties": {
                "mode": {"enum": ["allow", "block"]},
                "rules": {"type": "array", "maxItems": 256, "items": schema_ref("EgressRule")}
            }
        },
        "EgressRule": {
            "type": "object",
            "description": "Exactly one of domain (example.com or *.example.com), ip (IPv4), cidr (IPv4, no host bits); ports narrows it to those TCP/UDP destination ports.",
            "properties": {
                "domain": s("string"), "ip": s("string"), "cidr": s("string"),
                "ports": {"type": "array", "minItems": 1, "maxItems": 16, "items": {"type": "integer", "minimum": 1, "maximum": 65535}}
            }
        },
        "EgressPolicyResult": {
            "type": "object",
            "properties": {
                "mode": {"enum": ["allow", "block"]},
                "rules": {"type": "array", "items": schema_ref("EgressRule")},
                "applied": {"type": "boolean", "description": "true when a running computer's firewall was changed now; false when it applies at the next start"}
            }
        }
    })
}

fn schemas() -> Value {
    let mut all = schemas_core();
    for more in [egress_schemas(), template_schemas()] {
        if let (Value::Object(a), Value::Object(b)) = (&mut all, more) {
            a.extend(b);
        }
    }
    all
}

/// Section 6's shapes. The document itself is `GET /api/template-schema`'s schema, not repeated
/// here (one source: crate::templates::document).
fn template_schemas() -> Value {
    let s = |t: &str| json!({"type": t});
    json!({
        "TemplateDocument": {
            "description": "An orgo.ai/v1 document, YAML or JSON; its JSON Schema is GET /api/template-schema.",
            "type": "object", "required": ["api_version"],
            "properties": {"api_version": {"const": "orgo.ai/v1"}}
        },
        "TemplateIssue": {
            "type": "object", "required": ["field", "code", "message"],
            "properties": {
                "field": s("string"),
                "code": {"enum": ["required", "invalid_enum", "invalid_type", "invalid_format", "out_of_range", "unknown_field", "unknown_ref", "reserved_path", "duplicate", "conflict", "secret_in_build"]},
                "message": s("string"), "hint": s("string")
            }
        },
        "TemplateValidation": {
            "type": "object",
            "properties": {
                "ok": s("boolean"), "template": s("object"), "digest": s("string"),
                "errors": {"type": "array", "items": schema_ref("TemplateIssue")}
            }
        },
        "TemplatePublished": {
            "type": "object",
            "properties": {
                "ref": s("string"), "digest": s("string"), "published": s("string"),
                "created": s("boolean"), "replaced": s("boolean"),
                "auto_build": {"enum": ["building", "ready"]}
            }
        },
        "TemplateEntry": {
            "type": "object",
            "properties": {
                "ref": s("string"), "namespace": s("string"), "name": s("string"), "version": s("string"),
                "digest": s("string"), "published": s("string"), "template": s("object"),
                "build": schema_ref("TemplateBuild")
            }
        },
        "TemplateList": {"type": "object", "properties": {"templates": {"type": "array", "items": schema_ref("TemplateEntry")}}},
        "TemplateVersions": {"type": "object", "properties": {"ref": s("string"), "versions": {"type": "array", "items": schema_ref("TemplateEntry")}}},
        "TemplateDeleted": {"type": "object", "properties": {"deleted": s("boolean"), "ref": s("string")}},
        "TemplateBuild": {
            "type": "object",
            "properties": {
                "ref": s("string"), "digest": s("string"),
                "status": {"enum": ["not_built", "building", "ready", "failed", "cancelling", "idle"]},
                "reused": s("boolean"), "build_id": s("string"), "started_at": s("string"),
                "build_time_ms": s("integer"), "error": s("string")
            }
        },
        "BuildEvent": {
            "type": "object", "required": ["ts", "level", "phase", "line"],
            "properties": {
                "ts": s("string"),
                "level": {"enum": ["info", "success", "warn", "error"]},
                "phase": {"enum": ["publish", "compile", "boot", "install", "snapshot", "ready", "cancel", "timeout"]},
                "source": {"enum": ["apt", "pip", "npm", "builder"]},
                "line": s("string")
            }
        },
        "TemplateRun": {"type": "object", "required": ["ref"], "properties": {"ref": s("string"), "secrets": schema_ref("Secrets")}},
        "Secrets": {
            "type": "object",
            "maxProperties": 64,
            "additionalProperties": {"type": "string", "maxLength": 65536},
            "description": "Ours: the values of the template's declared secrets, by name (each at most 64 KiB, 256 KiB together, no NUL). A required one missing, an undeclared one or a bad value is 400 naming the field (`fields`). Kept per computer (a clone gets its source's), written to /root/.env (mode 0600) at every start and never shown again"
        },
        "LaunchLog": {
            "type": "object",
            "properties": {
                "id": s("string"),
                "events": {"type": "array", "items": {
                    "type": "object", "required": ["ts", "level", "step", "line"],
                    "properties": {
                        "ts": s("string"),
                        "level": {"enum": ["info", "success", "warn", "error"]},
                        "step": {"type": "string", "description": "files, hooks.on_every_boot, hooks.on_resume, hooks.on_shutdown, streaming.NAME or launch"},
                        "line": s("string")
                    }
                }}
            }
        },
        "TemplateRunResult": {
            "type": "object",
            "properties": {
                "id": s("string"), "desktop_id": s("string"), "status": s("string"),
                "vnc_password": s("string"), "resolution": s("string"), "ref": s("string"),
                "computer": schema_ref("Computer")
            }
        }
    })
}

fn schemas_core() -> Value {
    let s = |t: &str| json!({"type": t});
    let ns = |t: &str| json!({"type": [t, "null"]});
    let mut all = json!({
        "Any": {},
        "Error": {
            "type": "object",
            "required": ["error", "request_id"],
            "properties": {
                "error": s("string"), "request_id": s("string"), "code": s("string"),
                "key_workspace_id": s("string"), "target_workspace_id": ns("string"),
                "upstream_status": s("integer")
            }
        },
        "Success": {"type": "object", "required": ["success"], "properties": {"success": s("boolean")}},
        "WorkspaceCreate": {
            "type": "object", "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 64},
                "icon_url": ns("string"),
                "status": {"enum": ["active", "inactive"]}
            }
        },
        "Workspace": {
            "type": "object",
            "properties": {
                "id": s("string"), "name": s("string"), "user_id": s("string"), "status": s("string"),
                "icon_url": ns("string"), "created_at": s("string"), "updated_at": s("string"),
                "computer_count": s("integer"),
                "desktops": {"type": "array", "items": schema_ref("Computer")}
            }
        },
        "WorkspaceList": {
            "type": "object",
            "properties": {
                "workspaces": {"type": "array", "items": schema_ref("Workspace")},
                "projects": {"type": "array", "items": schema_ref("Workspace")}
            }
        },
        "ComputerCreate": {
            "type": "object", "required": ["name"],
            "properties": {
                "workspace_id": s("string"), "project_id": s("string"),
                "name": {"type": "string", "minLength": 1, "maxLength": 64},
                "os": {"enum": ["linux"]},
                "cpu": {"enum": [0.5, 1, 2, 4, 8, 16]},
                "ram": {"enum": [1, 2, 4, 8, 16, 32, 64]},
                "gpu": {"enum": ["none"]},
                "disk_size_gb": {"type": "integer", "minimum": 8},
                "resolution": {"type": "string", "pattern": "^[0-9]+x[0-9]+(x(16|24))?$"},
                "auto_stop_minutes": {"type": ["integer", "null"], "minimum": 0},
                "template_ref": s("string"), "image": s("string"),
                "egress_policy": schema_ref("EgressPolicy"),
                "secrets": schema_ref("Secrets"),
                "bandwidth_limit_mbps": {"type": "integer", "minimum": 1, "maximum": 100000}
            }
        },
        "Computer": {
            "type": "object",
            "properties": {
                "id": s("string"), "name": s("string"), "workspace_id": s("string"),
                "project_id": s("string"), "project_name": s("string"), "os": s("string"),
                "ram": s("integer"), "cpu": s("integer"), "gpu": s("string"),
                "disk_size_gb": s("integer"), "resolution": s("string"),
                "status": {"enum": ["creating", "starting", "running", "stopping", "stopped", "restarting", "suspended", "deleting", "error"]},
                "status_reason": ns("string"), "url": s("string"), "created_at": s("string"),
                "updated_at": s("string"), "auto_stop_minutes": ns("integer"),
                "instance_id": s("string"), "fly_instance_id": s("string"), "hostname": s("string"),
                "connection_url": s("string"), "vnc_password": s("string"), "template_ref": s("string"),
                "image": ns("string"),
                "instance_details": {"type": "object", "properties": {"resolution": s("string")}}
            }
        },
        "ComputerList": {"type": "object", "properties": {"computers": {"type": "array", "items": schema_ref("Computer")}}},
        "VncPassword": {"type": "object", "properties": {"password": s("string")}},
        "Transition": {"type": "object", "properties": {"success": s("boolean"), "status": s("string")}},
        "AutoStop": {"type": "object", "properties": {"auto_stop_minutes": s("integer"), "configurable": s("boolean")}},
        "AutoStopPatch": {"type": "object", "required": ["auto_stop_minutes"], "properties": {"auto_stop_minutes": {"type": "integer", "minimum": 0}}},
        "Clone": {"type": "object", "properties": {"id": s("string"), "name": s("string"), "status": s("string")}},
        "Move": {"type": "object", "properties": {"project_id": s("string"), "workspace_id": s("string")}},
        "MoveResult": {"type": "object", "properties": {"success": s("boolean"), "project_id": s("string")}},
        "Resize": {
            "type": "object",
            "properties": {
                "vcpus": {"enum": [1, 2, 4, 8, 16]}, "mem_gb": {"enum": [4, 8, 16, 32]},
                "disk_size_gb": s("integer"), "bandwidth_limit_mbps": s("integer"),
                "auto_stop_minutes": s("integer")
            }
        },
        "ResizeResult": {
            "type": "object",
            "properties": {
                "vcpus": s("integer"), "mem_gb": s("integer"), "disk_size_gb": s("integer"),
                "bandwidth_limit_mbps": {"type": ["integer", "null"]},
                "auto_stop_minutes": {"type": ["integer", "null"]},
                "results": {
                    "type": "object",
                    "description": "Per dimension asked for (vcpus, mem_mb, disk_gb, bandwidth_limit_mbps, auto_stop_minutes): what was asked, what is in effect now, and the reason when it was not applied; a grown disk also says its root filesystem's size.",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "requested": s("integer"), "applied": s("integer"), "ok": s("boolean"),
                            "error": s("string"), "filesystem_bytes": s("integer")
                        }
                    }
                },
                "partial": s("boolean"),
                "takes_effect": {"enum": ["now", "next_start"], "description": "[ours] now: applied to the running VM; next_start: stored, the computer's next start (or resume) uses it"}
            }
        },
        "Action": {"type": "object", "properties": {"success": s("boolean"), "action": s("string")}},
        "Click": {
            "type": "object", "required": ["x", "y"],
            "properties": {
                "x": {"type": "integer", "minimum": 0}, "y": {"type": "integer", "minimum": 0},
                "button": {"enum": ["left", "right", "middle"]}, "double": s("boolean"),
                "clicks": {"type": "integer", "minimum": 1, "maximum": 3}
            }
        },
        "MouseButton": {
            "type": "object", "additionalProperties": false,
            "properties": {
                "button": {"enum": ["left", "right", "middle"]},
                "x": {"type": "integer", "minimum": 0}, "y": {"type": "integer", "minimum": 0}
            }
        },
        "HoldKey": {
            "type": "object", "required": ["key"], "additionalProperties": false,
            "properties": {
                "key": s("string"),
                "duration": {"type": "number", "minimum": 0, "maximum": 60}
            }
        },
        "Clipboard": {
            "type": "object",
            "properties": {"success": s("boolean"), "text": s("string"), "owned": s("boolean")}
        },
        "ClipboardSet": {
            "type": "object", "required": ["text"], "additionalProperties": false,
            "properties": {"text": s("string")}
        },
        "CursorPosition": {
            "type": "object",
            "properties": {"success": s("boolean"), "action": s("string"), "x": s("integer"), "y": s("integer")}
        }
    });
    if let (Some(all), Value::Object(files)) = (all.as_object_mut(), file_schemas()) {
        all.extend(files);
    }
    if let (Some(all), Value::Object(streams)) = (all.as_object_mut(), stream_schemas()) {
        all.extend(streams);
    }
    all
}

/// Section 5's shapes; the limits are the agent protocol's (`protocol::stream`).
fn stream_schemas() -> Value {
    use deskd_agent::protocol::stream::{BITRATE_KBPS, FRAMERATE, NAME_MAX};
    let s = |t: &str| json!({"type": t});
    json!({
        "StreamConnectionCreate": {
            "type": "object", "required": ["name", "rtmp_url", "stream_key"],
            "properties": {
                "name": {"type": "string", "pattern": format!("^[A-Za-z0-9][A-Za-z0-9._-]{{0,{}}}$", NAME_MAX - 1)},
                "rtmp_url": {"type": "string", "pattern": "^rtmps?://", "description": "alias url"},
                "stream_key": {"type": "string", "writeOnly": true, "description": "alias key; a secret, never shown again"},
                "bitrate_kbps": {"type": "integer", "minimum": BITRATE_KBPS.start(), "maximum": BITRATE_KBPS.end(), "default": 2500},
                "resolution": {"type": "string", "pattern": "^[0-9]+x[0-9]+$", "default": "1280x720"},
                "framerate": {"type": "integer", "minimum": FRAMERATE.start(), "maximum": FRAMERATE.end(), "default": 30}
            }
        },
        "StreamConnection": {
            "type": "object",
            "properties": {
                "name": s("string"), "rtmp_url": s("string"),
                "stream_key": {"const": "********"}, "stream_key_set": s("boolean"),
                "bitrate_kbps": s("integer"), "resolution": s("string"), "framerate": s("integer"),
                "created_at": s("string")
            }
        },
        "StreamConnectionList": {"type": "object", "properties": {"stream_connections": {"type": "array", "items": schema_ref("StreamConnection")}}},
        "StreamStart": {"type": "object", "required": ["connection_name"], "properties": {"connection_name": s("string")}},
        "StreamStarted": {
            "type": "object",
            "properties": {"success": s("boolean"), "status": {"const": "streaming"}, "pid": s("integer"), "start_time": s("string")}
        },
        "StreamStatus": {
            "type": "object", "required": ["status"],
            "properties": {
                "status": {"enum": ["idle", "streaming", "terminated"]},
                "start_time": s("string"), "pid": s("integer"), "message": s("string")
            }
        }
    })
}

/// Section 7's shapes (apart: one `json!` of everything exceeds the macro recursion limit).
fn file_schemas() -> Value {
    let s = |t: &str| json!({"type": t});
    let ns = |t: &str| json!({"type": [t, "null"]});
    json!({
        "File": {
            "type": "object",
            "properties": {
                "id": s("string"), "filename": s("string"), "size_bytes": s("integer"),
                "content_type": s("string"), "created_at": s("string"),
                "source": {"enum": ["upload", "export"]},
                "desktop_id": ns("string"), "project_id": s("string"), "workspace_id": s("string")
            }
        },
        "FileList": {"type": "object", "properties": {"files": {"type": "array", "items": schema_ref("File")}}},
        "Upload": {
            "type": "object", "required": ["file"],
            "properties": {
                "file": {"type": "string", "contentMediaType": "application/octet-stream"},
                "projectId": s("string"), "workspaceId": s("string"), "desktopId": s("string")
            }
        },
        "UploadResult": {
            "type": "object",
            "properties": {
                "success": s("boolean"), "file": schema_ref("File"),
                "deliveries": {"type": "array", "items": {"type": "object", "properties": {
                    "desktop_id": s("string"), "name": s("string"), "path": s("string"),
                    "size_bytes": s("integer"), "error": s("string")
                }}},
                "pending_desktop_ids": {"type": "array", "items": s("string")}
            }
        },
        "Export": {
            "type": "object", "required": ["desktopId", "path"],
            "properties": {"desktopId": s("string"), "path": s("string")}
        },
        "ExportResult": {
            "type": "object",
            "properties": {"success": s("boolean"), "file": schema_ref("File"), "url": s("string")}
        },
        "DownloadUrl": {"type": "object", "properties": {"url": s("string"), "expires_in": s("integer")}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every `.route("/path", get(..).post(..))` of routes.rs, as (method, OpenAPI path).
    fn routes_in_source() -> BTreeSet<(String, String)> {
        // Drop comments and whitespace so rustfmt's line breaks do not matter.
        let src: String = include_str!("routes.rs")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        let mut out = BTreeSet::new();
        for chunk in src.split(".route(\"").skip(1) {
            let Some((path, rest)) = chunk.split_once('"') else {
                continue;
            };
            let call = rest.split(".fallback(").next().unwrap_or(rest);
            let path = path.replace("{*endpoint}", "{endpoint}");
            for m in ["get", "post", "patch", "delete", "put"] {
                let pat = format!("{m}(");
                let called = call.match_indices(&pat).any(|(i, _)| {
                    i == 0 || !call[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if called {
                    out.insert((m.to_string(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn document_lists_exactly_the_router_routes() {
        let documented: BTreeSet<(String, String)> = OPERATIONS
            .iter()
            .map(|o| (o.method.to_string(), o.path.to_string()))
            .collect();
        assert_eq!(OPERATIONS.len(), documented.len(), "duplicate operation");
        let routed = routes_in_source();
        assert!(routed.len() > 40, "route scan found only {}", routed.len());
        assert_eq!(routed, documented);
    }

    #[test]
    fn document_is_openapi_3_1_with_every_ref_defined() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let text = doc.to_string();
        for piece in text.split("#/components/schemas/").skip(1) {
            let name: String = piece.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(
                doc["components"]["schemas"].get(&name).is_some(),
                "undefined schema {name}"
            );
        }
        let n: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(n, OPERATIONS.len());
    }
}
