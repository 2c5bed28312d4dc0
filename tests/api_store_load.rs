//! Reads stay answered while the database is busy writing: every write commits with an `fsync`
//! behind the one writing connection, and those waits must not hold the daemon's async workers.
//! A benchmark as much as a test: it prints the latency of `GET /api/computers/{id}` alone and
//! under a storm of concurrent writes, from the same run (the figures depend on the disk; the
//! test fails only on an error answer).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::json;

/// Writers hammering the database at once (more than the daemon's async workers on any host
/// this runs on).
const WRITERS: usize = 16;
/// Reads measured in each phase.
const READS: usize = 300;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `READS` sequential GETs of one computer; their latencies, sorted.
fn read_latencies(d: &Daemon, path: &str) -> Vec<Duration> {
    let mut all = Vec::with_capacity(READS);
    for _ in 0..READS {
        let started = Instant::now();
        let r = d.get(path);
        all.push(started.elapsed());
        assert_eq!(
            r.status,
            200,
            "GET during the test: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    all.sort();
    all
}

fn report(what: &str, sorted: &[Duration]) {
    eprintln!(
        "GET computer {what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} reads)",
        percentile(sorted, 0.5).as_secs_f64() * 1000.0,
        percentile(sorted, 0.99).as_secs_f64() * 1000.0,
        sorted[sorted.len() - 1].as_secs_f64() * 1000.0,
        sorted.len()
    );
}

#[test]
fn reads_are_answered_while_many_writes_commit() {
    let d = Arc::new(Daemon::start());
    let ws = d.workspace("load");
    let c = d.computer(&ws, "reader-target");
    let id = c["id"].as_str().unwrap().to_string();
    let path = format!("/api/computers/{id}");

    let quiet = read_latencies(&d, &path);

    // Writers: each creates workspaces, one committed transaction (and fsync) per request,
    // until the reads under load are done.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (d, stop, writes) = (d.clone(), stop.clone(), writes.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let r = d.post("/api/workspaces", json!({ "name": format!("w{w}-{n}") }));
                    assert!(
                        r.status == 200 || r.status == 201,
                        "write answered {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    );
                    writes.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                }
            })
        })
        .collect();
    // Let the storm build up before measuring.
    while writes.load(Ordering::SeqCst) < WRITERS * 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    let before = writes.load(Ordering::SeqCst);
    let loaded = read_latencies(&d, &path);
    let during = writes.load(Ordering::SeqCst) - before;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("a writer failed");
    }

    report("alone", &quiet);
    report(&format!("with {WRITERS} writers"), &loaded);
    eprintln!(
        "writes committed meanwhile: {during} in {:.2} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        during as f64 / elapsed.as_secs_f64()
    );
    // The reads really ran amid writes (else the figures above mean nothing).
    assert!(during > 0, "no write committed while the reads ran");
}
