//! The router: every route of the API. `openapi::OPERATIONS` must list exactly these (checked by
//! a unit test on this file and by the integration tests against a running daemon).

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, MethodRouter};
use axum::Router;

use super::error::ApiError;
use super::{
    actions, computers, console, desktop_ws, files, middleware, openapi, resize, storage, streams,
    templates, workspaces, AppState,
};

/// Builds the whole application.
pub fn router(state: AppState) -> Router {
    // Routes that call a guest agent: each call holds one of its key's slots while it runs.
    let agent = |m: MethodRouter<AppState>| {
        m.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::agent_calls,
        ))
    };
    let api = Router::new()
        .route("/api/openapi.json", get(openapi::serve))
        .route("/api/metrics", get(super::metrics::serve))
        // Section 1, under both names.
        .route(
            "/api/workspaces",
            get(workspaces::list).post(workspaces::create),
        )
        .route(
            "/api/workspaces/{id}",
            get(workspaces::get).delete(workspaces::delete),
        )
        .route("/api/workspaces/{id}/start", post(workspaces::start))
        .route("/api/workspaces/{id}/stop", post(workspaces::stop))
        .route("/api/workspaces/{id}/restart", post(workspaces::restart))
        .route(
            "/api/projects",
            get(workspaces::list).post(workspaces::create),
        )
        .route(
            "/api/projects/{id}",
            get(workspaces::get).delete(workspaces::delete),
        )
        .route("/api/projects/{id}/start", post(workspaces::start))
        .route("/api/projects/{id}/stop", post(workspaces::stop))
        .route("/api/projects/{id}/restart", post(workspaces::restart))
        // Section 2.
        .route(
            "/api/computers",
            get(computers::list).post(computers::create),
        )
        .route(
            "/api/computers/{id}",
            get(computers::get).delete(computers::delete),
        )
        .route(
            "/api/computers/{id}/vnc-password",
            get(computers::vnc_password),
        )
        .route("/api/computers/{id}/start", post(computers::start))
        .route("/api/computers/{id}/stop", post(computers::stop))
        .route("/api/computers/{id}/restart", post(computers::restart))
        .route("/api/computers/{id}/suspend", post(computers::suspend))
        .route(
            "/api/computers/{id}/ensure-running",
            post(computers::ensure_running),
        )
        .route(
            "/api/computers/{id}/auto-stop",
            get(computers::auto_stop_get).patch(computers::auto_stop_patch),
        )
        .route("/api/computers/{id}/clone", post(computers::clone))
        .route(
            "/api/computers/{id}/egress-policy",
            get(computers::egress_policy).put(computers::put_egress_policy),
        )
        // PATCH moves the computer to another workspace; POST is the mouse-move action.
        .route(
            "/api/computers/{id}/move",
            agent(post(actions::move_pointer)).patch(computers::move_to),
        )
        .route(
            "/api/computers/{id}/resize",
            // A live disk growth waits for the guest agent.
            agent(axum::routing::patch(resize::resize)),
        )
        .route("/api/computers/{id}/events", get(computers::events))
        .route("/api/computers/{id}/launch-log", get(computers::launch_log))
        .route("/api/computers/{id}/console", get(console::serial_log))
        // Section 3: forwarded to the guest agent (waiting while the computer boots).
        .route("/api/computers/{id}/click", agent(post(actions::click)))
        .route(
            "/api/computers/{id}/mouse_down",
            agent(post(actions::mouse_down)),
        )
        .route(
            "/api/computers/{id}/mouse_up",
            agent(post(actions::mouse_up)),
        )
        .route(
            "/api/computers/{id}/hold_key",
            agent(post(actions::hold_key)),
        )
        .route(
            "/api/computers/{id}/clipboard",
            agent(get(actions::clipboard_get).post(actions::clipboard_set)),
        )
        .route(
            "/api/computers/{id}/cursor_position",
            agent(get(actions::cursor_position)),
        )
        .route("/api/computers/{id}/drag", agent(post(actions::drag)))
        .route("/api/computers/{id}/scroll", agent(post(actions::scroll)))
        .route("/api/computers/{id}/type", agent(post(actions::type_text)))
        .route("/api/computers/{id}/key", agent(post(actions::key)))
        .route("/api/computers/{id}/wait", agent(post(actions::wait)))
        .route(
            "/api/computers/{id}/screenshot",
            agent(get(actions::screenshot)),
        )
        .route("/api/computers/{id}/bash", agent(post(actions::bash)))
        .route("/api/computers/{id}/exec", agent(post(actions::exec)))
        // Section 5: RTMP streaming, the encoder run by the agent.
        .route(
            "/api/computers/{id}/stream/start",
            agent(post(streams::start)),
        )
        .route(
            "/api/computers/{id}/stream/stop",
            agent(post(streams::stop)),
        )
        .route(
            "/api/computers/{id}/stream/status",
            agent(get(streams::status)),
        )
        .route(
            "/api/stream-connections",
            get(streams::list).post(streams::create),
        )
        .route(
            "/api/stream-connections/{name}",
            axum::routing::delete(streams::delete),
        )
        .route(
            "/api/desktops/{instance_id}/proxy/{*endpoint}",
            agent(get(actions::desktop_proxy).post(actions::desktop_proxy)),
        )
        // Section 4: token (vnc_password) auth, not the API key (see middleware::is_public).
        .route("/desktops/{id}/ws/{kind}", get(desktop_ws::connect))
        // The path `orgo-vnc` builds (`wss://{hostname}/websockify`, hostname = HOST/desktops/ID).
        .route("/desktops/{id}/websockify", get(desktop_ws::websockify))
        .route("/api/storage/screenshots/{file}", get(storage::screenshot))
        // Section 7. Uploads stream past the JSON body limit (their own limit is
        // limits.max_upload_bytes, counted as they arrive).
        .route(
            "/api/files/upload",
            post(files::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/computers/{id}/files/upload",
            agent(post(files::upload_to_computer)).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/files", get(files::list))
        .route("/api/files/export", agent(post(files::export)))
        .route("/api/files/download", get(files::download))
        .route("/api/files/delete", axum::routing::delete(files::delete))
        // Signed URLs: no API key (see middleware::is_public).
        .route("/api/files/content/{id}", get(files::content))
        // Section 6: templates. The schema needs no key (see middleware::is_public).
        .route("/api/template-schema", get(templates::schema_doc))
        .route(
            "/api/templates",
            get(templates::list).post(templates::publish),
        )
        .route("/api/templates/validate", post(templates::validate))
        .route("/api/templates/global", get(templates::global))
        .route(
            "/api/templates/run",
            post(templates::run).delete(templates::run_stop),
        )
        .route("/api/templates/{ns}/{name}", get(templates::versions))
        .route(
            "/api/templates/{ns}/{name}/{version}",
            get(templates::get_one).delete(templates::delete),
        )
        .route(
            "/api/templates/{ns}/{name}/{version}/build",
            get(templates::build_get)
                .post(templates::build_start)
                .delete(templates::build_cancel),
        )
        .route(
            "/api/templates/{ns}/{name}/{version}/build/events",
            get(templates::build_events),
        )
        // The SDK's legacy Docker build calls.
        .route("/api/builds/create", post(actions::legacy_builds))
        .route("/api/builds/update", post(actions::legacy_builds))
        .route("/api/builds/latest", get(actions::legacy_builds))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method);

    api.layer(axum::middleware::from_fn_with_state(
        state.clone(),
        middleware::rate_limit,
    ))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        middleware::authenticate,
    ))
    // Bodies are limited by `JsonObject` with its own message; this only stops other readers.
    .layer(DefaultBodyLimit::max(
        state.config.limits.max_json_body_bytes,
    ))
    .layer(axum::middleware::from_fn(middleware::finish))
    .with_state(state)
}

async fn unknown_route() -> ApiError {
    ApiError::not_found("Not found: no such API route (see GET /api/openapi.json).")
        .with("code", "route_not_found")
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed on this route (see GET /api/openapi.json).",
    )
    .with("code", "method_not_allowed")
}
