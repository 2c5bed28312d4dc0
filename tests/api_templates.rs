//! Section 6 against a real daemon: the schema, validate, publish (immutable refs, force),
//! read, list, delete, the curated templates, builds (their record and event stream, failing
//! plainly while no VM builder exists), run's 409, and the launch checks of POST /computers.

mod common;

use common::{Daemon, Resp};
use serde_json::{json, Value};

const SUGAR: &str = "api_version: orgo.ai/v1\nname: web-app@1.0.0\ncpu: 2\nram: 4gb\ndisplay: 1280x800\nvars:\n  port: \"8000\"\nfiles:\n  /opt/site/index.html: hello\napps:\n  - name: site\n    services:\n      - name: http\n        run: python3 -m http.server ${var.port}\n        restart: always\n    health: {type: http, url: \"http://127.0.0.1:${var.port}/\"}\n";

const CANONICAL: &str = r#"{"api_version":"orgo.ai/v1","template":{"name":"web-app","version":"1.0.0"},
 "hardware":{"cpu":2,"ram_gb":4,"resolution":"1280x800x24"},"vars":{"port":"8000"},
 "files":[{"to":"/opt/site/index.html","inline":"hello"}],
 "apps":[{"name":"site","services":[{"name":"http","run":"python3 -m http.server ${var.port}","restart":"always"}],
          "health":{"type":"http","url":"http://127.0.0.1:${var.port}/"}}]}"#;

/// A request with `content_type` and a raw body.
fn send(d: &Daemon, method: &str, path: &str, content_type: &str, body: &str) -> Resp {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: deskd\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        d.key,
        body.len()
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    d.raw(&bytes)
}

fn yaml(d: &Daemon, path: &str, body: &str) -> Resp {
    send(d, "POST", path, "application/yaml", body)
}

#[test]
fn schema_is_public_json_schema_2020_12() {
    let d = Daemon::start();
    let r = d.send("GET", "/api/template-schema", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/schema+json"));
    let s = r.json();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(s["required"], json!(["api_version", "template"]));
    assert!(
        s["$defs"]["Hardware"]["properties"]["gpu"].is_object(),
        "{s}"
    );
}

#[test]
fn validate_answers_the_canonical_form_or_every_error() {
    let d = Daemon::start();
    let a = yaml(&d, "/api/templates/validate", SUGAR).expect(200);
    assert_eq!(a["ok"], true);
    let b = send(
        &d,
        "POST",
        "/api/templates/validate",
        "application/json",
        CANONICAL,
    )
    .expect(200);
    assert_eq!(a["template"], b["template"]);
    assert_eq!(a["digest"], b["digest"]);
    assert_eq!(a["template"]["hardware"]["resolution"], "1280x800x24");
    // No side effects.
    assert_eq!(d.get("/api/templates").expect(200)["templates"], json!([]));

    let bad = "api_version: orgo.ai/v1\ntemplate: {name: Bad_Name, version: one}\nhardware: {cpu: 3}\nfiles:\n  - {to: /proc/x, inline: a}\n  - {to: \"/opt/../etc/x\", inline: b}\n  - {to: \"/opt/${var.nope}\", inline: c}\n";
    let v = yaml(&d, "/api/templates/validate", bad).expect(422);
    assert_eq!(v["ok"], false);
    let errors: Vec<(String, String)> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
            (
                e["field"].as_str().unwrap().to_string(),
                e["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (field, code) in [
        ("template.name", "invalid_format"),
        ("template.version", "invalid_format"),
        ("hardware.cpu", "invalid_enum"),
        ("files[0].to", "reserved_path"),
        ("files[1].to", "invalid_format"),
        ("files[2].to", "unknown_ref"),
    ] {
        assert!(
            errors.contains(&(field.to_string(), code.to_string())),
            "{field} {code} not in {errors:?}"
        );
    }
    // Not a document at all: 400.
    let e = yaml(&d, "/api/templates/validate", "").error(400);
    assert!(e.contains("empty"), "{e}");
    assert!(yaml(&d, "/api/templates/validate", "a: [1, 2\n")
        .error(400)
        .contains("YAML"));
}

#[test]
fn publish_is_immutable_per_ref_unless_forced_and_lists_read_deletes() {
    let d = Daemon::start();
    let p = yaml(&d, "/api/templates", SUGAR).expect(201);
    assert_eq!(p["ref"], "default/web-app@1.0.0");
    let digest = p["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"));
    assert!(p["published"].is_string());
    // The same content (in its other form) again: unchanged.
    let again = send(&d, "POST", "/api/templates", "application/json", CANONICAL).expect(200);
    assert_eq!(again["digest"], digest.as_str());
    // Other content under the same ref: 409 unless force.
    let changed = SUGAR.replace("cpu: 2", "cpu: 4");
    let e = yaml(&d, "/api/templates", &changed).error(409);
    assert!(e.contains("force"), "{e}");
    let forced = yaml(&d, "/api/templates?force=true", &changed).expect(201);
    assert_ne!(forced["digest"], digest.as_str());
    assert_eq!(forced["replaced"], true);
    yaml(&d, "/api/templates", &SUGAR.replace("1.0.0", "1.1.0")).expect(201);
    // Invalid and unparseable.
    assert_eq!(
        yaml(&d, "/api/templates", "api_version: orgo.ai/v1\nname: x@1\n").expect(422)["ok"],
        false
    );
    yaml(&d, "/api/templates", "   ").expect(400);

    let list = d.get("/api/templates").expect(200);
    let refs: Vec<&str> = list["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ref"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["default/web-app@1.0.0", "default/web-app@1.1.0"]);
    let one = d.get("/api/templates/default/web-app/1.0.0").expect(200);
    assert_eq!(one["template"]["hardware"]["cpu"], 4);
    assert_eq!(one["build"]["status"], "not_built");
    let versions = d.get("/api/templates/default/web-app").expect(200);
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
    d.get("/api/templates/default/absent").expect(404);
    d.get("/api/templates/default/web-app/9.9.9").expect(404);

    assert_eq!(
        d.delete("/api/templates/default/web-app/1.1.0").expect(200)["deleted"],
        true
    );
    d.delete("/api/templates/default/web-app/1.1.0").expect(404);
    d.delete("/api/templates/system/desktop/1.0.0").expect(403);
}

#[test]
fn curated_templates_are_seeded() {
    let d = Daemon::start();
    let g = d.get("/api/templates/global").expect(200);
    let refs: Vec<&str> = g["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ref"].as_str().unwrap())
        .collect();
    assert!(refs.contains(&"system/desktop@1.0.0"), "{refs:?}");
    assert!(
        refs.iter()
            .any(|r| r.starts_with("system/desktop-minimal@")),
        "{refs:?}"
    );
    assert_eq!(
        d.get("/api/templates?namespace=system").expect(200)["templates"],
        g["templates"]
    );
    let one = d.get("/api/templates/system/desktop/1.0.0").expect(200);
    assert_eq!(one["template"]["api_version"], "orgo.ai/v1");
}

