//! A full disk under the daemon: its data directory on a small tmpfs that the test fills. Writes
//! then fail with a clear 507 naming the cause (never a 500, never a hang), creates are refused,
//! and once space is back everything works again; the database passes `integrity_check` and no
//! half-written file (uploads, disks, state files) is left behind. Needs root (mount); skipped
//! loudly without it.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Daemon, RELAXED};
use serde_json::{json, Value};

const BOUNDARY: &str = "deskd-disk-full-boundary";

/// A tmpfs of `size` mounted on a new directory, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Option<SmallFs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { dir }),
            Ok(o) => {
                eprintln!(
                    "\n*** SKIPPED disk-full test: cannot mount a tmpfs ({}); run as root where mount is allowed ***\n",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("\n*** SKIPPED disk-full test: no mount command ({e}) ***\n");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0x5au8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling: {e}");
                break;
            }
        }
    }
    // Whatever a partial write left: the last bytes too.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {}
    let _ = f.sync_all();
}

fn upload(d: &Daemon, ws: &str, bytes: &[u8]) -> common::Resp {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"projectId\"\r\n\r\n{ws}\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    let mut req = format!(
        "POST /api/files/upload HTTP/1.1\r\nHost: deskd\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: {}\r\n\r\n",
        d.key,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    d.raw(&req)
}

/// Every file below `dir`.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A 507 that names the full disk, or a success; anything else fails the test.
#[track_caller]
fn full_or_fine(what: &str, r: &common::Resp) -> bool {
    if r.status < 300 {
        return false;
    }
    let v: Value = r.json();
    assert_eq!(
        r.status, 507,
        "{what} on a full disk answered {}: {v}",
        r.status
    );
    let text = v.to_string().to_lowercase();
    assert!(
        text.contains("disk") || text.contains("storage") || text.contains("space"),
        "{what}: the 507 does not name the cause: {v}"
    );
    true
}

#[test]
fn a_full_disk_gives_507s_keeps_the_database_whole_and_leaves_nothing_half_written() {
    let Some(fs) = SmallFs::mount("32m") else {
        return;
    };
    let data = fs.path().join("data");
    // No free-space reserve: the writes themselves must meet the full disk.
    let config = format!("{RELAXED}[quotas]\nmin_free_disk_gb = 0\n");
    let mut d = Daemon::start_with_data_dir(&config, data.clone());
    let ws = d.workspace("before");
    let before = d.computer(&ws, "before");
    let filler = fs.path().join("filler");
    fill(&filler);

    // Store writes: each answer is a success (SQLite had room in pages it holds) or a 507 naming
    // the disk; within a few hundred the database must run out.
    let (mut refused, mut taken) = (0, 0);
    for i in 0..400 {
        let r = d.post("/api/workspaces", json!({ "name": format!("full-{i}") }));
        if full_or_fine("POST /api/workspaces", &r) {
            refused += 1;
            if refused >= 3 {
                break;
            }
        } else {
            taken += 1;
        }
    }
    eprintln!("workspace creates on the full disk: {taken} fit in pages SQLite held, then {refused} refused with 507");
    assert!(
        refused > 0,
        "400 workspace creates on a full disk all succeeded"
    );
    // Creates, changes of a computer, uploads.
    let r = d.post(
        "/api/computers",
        json!({ "workspace_id": ws, "name": "during" }),
    );
    assert!(
        full_or_fine("POST /api/computers", &r),
        "a computer was created on a full disk: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let id = before["id"].as_str().unwrap();
    let r = d.patch(
        &format!("/api/computers/{id}/auto-stop"),
        json!({ "auto_stop_minutes": 7 }),
    );
    full_or_fine("PATCH auto-stop", &r);
    let r = upload(&d, &ws, &vec![7u8; 2 << 20]);
    assert!(
        full_or_fine("an upload", &r),
        "a 2 MiB upload fit on a full disk"
    );
    // Reads still work.
    d.get(&format!("/api/computers/{id}")).expect(200);

    // Space is back: writes work again, without a restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    d.post("/api/workspaces", json!({ "name": "after" }))
        .expect(201);
    d.patch(
        &format!("/api/computers/{id}/auto-stop"),
        json!({ "auto_stop_minutes": 9 }),
    )
    .expect(200);
    d.stop(false);

    let db = rusqlite::Connection::open(data.join("deskd.db")).expect("open the database");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    let half_written: Vec<_> = files_below(&data)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.contains(".partial")
                || name.contains(".tmp")
                || p.parent().is_some_and(|d| d.ends_with("files/.incoming"))
        })
        .collect();
    assert!(half_written.is_empty(), "left behind: {half_written:?}");
}
