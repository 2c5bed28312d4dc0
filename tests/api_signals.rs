//! Signals to a running `deskd serve` on a temporary socket and data directory: SIGTERM, SIGINT
//! and SIGHUP each stop it cleanly (exit 0, its socket removed, the database consistent and
//! complete when it starts again), and clients that hang up before or while their answer is
//! written (EPIPE on the daemon's side, SIGPIPE were it not ignored) do not kill it.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::Daemon;

/// The daemon's database, checked by SQLite itself.
fn integrity(d: &Daemon) -> String {
    let db = rusqlite::Connection::open_with_flags(
        d.data.join("deskd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the database");
    db.query_row("PRAGMA integrity_check", [], |row| row.get::<_, String>(0))
        .expect("integrity_check")
}

fn stops_cleanly_on(signal: i32, name: &str) {
    let mut d = Daemon::start();
    let ws = d.workspace(&format!("before-{name}"));
    // Writes in flight when the signal comes: they finish (the server drains) or never start.
    let socket = d.socket.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..20 {
            let body = format!("{{\"name\":\"w{i}\"}}");
            let request = format!(
                "POST /api/workspaces HTTP/1.1\r\nHost: deskd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            // The daemon may be gone before a later one connects: not an error here.
            let Ok(mut s) = UnixStream::connect(&socket) else {
                break;
            };
            let _ = s.write_all(request.as_bytes());
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    let status = d.signal_and_wait(signal, Duration::from_secs(30));
    writer.join().unwrap();
    assert!(
        status.success(),
        "{name}: deskd exited with {status}: {}",
        d.log_text()
    );
    assert!(
        !d.socket.exists(),
        "{name}: the socket {} is left behind",
        d.socket.display()
    );
    assert!(
        d.log_text().contains(&format!("{name} received")),
        "{name}: {}",
        d.log_text()
    );
    assert_eq!(integrity(&d), "ok", "{name}");
    // It starts again on the same socket and data, with what it had.
    d.start_again();
    let v = d.get(&format!("/api/workspaces/{ws}")).expect(200);
    assert_eq!(v["id"], ws.as_str());
    d.stop(false);
}

#[test]
fn sigterm_stops_it_cleanly() {
    stops_cleanly_on(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_stops_it_cleanly() {
    stops_cleanly_on(libc::SIGINT, "SIGINT");
}

#[test]
fn sighup_stops_it_cleanly() {
    stops_cleanly_on(libc::SIGHUP, "SIGHUP");
}

/// A signal sent the moment the socket appears (start-up just done) is caught, not fatal.
#[test]
fn a_signal_right_after_start_up_is_caught() {
    let mut d = Daemon::start();
    let status = d.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", d.log_text());
    assert!(!d.socket.exists());
}

#[test]
fn clients_hanging_up_mid_answer_do_not_kill_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut d = Daemon::start_with_args(common::RELAXED, &["--listen".into(), addr.clone()]);
    // Enough workspaces that a list is a long answer.
    for i in 0..150 {
        d.workspace(&format!(
            "workspace-with-a-long-name-{i:03}-{}",
            "x".repeat(30)
        ));
    }
    // And a file far larger than a socket's buffers, so the daemon is mid-answer, blocked on a
    // full socket, when the client goes.
    let ws = d.workspace("files");
    let file = vec![b'x'; 8 << 20];
    let boundary = "deskd-signals-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"projectId\"\r\n\r\n{ws}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut upload = format!(
        "POST /api/files/upload HTTP/1.1\r\nHost: deskd\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {}\r\n\r\n",
        d.key,
        body.len()
    )
    .into_bytes();
    upload.extend_from_slice(&body);
    let uploaded = d.raw(&upload).expect(200);
    let id = uploaded["file"]["id"].as_str().unwrap().to_string();
    let url = d.get(&format!("/api/files/download?id={id}")).expect(200)["url"]
        .as_str()
        .unwrap()
        .to_string();
    let content = url.strip_prefix("http://localhost").unwrap().to_string();
    let requests = [
        format!("GET {content} HTTP/1.1\r\nHost: deskd\r\n\r\n"),
        "GET /api/openapi.json HTTP/1.1\r\nHost: deskd\r\n\r\n".to_string(),
        format!(
            "GET /api/workspaces HTTP/1.1\r\nHost: deskd\r\nAuthorization: Bearer {}\r\n\r\n",
            d.key
        ),
    ];
    for round in 0..20 {
        for request in &requests {
            // Closed before the answer is written: the daemon's write meets EPIPE.
            let mut s = UnixStream::connect(&d.socket).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            drop(s);
            // Closed after the first bytes of the answer, the rest unread (on TCP: a reset).
            let mut s = UnixStream::connect(&d.socket).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut first = [0u8; 16];
            let _ = s.read(&mut first);
            drop(s);
            let mut t = std::net::TcpStream::connect(&addr).unwrap();
            t.write_all(request.as_bytes()).unwrap();
            let _ = t.read(&mut first);
            drop(t);
        }
        assert!(d.alive(), "round {round}: deskd died: {}", d.log_text());
    }
    // Still serving, on both listeners, the whole file too.
    d.get("/api/workspaces").expect(200);
    let whole = d.send("GET", &content, None, None);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body.len(), file.len());
    let r = common::raw_tcp_request(
        &addr,
        b"GET /api/openapi.json HTTP/1.1\r\nHost: deskd\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    // SIGPIPE is ignored (bit 13 of SigIgn in /proc/PID/status), as Rust's runtime sets it.
    let pid = d.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    assert_ne!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SigIgn {ignored:x}"
    );
    d.stop(false);
}