/// The events of a build as the SSE stream sends them (it closes once the build ended).
fn events(d: &Daemon, path: &str) -> Vec<Value> {
    let r = d.get(path);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|l| serde_json::from_str(l.trim()).unwrap())
        .collect()
}

#[test]
fn a_build_that_cannot_boot_its_vm_fails_plainly_and_leaves_no_build_computer() {
    let d = Daemon::start();
    yaml(&d, "/api/templates", SUGAR).expect(201);
    let base = "/api/templates/default/web-app/1.0.0/build";
    d.get(&format!("{base}/events")).expect(404);
    assert_eq!(d.get(base).expect(200)["status"], "not_built");
    let b = d.post(base, json!({})).expect(202);
    assert_eq!(b["status"], "building");
    assert!(b["digest"].as_str().unwrap().starts_with("sha256:"));
    let evs = events(&d, &format!("{base}/events"));
    assert_eq!(evs.first().unwrap()["phase"], "publish");
    let last = evs.last().unwrap();
    assert_eq!(last["level"], "error");
    for e in &evs {
        assert!(e["ts"].is_string() && e["line"].is_string(), "{e}");
    }
    // The daemon under test cannot run VMs (no hardware virtualization, or no guest image
    // installed in its fresh data directory): the build VM never comes up, and the build says so.
    let phases: Vec<&str> = evs.iter().filter_map(|e| e["phase"].as_str()).collect();
    assert!(
        phases.contains(&"compile") && phases.contains(&"boot"),
        "{phases:?}"
    );
    let status = d.get(base).expect(200);
    assert_eq!(status["status"], "failed");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("the build VM did not come up"),
        "{status}"
    );
    // The build computer is gone, and no build workspace is shown.
    assert_eq!(d.get("/api/computers").expect(200)["computers"], json!([]));
    assert_eq!(
        d.get("/api/workspaces").expect(200)["workspaces"],
        json!([])
    );
    let e = d
        .post("/api/workspaces", json!({"name": "deskd-template-builds"}))
        .expect(400);
    assert!(e["error"].as_str().unwrap().contains("reserved"), "{e}");
    // Nothing runs, so nothing to cancel; run needs a built template.
    assert_eq!(d.delete(base).expect(404)["status"], "idle");
    let e = d
        .post(
            "/api/templates/run",
            json!({"ref": "default/web-app@1.0.0"}),
        )
        .expect(409);
    assert_eq!(e["code"], "not_built");
    d.post("/api/templates/run", json!({"ref": "default/absent@1.0.0"}))
        .expect(404);
    d.post("/api/templates/run", json!({})).expect(400);
    d.delete("/api/templates/run").expect(400);
    d.delete("/api/templates/run?id=00000000-0000-0000-0000-000000000000")
        .expect(404);
    // auto_build on publish starts one too.
    let p = yaml(
        &d,
        "/api/templates?auto_build=true",
        &SUGAR.replace("1.0.0", "2.0.0"),
    )
    .expect(201);
    assert_eq!(p["auto_build"], "building");
}

