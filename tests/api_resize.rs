//! `PATCH /computers/{id}/resize` against a real daemon on a host where no computer runs: every
//! bad input (400 before anything is looked at, 403 over a quota, 404 for no such computer), a
//! stopped computer's resize stored for its next start (200, `takes_effect: next_start`), a
//! computer with a saved VM refused for what its saved memory holds (409), and what is kept
//! across a daemon restart. The live path needs a running VM: tests/sdk/rig_resize_flow.py.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, RELAXED};
use serde_json::{json, Value};

/// A computer that exists and has no VM: created (it cannot start here: no image in the test's
/// data directory, and maybe no hardware virtualization), then stopped. Its path.
fn stopped_computer(d: &Daemon, ws: &str, name: &str) -> (String, Value) {
    let c = d.computer(ws, name);
    let id = c["id"].as_str().unwrap().to_string();
    let path = format!("/api/computers/{id}");
    // Starting goes on in the background where the host could run VMs; it ends in `error`.
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.get(&path).expect(200)["status"] == "starting" {
        assert!(Instant::now() < deadline, "still starting after 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    d.post(&format!("{path}/stop"), json!({})).expect(200);
    let c = d.get(&path).expect(200);
    assert_eq!(c["status"], "stopped", "{c}");
    (path, c)
}

#[test]
fn bad_values_are_400_and_change_nothing() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    let (path, before) = stopped_computer(&d, &ws, "c");
    let resize = format!("{path}/resize");
    for (body, expected) in [
        (json!({}), "Nothing to resize"),
        (json!({"vcpus": 3}), "vcpus must be one of 1, 2, 4, 8, 16."),
        (json!({"vcpus": 32}), "vcpus"),
        (json!({"vcpus": 0}), "vcpus"),
        (json!({"vcpus": "2"}), "vcpus"),
        (json!({"vcpus": 2.5}), "vcpus"),
        (
            json!({"mem_gb": 5}),
            "mem_gb must be one of 4, 8, 16, 32 (GB).",
        ),
        (json!({"mem_gb": 64}), "mem_gb must be one of"),
        (json!({"mem_gb": null}), "mem_gb"),
        (json!({"disk_size_gb": 4}), "can only grow"),
        (json!({"disk_size_gb": 7}), "can only grow"),
        (json!({"disk_size_gb": 0}), "disk_size_gb"),
        (json!({"disk_size_gb": -12}), "disk_size_gb"),
        (json!({"disk_size_gb": "12"}), "disk_size_gb"),
        (json!({"disk_size_gb": 1e12}), "disk_size_gb"),
        (
            json!({"disk_size_gb": 18446744073709551616u128 as f64}),
            "disk_size_gb",
        ),
        (json!({"bandwidth_limit_mbps": 0}), "bandwidth_limit_mbps"),
        (
            json!({"bandwidth_limit_mbps": 100001}),
            "bandwidth_limit_mbps",
        ),
        (json!({"auto_stop_minutes": -1}), "auto_stop_minutes"),
        // One bad value spoils the whole request: the good ones are not applied either.
        (json!({"vcpus": 2, "mem_gb": 3}), "mem_gb"),
        (json!({"vcpus": 2, "disk_size_gb": 4}), "can only grow"),
    ] {
        let m = d.patch(&resize, body.clone()).error(400);
        assert!(m.contains(expected), "{body}: {m}");
    }
    for raw in ["", "[]", "not json", "{\"vcpus\": 2,}"] {
        let r = d.send("PATCH", &resize, Some(&d.key), Some(raw));
        r.expect(400);
    }
    let after = d.get(&path).expect(200);
    for field in ["cpu", "ram", "disk_size_gb", "auto_stop_minutes"] {
        assert_eq!(after[field], before[field], "{field} changed");
    }
    // No such computer; and another verb.
    let nobody = "/api/computers/00000000-0000-4000-8000-000000000000/resize";
    d.patch(nobody, json!({"vcpus": 2})).expect(404);
    assert_eq!(d.post(&resize, json!({"vcpus": 2})).status, 405);
}

#[test]
fn a_stopped_computers_resize_is_stored_for_its_next_start() {
    let mut d = Daemon::start();
    let ws = d.workspace("w");
    let (path, before) = stopped_computer(&d, &ws, "c");
    assert_eq!(
        (before["cpu"].as_u64(), before["ram"].as_u64()),
        (Some(1), Some(4))
    );
    let v = d
        .patch(
            &format!("{path}/resize"),
            json!({"vcpus": 2, "mem_gb": 8, "disk_size_gb": 12,
                   "bandwidth_limit_mbps": 50, "auto_stop_minutes": 15}),
        )
        .expect(200);
    assert_eq!(v["takes_effect"], "next_start", "{v}");
    assert_eq!(v["partial"], false);
    assert_eq!(
        (&v["vcpus"], &v["mem_gb"], &v["disk_size_gb"]),
        (&json!(2), &json!(8), &json!(12))
    );
    assert_eq!(v["bandwidth_limit_mbps"], 50);
    assert_eq!(v["auto_stop_minutes"], 15);
    let results = &v["results"];
    for (name, requested) in [
        ("vcpus", 2),
        ("mem_mb", 8192),
        ("disk_gb", 12),
        ("bandwidth_limit_mbps", 50),
        ("auto_stop_minutes", 15),
    ] {
        assert_eq!(
            results[name],
            json!({"requested": requested, "applied": requested, "ok": true}),
            "{name}: {v}"
        );
    }
    // The record is what the next start boots (its VMM configuration is made from it).
    let c = d.get(&path).expect(200);
    assert_eq!(
        (&c["cpu"], &c["ram"], &c["disk_size_gb"], &c["status"]),
        (&json!(2), &json!(8), &json!(12), &json!("stopped"))
    );
    // A second resize goes on from the stored shape: 12 GB is now the floor.
    assert!(d
        .patch(&format!("{path}/resize"), json!({"disk_size_gb": 10}))
        .error(400)
        .contains("the disk is 12 GB"));
    // Smaller vCPUs and memory are a resize too (stored, no hotplug involved).
    let v = d
        .patch(&format!("{path}/resize"), json!({"vcpus": 1, "mem_gb": 4}))
        .expect(200);
    assert_eq!((&v["vcpus"], &v["mem_gb"]), (&json!(1), &json!(4)));
    // Kept across a daemon restart.
    d.restart(false);
    let c = d.get(&path).expect(200);
    assert_eq!(
        (&c["cpu"], &c["ram"], &c["disk_size_gb"]),
        (&json!(1), &json!(4), &json!(12))
    );
    assert_eq!(c["auto_stop_minutes"], 15);
}

#[test]
fn a_stored_resize_is_checked_against_the_quotas_first() {
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / (1024 * 1024);
    if mem_gb == 0 {
        eprintln!("SKIPPED a_stored_resize_is_checked_against_the_quotas_first: under 1 GB of RAM");
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Room for exactly one 1-vCPU, 4 GB computer; a 20 GB disk at most.
    let config = format!(
        "{RELAXED}[quotas]\nvcpu_commit_ratio = {}\nram_commit_ratio = {}\nmax_disk_gb_per_computer = 20\n",
        1.5 / cpus as f64,
        4.5 / mem_gb as f64
    );
    let d = Daemon::start_with_config(&config);
    let ws = d.workspace("q");
    let (path, _) = stopped_computer(&d, &ws, "c");
    let resize = format!("{path}/resize");
    for (body, limit) in [
        (json!({"vcpus": 2}), "vcpu_commit_ratio"),
        (json!({"mem_gb": 8}), "ram_commit_ratio"),
        (json!({"disk_size_gb": 21}), "max_disk_gb_per_computer"),
        // Over one quota: nothing of the request is stored, not even what would fit.
        (
            json!({"mem_gb": 8, "disk_size_gb": 12, "bandwidth_limit_mbps": 5}),
            "ram_commit_ratio",
        ),
    ] {
        let v = d.patch(&resize, body.clone()).expect(403);
        assert!(v["error"].as_str().unwrap().contains(limit), "{body}: {v}");
        assert_eq!(v["code"], "quota_exceeded");
    }
    let c = d.get(&path).expect(200);
    assert_eq!(
        (&c["cpu"], &c["ram"], &c["disk_size_gb"]),
        (&json!(1), &json!(4), &json!(8))
    );
    let v = d.patch(&resize, json!({"disk_size_gb": 20})).expect(200);
    assert_eq!(v["disk_size_gb"], 20);
    assert!(v["bandwidth_limit_mbps"].is_null(), "{v}");
}

#[test]
fn a_computer_with_a_saved_vm_keeps_its_shape_but_takes_a_bandwidth_limit() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    let c = d.computer(&ws, "c");
    let id = c["id"].as_str().unwrap().to_string();
    let path = format!("/api/computers/{id}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.get(&path).expect(200)["status"] == "starting" {
        assert!(Instant::now() < deadline, "still starting after 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A saved VM left to restore (what a suspend leaves; here one whose resume failed, so the
    // computer is in `error`): its memory holds 1 vCPU and 4 GB.
    let saved = d.data.join("computers").join(&id).join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    std::fs::write(saved.join("state"), b"stand-in").unwrap();
    assert_eq!(d.get(&path).expect(200)["status"], "error");
    for body in [
        json!({"vcpus": 2}),
        json!({"mem_gb": 8}),
        json!({"disk_size_gb": 12}),
        json!({"disk_size_gb": 12, "bandwidth_limit_mbps": 5}),
    ] {
        let m = d.patch(&format!("{path}/resize"), body.clone()).error(409);
        assert!(
            m.contains("saved VM") && m.contains("stop it"),
            "{body}: {m}"
        );
    }
    let v = d
        .patch(
            &format!("{path}/resize"),
            json!({"bandwidth_limit_mbps": 5, "auto_stop_minutes": 3}),
        )
        .expect(200);
    assert_eq!(v["bandwidth_limit_mbps"], 5);
    assert_eq!(v["takes_effect"], "next_start");
    let c = d.get(&path).expect(200);
    assert_eq!(
        (&c["cpu"], &c["ram"], &c["disk_size_gb"]),
        (&json!(1), &json!(4), &json!(8))
    );
}
