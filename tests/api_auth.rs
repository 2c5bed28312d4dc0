//! Keys: missing, invalid, revoked and workspace-scoped keys against a real daemon; the key
//! commands; logs never contain keys.

mod common;

use common::Daemon;
use serde_json::json;

#[test]
fn missing_and_invalid_keys_get_the_documented_401s() {
    let d = Daemon::start();
    let r = d.send("GET", "/api/workspaces", None, None);
    assert_eq!(r.error(401), "Missing API key.");
    let r = d.send("GET", "/api/workspaces", Some(""), None);
    assert_eq!(r.error(401), "Missing API key.");
    for bad in [
        "sk_live_nope",
        "Basic abc",
        "sk_live_0000000000000000000000000000000000000000",
    ] {
        let r = d.send("GET", "/api/workspaces", Some(bad), None);
        assert_eq!(r.error(401), "Invalid API key.", "{bad}");
    }
    // Unknown routes need a key too (nothing is revealed without one).
    assert_eq!(
        d.send("GET", "/api/nothing", None, None).error(401),
        "Missing API key."
    );
    // The scheme is case-insensitive.
    let raw = format!(
        "GET /api/workspaces HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: bearer {}\r\n\r\n",
        d.key
    );
    assert_eq!(d.raw(raw.as_bytes()).status, 200);
    // The OpenAPI document is public.
    assert_eq!(d.send("GET", "/api/openapi.json", None, None).status, 200);
}

#[test]
fn key_commands_create_list_and_revoke() {
    let d = Daemon::start();
    let out = d.cli(&["keys", "create", "--name", "ci"]);
    assert!(out.status.success(), "{out:?}");
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("sk_live_") && key.len() > 40, "{key}");
    d.send("GET", "/api/workspaces", Some(&key), None)
        .expect(200);

    let list = d.cli(&["keys", "list", "--json"]);
    assert!(list.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        !text.contains(&key) && !text.contains(&d.key),
        "list shows a secret"
    );
    let ci = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "ci")
        .unwrap();
    let id = ci["id"].as_str().unwrap();

    let out = d.cli(&["keys", "revoke", id]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        d.send("GET", "/api/workspaces", Some(&key), None)
            .error(401),
        "Invalid API key."
    );
    // Revoking an unknown id fails with a message.
    let out = d.cli(&["keys", "revoke", "no-such-key"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn scoped_keys_reach_only_their_workspace() {
    let d = Daemon::start();
    let mine = d.workspace("mine");
    let other = d.workspace("other");
    let theirs = d.computer(&other, "c")["id"].as_str().unwrap().to_string();
    let out = d.cli(&["keys", "create", "--workspace", &mine]);
    assert!(out.status.success(), "{out:?}");
    let scoped = String::from_utf8(out.stdout).unwrap().trim().to_string();

    // Its own workspace works; the list shows only it.
    d.send(
        "GET",
        &format!("/api/workspaces/{mine}"),
        Some(&scoped),
        None,
    )
    .expect(200);
    let list = d
        .send("GET", "/api/projects", Some(&scoped), None)
        .expect(200);
    assert_eq!(list["projects"].as_array().unwrap().len(), 1);

    // Another workspace: 403 with the mismatch fields.
    for (method, path, body) in [
        ("GET", format!("/api/workspaces/{other}"), None),
        ("DELETE", format!("/api/projects/{other}"), None),
        ("GET", format!("/api/computers/{theirs}"), None),
        ("POST", format!("/api/computers/{theirs}/stop"), None),
        ("GET", format!("/api/computers?workspace_id={other}"), None),
        (
            "POST",
            "/api/computers".to_string(),
            Some(json!({"workspace_id": other, "name": "x"}).to_string()),
        ),
    ] {
        let r = d.send(method, &path, Some(&scoped), body.as_deref());
        let v = r.expect(403);
        assert_eq!(v["code"], "workspace_scope_mismatch", "{method} {path}");
        assert_eq!(v["key_workspace_id"], mine.as_str());
        assert_eq!(v["target_workspace_id"], other.as_str());
    }
    // Creating a workspace is not for a scoped key.
    let v = d
        .send(
            "POST",
            "/api/workspaces",
            Some(&scoped),
            Some(r#"{"name":"new"}"#),
        )
        .expect(403);
    assert_eq!(v["code"], "workspace_scope_mismatch");
    assert!(v["target_workspace_id"].is_null());
    // Moving one of its computers out of its workspace is refused too.
    let c = d.computer(&mine, "m")["id"].as_str().unwrap().to_string();
    let v = d
        .send(
            "PATCH",
            &format!("/api/computers/{c}/move"),
            Some(&scoped),
            Some(&json!({"project_id": other}).to_string()),
        )
        .expect(403);
    assert_eq!(v["code"], "workspace_scope_mismatch");
    // A scope on an unknown workspace cannot be created.
    let out = d.cli(&[
        "keys",
        "create",
        "--workspace",
        "00000000-0000-4000-8000-000000000000",
    ]);
    assert!(!out.status.success());
}

#[test]
fn logs_never_contain_keys() {
    let d = Daemon::start();
    let invalid = "sk_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    d.get("/api/workspaces").expect(200);
    d.send("GET", "/api/workspaces", Some(invalid), None)
        .expect(401);
    d.send(
        "GET",
        "/api/nothing?token=secret-token-value",
        Some(&d.key),
        None,
    )
    .expect(404);
    let log = d.log_text();
    assert!(log.contains("/api/workspaces"), "no access log: {log}");
    assert!(!log.contains(&d.key), "the log contains the key");
    assert!(!log.contains(invalid), "the log contains a presented key");
    assert!(
        !log.contains("secret-token-value"),
        "the log contains a query token"
    );
    assert!(
        log.contains("initial-api-key"),
        "the first key's file is not logged: {log}"
    );
    // The key file is root-only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.data.join("initial-api-key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
