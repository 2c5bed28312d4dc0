//! `kill -9` in the middle of a stream of writes: every create that was answered 201 is still
//! there after the restart, and the database passes SQLite's integrity check.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{raw_request, Daemon};
use serde_json::json;

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut d = Daemon::start();
    let ws = d.workspace("base");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let (socket, key, acked, stop, ws) = (
            d.socket.clone(),
            d.key.clone(),
            acked.clone(),
            stop.clone(),
            ws.clone(),
        );
        writers.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("w{w}-{i}");
                // Alternate workspaces and computers: single-row and quota-checked inserts.
                let (path, body) = if i % 2 == 0 {
                    ("/api/workspaces", json!({"name": name}))
                } else {
                    ("/api/computers", json!({"workspace_id": ws, "name": name}))
                };
                let body = body.to_string();
                let req = format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                // A connection cut by the kill panics inside raw_request: that write was not acked.
                let sent = std::panic::catch_unwind(|| raw_request(&socket, req.as_bytes()));
                match sent {
                    Ok(r) if r.status == 201 => acked.lock().unwrap().push(name),
                    _ => break,
                }
                i += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(700));
    d.stop(true);
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 5,
        "too few writes before the kill: {}",
        acked.len()
    );
    d.restart(false);
    let workspaces = d.get("/api/workspaces").expect(200);
    let computers = d.get("/api/computers").expect(200);
    let mut names: Vec<String> = Vec::new();
    for list in [&workspaces["workspaces"], &computers["computers"]] {
        for item in list.as_array().unwrap() {
            names.push(item["name"].as_str().unwrap().to_string());
        }
    }
    for name in &acked {
        assert!(
            names.contains(name),
            "{name} was answered 201 but is gone after kill -9"
        );
    }
    d.stop(false);
    let conn = rusqlite::Connection::open(d.data.join("deskd.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    eprintln!("{} acknowledged writes survived kill -9", acked.len());
}
