#![cfg(feature = "agent")]
//! `--listen unix:PATH`: a stale socket is replaced, but a path that is not a socket is refused
//! and left alone (the agent runs as root; a mistyped path must not delete a file).

mod common;

use std::time::Duration;

use common::{xvfb, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_path_that_is_not_a_socket_is_refused_and_kept() {
    let Some(x) = xvfb(320, 240) else { return };
    let dir = TempDir::new("listen");
    let path = dir.0.join("precious.txt");
    std::fs::write(&path, "keep me").expect("write");
    let cfg = deskd_agent::Config {
        listen: deskd_agent::Listen::Unix(path.clone()),
        display: x.display.clone(),
        user: None,
        home: Some(dir.0.clone()),
        output_cap: deskd_agent::protocol::DEFAULT_OUTPUT_CAP,
        idle_after: Duration::from_secs(30),
        x_call_limit: Duration::from_secs(30),
        vnc_socket: deskd_agent::vnc::DEFAULT_RFB_SOCKET.into(),
        vnc_password_file: deskd_agent::vnc::DEFAULT_PASSWORD_FILE.into(),
        pulse: deskd_agent::audio::Pulse::default(),
    };
    let agent = deskd_agent::build(&cfg).expect("build agent");
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        deskd_agent::server::serve(&cfg.listen, agent),
    )
    .await
    .expect("serve must refuse at once instead of listening")
    .expect_err("a regular file is not a socket to replace");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).expect("still there"),
        "keep me"
    );
}
