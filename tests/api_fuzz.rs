//! Random and malformed JSON thrown at every endpoint of a real daemon: never a 5xx caused by the
//! input, never a panic, always the section 0 error body. (The only 5xx allowed is the honest 503
//! `cannot_start` of a start on a host that cannot run VMs, which does not depend on the input.)

mod common;

use common::{Daemon, Resp};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// Field names the handlers read, so random objects often reach the validators.
const FIELDS: &[&str] = &[
    "name",
    "workspace_id",
    "project_id",
    "os",
    "cpu",
    "ram",
    "gpu",
    "disk_size_gb",
    "resolution",
    "auto_stop_minutes",
    "template_ref",
    "image",
    "status",
    "icon_url",
    "vcpus",
    "mem_gb",
    "bandwidth_limit_mbps",
    "x",
    "y",
    "command",
    "text",
    "key",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![Just(0.5), Just(1.0), Just(4.0), Just(-1.0), Just(1e300)]
            .prop_map(|f| json!(f)),
        ".{0,80}".prop_map(Value::String),
        prop_oneof![
            Just("linux"),
            Just("windows"),
            Just("none"),
            Just("1280x720x24"),
            Just("0x0x0"),
            Just("system/desktop@1.0.0"),
            Just("active"),
            Just("00000000-0000-4000-8000-000000000000"),
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(FIELDS).prop_map(str::to_string),
                    ".{0,12}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request body: JSON (usually an object), or bytes that are almost JSON, or noise.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::btree_map(prop::sample::select(FIELDS), json_value(), 0..6)
            .prop_map(|m| serde_json::to_vec(&m.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<serde_json::Map<_, _>>()).unwrap()),
        2 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => (json_value(), any::<prop::sample::Index>()).prop_map(|(v, i)| {
            let s = serde_json::to_vec(&v).unwrap();
            s[..i.index(s.len() + 1)].to_vec()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..200),
        1 => prop::sample::select(vec![
            "{", "}", "[", "{\"name\":}", "{\"name\" \"x\"}", "nul", "\u{feff}{}", "{\"a\":1,}",
            "{\"name\":\"\\ud800\"}", "1e999999", "{\"cpu\":1e999}", "\"str\"", "[[[[[[[[[[[[[[[[[[[[",
        ]).prop_map(|s| s.as_bytes().to_vec()),
    ]
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(vec![
        Some("application/json"),
        Some("application/json"),
        Some("application/json; charset=utf-8"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("bad/type"),
        None,
    ])
}

struct Target {
    method: String,
    path: String,
    lifecycle: bool,
}

fn targets(d: &Daemon) -> Vec<Target> {
    let ws = d.workspace("fuzz");
    let c = d.computer(&ws, "fuzzed");
    let cid = c["id"].as_str().unwrap().to_string();
    let inst = c["instance_id"].as_str().unwrap().to_string();
    deskd::api::openapi::OPERATIONS
        .iter()
        // DELETE takes no body and would remove the fixtures; its tests are elsewhere.
        .filter(|o| o.method != "delete")
        .map(|o| {
            let path = if o.path.starts_with("/api/computers/") {
                o.path.replace("{id}", &cid)
            } else {
                o.path.replace("{id}", &ws)
            };
            let path = path
                .replace("{instance_id}", &inst)
                .replace("{endpoint}", "health");
            let lifecycle = ["/start", "/restart", "/ensure-running"]
                .iter()
                .any(|s| path.ends_with(s));
            Target {
                method: o.method.to_uppercase(),
                path,
                lifecycle,
            }
        })
        .collect()
}

fn send(d: &Daemon, t: &Target, content_type: Option<&str>, body: &[u8]) -> Resp {
    let mut req = format!(
        "{} {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\n",
        t.method, t.path, d.key
    )
    .into_bytes();
    if let Some(ct) = content_type {
        req.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    req.extend_from_slice(body);
    d.raw(&req)
}

fn check(t: &Target, r: &Resp, input: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(input);
    // A success in another format on purpose (the Prometheus text of /api/metrics) is fine;
    // every error is JSON.
    let json = r.header("content-type").is_some_and(|c| c.contains("json"));
    if r.status < 400 && !json {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| {
        format!(
            "{} {} answered {} with non-JSON ({e}) for {shown:?}",
            t.method, t.path, r.status
        )
    })?;
    if r.status >= 400 && !(v["error"].is_string() && v["request_id"].is_string()) {
        return Err(format!(
            "{} {}: error body without error/request_id: {v}",
            t.method, t.path
        ));
    }
    let honest_503 = r.status == 503 && t.lifecycle && v["code"] == "cannot_start";
    if r.status >= 500 && !honest_503 {
        return Err(format!(
            "{} {} answered {} for {shown:?}: {v}",
            t.method, t.path, r.status
        ));
    }
    Ok(())
}

#[test]
fn malformed_bodies_at_every_endpoint() {
    let mut d = Daemon::start();
    let targets = targets(&d);
    let fixed: Vec<&[u8]> = vec![
        b"",
        b"{",
        b"null",
        b"[]",
        b"\"x\"",
        b"42",
        b"{\"name\":null}",
        b"{\"name\":[]}",
        b"\xff\xfe\x00",
        b"{\"workspace_id\":{}}",
        b"{\"cpu\":-0.0}",
        b"{\"ram\":1e400}",
    ];
    for t in &targets {
        for body in &fixed {
            for ct in [Some("application/json"), Some("text/html"), None] {
                let r = send(&d, t, ct, body);
                if let Err(e) = check(t, &r, body) {
                    panic!("{e}");
                }
            }
        }
    }
    assert!(d.alive(), "the daemon died");
}

#[test]
fn random_json_at_every_endpoint() {
    let mut d = Daemon::start();
    let targets = targets(&d);
    let n = targets.len();
    let cases: u32 = std::env::var("DESKD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (0..n, content_type(), body());
    let result = runner.run(&strategy, |(i, ct, body)| {
        let t = &targets[i];
        let r = send(&d, t, ct, &body);
        check(t, &r, &body).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}\ndaemon log tail: {}", tail(&d.log_text()));
    }
    assert!(d.alive(), "the daemon died");
    assert!(
        !d.log_text().contains("panicked"),
        "a handler panicked: {}",
        tail(&d.log_text())
    );
}

fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(20)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}
