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
