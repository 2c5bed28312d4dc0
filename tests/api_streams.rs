//! Section 5 against a real daemon: the stream-connections API (validation with clear 400s, the
//! key masked in every answer and absent from the log, names unique, delete), scoped keys, and
//! the stream routes' checks that need no VM. Streaming itself through a real agent is tested in
//! src/api/media_tests.rs; the encoder in guest-agent/tests/stream.rs.

mod common;

use common::Daemon;
use serde_json::{json, Value};

const KEY: &str = "sk-stream-Sekr3t_value.99";

fn connection(name: &str) -> Value {
    json!({"name": name, "rtmp_url": "rtmp://live.example.test/app", "stream_key": KEY})
}

#[test]
fn connections_are_saved_listed_masked_and_deleted() {
    let d = Daemon::start();
    assert_eq!(
        d.get("/api/stream-connections").expect(200),
        json!({"stream_connections": []})
    );
    let created = d
        .post("/api/stream-connections", connection("main"))
        .expect(201);
    assert_eq!(created["name"], "main");
    assert_eq!(created["rtmp_url"], "rtmp://live.example.test/app");
    assert_eq!(created["stream_key"], "********");
    assert_eq!(created["stream_key_set"], true);
    // Defaults: 2500 kbit/s, 1280x720, 30 fps.
    assert_eq!(created["bitrate_kbps"], 2500);
    assert_eq!(created["resolution"], "1280x720");
    assert_eq!(created["framerate"], 30);
    assert!(created["created_at"].is_string());

    // Aliases and explicit settings.
    let b = d
        .post(
            "/api/stream-connections",
            json!({"name": "b.yt-2", "url": "rtmps://a.rtmp.example.test:443/live2", "key": "other",
                   "bitrate": 6000, "resolution": "1920x1080", "fps": 60}),
        )
        .expect(201);
    assert_eq!(b["bitrate_kbps"], 6000);
    assert_eq!(b["resolution"], "1920x1080");
    assert_eq!(b["framerate"], 60);

    let list = d.get("/api/stream-connections").expect(200);
    let names: Vec<&str> = list["stream_connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b.yt-2", "main"]);
    for c in list["stream_connections"].as_array().unwrap() {
        assert_eq!(c["stream_key"], "********");
    }

    // A name is taken once.
    let e = d
        .post("/api/stream-connections", connection("main"))
        .error(409);
    assert!(e.contains("main") && e.contains("delete"), "{e}");

    // The key survives a restart (it is in the database) and is still never shown.
    let mut d = d;
    d.restart(false);
    let list = d.get("/api/stream-connections").expect(200);
    assert_eq!(list["stream_connections"].as_array().unwrap().len(), 2);

    assert_eq!(
        d.delete("/api/stream-connections/main").expect(200),
        json!({"success": true})
    );
    let e = d.delete("/api/stream-connections/main").error(404);
    assert!(e.contains("main"), "{e}");
    assert_eq!(
        d.get("/api/stream-connections").expect(200)["stream_connections"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let log = d.log_text();
    assert!(log.contains("/api/stream-connections"), "the log was read");
    assert!(!log.contains(KEY), "the stream key is in the daemon's log");
}

#[test]
fn invalid_connections_are_400_naming_the_field_and_never_quoting_the_key() {
    let d = Daemon::start();
    let with = |patch: Value| {
        let mut c = connection("c1");
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let cases = [
        (json!({"name": null}), "name is required"),
        (json!({"name": ""}), "name must be"),
        (json!({"name": "has space"}), "name must be"),
        (json!({"name": "a/b"}), "name must be"),
        (json!({"name": 7}), "name must be a string"),
        (json!({"rtmp_url": null}), "rtmp_url is required"),
        (json!({"rtmp_url": "http://x/live"}), "rtmp:// or rtmps://"),
        (json!({"rtmp_url": "rtmp:///live"}), "no host"),
        (json!({"rtmp_url": "rtmp://h/a b"}), "spaces"),
        (json!({"stream_key": null}), "stream_key is required"),
        (json!({"stream_key": ""}), "stream_key is empty"),
        (json!({"stream_key": "has space"}), "stream_key must be"),
        (json!({"stream_key": 12345}), "stream_key must be a string"),
        (json!({"bitrate_kbps": 10}), "bitrate_kbps must be from 250"),
        (
            json!({"bitrate_kbps": "fast"}),
            "bitrate_kbps must be a whole number",
        ),
        (
            json!({"bitrate_kbps": 2.5}),
            "bitrate_kbps must be a whole number",
        ),
        (
            json!({"resolution": "1280"}),
            "resolution must be WIDTHxHEIGHT",
        ),
        (json!({"resolution": "1281x720"}), "even numbers"),
        (json!({"resolution": "8000x720"}), "resolution must be"),
        (json!({"resolution": 720}), "resolution must be a string"),
        (json!({"framerate": 0}), "framerate must be from 1 to 60"),
        (json!({"framerate": 120}), "framerate must be"),
        (json!({"framerate": -1}), "framerate must be a whole number"),
    ];
    for (patch, says) in cases {
        let body = with(patch.clone());
        let r = d.post("/api/stream-connections", body);
        let text = String::from_utf8_lossy(&r.body).into_owned();
        let e = r.error(400);
        assert!(e.contains(says), "{patch}: {e}");
        assert!(!text.contains(KEY), "{patch}: the key is quoted: {text}");
    }
    // "has space" is a bad key; it must not be quoted either.
    let r = d.post(
        "/api/stream-connections",
        with(json!({"stream_key": "my secret"})),
    );
    assert!(!String::from_utf8_lossy(&r.body).contains("my secret"));
    // Not JSON, not an object.
    let r = d.send(
        "POST",
        "/api/stream-connections",
        Some(&d.key),
        Some("[1,2]"),
    );
    r.error(400);
    assert_eq!(
        d.get("/api/stream-connections").expect(200),
        json!({"stream_connections": []}),
        "nothing was saved"
    );
    // Wrong verbs and no key.
    d.send("PUT", "/api/stream-connections", Some(&d.key), Some("{}"))
        .error(405);
    d.send("GET", "/api/stream-connections", None, None)
        .error(401);
}

#[test]
fn scoped_keys_cannot_manage_connections() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    let out = d.cli(&["keys", "create", "--name", "scoped", "--workspace", &ws]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scoped = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("sk_live_"))
        .expect("the new key is printed")
        .to_string();
    let r = d.send(
        "POST",
        "/api/stream-connections",
        Some(&scoped),
        Some(&connection("s").to_string()),
    );
    assert_eq!(
        r.expect(403)["code"],
        "workspace_scope_mismatch",
        "creating needs an account-wide key"
    );
    d.post("/api/stream-connections", connection("s"))
        .expect(201);
    let r = d.send("DELETE", "/api/stream-connections/s", Some(&scoped), None);
    r.expect(403);
    // Listing is fine for any key: nothing secret is shown.
    let r = d.send("GET", "/api/stream-connections", Some(&scoped), None);
    assert_eq!(
        r.expect(200)["stream_connections"][0]["stream_key"],
        "********"
    );
}

#[test]
fn stream_routes_check_the_connection_and_the_computer() {
    let d = Daemon::start();
    d.post("/api/stream-connections", connection("main"))
        .expect(201);
    let ws = d.workspace("w");
    let c = d.computer(&ws, "c");
    let id = c["id"].as_str().unwrap();
    let e = d
        .post(&format!("/api/computers/{id}/stream/start"), json!({}))
        .error(400);
    assert!(e.contains("connection_name is required"), "{e}");
    let e = d
        .post(
            &format!("/api/computers/{id}/stream/start"),
            json!({"connection_name": "nope"}),
        )
        .error(404);
    assert!(
        e.contains("nope") && e.contains("/api/stream-connections"),
        "{e}"
    );
    let e = d
        .post(
            "/api/computers/00000000-0000-0000-0000-000000000000/stream/start",
            json!({"connection_name": "main"}),
        )
        .error(404);
    assert!(e.contains("Computer not found"), "{e}");
    // On this host no VM runs (no hardware virtualization outside the rig): the computer is not
    // running, which is the contract's 400 at once, never a 501.
    for (method, path) in [
        ("POST", "stream/start"),
        ("GET", "stream/status"),
        ("POST", "stream/stop"),
    ] {
        let body = (method == "POST").then(|| json!({"connection_name": "main"}).to_string());
        let r = d.send(
            method,
            &format!("/api/computers/{id}/{path}"),
            Some(&d.key),
            body.as_deref(),
        );
        assert!(!String::from_utf8_lossy(&r.body).contains(KEY));
        assert_eq!(r.error(400), "Desktop instance not available", "{path}");
    }
    assert!(
        !d.log_text().contains(KEY),
        "the stream key is in the daemon's log"
    );
}
