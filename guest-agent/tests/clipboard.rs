#![cfg(feature = "agent")]
//! The CLIPBOARD selection through the agent, checked with `xclip` as the other X client: text
//! the agent sets is pasted by xclip (Unicode, and 1 MB, which goes piecewise through INCR), and
//! text xclip owns is read by the agent, also piecewise.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{post, request, start_agent, xvfb};

fn have_xclip() -> bool {
    let ok = Command::new("xclip")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!(
            "\n*** SKIPPED: xclip is not installed (apt-get install -y xclip); this test pastes with it ***\n"
        );
    }
    ok
}

/// What a paste gets: `xclip -o` of the CLIPBOARD selection as UTF-8.
fn paste(display: &str) -> String {
    let out = Command::new("xclip")
        .args(["-selection", "clipboard", "-o", "-t", "UTF8_STRING"])
        .env("DISPLAY", display)
        .output()
        .expect("run xclip -o");
    assert!(
        out.status.success(),
        "xclip -o: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 paste")
}

/// xclip owning the clipboard with `text` until it is dropped.
struct XclipOwner(Child);

impl XclipOwner {
    fn start(display: &str, text: &str) -> XclipOwner {
        let mut child = Command::new("xclip")
            .args(["-selection", "clipboard", "-i", "-quiet"])
            .env("DISPLAY", display)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn xclip -i");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        XclipOwner(child)
    }
}

impl Drop for XclipOwner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn clipboard(socket: &std::path::Path) -> serde_json::Value {
    let r = request(socket, "GET", "/clipboard", None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Text of `n` bytes with multi-byte characters throughout and a line structure.
fn big_text(n: usize) -> String {
    let mut s = String::with_capacity(n + 16);
    let mut i = 0u64;
    while s.len() < n {
        s.push_str(&format!("line {i} – ünïcödé ✓ 日本語\n"));
        i += 1;
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_text_is_pasted_and_copied_text_is_read() {
    let Some(x) = xvfb(640, 480) else { return };
    if !have_xclip() {
        return;
    }
    let agent = start_agent(&x.display).await;

    let j = clipboard(&agent.socket).await;
    assert_eq!(
        j,
        serde_json::json!({"success": true, "text": "", "owned": false})
    );

    let text = "Grüße, мир, 世界 🎉\nsecond line\ttab";
    let body = serde_json::json!({ "text": text }).to_string();
    let r = post(&agent.socket, "/clipboard", &body).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["action"], "clipboard_set");
    let display = x.display.clone();
    let pasted = tokio::task::spawn_blocking(move || paste(&display))
        .await
        .unwrap();
    assert_eq!(pasted, text);
    let j = clipboard(&agent.socket).await;
    assert_eq!(j["text"], text);
    assert_eq!(j["owned"], true);

    // 1 MB: more than one piece, so both directions go through INCR.
    let big = big_text(1 << 20);
    let body = serde_json::json!({ "text": big }).to_string();
    let r = post(&agent.socket, "/clipboard", &body).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let display = x.display.clone();
    let pasted = tokio::task::spawn_blocking(move || paste(&display))
        .await
        .unwrap();
    assert_eq!(pasted.len(), big.len());
    assert!(pasted == big, "the 1 MB paste differs");

    // Copied in another application: the agent loses the selection and reads the new owner's.
    let other = big_text(1 << 20).replace("line", "other");
    let _owner = XclipOwner::start(&x.display, &other);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let j = clipboard(&agent.socket).await;
        if j["text"].as_str() == Some(other.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never read xclip's text (got {} bytes)",
            j["text"].as_str().map_or(0, str::len)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // And it can take the clipboard back.
    let r = post(&agent.socket, "/clipboard", r#"{"text":"mine again"}"#).await;
    assert_eq!(r.status, 200);
    let display = x.display.clone();
    let pasted = tokio::task::spawn_blocking(move || paste(&display))
        .await
        .unwrap();
    assert_eq!(pasted, "mine again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clipboard_requests_are_400s_naming_the_field() {
    let Some(x) = xvfb(640, 480) else { return };
    let agent = start_agent(&x.display).await;
    for (body, needle) in [
        ("", "empty"),
        ("{", "invalid JSON"),
        (r#"{"txt":"a"}"#, "unknown field `txt`"),
        (r#"{}"#, "missing field `text`"),
        (r#"{"text":5}"#, "invalid type"),
    ] {
        let r = post(&agent.socket, "/clipboard", body).await;
        assert_eq!(r.status, 400, "{body}");
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let r = request(&agent.socket, "DELETE", "/clipboard", None).await;
    assert_eq!(r.status, 405);
}
