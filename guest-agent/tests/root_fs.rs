#![cfg(feature = "agent")]
//! `POST /root-fs/grow` through the real agent, without root: a request the VMM could not have
//! made is a 400, and with no root helper listening (as on any machine but the image) the route
//! answers 500 naming the helper's socket, so the daemon can say why the filesystem did not grow.

mod common;

use common::{request, start_agent, xvfb};
use deskd_agent::protocol::paths;

#[tokio::test]
async fn the_route_checks_its_request_and_names_the_missing_helper() {
    if std::path::Path::new(deskd_agent::growfs::HELPER_SOCKET).exists() {
        eprintln!(
            "SKIPPED the_route_checks_its_request_and_names_the_missing_helper: {} exists here",
            deskd_agent::growfs::HELPER_SOCKET
        );
        return;
    }
    let Some(x) = xvfb(320, 240) else { return };
    let agent = start_agent(&x.display).await;
    for bad in [
        r#"{}"#,
        r#"{"disk_bytes":1000}"#,
        r#"{"disk_bytes":0}"#,
        r#"{"disk_bytes":-512}"#,
        r#"{"disk_bytes":1024,"device":"/dev/vdb"}"#,
        "not json",
    ] {
        let r = request(&agent.socket, "POST", paths::GROW_ROOT_FS, Some(bad)).await;
        assert_eq!(r.status, 400, "{bad}: {}", String::from_utf8_lossy(&r.body));
    }
    let r = request(
        &agent.socket,
        "POST",
        paths::GROW_ROOT_FS,
        Some(r#"{"disk_bytes":12884901888}"#),
    )
    .await;
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(r.status, 500, "{body}");
    let m = body["error"].as_str().unwrap();
    assert!(
        m.contains("cannot reach the root helper") && m.contains("/run/deskd-growfs.sock"),
        "{m}"
    );
    let r = request(&agent.socket, "GET", paths::GROW_ROOT_FS, None).await;
    assert_eq!(r.status, 405);
}
