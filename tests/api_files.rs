//! The files API (api.md section 7) against a real daemon: every bad upload (missing and
//! unknown parts, empty files, bad and unknown ids, over the limit, over the quota), scoped keys,
//! and the stored file's life (list, signed download without a key, forged and expired links,
//! delete). No computer runs here: uploads are stored and wait for their computers; putting them
//! into a running guest and exports are covered by the rig flow (tests/sdk/rig_files_flow.py).

mod common;

use common::{Daemon, Resp, RELAXED};
use serde_json::{json, Value};

const BOUNDARY: &str = "deskd-test-boundary-7f3a";

/// One part of a multipart body: (name, filename, bytes).
type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

fn multipart(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn post_raw(d: &Daemon, path: &str, key: Option<&str>, content_type: &str, body: &[u8]) -> Resp {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: deskd\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(k) = key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    d.raw(&bytes)
}

fn upload_with(d: &Daemon, path: &str, key: &str, parts: &[Part<'_>]) -> Resp {
    post_raw(
        d,
        path,
        Some(key),
        &format!("multipart/form-data; boundary={BOUNDARY}"),
        &multipart(parts),
    )
}

fn upload(d: &Daemon, parts: &[Part<'_>]) -> Resp {
    upload_with(d, "/api/files/upload", &d.key, parts)
}

/// Files waiting in the incoming directory (none once a request has ended).
fn incoming(d: &Daemon) -> usize {
    std::fs::read_dir(d.data.join("files/.incoming"))
        .map(|r| r.count())
        .unwrap_or(0)
}

/// The path and query of an absolute signed URL.
fn local(url: &str) -> String {
    let rest = url
        .strip_prefix("http://localhost")
        .unwrap_or_else(|| panic!("not a URL of this daemon: {url}"));
    assert!(rest.starts_with("/api/files/content/"), "{url}");
    rest.to_string()
}

fn no_key_get(d: &Daemon, path: &str) -> Resp {
    d.send("GET", path, None, None)
}

#[test]
fn bad_uploads_are_refused_with_what_to_send() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    let other = d.workspace("o");
    let c = d.computer(&ws, "c");
    let cid = c["id"].as_str().unwrap();
    let data = b"hello".as_slice();
    let unknown = "0b8a3c1e-6f5e-4a57-9a43-2f7f6a7a0c11";

    // Not multipart at all.
    let r = d.post("/api/files/upload", json!({"projectId": ws}));
    assert!(r.error(400).contains("multipart/form-data"));
    // Broken multipart: a body that does not use the boundary it announces.
    let r = post_raw(
        &d,
        "/api/files/upload",
        Some(&d.key),
        "multipart/form-data; boundary=other",
        &multipart(&[("file", Some("a.txt"), data)]),
    );
    assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(&r.body));
    // No file part; a misspelt one; a file part without a filename; two files.
    let m = upload(&d, &[("projectId", None, ws.as_bytes())]).error(400);
    assert!(m.contains("no `file` part"), "{m}");
    let m = upload(
        &d,
        &[
            ("files", Some("a.txt"), data),
            ("projectId", None, ws.as_bytes()),
        ],
    )
    .error(400);
    assert!(
        m.contains("Unknown part \"files\"") && m.contains("file, projectId"),
        "{m}"
    );
    let m = upload(
        &d,
        &[("file", None, data), ("projectId", None, ws.as_bytes())],
    )
    .error(400);
    assert!(m.contains("no filename"), "{m}");
    let m = upload(
        &d,
        &[
            ("file", Some("a.txt"), data),
            ("file", Some("b.txt"), data),
            ("projectId", None, ws.as_bytes()),
        ],
    )
    .error(400);
    assert!(m.contains("one `file` part"), "{m}");
    // Empty files and names with nothing left.
    let m = upload(
        &d,
        &[
            ("file", Some("a.txt"), b""),
            ("projectId", None, ws.as_bytes()),
        ],
    )
    .error(400);
    assert!(m.contains("empty"), "{m}");
    let m = upload(
        &d,
        &[
            ("file", Some(".."), data),
            ("projectId", None, ws.as_bytes()),
        ],
    )
    .error(400);
    assert!(m.contains("Bad filename"), "{m}");
    // Where it goes: missing, malformed, unknown, contradictory.
    let m = upload(&d, &[("file", Some("a.txt"), data)]).error(400);
    assert!(m.contains("projectId"), "{m}");
    let m = upload(
        &d,
        &[("file", Some("a.txt"), data), ("projectId", None, b"nope")],
    )
    .error(400);
    assert!(m.contains("projectId must be a UUID"), "{m}");
    let m = upload(
        &d,
        &[("desktop_id", None, b"12"), ("file", Some("a.txt"), data)],
    )
    .error(400);
    assert!(m.contains("desktop_id must be a UUID"), "{m}");
    let m = upload(
        &d,
        &[
            ("file", Some("a.txt"), data),
            ("projectId", None, ws.as_bytes()),
            ("workspaceId", None, other.as_bytes()),
        ],
    )
    .error(400);
    assert!(m.contains("different"), "{m}");
    let m = upload(
        &d,
        &[
            ("file", Some("a.txt"), data),
            ("projectId", None, unknown.as_bytes()),
        ],
    )
    .error(404);
    assert!(m.contains("Workspace not found"), "{m}");
    let m = upload(
        &d,
        &[
            ("file", Some("a.txt"), data),
            ("desktopId", None, unknown.as_bytes()),
        ],
    )
    .error(404);
    assert!(m.contains("Computer not found"), "{m}");
    let m = upload(
        &d,
        &[
            ("file", Some("a.txt"), data),
            ("desktopId", None, cid.as_bytes()),
            ("projectId", None, other.as_bytes()),
        ],
    )
    .error(400);
    assert!(m.contains("not in the projectId"), "{m}");
    // The older form: an unknown computer, and parts it does not take.
    let m = upload_with(
        &d,
        &format!("/api/computers/{unknown}/files/upload"),
        &d.key,
        &[("file", Some("a.txt"), data)],
    )
    .error(404);
    assert!(m.contains("Computer not found"), "{m}");
    let m = upload_with(
        &d,
        &format!("/api/computers/{cid}/files/upload"),
        &d.key,
        &[
            ("file", Some("a.txt"), data),
            ("projectId", None, ws.as_bytes()),
        ],
    )
    .error(400);
    assert!(m.contains("Unknown part"), "{m}");
    // No key.
    let r = post_raw(
        &d,
        "/api/files/upload",
        None,
        &format!("multipart/form-data; boundary={BOUNDARY}"),
        &multipart(&[("file", Some("a.txt"), data)]),
    );
    assert_eq!(r.status, 401);

    // Nothing of all that was kept.
    let list = d.get("/api/files").expect(200);
    assert_eq!(list["files"], json!([]));
    assert_eq!(incoming(&d), 0);
}

#[test]
fn uploads_over_the_limit_are_413_naming_it() {
    let d = Daemon::start_with_config(&format!(
        "{RELAXED}[limits]\nmax_upload_bytes = 1000000\nmax_workspace_files_bytes = 1500000\n"
    ));
    let ws = d.workspace("w");
    let big = vec![7u8; 1_000_001];
    let r = upload(
        &d,
        &[
            ("projectId", None, ws.as_bytes()),
            ("file", Some("big.bin"), &big),
        ],
    );
    let v = r.expect(413);
    let m = v["error"].as_str().unwrap();
    assert!(
        m.contains("1000000 bytes") && m.contains("limits.max_upload_bytes"),
        "{m}"
    );
    assert_eq!(v["code"], "file_too_large");
    assert_eq!(v["limit_bytes"], 1_000_000);
    // Exactly the limit is fine; past the workspace's quota is 507 naming it.
    let at = vec![7u8; 1_000_000];
    upload(
        &d,
        &[
            ("projectId", None, ws.as_bytes()),
            ("file", Some("at.bin"), &at),
        ],
    )
    .expect(200);
    let v = upload(
        &d,
        &[
            ("projectId", None, ws.as_bytes()),
            ("file", Some("more.bin"), &at),
        ],
    )
    .expect(507);
    assert_eq!(v["code"], "files_quota_exceeded");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("limits.max_workspace_files_bytes"),
        "{v}"
    );
    let list = d.get("/api/files").expect(200);
    assert_eq!(list["files"].as_array().unwrap().len(), 1);
    assert_eq!(incoming(&d), 0);
    // Only the one stored file's bytes are on disk.
    let dir = d.data.join("files").join(&ws);
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1);
}

