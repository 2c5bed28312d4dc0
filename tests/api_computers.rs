//! Section 2 against a real daemon: computers, their lifecycle as far as this host allows,
//! quotas, rate limits, request errors, and state surviving daemon restarts.

mod common;

use common::Daemon;
use serde_json::{json, Value};

fn kvm_capable() -> bool {
    deskd::vmm::host::cpu_has_hardware_virtualization()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn create_answers_201_with_every_field_and_a_truthful_status() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    let c = d
        .post(
            "/api/computers",
            json!({"project_id": ws, "name": "box", "cpu": 0.5, "ram": 2, "os": "linux", "gpu": "none",
                   "resolution": "1920x1080x24", "auto_stop_minutes": 15, "disk_size_gb": 10}),
        )
        .expect(201);
    for field in [
        "id",
        "name",
        "workspace_id",
        "project_name",
        "os",
        "ram",
        "cpu",
        "gpu",
        "disk_size_gb",
        "resolution",
        "status",
        "url",
        "created_at",
        "auto_stop_minutes",
        "instance_id",
        "fly_instance_id",
        "hostname",
        "connection_url",
        "vnc_password",
        "template_ref",
        "instance_details",
    ] {
        assert!(c.get(field).is_some(), "computer lacks {field}: {c}");
    }
    assert_eq!(c["cpu"], 1, "0.5 is taken as 1");
    assert_eq!(c["ram"], 2);
    assert_eq!(c["workspace_id"], ws.as_str());
    assert_eq!(c["project_name"], "w");
    assert_eq!(c["instance_details"]["resolution"], "1920x1080x24");
    assert_eq!(c["fly_instance_id"], c["instance_id"]);
    assert_eq!(c["instance_id"].as_str().unwrap().len(), 8);
    // As the service shapes them, from the public URL (default http://localhost): viewers append
    // `/ws/websockify` to connection_url, and `orgo-vnc` opens `wss://{hostname}/websockify`.
    let inst = c["instance_id"].as_str().unwrap();
    assert_eq!(
        c["connection_url"],
        format!("http://localhost/desktops/{inst}")
    );
    assert_eq!(c["hostname"], format!("localhost/desktops/{inst}"));
    assert_eq!(c["template_ref"], "system/desktop@1.0.0");
    // Never `running` without a VM; on a host without vmx/svm it is `error` with the reason.
    assert_ne!(c["status"], "running");
    if !kvm_capable() {
        assert_eq!(c["status"], "error");
        let reason = c["status_reason"].as_str().unwrap();
        assert!(
            reason.contains("hardware virtualization") && reason.contains("tests/rig/serve"),
            "{reason}"
        );
        assert_eq!(c["instance_details"]["error"], c["status_reason"]);
    }
    // Defaults.
    let c2 = d.computer(&ws, "defaults");
    assert_eq!((c2["cpu"].as_i64(), c2["ram"].as_i64()), (Some(1), Some(4)));
    assert_eq!(c2["resolution"], "1280x720x24");
    assert_eq!(c2["disk_size_gb"], 8);
    assert!(c2["auto_stop_minutes"].is_null());
    // Read, list, delete.
    assert_eq!(
        d.get(&format!("/api/computers/{}", id(&c))).expect(200)["name"],
        "box"
    );
    let list = d
        .get(&format!("/api/computers?workspace_id={ws}"))
        .expect(200);
    assert_eq!(list["computers"].as_array().unwrap().len(), 2);
    let list = d
        .get(&format!("/api/computers?project_id={ws}"))
        .expect(200);
    assert_eq!(list["computers"].as_array().unwrap().len(), 2);
    d.delete(&format!("/api/computers/{}", id(&c))).expect(200);
    d.get(&format!("/api/computers/{}", id(&c))).expect(404);
    d.delete(&format!("/api/computers/{}", id(&c))).expect(404);
    d.get("/api/computers/not-a-uuid").expect(404);
    // Names are unique per workspace.
    assert!(d
        .post(
            "/api/computers",
            json!({"workspace_id": ws, "name": "defaults"})
        )
        .error(409)
        .contains("already exists"));
}

