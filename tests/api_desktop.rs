//! Desktop routes of a real daemon whose computers cannot run here (no VM): the refusals clients
//! rely on. WebSocket close codes (4401 bad token, 4404 not found or not running, VNC included), actions on a
//! computer that is not running (400 "Desktop instance not available", at once: only booting
//! computers are waited for), the console log, stored screenshots that do not exist. Forwarding to
//! a real agent in a real VM is tested in the rig by tests/sdk-rig-e2e.

mod common;

use common::Daemon;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Opens `path` as a WebSocket on the daemon's socket; returns the close code it receives first.
async fn close_code(d: &Daemon, path: &str) -> Option<u16> {
    let stream = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://localhost{path}"), stream)
        .await
        .expect("the upgrade is accepted; refusals come as close frames");
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => Some(u16::from(frame.code)),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[test]
fn desktop_routes_refuse_clearly_when_there_is_no_desktop() {
    let d = Daemon::start();
    let ws = d.workspace("desk");
    let c = d.computer(&ws, "c");
    let id = c["id"].as_str().unwrap().to_string();
    let instance = c["instance_id"].as_str().unwrap().to_string();
    let token = d
        .get(&format!("/api/computers/{id}/vnc-password"))
        .expect(200)["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        d.get(&format!("/api/computers/{id}")).expect(200)["status"],
        "running"
    );

    // Actions: the contract's 400 at once for a computer that is not booting.
    let started = std::time::Instant::now();
    let e = d.post(
        &format!("/api/computers/{id}/bash"),
        json!({"command": "true"}),
    );
    assert_eq!(e.error(400), "Desktop instance not available");
    let e = d.get(&format!("/api/computers/{id}/screenshot"));
    assert_eq!(e.error(400), "Desktop instance not available");
    assert!(
        started.elapsed().as_secs() < 5,
        "a non-booting computer was waited for"
    );
    let e = d.get(&format!(
        "/api/computers/{id}/screenshot?response_format=gif"
    ));
    assert!(e.error(400).contains("response_format"));
    // The agent's screenshot rules, checked by the daemon with the agent's own messages.
    let e = d.get(&format!("/api/computers/{id}/screenshot?format=gif"));
    assert_eq!(e.error(400), "format must be png or jpeg (got \"gif\").");
    let e = d.get(&format!(
        "/api/computers/{id}/screenshot?format=JPG&quality=0"
    ));
    assert_eq!(
        e.error(400),
        "quality must be a whole number from 1 to 100."
    );
    let e = d.get(&format!("/api/desktops/{instance}/proxy/health"));
    assert_eq!(e.error(400), "Desktop instance not available");

    // The console log of a computer that never booted is empty, not an error.
    let log = d.get(&format!("/api/computers/{id}/console")).expect(200);
    assert_eq!(log["log"], "");
    assert!(d
        .get(&format!("/api/computers/{id}/console?bytes=0"))
        .error(400)
        .contains("bytes"));

    // Stored screenshots: unknown and malformed names are simply not found.
    d.get("/api/storage/screenshots/0b8a3c1e-6f5e-4a57-9a43-2f7f6a7a0c11.png")
        .error(404);
    d.get("/api/storage/screenshots/..%2F..%2Fdeskd.db")
        .error(404);

    // WebSockets: not a WebSocket request -> JSON 400; refusals are close codes.
    let e = d.send(
        "GET",
        &format!("/desktops/{id}/ws/terminal?token={token}"),
        None,
        None,
    );
    assert!(e.error(400).contains("WebSocket"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        assert_eq!(
            close_code(&d, &format!("/desktops/{id}/ws/terminal?token=wrong")).await,
            Some(4401)
        );
        assert_eq!(
            close_code(&d, &format!("/desktops/{id}/ws/terminal")).await,
            Some(4401)
        );
        assert_eq!(
            close_code(&d, &format!("/desktops/{instance}/ws/events?token={token}")).await,
            Some(4404),
            "a computer that is not running"
        );
        assert_eq!(
            close_code(&d, &format!("/desktops/ffffffff/ws/events?token={token}")).await,
            Some(4404)
        );
        // VNC: no token needed (RFB's VNC authentication is the check), a wrong one is refused,
        // and a computer that is not running closes 4404 on both paths.
        assert_eq!(
            close_code(&d, &format!("/desktops/{id}/ws/websockify?token=wrong")).await,
            Some(4401)
        );
        assert_eq!(
            close_code(&d, &format!("/desktops/{id}/ws/websockify")).await,
            Some(4404)
        );
        assert_eq!(
            close_code(&d, &format!("/desktops/{instance}/websockify")).await,
            Some(4404)
        );
    });
}
