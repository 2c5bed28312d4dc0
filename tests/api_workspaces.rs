//! Section 1 against a real daemon: workspaces and the /projects alias.

mod common;

use common::Daemon;
use serde_json::json;

#[test]
fn crud_round_trip_on_both_paths() {
    let d = Daemon::start();
    for base in ["/api/workspaces", "/api/projects"] {
        let name = format!("ws{}", base.len());
        let created = d
            .post(
                base,
                json!({"name": name, "icon_url": "https://x/i.png", "status": "inactive"}),
            )
            .expect(201);
        let id = created["id"].as_str().unwrap();
        for field in [
            "id",
            "name",
            "user_id",
            "status",
            "icon_url",
            "created_at",
            "updated_at",
            "desktops",
            "computer_count",
        ] {
            assert!(
                created.get(field).is_some(),
                "workspace lacks {field}: {created}"
            );
        }
        assert_eq!(created["status"], "inactive");
        assert_eq!(created["icon_url"], "https://x/i.png");
        // Read back on both paths.
        for b in ["/api/workspaces", "/api/projects"] {
            let got = d.get(&format!("{b}/{id}")).expect(200);
            assert_eq!(got["name"], name.as_str());
            assert_eq!(got["desktops"], json!([]));
        }
        // Computers show up in `desktops` (the SDK lists computers that way).
        let c = d.computer(id, "desk");
        let got = d.get(&format!("{base}/{id}")).expect(200);
        assert_eq!(got["desktops"][0]["id"], c["id"]);
        assert_eq!(got["computer_count"], 1);

        assert_eq!(
            d.delete(&format!("{base}/{id}")).expect(200),
            json!({"success": true})
        );
        d.get(&format!("{base}/{id}")).expect(404);
        d.get(&format!("/api/computers/{}", c["id"].as_str().unwrap()))
            .expect(404);
        d.delete(&format!("{base}/{id}")).expect(404);
    }
}

#[test]
fn list_keys_of_both_paths() {
    let d = Daemon::start();
    let id = d.workspace("one");
    // The SDK reads `projects` from GET /projects; /workspaces has `workspaces`.
    let p = d.get("/api/projects").expect(200);
    assert_eq!(p["projects"][0]["id"], id.as_str());
    let w = d.get("/api/workspaces").expect(200);
    assert_eq!(w["workspaces"][0]["id"], id.as_str());
}

#[test]
fn validation_messages_per_field() {
    let d = Daemon::start();
    let cases = [
        (json!({}), "name is required."),
        (json!({"name": null}), "name is required."),
        (json!({"name": 5}), "name must be a string, not a number."),
        (
            json!({"name": ""}),
            "name must be 1-64 characters long (got 0).",
        ),
        (
            json!({"name": "x".repeat(65)}),
            "name must be 1-64 characters long (got 65).",
        ),
        (
            json!({"name": "a\u{1}b"}),
            "name must not contain control characters.",
        ),
        (
            json!({"name": "ok", "status": "paused"}),
            "status must be \"active\" or \"inactive\".",
        ),
        (
            json!({"name": "ok", "icon_url": 3}),
            "icon_url must be a string, not a number.",
        ),
    ];
    for (body, message) in cases {
        assert_eq!(
            d.post("/api/workspaces", body.clone()).error(400),
            message,
            "{body}"
        );
    }
    d.workspace("dup");
    // A duplicate name is a 400, as the hosted service documents, on both paths.
    for path in ["/api/projects", "/api/workspaces"] {
        let m = d.post(path, json!({"name": "dup"})).error(400);
        assert_eq!(m, "A workspace named \"dup\" already exists.", "{path}");
    }
}

#[test]
fn bulk_start_stop() {
    let d = Daemon::start();
    let id = d.workspace("bulk");
    // Empty workspace: nothing to do, success.
    d.post(&format!("/api/workspaces/{id}/stop"), json!({}))
        .expect(200);
    d.computer(&id, "a");
    // Stop settles every computer (an `error` one becomes `stopped`); stopping again is fine.
    d.post(&format!("/api/projects/{id}/stop"), json!({}))
        .expect(200);
    d.post(&format!("/api/projects/{id}/stop"), json!({}))
        .expect(200);
    let ws = d.get(&format!("/api/workspaces/{id}")).expect(200);
    assert_eq!(ws["desktops"][0]["status"], "stopped");
    let start = d.post(&format!("/api/workspaces/{id}/start"), json!({}));
    if kvm_capable() {
        assert!(start.status == 200 || start.status == 503, "{start:?}");
    } else {
        let m = start.error(503);
        assert!(m.contains("tests/rig/serve"), "{m}");
    }
}

fn kvm_capable() -> bool {
    deskd::vmm::host::cpu_has_hardware_virtualization()
}
