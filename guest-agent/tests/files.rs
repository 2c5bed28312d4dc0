#![cfg(feature = "agent")]
//! Files through the agent: uploads streamed to the Desktop with the clash rule, reads confined
//! to the home. No X server needed (the agent is pointed at a display that does not exist).

mod common;

use std::os::unix::fs::MetadataExt;

use common::{request, request_bytes, start_agent};

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible, reproducible content.
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_land_on_the_desktop_and_never_overwrite() {
    let agent = start_agent(":4242").await;
    let data = bytes(5 << 20, 7);
    let r = request_bytes(
        &agent.socket,
        "POST",
        "/files/write?name=data.bin",
        data.clone(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["name"], "data.bin");
    assert_eq!(j["size_bytes"], 5 << 20);
    let path = agent.home.join("Desktop/data.bin");
    assert_eq!(j["path"], path.display().to_string());
    assert!(std::fs::read(&path).unwrap() == data, "bytes differ");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.uid(), nix::unistd::Uid::current().as_raw());

    // Same name again: a numbered name, the first file untouched.
    let r = request_bytes(
        &agent.socket,
        "POST",
        "/files/write?name=data.bin",
        b"two".to_vec(),
    )
    .await;
    assert_eq!(r.json()["name"], "data (1).bin");
    assert_eq!(
        std::fs::read(agent.home.join("Desktop/data (1).bin")).unwrap(),
        b"two"
    );
    assert!(std::fs::read(&path).unwrap() == data);
    // An empty file is a file.
    let r = request_bytes(&agent.socket, "POST", "/files/write?name=empty", vec![]).await;
    assert_eq!(r.json()["size_bytes"], 0);
    // No part files left behind.
    let left: Vec<_> = std::fs::read_dir(agent.home.join("Desktop"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Read back, by the three forms of path.
    for p in [
        "Desktop/data.bin",
        "~/Desktop/data.bin",
        &path.display().to_string(),
    ] {
        let r = request(
            &agent.socket,
            "GET",
            &format!("/files/read?path={}", urlencode(p)),
            None,
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "{p}: {}",
            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
        );
        assert_eq!(r.headers["x-deskd-file-size"], (5 << 20).to_string());
        assert!(r.body[..] == data[..], "{p}: bytes differ");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_outside_the_home_are_refused() {
    let agent = start_agent(":4243").await;
    std::os::unix::fs::symlink("/etc", agent.home.join("Desktop/etc")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", agent.home.join("Desktop/pw")).unwrap();
    for (p, status) in [
        ("../../etc/shadow", 403),
        ("/etc/passwd", 403),
        ("Desktop/etc/passwd", 403),
        ("Desktop/pw", 403),
        ("~/../../etc/passwd", 403),
        ("Desktop/nothing", 404),
        ("Desktop", 400),
        ("", 400),
    ] {
        let r = request(
            &agent.socket,
            "GET",
            &format!("/files/read?path={}", urlencode(p)),
            None,
        )
        .await;
        assert_eq!(r.status, status, "{p}");
        assert!(r.json()["error"].is_string(), "{p}");
    }
    let r = request(&agent.socket, "GET", "/files/read", None).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("path"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upload_names_are_400s() {
    let agent = start_agent(":4244").await;
    for q in [
        "",
        "?name=",
        "?name=..",
        "?name=a%2Fb",
        "?name=.hidden",
        "?nam=x",
    ] {
        let r = request_bytes(
            &agent.socket,
            "POST",
            &format!("/files/write{q}"),
            b"x".to_vec(),
        )
        .await;
        assert_eq!(r.status, 400, "{q}");
        assert!(r.json()["error"].is_string(), "{q}");
    }
    assert!(std::fs::read_dir(agent.home.join("Desktop"))
        .unwrap()
        .next()
        .is_none());
}

/// `POST /files/install` as the launch uses it: `/root/.env`-like files with mode 0600 and their
/// owner, missing parents made, an existing file replaced whole, and a bad request refused
/// without its content in the answer. Run as root (the agent in the image reaches root through
/// `sudo -n`; a test as root takes the same script directly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_files_get_their_mode_owner_and_whole_content() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: installing files as another owner needs root");
        return;
    }
    let agent = start_agent(":4242").await;
    let root = agent.home.join("fake-root");
    std::fs::create_dir_all(&root).unwrap();
    let env = root.join(".env");
    std::fs::write(&env, "OLD=1\n").unwrap();
    let nested = agent.home.join("new dir/deeper/app.json");
    let secret = "sk-'quoted' $HOME\nline two";
    let body = serde_json::json!({"files": [
        {"path": env.display().to_string(), "content": format!("API_KEY='{secret}'\n"), "mode": "0600", "owner": "root", "group": "root"},
        {"path": nested.display().to_string(), "content": "{}", "mode": "0640", "owner": "nobody", "group": "0"},
    ]});
    let r = request(
        &agent.socket,
        "POST",
        "/files/install",
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["paths"],
        serde_json::json!([env.display().to_string(), nested.display().to_string()])
    );
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        format!("API_KEY='{secret}'\n")
    );
    let meta = std::fs::metadata(&env).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let meta = std::fs::metadata(&nested).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(meta.uid(), nobody.uid.as_raw());
    // The directories made for it are the file's owner's.
    let made = std::fs::metadata(agent.home.join("new dir/deeper")).unwrap();
    assert_eq!(made.uid(), nobody.uid.as_raw());
    // No temporary file is left beside them.
    let left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from(".env")]);

    // Refused: a path with `..`; the answer names it and shows no content.
    let bad = serde_json::json!({"files": [
        {"path": "/tmp/../etc/x", "content": "hidden-value", "mode": "0600", "owner": "root", "group": "root"},
    ]});
    let r = request(
        &agent.socket,
        "POST",
        "/files/install",
        Some(&bad.to_string()),
    )
    .await;
    assert_eq!(r.status, 400);
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        text.contains("files[0]") && !text.contains("hidden-value"),
        "{text}"
    );
    // A directory in the way is an error naming the path, not a file moved into it.
    let dir = root.join("adir");
    std::fs::create_dir(&dir).unwrap();
    let body = serde_json::json!({"files": [
        {"path": dir.display().to_string(), "content": "x", "mode": "0600", "owner": "root", "group": "root"},
    ]});
    let r = request(
        &agent.socket,
        "POST",
        "/files/install",
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("is a directory"));
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
}