#[test]
fn a_workspace_upload_is_stored_listed_downloaded_and_deleted() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    let other = d.workspace("o");
    let c = d.computer(&ws, "c");
    let cid = c["id"].as_str().unwrap().to_string();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let v = upload(
        &d,
        &[
            ("file", Some("../../etc/Report 1.pdf"), &data),
            ("workspaceId", None, ws.as_bytes()),
        ],
    )
    .expect(200);
    assert_eq!(v["success"], true);
    let f = &v["file"];
    let id = f["id"].as_str().unwrap().to_string();
    assert_eq!(f["filename"], "Report 1.pdf", "the name is sanitised");
    assert_eq!(f["size_bytes"], data.len());
    assert_eq!(f["content_type"], "application/pdf");
    assert_eq!(f["source"], "upload");
    assert_eq!(f["project_id"], ws.as_str());
    assert_eq!(f["desktop_id"], Value::Null);
    assert!(f["created_at"].is_string());
    // Its computer does not run: the file waits for it.
    assert_eq!(v["deliveries"], json!([]));
    assert_eq!(v["pending_desktop_ids"], json!([cid]));

    // An upload to the computer (older form) is that computer's.
    let v2 = upload_with(
        &d,
        &format!("/api/computers/{cid}/files/upload"),
        &d.key,
        &[("file", Some("notes.txt"), b"some notes")],
    )
    .expect(200);
    assert_eq!(v2["file"]["desktop_id"], cid.as_str());
    assert_eq!(v2["file"]["content_type"], "text/plain");
    let id2 = v2["file"]["id"].as_str().unwrap().to_string();

    // Lists: all, by workspace, by computer, another workspace, bad filters.
    let all = d.get("/api/files").expect(200);
    assert_eq!(all["files"].as_array().unwrap().len(), 2);
    let by_ws = d.get(&format!("/api/files?projectId={ws}")).expect(200);
    assert_eq!(by_ws["files"].as_array().unwrap().len(), 2);
    assert_eq!(by_ws["files"][0], *f);
    let by_c = d.get(&format!("/api/files?desktopId={cid}")).expect(200);
    assert_eq!(by_c["files"].as_array().unwrap().len(), 1);
    assert_eq!(by_c["files"][0]["id"], id2.as_str());
    let none = d.get(&format!("/api/files?projectId={other}")).expect(200);
    assert_eq!(none["files"], json!([]));
    assert!(d
        .get("/api/files?project=x")
        .error(400)
        .contains("projectId"));
    assert!(d.get("/api/files?projectId=x").error(400).contains("UUID"));
    d.get("/api/files?desktopId=0b8a3c1e-6f5e-4a57-9a43-2f7f6a7a0c11")
        .expect(404);

    // A signed URL serves the bytes without a key.
    let url = d.get(&format!("/api/files/download?id={id}")).expect(200)["url"]
        .as_str()
        .unwrap()
        .to_string();
    let path = local(&url);
    let got = no_key_get(&d, &path);
    assert_eq!(got.status, 200);
    assert_eq!(got.body, data);
    assert_eq!(got.header("content-type"), Some("application/pdf"));
    assert!(got
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment; filename=\"Report 1.pdf\""));

    // Forged: another signature, another expiry, another file's id, none at all.
    let (route, query) = path.split_once('?').unwrap();
    let sig = query.split("signature=").nth(1).unwrap();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    let forged = [
        path.replace(sig, &flipped),
        path.replace("expires=", "expires=9"),
        format!("{}?{query}", route.replace(&id, &id2)),
        route.to_string(),
    ];
    for bad in &forged {
        let v = no_key_get(&d, bad).expect(403);
        assert_eq!(v["code"], "link_invalid", "{bad}: {v}");
    }
    // Download needs a valid id.
    assert!(d
        .get("/api/files/download")
        .error(400)
        .contains("id is required"));
    assert!(d
        .get("/api/files/download?id=x")
        .error(400)
        .contains("UUID"));
    d.get("/api/files/download?id=0b8a3c1e-6f5e-4a57-9a43-2f7f6a7a0c11")
        .expect(404);

    // Delete: gone from the list, from the disk, and its link says so.
    assert_eq!(
        d.delete(&format!("/api/files/delete?id={id}")).expect(200),
        json!({"success": true})
    );
    let v = no_key_get(&d, &path).expect(404);
    assert_eq!(v["code"], "file_deleted");
    d.delete(&format!("/api/files/delete?id={id}")).expect(404);
    d.get(&format!("/api/files/download?id={id}")).expect(404);
    assert!(!d.data.join("files").join(&ws).join(&id).exists());
    let all = d.get("/api/files").expect(200);
    assert_eq!(all["files"].as_array().unwrap().len(), 1);

    // The workspace's files go with it.
    d.delete(&format!("/api/workspaces/{ws}")).expect(200);
    assert_eq!(d.get("/api/files").expect(200)["files"], json!([]));
    assert!(!d.data.join("files").join(&ws).exists());
}

