//! Fuzz target: the API's JSON bodies, in process. Any bytes, under any of a few content types,
//! sent to every route of `openapi::OPERATIONS` (DELETE excepted: it takes no body and would
//! remove the fixtures) through the real router and middleware: never a panic, never a 5xx the
//! input caused, every error the section 0 JSON body. (`tests/api_fuzz.rs` does the same against
//! a daemon process with structured JSON; this one is fast enough for byte-level fuzzing.)

use std::panic::AssertUnwindSafe;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::Value;
use tower_service::Service;

use super::testing::test_api;
use crate::config::Config;
use crate::vmm::devices::virtio::fuzzing::{self, Input};

const CONTENT_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("application/merge-patch+json"),
    Some("text/plain"),
    None,
];

/// Well-formed JSON with the fields the handlers read, so that inputs reach the validators.
const SEEDS: &[&str] = &[
    r#"{"name":"x","workspace_id":"W","cpu":2,"ram":4,"os":"linux"}"#,
    r#"{"auto_stop_minutes":5}"#,
    r#"{"x":1,"y":2,"button":"left","double":true}"#,
    r#"{"command":"ls","timeout":1}"#,
    r#"{"text":"hi","delay_ms":1}"#,
    r#"{"project_id":"W"}"#,
    r#"{"cpu":1,"ram":2,"disk_size_gb":8}"#,
    r#"{"default":"deny","allow":["example.org"]}"#,
    r#"{"path":"/home/user/a"}"#,
];

/// Routes left out (by the end of their path).
const SKIPPED: &[&str] = &[
    "/events",
    "/start",
    "/restart",
    "/ensure-running",
    "/suspend",
    "/run",
    "/build",
];

#[test]
fn fuzz_api_json_bodies() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let api = rt.block_on(async { test_api(Config::default()) });
    let c = &api.computer;
    api.state
        .store
        .set_computer_status(&c.id, crate::store::ComputerStatus::Stopped, None)
        .expect("stopped fixture");
    let routes: Vec<(String, String)> = super::openapi::OPERATIONS
        .iter()
        .filter(|o| o.method != "delete")
        // Event streams never end, and VM starts are the lifecycle tests' business (here they
        // would leave the fixture booting, which actions wait for).
        .filter(|o| !SKIPPED.iter().any(|s| o.path.ends_with(s)))
        .map(|o| {
            let path = if o.path.starts_with("/api/computers/") {
                o.path.replace("{id}", &c.id)
            } else {
                o.path.replace("{id}", &c.workspace_id)
            };
            let path = path
                .replace("{instance_id}", &c.instance_id)
                .replace("{endpoint}", "health")
                .replace("{ns}", "system")
                .replace("{name}", "desktop")
                .replace("{version}", "1.0.0")
                .replace("{file}", "none.png")
                .replace("{kind}", "terminal");
            (o.method.to_uppercase(), path)
        })
        .collect();
    // The router and the runtime hold locks and cells; an input that panics fails the target,
    // so nothing observes them half-changed afterwards.
    let app = AssertUnwindSafe(super::router(api.state.clone()));
    let rt = AssertUnwindSafe(rt);
    let ws = c.workspace_id.clone();
    let key = api.key.clone();
    let reach = fuzzing::Reach::default();
    bolero::check!()
        .with_test_time(fuzzing::TEST_TIME)
        .for_each(|data: &[u8]| {
            reach.input();
            let mut input = Input::new(data);
            let (method, path) = &routes[usize::from(input.u16()) % routes.len()];
            let content_type = CONTENT_TYPES[usize::from(input.u8()) % CONTENT_TYPES.len()];
            let body: Vec<u8> = match input.u8() % 4 {
                // A seed with some bytes changed.
                0 => {
                    let seed = SEEDS[usize::from(input.u8()) % SEEDS.len()].replace('W', &ws);
                    let mut b = seed.into_bytes();
                    for _ in 0..(input.u8() % 4) {
                        let at = usize::from(input.u8()) % b.len();
                        b[at] = input.u8();
                    }
                    b
                }
                _ => input.rest().to_vec(),
            };
            let mut req = Request::builder()
                .method(method.as_str())
                .uri(path.as_str())
                .header("authorization", format!("Bearer {key}"));
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let req = req.body(Body::from(body.clone())).expect("request");
            let mut app = (*app).clone();
            let (status, answer) = rt.block_on(async move {
                let resp = app.call(req).await.expect("the router never fails");
                let status = resp.status().as_u16();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                (status, bytes)
            });
            let shown = String::from_utf8_lossy(&body);
            if status < 300 {
                reach.deep();
            }
            if status >= 400 {
                let v: Value = serde_json::from_slice(&answer).unwrap_or_else(|e| {
                    panic!("{method} {path} answered {status} with non-JSON ({e}) for {shown:?}")
                });
                assert!(
                    v["error"].is_string() && v["request_id"].is_string(),
                    "{method} {path}: error body without error/request_id: {v}"
                );
                // A start on a host that cannot run VMs is the one honest 5xx.
                let honest = status == 503 && v["code"] == "cannot_start";
                assert!(
                    status < 500 || honest,
                    "{method} {path} answered {status} for {shown:?}: {v}"
                );
            }
        });
    reach.report("fuzz_api_json_bodies", "requests accepted");
}
