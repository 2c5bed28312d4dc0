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

/// The limit on requests without a valid key: 5 answered with 401 per peer here, then 429 with
/// Retry-After in the section 0 error shape; a key that has worked before still works from the
/// limited peer; the bucket refills; the log gets one line for all of it.
#[test]
fn bad_keys_are_limited_per_peer_and_logged_once_a_minute() {
    let d = Daemon::start_with_config(
        "[rate_limit]\nrequests_per_second = 1000.0\nburst = 1000\nbad_key_burst = 5\nbad_key_per_second = 0.5\n",
    );
    // The key has worked before the peer is limited.
    d.get("/api/workspaces").expect(200);
    // A key made now that has not been used yet.
    let out = d.cli(&["keys", "create", "--name", "fresh"]);
    assert!(out.status.success(), "{out:?}");
    let fresh = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let wrong = "sk_live_0000000000000000000000000000000000000000";
    for i in 0..5 {
        let key = if i % 2 == 0 { Some(wrong) } else { None };
        let r = d.send("GET", "/api/workspaces", key, None);
        assert_eq!(
            r.status,
            401,
            "attempt {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    for key in [Some(wrong), None, Some("x".repeat(10_000).as_str())] {
        let r = d.send("GET", "/api/workspaces", key, None);
        let v = r.expect(429);
        assert_eq!(v["code"], "too_many_bad_keys", "{v}");
        let message = v["error"].as_str().unwrap();
        assert!(message.contains("uid "), "names the peer: {message}");
        let retry: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!((1..=2).contains(&retry), "{retry}");
    }
    // The key that has worked keeps working from the limited peer; a never-used one waits.
    d.get("/api/workspaces").expect(200);
    assert_eq!(
        d.send("GET", "/api/workspaces", Some(&fresh), None).status,
        429
    );
    // Public routes are not affected.
    assert_eq!(d.send("GET", "/api/openapi.json", None, None).status, 200);

    // Refilled (0.5 per second): the fresh key is checked again, and one more bad one is
    // answered with 401, the next with 429.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(
        d.send("GET", "/api/workspaces", Some(&fresh), None).status,
        200
    );
    assert_eq!(
        d.send("GET", "/api/workspaces", Some(wrong), None).status,
        401
    );
    assert_eq!(
        d.send("GET", "/api/workspaces", Some(wrong), None).status,
        429
    );

    // Many more: still one log line for this peer within the minute, and no access line per
    // refused request.
    for _ in 0..200 {
        assert_eq!(d.send("GET", "/api/workspaces", None, None).status, 429);
    }
    let log = d.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("without a valid API key"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("peer=\"uid ") || lines[0].contains("peer=uid"),
        "{}",
        lines[0]
    );
    let refused_lines = log
        .lines()
        .filter(|l| l.contains("status=401") || l.contains("status=429"))
        .count();
    assert_eq!(refused_lines, 1, "{log}");
}

/// Behind a reverse proxy that sets X-Forwarded-For (and `trust_forwarded_for`), each client
/// address has its bucket; without the setting, the header names no one.
#[test]
fn bad_keys_behind_a_proxy_count_per_forwarded_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with_args(
        "[rate_limit]\nbad_key_burst = 3\nbad_key_per_second = 0.01\ntrust_forwarded_for = true\n",
        &["--listen".into(), addr.clone()],
    );
    let get = |forwarded: &str| {
        let request = format!(
            "GET /api/workspaces HTTP/1.1\r\nHost: desk\r\nConnection: close\r\n\
             X-Forwarded-For: {forwarded}\r\nAuthorization: Bearer nope\r\n\r\n"
        );
        common::raw_tcp_request(&addr, request.as_bytes())
    };
    let valid = |forwarded: &str| {
        let request = format!(
            "GET /api/workspaces HTTP/1.1\r\nHost: desk\r\nConnection: close\r\n\
             X-Forwarded-For: {forwarded}\r\nAuthorization: Bearer {}\r\n\r\n",
            d.key
        );
        common::raw_tcp_request(&addr, request.as_bytes())
    };
    assert_eq!(valid("203.0.113.1").status, 200);
    for _ in 0..3 {
        assert_eq!(get("203.0.113.1").status, 401);
    }
    let r = get("203.0.113.1");
    assert!(r.error(429).contains("203.0.113.1"), "{}", r.error(429));
    // The proxy appends the address it saw: what the client wrote before it does not count.
    assert_eq!(get("203.0.113.9, 203.0.113.1").status, 429);
    // Another client behind the same proxy has its own bucket, and so has the Unix socket.
    assert_eq!(get("203.0.113.2").status, 401);
    assert_eq!(
        d.send("GET", "/api/workspaces", Some("nope"), None).status,
        401
    );
    // The valid key, which has worked, still does from the limited client.
    assert_eq!(valid("203.0.113.1").status, 200);
}

/// Without `trust_forwarded_for` the header is ignored: every request over TCP from loopback is
/// one peer.
#[test]
fn forwarded_for_is_ignored_unless_trusted() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _d = Daemon::start_with_args(
        "[rate_limit]\nbad_key_burst = 2\nbad_key_per_second = 0.01\n",
        &["--listen".into(), addr.clone()],
    );
    let statuses: Vec<u16> = (1..=4)
        .map(|i| {
            let request = format!(
                "GET /api/workspaces HTTP/1.1\r\nHost: desk\r\nConnection: close\r\n\
                 X-Forwarded-For: 198.51.100.{i}\r\n\r\n"
            );
            common::raw_tcp_request(&addr, request.as_bytes()).status
        })
        .collect();
    assert_eq!(statuses, [401, 401, 429, 429]);
}
