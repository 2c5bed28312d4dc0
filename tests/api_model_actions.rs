//! The actions models emit (ours, issue 16) on a real daemon whose computers cannot run here:
//! the routes exist, are documented, refuse a computer that is not running with the contract's
//! 400, and check the screenshot region and scale query before anything else. The clipboard
//! routes too. Their effect on a
//! real desktop is tested against Xvfb in guest-agent/tests/model_actions.rs.

mod common;

use common::Daemon;
use serde_json::json;

#[test]
fn new_actions_need_a_running_computer_and_check_their_query() {
    let d = Daemon::start();
    let ws = d.workspace("desk");
    let c = d.computer(&ws, "c");
    let id = c["id"].as_str().unwrap().to_string();

    for (path, body) in [
        ("mouse_down", json!({"button": "left"})),
        ("mouse_up", json!({})),
        ("hold_key", json!({"key": "shift", "duration": 1})),
        ("click", json!({"x": 1, "y": 1, "clicks": 3})),
        ("clipboard", json!({"text": "hello"})),
    ] {
        let e = d.post(&format!("/api/computers/{id}/{path}"), body);
        assert_eq!(e.error(400), "Desktop instance not available", "{path}");
    }
    for path in ["cursor_position", "clipboard"] {
        let e = d.get(&format!("/api/computers/{id}/{path}"));
        assert_eq!(e.error(400), "Desktop instance not available", "{path}");
    }
    // The body must be a JSON object before anything else is looked at.
    let e = d.send(
        "POST",
        &format!("/api/computers/{id}/clipboard"),
        Some(&d.key),
        Some("not json"),
    );
    e.error(400);
    d.delete(&format!("/api/computers/{id}/clipboard"))
        .error(405);
    d.post(&format!("/api/computers/{id}/cursor_position"), json!({}))
        .error(405);
    // Unknown computers are 404 on the new routes too.
    d.post("/api/computers/nope/mouse_down", json!({}))
        .error(404);
    d.get("/api/computers/nope/cursor_position").error(404);

    // The region and scale rules are the agent's, checked by the daemon first.
    for (query, message) in [
        (
            "x=1&y=2&width=3",
            "a region needs x, y, width and height; missing: height.",
        ),
        (
            "width=3",
            "a region needs x, y, width and height; missing: x, y, height.",
        ),
        (
            "x=-1&y=0&width=3&height=3",
            "x must be a whole number from 0 to 32767.",
        ),
        (
            "x=0&y=0&width=3&height=0",
            "height must be a whole number from 1 to 32767.",
        ),
        (
            "max_pixels=abc",
            "max_pixels must be a whole number from 1024 to 4294967296.",
        ),
        (
            "max_pixels=1023",
            "max_pixels must be a whole number from 1024 to 4294967296.",
        ),
    ] {
        let e = d.get(&format!("/api/computers/{id}/screenshot?{query}"));
        assert_eq!(e.error(400), message, "{query}");
    }
    // A good query reaches the running check.
    let e = d.get(&format!(
        "/api/computers/{id}/screenshot?x=0&y=0&width=10&height=10&max_pixels=1150000"
    ));
    assert_eq!(e.error(400), "Desktop instance not available");

    // Documented.
    let doc = d.get("/api/openapi.json").expect(200);
    for path in ["mouse_down", "mouse_up", "hold_key"] {
        assert!(
            doc["paths"][format!("/api/computers/{{id}}/{path}")]["post"].is_object(),
            "{path}"
        );
    }
    assert!(doc["paths"]["/api/computers/{id}/cursor_position"]["get"].is_object());
    assert!(doc["paths"]["/api/computers/{id}/clipboard"]["get"].is_object());
    assert!(doc["paths"]["/api/computers/{id}/clipboard"]["post"].is_object());
}
