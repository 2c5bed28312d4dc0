//! A template computer's `secrets` (ours) against a real `deskd serve` on a temporary socket:
//! every bad map is a 400 naming its field, a good one is kept without ever showing up in an
//! answer (create, GET, list, the launch log) or in the daemon's log output, `POST
//! /templates/run` takes the same checks, and a runtime file from a source deskd cannot fetch at
//! launch is refused. No VM runs here (no guest image in the test's data directory): what the
//! guest gets at each start is tested in-process with a stand-in VM and agent
//! (`src/api/launch_tests.rs`).

mod common;

use common::{Daemon, Resp};
use serde_json::{json, Value};

const SECRET: &str = "sk-proc-9876543210-'quoted' $PATH";

const TEMPLATE: &str = "api_version: orgo.ai/v1\nname: keyed@1.0.0\nenv: {OPENAI_API_KEY: {secret: api-key}}\nsecrets: [{name: api-key}, {name: extra, optional: true}]\nfiles:\n  - {to: \"~/.config/k\", from: \"secret://api-key\", when: runtime}\nhooks: {on_resume: \"echo resumed\"}\n";

fn yaml(d: &Daemon, path: &str, body: &str) -> Resp {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: deskd\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\n\r\n",
        d.key,
        body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    d.raw(&bytes)
}

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn secrets_are_checked_by_field_and_never_answered_or_logged() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    yaml(&d, "/api/templates", TEMPLATE).expect(201);
    let create = |secrets: Value| {
        d.post(
            "/api/computers",
            json!({"workspace_id": ws, "name": "c", "template_ref": "default/keyed@1.0.0", "secrets": secrets}),
        )
    };
    for (secrets, field, says) in [
        (json!({}), "secrets.api-key", "needs the secret api-key"),
        (
            json!({"extra": "x"}),
            "secrets.api-key",
            "needs the secret api-key",
        ),
        (
            json!({"api-key": "v", "nope": "x"}),
            "secrets.nope",
            "declares no secret named nope",
        ),
        (
            json!({"api-key": true}),
            "secrets.api-key",
            "must be a string, not a boolean",
        ),
        (json!("api-key=v"), "secrets", "must be an object"),
        (json!({"Api-Key": "v"}), "secrets.Api-Key", "a-z, 0-9"),
        (
            json!({"api-key": "y".repeat(65 * 1024)}),
            "secrets.api-key",
            "at most 65536 bytes",
        ),
    ] {
        let v = create(secrets.clone()).expect(400);
        assert_eq!(v["fields"][0], field, "{secrets}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(says),
            "{secrets}: {v}"
        );
        assert!(!text(&create(secrets.clone())).contains("yyyy"));
    }
    let total: serde_json::Map<String, Value> = (0..5)
        .map(|i| (format!("s{i}"), json!("z".repeat(60 * 1024))))
        .collect();
    let v = create(Value::Object(total)).expect(400);
    assert_eq!(v["fields"], json!(["secrets"]));
    assert!(v["error"].as_str().unwrap().contains("262144"), "{v}");

    // Accepted: kept, and in no answer.
    let r = create(json!({"api-key": SECRET}));
    assert!(!text(&r).contains(SECRET), "{}", text(&r));
    let c = r.expect(201);
    let id = c["id"].as_str().unwrap();
    let got = d.get(&format!("/api/computers/{id}"));
    assert!(!text(&got).contains(SECRET));
    got.expect(200);
    let list = d.get("/api/computers");
    assert!(!text(&list).contains(SECRET));
    let log = d.get(&format!("/api/computers/{id}/launch-log"));
    assert!(!text(&log).contains(SECRET));
    assert!(log.expect(200)["events"].is_array());
    let ws_view = d.get(&format!("/api/workspaces/{ws}"));
    assert!(!text(&ws_view).contains(SECRET));

    // The run of a test computer checks the same (here it is not built: 409 comes first, so a
    // built-looking answer is not needed to see that its body is read).
    let r = d.post("/api/templates/run", json!({"ref": "default/keyed@1.0.0"}));
    assert_eq!(r.status, 409, "{}", text(&r));

    // A runtime file deskd cannot fetch at launch: 400 naming it.
    let far = "api_version: orgo.ai/v1\nname: far@1.0.0\nfiles:\n  - {to: /opt/x, from: \"https://example.com/x\", when: runtime}\n";
    yaml(&d, "/api/templates", far).expect(201);
    let v = d
        .post(
            "/api/computers",
            json!({"workspace_id": ws, "name": "far", "template_ref": "default/far@1.0.0"}),
        )
        .expect(400);
    assert_eq!(v["fields"], json!(["files[0].from"]), "{v}");

    // Nothing the daemon printed holds the value (its start, failing here, included).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let logged = d.log_text();
    assert!(
        logged.contains("launching"),
        "the log is captured: {logged}"
    );
    assert!(
        !logged.contains("sk-proc-9876543210"),
        "the daemon logged a secret"
    );
}