#[test]
fn validation_messages_per_field() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    let with = |extra: Value| {
        let mut b = json!({"workspace_id": ws, "name": "n"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases = [
        (json!({"name": "n"}), "workspace_id (or project_id) is required."),
        (json!({"workspace_id": "nope", "name": "n"}), "workspace_id must be a UUID."),
        (json!({"workspace_id": 5, "name": "n"}), "workspace_id must be a UUID string, not a number."),
        (
            json!({"workspace_id": ws, "project_id": "00000000-0000-4000-8000-000000000000", "name": "n"}),
            "workspace_id and project_id name different workspaces; send one of them.",
        ),
        (json!({"workspace_id": ws}), "name is required."),
        (with(json!({"name": ""})), "name must be 1-64 characters long (got 0)."),
        (with(json!({"os": "windows"})), "os \"windows\" is not available: deskd runs Linux desktops only; use \"linux\"."),
        (with(json!({"os": "mac"})), "os must be \"linux\"."),
        (with(json!({"cpu": 3})), "cpu must be one of 1, 2, 4, 8, 16 (vCPUs; 0.5 is taken as 1)."),
        (with(json!({"cpu": "2"})), "cpu must be one of 1, 2, 4, 8, 16 (vCPUs; 0.5 is taken as 1). Got a string."),
        (with(json!({"ram": 3})), "ram must be one of 1, 2, 4, 8, 16, 32, 64 (GB)."),
        (with(json!({"gpu": "a10"})), "gpu \"a10\" is not available: this host has no GPUs to give computers; use \"none\"."),
        (with(json!({"gpu": false})), "gpu must be the string \"none\", not a boolean."),
        (with(json!({"disk_size_gb": 4})), "disk_size_gb must be a whole number from 8 to 1000000."),
        (with(json!({"disk_size_gb": "big"})), "disk_size_gb must be a whole number, not a string."),
        (
            with(json!({"resolution": "1280x720x8"})),
            "resolution must look like WIDTHxHEIGHTxDEPTH, e.g. 1280x720x24 (width 640-3840, height 480-2160, depth 16 or 24).",
        ),
        (with(json!({"auto_stop_minutes": -1})), "auto_stop_minutes must be a whole number from 0 to 525600."),
        (
            with(json!({"template_ref": "desktop"})),
            "template_ref must look like namespace/name@version, e.g. system/desktop@1.0.0.",
        ),
        (with(json!({"image": 7})), "image must be a string, not a number."),
    ];
    for (body, message) in cases {
        assert_eq!(
            d.post("/api/computers", body.clone()).error(400),
            message,
            "{body}"
        );
    }
    d.post(
        "/api/computers",
        json!({"workspace_id": "00000000-0000-4000-8000-000000000000", "name": "n"}),
    )
    .expect(404);
    // Nothing was created by any of those.
    assert_eq!(d.get("/api/computers").expect(200)["computers"], json!([]));
    // The legacy `image` is accepted (the SDK sends a template name there).
    let c = d
        .post("/api/computers", with(json!({"image": "my-template"})))
        .expect(201);
    assert_eq!(c["image"], "my-template");
    assert_eq!(c["template_ref"], "system/desktop@1.0.0");
}

#[test]
fn lifecycle_routes_answer_truthfully() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    let c = d.computer(&ws, "c");
    let cid = id(&c);
    let path = |p: &str| format!("/api/computers/{cid}{p}");
    let pw1 = d.get(&path("/vnc-password")).expect(200)["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(pw1, c["vnc_password"].as_str().unwrap());

    // Stop: an `error` computer becomes `stopped`; stopping again is a 409.
    let s = d.post(&path("/stop"), json!({})).expect(200);
    assert_eq!(s["success"], true);
    assert_eq!(s["status"], "stopped");
    assert!(d
        .post(&path("/stop"), json!({}))
        .error(409)
        .contains("already stopped"));
    // An empty body with no content type is fine (the SDK's bodyless POSTs).
    assert_eq!(
        d.send("POST", &path("/stop"), Some(&d.key), None).status,
        409
    );

    if !kvm_capable() {
        for route in ["/start", "/restart", "/ensure-running"] {
            let v = d.post(&path(route), json!({})).expect(503);
            let m = v["error"].as_str().unwrap();
            assert!(
                m.contains("could not be started") && m.contains("tests/rig/serve"),
                "{route}: {m}"
            );
            assert_eq!(v["code"], "cannot_start");
            let now = d.get(&path("")).expect(200);
            assert_eq!(now["status"], "error");
        }
        // Each start rotated the password.
        let pw2 = d.get(&path("/vnc-password")).expect(200)["password"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(pw1, pw2);
    }

    // Suspend needs a running computer; the answer says what it is instead.
    let m = d.post(&path("/suspend"), json!({})).error(409);
    assert!(
        m.contains("Only a running computer can be suspended") && m.contains(" is "),
        "{m}"
    );
    assert!(d.get(&path("")).expect(200)["instance_details"]["saved_vm_bytes"].is_null());

    // Actions need a running computer.
    for (method, action) in [
        ("POST", "/click"),
        ("POST", "/bash"),
        ("GET", "/screenshot"),
        ("POST", "/move"),
    ] {
        let r = d.send(
            method,
            &path(action),
            Some(&d.key),
            Some(r#"{"x":1,"y":2,"command":"ls"}"#),
        );
        assert_eq!(r.error(400), "Desktop instance not available", "{action}");
    }
    let inst = c["instance_id"].as_str().unwrap();
    let r = d.post(&format!("/api/desktops/{inst}/proxy/health"), json!({}));
    assert_eq!(r.error(400), "Desktop instance not available");

    // Resize: validated first; a computer that does not run keeps it for its next start
    // (tests/api_resize.rs has the details).
    assert!(d
        .patch(&path("/resize"), json!({}))
        .error(400)
        .starts_with("Nothing to resize"));
    assert_eq!(
        d.patch(&path("/resize"), json!({"vcpus": 3})).error(400),
        "vcpus must be one of 1, 2, 4, 8, 16."
    );
    assert!(d
        .patch(&path("/resize"), json!({"disk_size_gb": 4}))
        .error(400)
        .contains("can only grow"));
    let stored = d.patch(&path("/resize"), json!({"vcpus": 2})).expect(200);
    assert_eq!(stored["takes_effect"], "next_start", "{stored}");
    assert_eq!(d.get(&path("")).expect(200)["cpu"], 2);

    // Auto-stop.
    assert_eq!(
        d.get(&path("/auto-stop")).expect(200),
        json!({"auto_stop_minutes": 0, "configurable": true})
    );
    assert_eq!(
        d.patch(&path("/auto-stop"), json!({"auto_stop_minutes": 30}))
            .expect(200),
        json!({"auto_stop_minutes": 30, "configurable": true})
    );
    assert_eq!(
        d.get(&path("/auto-stop")).expect(200)["auto_stop_minutes"],
        30
    );
    assert_eq!(d.get(&path("")).expect(200)["auto_stop_minutes"], 30);
    assert!(d
        .patch(&path("/auto-stop"), json!({}))
        .error(400)
        .starts_with("auto_stop_minutes is required"));
    assert!(d
        .patch(&path("/auto-stop"), json!({"auto_stop_minutes": "x"}))
        .error(400)
        .contains("whole number"));

    // Events catalogue.
    let ev = d.get(&path("/events")).expect(200);
    let types: Vec<&str> = ev["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"window_focus") && types.contains(&"file_change") && types.len() == 12,
        "{types:?}"
    );
    // The data shapes are the agent's: window ids are X window numbers.
    assert_eq!(ev["event_types"][0]["data"]["window_id"], "integer");
    assert_eq!(
        ev["event_types"][4]["data"]["action"],
        "created|modified|deleted"
    );
    assert_eq!(ev["max_buffered_per_client"], 256);
}

#[test]
fn move_and_clone() {
    let d = Daemon::start();
    let a = d.workspace("a");
    let b = d.workspace("b");
    let c = d.computer(&a, "pc");
    let cid = id(&c);
    let mv = format!("/api/computers/{cid}/move");
    assert_eq!(
        d.patch(&mv, json!({})).error(400),
        "project_id (or workspace_id) is required."
    );
    assert!(d
        .patch(&mv, json!({"project_id": a}))
        .error(400)
        .contains("already in workspace"));
    d.patch(
        &mv,
        json!({"project_id": "00000000-0000-4000-8000-000000000000"}),
    )
    .expect(404);
    let r = d.patch(&mv, json!({"project_id": b})).expect(200);
    assert_eq!(
        r,
        json!({"success": true, "project_id": b, "workspace_id": b})
    );
    assert_eq!(
        d.get(&format!("/api/computers/{cid}")).expect(200)["workspace_id"],
        b.as_str()
    );
    assert_eq!(
        d.patch(&mv, json!({"workspace_id": a})).expect(200)["project_id"],
        a.as_str()
    );
    // Name clash in the target workspace: 409.
    d.computer(&b, "pc");
    assert!(d
        .patch(&mv, json!({"project_id": b}))
        .error(409)
        .contains("already exists"));

    // Clone: new identity, numbered names, same hardware.
    let first = d
        .post(&format!("/api/computers/{cid}/clone"), json!({}))
        .expect(201);
    assert_eq!(first["name"], "pc (clone)");
    assert_ne!(first["id"], c["id"]);
    assert_ne!(first["status"], "running");
    let second = d
        .post(&format!("/api/computers/{cid}/clone"), json!({}))
        .expect(201);
    assert_eq!(second["name"], "pc (clone 2)");
    let got = d.get(&format!("/api/computers/{}", id(&first))).expect(200);
    assert_eq!(got["workspace_id"], a.as_str());
    assert_eq!(got["ram"], c["ram"]);
    assert_ne!(got["instance_id"], c["instance_id"]);
}

#[test]
fn request_errors_are_json() {
    let d = Daemon::start_with_config(
        "[rate_limit]\nrequests_per_second = 100000.0\nburst = 100000\n[limits]\nmax_json_body_bytes = 2048\n",
    );
    // Unknown route, wrong verb.
    assert_eq!(d.get("/api/nope").expect(404)["code"], "route_not_found");
    assert_eq!(d.get("/").expect(404)["code"], "route_not_found");
    let r = d.send("PUT", "/api/workspaces", Some(&d.key), None);
    assert_eq!(r.expect(405)["code"], "method_not_allowed");
    assert_eq!(
        d.send("DELETE", "/api/computers", Some(&d.key), None)
            .status,
        405
    );
    // Bad JSON, non-object JSON, wrong content type.
    assert!(d
        .send("POST", "/api/workspaces", Some(&d.key), Some("{\"name\":"))
        .error(400)
        .starts_with("Request body is not valid JSON"));
    assert_eq!(
        d.send("POST", "/api/workspaces", Some(&d.key), Some("[1]"))
            .error(400),
        "Request body must be a JSON object, not an array."
    );
    let raw = format!(
        "POST /api/workspaces HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\n{{\"name\":\"x\"}}",
        d.key
    );
    assert!(d
        .raw(raw.as_bytes())
        .error(400)
        .starts_with("Content-Type must be application/json"));
    let raw = format!(
        "POST /api/workspaces HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Length: 12\r\n\r\n{{\"name\":\"x\"}}",
        d.key
    );
    assert!(d
        .raw(raw.as_bytes())
        .error(400)
        .contains("header is missing"));
    // Oversized body: 413 naming the limit (declared length and chunked body).
    let big = json!({"name": "x".repeat(5000)}).to_string();
    assert!(d
        .send("POST", "/api/workspaces", Some(&d.key), Some(&big))
        .error(413)
        .contains("2048 bytes"));
    let chunk = "a".repeat(4000);
    let raw = format!(
        "POST /api/workspaces HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        d.key,
        chunk.len()
    );
    d.raw(raw.as_bytes()).expect(413);
}

#[test]
fn quotas_answer_403_naming_the_limit() {
    let d = Daemon::start_with_config(
        "[quotas]\nmax_computers = 2\nmax_disk_gb_per_computer = 20\nvcpu_commit_ratio = 1000.0\n[rate_limit]\nrequests_per_second = 100000.0\nburst = 100000\n",
    );
    let ws = d.workspace("q");
    let v = d
        .post(
            "/api/computers",
            json!({"workspace_id": ws, "name": "big", "disk_size_gb": 21}),
        )
        .expect(403);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("max_disk_gb_per_computer"),
        "{v}"
    );
    assert_eq!(v["code"], "quota_exceeded");
    d.computer(&ws, "one");
    d.computer(&ws, "two");
    let m = d
        .post(
            "/api/computers",
            json!({"workspace_id": ws, "name": "three"}),
        )
        .error(403);
    assert!(m.contains("max_computers is 2"), "{m}");
    // Clone counts too.
    let any = d.get("/api/computers").expect(200)["computers"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(d
        .post(&format!("/api/computers/{any}/clone"), json!({}))
        .error(403)
        .contains("max_computers"));
    // RAM commitment: 64 GB more than the host has times the default ratio 1.5 on this machine.
    let d2 = Daemon::start_with_config("[quotas]\nram_commit_ratio = 0.1\n");
    let ws2 = d2.workspace("r");
    let m = d2
        .post(
            "/api/computers",
            json!({"workspace_id": ws2, "name": "r", "ram": 64}),
        )
        .error(403);
    assert!(m.contains("ram_commit_ratio"), "{m}");
}

#[test]
fn bursts_are_rate_limited_per_key_with_retry_after() {
    let d = Daemon::start_with_config("[rate_limit]\nrequests_per_second = 0.5\nburst = 5\n");
    let statuses: Vec<u16> = (0..8).map(|_| d.get("/api/workspaces").status).collect();
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|&s| s == 429), "{statuses:?}");
    let r = d.get("/api/workspaces");
    let m = r.error(429);
    assert!(m.contains("Rate limit exceeded"), "{m}");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Another key has its own bucket.
    let out = d.cli(&["keys", "create"]);
    let other = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        d.send("GET", "/api/workspaces", Some(&other), None).status,
        200
    );
}

#[test]
fn restarts_keep_every_record() {
    let mut d = Daemon::start();
    let ws = d.workspace("keep");
    let c = d.computer(&ws, "c1");
    d.patch(
        &format!("/api/computers/{}/auto-stop", id(&c)),
        json!({"auto_stop_minutes": 7}),
    )
    .expect(200);
    let before_ws = d.get("/api/workspaces").expect(200);
    let before_c = d.get(&format!("/api/computers/{}", id(&c))).expect(200);
    for hard in [false, true] {
        d.restart(hard);
        assert_eq!(
            d.get("/api/workspaces").expect(200),
            before_ws,
            "after restart (hard={hard})"
        );
        assert_eq!(
            d.get(&format!("/api/computers/{}", id(&c))).expect(200),
            before_c
        );
    }
    // The first key was not replaced, and the socket was reused.
    assert_eq!(d.log_text().matches("created the first API key").count(), 1);
}

#[test]
fn egress_policy_at_create_read_replace_and_refused_with_the_rule_named() {
    let mut d = Daemon::start();
    let ws = d.workspace("w");
    let policy = json!({"mode": "allow", "rules": [
        {"domain": "*.Example.com"}, {"ip": "1.2.3.4", "ports": [443]}, {"cidr": "10.0.0.0/8"}
    ]});
    let c = d
        .post(
            "/api/computers",
            json!({"workspace_id": ws, "name": "net", "egress_policy": policy}),
        )
        .expect(201);
    let path = format!("/api/computers/{}/egress-policy", id(&c));
    let got = d.get(&path).expect(200);
    assert_eq!(
        got,
        json!({"mode": "allow", "rules": [
            {"domain": "*.example.com"}, {"ip": "1.2.3.4", "ports": [443]}, {"cidr": "10.0.0.0/8"}
        ]})
    );
    // A computer created without one has the default: block nothing (beyond what is never
    // reachable).
    let plain = d.computer(&ws, "plain");
    let default = d
        .get(&format!("/api/computers/{}/egress-policy", id(&plain)))
        .expect(200);
    assert_eq!(default, json!({"mode": "block", "rules": []}));

    let put = |body: Value| d.send("PUT", &path, Some(&d.key), Some(&body.to_string()));
    let replaced = put(json!({"mode": "block", "rules": [{"domain": "bad.test"}]})).expect(200);
    assert_eq!(
        replaced["applied"], false,
        "no network on this daemon: applies at start"
    );
    assert_eq!(
        d.get(&path).expect(200),
        json!({"mode": "block", "rules": [{"domain": "bad.test"}]})
    );
    for (body, message) in [
        (
            json!({"mode": "deny"}),
            "egress_policy: mode must be \"allow\" or \"block\", not \"deny\"",
        ),
        (
            json!({"mode": "block", "rules": [{"ip": "1.1.1.1"}, {"cidr": "10.0.0.1/8"}]}),
            "egress_policy: rules[1]: \"10.0.0.1/8\" has host bits set: the network is 10.0.0.0/8",
        ),
        (
            json!({"mode": "block", "rules": [{"domain": "x.test", "ports": [70000]}]}),
            "egress_policy: rules[0]: port 70000 is not a number 1-65535",
        ),
    ] {
        let e = put(body).expect(400);
        assert_eq!(e["error"], message);
    }
    let e = d
        .post(
            "/api/computers",
            json!({"workspace_id": ws, "name": "bad", "egress_policy": {"mode": "allow", "rules": [{"host": "x"}]}}),
        )
        .expect(400);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("rules[0]: unknown key \"host\""),
        "{e}"
    );
    // Stored, not remembered: it survives a daemon restart.
    d.restart(false);
    assert_eq!(
        d.get(&path).expect(200),
        json!({"mode": "block", "rules": [{"domain": "bad.test"}]})
    );
    // A clone keeps its source's policy.
    if !kvm_capable() {
        let cl = d
            .post(&format!("/api/computers/{}/clone", id(&c)), json!({}))
            .expect(201);
        assert_eq!(
            d.get(&format!("/api/computers/{}/egress-policy", id(&cl)))
                .expect(200)["mode"],
            "block"
        );
    }
}