#[test]
fn expired_links_are_refused() {
    // A link whose expiry passed, signed with the daemon's own key (files-url.key).
    use hmac::Mac;
    let d = Daemon::start();
    let ws = d.workspace("w");
    let v = upload(
        &d,
        &[
            ("file", Some("a.txt"), b"abc"),
            ("projectId", None, ws.as_bytes()),
        ],
    )
    .expect(200);
    let id = v["file"]["id"].as_str().unwrap();
    let key = std::fs::read(d.data.join("files-url.key")).unwrap();
    let expires = 1_000_000u64;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}\n{expires}").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    let v = no_key_get(
        &d,
        &format!("/api/files/content/{id}?expires={expires}&signature={sig}"),
    )
    .expect(403);
    assert_eq!(v["code"], "link_expired");
    assert!(v["error"].as_str().unwrap().contains("expired"));
}

#[test]
fn scoped_keys_see_and_touch_only_their_workspace_files() {
    let d = Daemon::start();
    let mine = d.workspace("mine");
    let theirs = d.workspace("theirs");
    let their_c = d.computer(&theirs, "c")["id"].as_str().unwrap().to_string();
    let out = d.cli(&["keys", "create", "--workspace", &mine]);
    assert!(out.status.success(), "{out:?}");
    let scoped = String::from_utf8(out.stdout).unwrap().trim().to_string();

    let their_file = upload(
        &d,
        &[
            ("file", Some("t.txt"), b"theirs"),
            ("projectId", None, theirs.as_bytes()),
        ],
    )
    .expect(200)["file"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let my_file = upload_with(
        &d,
        "/api/files/upload",
        &scoped,
        &[
            ("file", Some("m.txt"), b"mine"),
            ("projectId", None, mine.as_bytes()),
        ],
    )
    .expect(200)["file"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Uploads elsewhere are refused, to the workspace and to its computer.
    for parts in [
        vec![
            ("file", Some("x.txt"), b"x".as_slice()),
            ("projectId", None, theirs.as_bytes()),
        ],
        vec![
            ("file", Some("x.txt"), b"x".as_slice()),
            ("desktopId", None, their_c.as_bytes()),
        ],
    ] {
        let v = upload_with(&d, "/api/files/upload", &scoped, &parts).expect(403);
        assert_eq!(v["code"], "workspace_scope_mismatch");
    }
    upload_with(
        &d,
        &format!("/api/computers/{their_c}/files/upload"),
        &scoped,
        &[("file", Some("x.txt"), b"x")],
    )
    .expect(403);
    // The list shows its own files only; asking for another workspace's is refused.
    let list = d.send("GET", "/api/files", Some(&scoped), None).expect(200);
    let ids: Vec<&str> = list["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![my_file.as_str()]);
    d.send(
        "GET",
        &format!("/api/files?projectId={theirs}"),
        Some(&scoped),
        None,
    )
    .expect(403);
    d.send(
        "GET",
        &format!("/api/files?desktopId={their_c}"),
        Some(&scoped),
        None,
    )
    .expect(403);
    // Another workspace's file: no link, no delete.
    for (method, path) in [
        ("GET", format!("/api/files/download?id={their_file}")),
        ("DELETE", format!("/api/files/delete?id={their_file}")),
    ] {
        let v = d.send(method, &path, Some(&scoped), None).expect(403);
        assert_eq!(v["code"], "workspace_scope_mismatch");
    }
    d.send(
        "GET",
        &format!("/api/files/download?id={my_file}"),
        Some(&scoped),
        None,
    )
    .expect(200);
    assert_eq!(
        d.get("/api/files").expect(200)["files"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn exports_check_their_input_and_need_a_running_computer() {
    let d = Daemon::start();
    let ws = d.workspace("w");
    let c = d.computer(&ws, "c");
    let cid = c["id"].as_str().unwrap();
    // Stopped, so that on a host that could boot it the export does not wait for a boot.
    d.post(&format!("/api/computers/{cid}/stop"), json!({}));
    let cases = [
        (json!({"path": "Desktop/a.txt"}), "desktopId is required"),
        (
            json!({"desktopId": "x", "path": "a"}),
            "desktopId must be a UUID",
        ),
        (json!({"desktopId": cid}), "path is required"),
        (
            json!({"desktopId": cid, "path": 5}),
            "path must be a string",
        ),
        (json!({"desktopId": cid, "path": ""}), "path must be 1-"),
        (json!({"desktopId": cid, "path": "~/"}), "must name a file"),
    ];
    for (body, want) in cases {
        let m = d.post("/api/files/export", body.clone()).error(400);
        assert!(m.contains(want), "{body}: {m}");
    }
    d.post(
        "/api/files/export",
        json!({"desktopId": "0b8a3c1e-6f5e-4a57-9a43-2f7f6a7a0c11", "path": "a.txt"}),
    )
    .expect(404);
    // Its computer does not run (no hardware virtualization here).
    let m = d
        .post(
            "/api/files/export",
            json!({"desktopId": cid, "path": "Desktop/a.txt"}),
        )
        .error(400);
    assert!(m.contains("Desktop instance not available"), "{m}");
    assert_eq!(d.get("/api/files").expect(200)["files"], json!([]));
}

/// A field of `/proc/PID/status` in kB.
fn status_kb(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn a_200_mib_upload_goes_to_disk_as_it_arrives_not_into_the_daemons_memory() {
    let d = Daemon::start_with_config(&format!(
        "{RELAXED}[limits]\nmax_upload_bytes = 300000000\nmax_workspace_files_bytes = 300000000\n"
    ));
    let ws = d.workspace("w");
    let pid = d.pid().expect("the daemon's pid");
    // VmHWM from now on (clear_refs 5 resets the peak to the current RSS; where it cannot, the
    // peak so far is the start-up's, still far below 200 MiB).
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let before = status_kb(pid, "VmRSS");
    let size = 200usize << 20;
    let big: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let v = upload(
        &d,
        &[
            ("projectId", None, ws.as_bytes()),
            ("file", Some("big.bin"), &big),
        ],
    )
    .expect(200);
    drop(big);
    let peak = status_kb(pid, "VmHWM");
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!(
        "a 200 MiB upload: the daemon's RSS {} MiB before, peak {} MiB during (+{growth_mib} MiB)",
        before / 1024,
        peak / 1024
    );
    assert_eq!(v["file"]["size_bytes"], size as u64, "{v}");
    // Buffers, not the file: a daemon that held the upload would grow by 200 MiB or more.
    assert!(
        growth_mib < 64,
        "the daemon grew by {growth_mib} MiB during a 200 MiB upload"
    );
    let dir = d.data.join("files").join(&ws);
    let stored: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert_eq!(stored.len(), 1);
    let on_disk = stored[0].as_ref().unwrap().metadata().unwrap().len();
    assert_eq!(on_disk, size as u64);
    assert_eq!(incoming(&d), 0);
}
