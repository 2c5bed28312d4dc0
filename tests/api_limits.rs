//! The API server's own limits against slow or greedy peers (no key needed to try them): a
//! connection that never finishes its request headers is closed, and while it hangs, every other
//! client is served as usual.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::Daemon;

#[test]
fn a_connection_that_never_finishes_its_headers_is_closed_and_hurts_no_one() {
    let d = Daemon::start();
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        // Half a request, then nothing.
        s.write_all(b"GET /api/projects HTTP/1.1\r\nHost: deskd\r\n")
            .unwrap();
        slow.push(s);
    }
    // Everyone else is served meanwhile.
    let started = Instant::now();
    d.get("/api/projects").expect(200);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The server closes each slow connection once the header deadline (15 s) has passed.
    let mut s = slow.pop().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let mut buf = Vec::new();
    let waited = Instant::now();
    let _ = s.read_to_end(&mut buf);
    let waited = waited.elapsed();
    assert!(
        waited < Duration::from_secs(30),
        "the half-sent request was held for {waited:?}"
    );
    d.get("/api/projects").expect(200);
}

#[test]
fn metrics_are_prometheus_text_behind_a_key() {
    let d = Daemon::start();
    let ws = d.workspace("m");
    d.computer(&ws, "one");
    let r = d.get("/api/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/plain"));
    let text = String::from_utf8_lossy(&r.body).to_string();
    // This host cannot run VMs: the computer is in `error` and counted so.
    assert!(
        text.contains("deskd_computers{status=\"error\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("deskd_disk_bytes{kind=\"database\"}"),
        "{text}"
    );
    assert!(text.contains("deskd_agent_bytes_in_flight 0"), "{text}");
    assert!(
        text.contains("# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes "),
        "{text}"
    );
    assert!(text.contains("\nprocess_open_fds "), "{text}");
    let anonymous = d.send("GET", "/api/metrics", None, None);
    assert_eq!(anonymous.status, 401);
}