#[test]
fn a_launch_refuses_what_this_host_cannot_give_and_missing_secrets() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    let gpu = "api_version: orgo.ai/v1\nname: ml@1.0.0\nhardware: {gpu: h100, region: iad}\n";
    // Valid as a document...
    yaml(&d, "/api/templates/validate", gpu).expect(200);
    yaml(&d, "/api/templates", gpu).expect(201);
    // ...but not here.
    let e = d
        .post(
            "/api/computers",
            json!({"workspace_id": ws, "name": "g", "template_ref": "default/ml@1.0.0"}),
        )
        .expect(400);
    assert!(e["error"].as_str().unwrap().contains("hardware.gpu"), "{e}");
    assert_eq!(e["fields"], json!(["hardware.gpu", "hardware.region"]));

    let secret = "api_version: orgo.ai/v1\nname: agent@1.0.0\nsecrets: [{name: api_key}]\nenv: {API_KEY: {secret: api_key}}\n";
    yaml(&d, "/api/templates", secret).expect(201);
    // The SDK's Computer(template="agent") sends image=agent: found, and its secret is needed.
    let e = d
        .post(
            "/api/computers",
            json!({"workspace_id": ws, "name": "s", "image": "agent"}),
        )
        .expect(400);
    assert!(e["error"].as_str().unwrap().contains("api_key"), "{e}");
    let c = d
        .post("/api/computers", json!({"workspace_id": ws, "name": "s", "image": "agent", "secrets": {"api_key": "sk-test"}}))
        .expect(201);
    assert_eq!(c["template_ref"], "default/agent@1.0.0");
    // A plain create still gets the default desktop.
    assert_eq!(
        d.computer(&ws, "plain")["template_ref"],
        "system/desktop@1.0.0"
    );
}

#[test]
fn a_launch_takes_the_templates_network_and_idle_suspend_unless_the_create_sets_them() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    let fenced = concat!(
        "api_version: orgo.ai/v1\nname: fenced@1.0.0\n",
        "hardware: {bandwidth_mbps: 10, auto_stop_minutes: 20}\n",
        "egress_policy: {mode: allow, rules: [\"pypi.org\", \"*.pythonhosted.org\", \"192.0.2.0/24\", \"198.51.100.7\"]}\n",
    );
    yaml(&d, "/api/templates", fenced).expect(201);
    let c = d
        .post(
            "/api/computers",
            json!({"workspace_id": ws, "name": "f", "template_ref": "default/fenced@1.0.0"}),
        )
        .expect(201);
    let id = c["id"].as_str().unwrap();
    assert_eq!(c["auto_stop_minutes"], 20, "{c}");
    assert_eq!(c["instance_details"]["bandwidth_limit_mbps"], 10, "{c}");
    let policy = d
        .get(&format!("/api/computers/{id}/egress-policy"))
        .expect(200);
    assert_eq!(
        policy,
        json!({"mode": "allow", "rules": [
            {"domain": "pypi.org"}, {"domain": "*.pythonhosted.org"},
            {"cidr": "192.0.2.0/24"}, {"ip": "198.51.100.7"}]}),
    );

    // What the create says wins.
    let c = d
        .post(
            "/api/computers",
            json!({"workspace_id": ws, "name": "g", "template_ref": "default/fenced@1.0.0",
                   "auto_stop_minutes": 0, "bandwidth_limit_mbps": 50,
                   "egress_policy": {"mode": "block", "rules": []}}),
        )
        .expect(201);
    let id = c["id"].as_str().unwrap();
    assert_eq!(c["auto_stop_minutes"], 0, "{c}");
    assert_eq!(c["instance_details"]["bandwidth_limit_mbps"], 50, "{c}");
    let policy = d
        .get(&format!("/api/computers/{id}/egress-policy"))
        .expect(200);
    assert_eq!(policy, json!({"mode": "block", "rules": []}));

    // A template without them leaves a computer unlimited and open.
    let c = d.computer(&ws, "plain");
    assert_eq!(
        c["instance_details"]["bandwidth_limit_mbps"],
        Value::Null,
        "{c}"
    );
    // More than the API allows is refused when the template is published.
    let e = yaml(
        &d,
        "/api/templates",
        "api_version: orgo.ai/v1\nname: fast@1.0.0\nhardware: {bandwidth_mbps: 200000}\n",
    )
    .expect(422);
    assert_eq!(e["errors"][0]["field"], "hardware.bandwidth_mbps", "{e}");
}

#[test]
fn scoped_keys_cannot_publish() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    let out = d.cli(&["keys", "create", "--name", "scoped", "--workspace", &ws]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("sk_live_"))
        .expect("a key")
        .to_string();
    let head = format!(
        "POST /api/templates HTTP/1.1\r\nHost: deskd\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\n\r\n{SUGAR}",
        SUGAR.len()
    );
    let r = d.raw(head.as_bytes());
    assert_eq!(r.expect(403)["code"], "workspace_scope_mismatch");
}
