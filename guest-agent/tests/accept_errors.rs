#![cfg(feature = "agent")]
//! A client that exhausts the agent's file descriptors must not stop the agent: accept errors
//! (EMFILE) are passing, and the server keeps serving once descriptors are free again. Its own
//! test binary with a single test, because it lowers the whole process's descriptor limit for a
//! moment and anything running beside it could fail then.

mod common;

use std::time::Duration;

use common::{request, start_agent, xvfb};
use nix::libc;

fn nofile_limit() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid, exclusively borrowed `lim`.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim
}

fn set_nofile_limit(lim: &libc::rlimit) {
    // SAFETY: setrlimit only reads the rlimit the valid reference points to.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, lim) }, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_does_not_stop_the_server() {
    let Some(x) = xvfb(320, 240) else { return };
    let agent = start_agent(&x.display).await;
    assert_eq!(
        request(&agent.socket, "GET", "/health", None).await.status,
        200
    );

    // Client sockets are made while there is room and connected only once the descriptor table
    // is full, so the agent's accept is sure to meet EMFILE.
    let clients: Vec<tokio::net::UnixSocket> = (0..4)
        .map(|_| tokio::net::UnixSocket::new_stream().expect("socket"))
        .collect();
    let saved = nofile_limit();
    let open = std::fs::read_dir("/proc/self/fd").expect("fd list").count() as u64;
    set_nofile_limit(&libc::rlimit {
        rlim_cur: open + 32,
        rlim_max: saved.rlim_max,
    });
    let mut filler = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        filler.push(f);
        assert!(
            filler.len() < 1000,
            "the lowered descriptor limit had no effect"
        );
    }
    let mut connected = Vec::new();
    for c in clients {
        connected.push(c.connect(&agent.socket).await.expect("connect"));
    }
    // Let the agent try (and fail) to accept them a few times.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(filler);
    set_nofile_limit(&saved);
    drop(connected);

    let r = tokio::time::timeout(
        Duration::from_secs(10),
        request(&agent.socket, "GET", "/health", None),
    )
    .await
    .expect("the agent answers again once descriptors are free");
    assert_eq!(r.status, 200);
}
