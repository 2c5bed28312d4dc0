#![cfg(feature = "agent")]
//! The terminal and events WebSockets.

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::*;
use x11rb::protocol::Event as XEvent;
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use common::{start_agent, xvfb};

type Ws = WebSocketStream<tokio::net::UnixStream>;

async fn connect(sock: &std::path::Path, path: &str) -> Ws {
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://agent{path}"), stream)
        .await
        .expect("websocket handshake");
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Next JSON text frame, or panic after `secs`.
async fn next_json(ws: &mut Ws, secs: u64) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(secs), ws.next())
            .await
            .expect("timed out waiting for a message")
            .expect("socket closed")
            .expect("socket error");
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_echoes_resizes_and_reports_the_exit_code() {
    let Some(x) = xvfb(320, 240) else { return };
    let agent = start_agent(&x.display).await;
    let mut ws = connect(&agent.socket, "/ws/terminal?cols=100&rows=30").await;
    send(&mut ws, json!({"type":"ping"})).await;
    send(
        &mut ws,
        json!({"type":"input","data":"stty size; echo mark-$((6*7))\n"}),
    )
    .await;
    let mut out = String::new();
    let mut got_pong = false;
    while !(out.contains("mark-42") && out.contains("30 100") && got_pong) {
        let m = next_json(&mut ws, 10).await;
        match m["type"].as_str() {
            Some("output") => out.push_str(m["data"].as_str().unwrap()),
            Some("pong") => got_pong = true,
            other => panic!("unexpected {other:?}: {m}"),
        }
    }
    send(&mut ws, json!({"type":"resize","cols":120,"rows":40})).await;
    send(&mut ws, json!({"type":"input","data":"stty size\n"})).await;
    out.clear();
    while !out.contains("40 120") {
        let m = next_json(&mut ws, 10).await;
        if m["type"] == "output" {
            out.push_str(m["data"].as_str().unwrap());
        }
    }
    send(&mut ws, json!({"type":"bogus"})).await;
    loop {
        let m = next_json(&mut ws, 10).await;
        if m["type"] == "error" {
            break;
        }
    }
    send(&mut ws, json!({"type":"input","data":"exit 5\n"})).await;
    loop {
        let m = next_json(&mut ws, 10).await;
        if m["type"] == "exit" {
            assert_eq!(m["code"], 5);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_takes_a_large_paste_while_the_shell_echoes_it() {
    let Some(x) = xvfb(320, 240) else { return };
    let agent = start_agent(&x.display).await;
    let mut ws = connect(&agent.socket, "/ws/terminal").await;
    // `cat` writes back every line (and the terminal echoes it too): far more output than a PTY
    // buffers, so the agent must keep reading output while it is still writing the paste.
    send(&mut ws, json!({"type":"input","data":"cat\n"})).await;
    let line = format!("{}\n", "x".repeat(500));
    let paste = line.repeat(2000);
    send(&mut ws, json!({"type":"input","data": paste})).await;
    send(
        &mut ws,
        json!({"type":"input","data":"\u{4}echo paste-done-$((6*7))\n"}),
    )
    .await;
    let mut tail = String::new();
    let mut received = 0usize;
    while !tail.contains("paste-done-42") {
        let m = next_json(&mut ws, 30).await;
        if m["type"] == "output" {
            let data = m["data"].as_str().unwrap();
            received += data.len();
            tail.push_str(data);
            // Only the end matters; keep the buffer small.
            if tail.len() > 4096 {
                let keep_from = (tail.len() - 1024..tail.len())
                    .find(|&i| tail.is_char_boundary(i))
                    .unwrap_or(0);
                tail.drain(..keep_from);
            }
        }
    }
    assert!(
        received >= paste.len(),
        "only {received} bytes of output for a {}-byte paste",
        paste.len()
    );
}

/// Acts as a window manager would: publishes `_NET_CLIENT_LIST` and `_NET_ACTIVE_WINDOW`.
struct FakeWm {
    conn: RustConnection,
    root: Window,
    depth: u8,
    client_list: Atom,
    active: Atom,
    net_wm_name: Atom,
    utf8: Atom,
}

impl FakeWm {
    fn new(display: &str) -> FakeWm {
        let (conn, n) = RustConnection::connect(Some(display)).unwrap();
        let screen = conn.setup().roots[n].clone();
        let atom = |name: &str| {
            conn.intern_atom(false, name.as_bytes())
                .unwrap()
                .reply()
                .unwrap()
                .atom
        };
        let (client_list, active, net_wm_name, utf8) = (
            atom("_NET_CLIENT_LIST"),
            atom("_NET_ACTIVE_WINDOW"),
            atom("_NET_WM_NAME"),
            atom("UTF8_STRING"),
        );
        let wm = FakeWm {
            root: screen.root,
            depth: screen.root_depth,
            conn,
            client_list,
            active,
            net_wm_name,
            utf8,
        };
        wm.set_list(&[]);
        wm
    }

    fn open(&self, title: &str) -> Window {
        let id = self.conn.generate_id().unwrap();
        self.conn
            .create_window(
                self.depth,
                id,
                self.root,
                10,
                10,
                100,
                100,
                0,
                WindowClass::INPUT_OUTPUT,
                0,
                &CreateWindowAux::new(),
            )
            .unwrap();
        self.conn
            .change_property8(
                PropMode::REPLACE,
                id,
                self.net_wm_name,
                self.utf8,
                title.as_bytes(),
            )
            .unwrap();
        self.conn.map_window(id).unwrap();
        id
    }

    fn set_list(&self, windows: &[Window]) {
        self.conn
            .change_property32(
                PropMode::REPLACE,
                self.root,
                self.client_list,
                AtomEnum::WINDOW,
                windows,
            )
            .unwrap();
        self.conn.flush().unwrap();
    }

    fn focus(&self, w: Window) {
        self.conn
            .change_property32(
                PropMode::REPLACE,
                self.root,
                self.active,
                AtomEnum::WINDOW,
                &[w],
            )
            .unwrap();
        self.conn.flush().unwrap();
    }
}

/// Owns CLIPBOARD and serves `text` as UTF8_STRING from a thread, like a real application.
fn own_clipboard(display: &str, text: &'static str) -> std::thread::JoinHandle<()> {
    let display = display.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let (conn, n) = RustConnection::connect(Some(&display)).unwrap();
        let screen = conn.setup().roots[n].clone();
        let atom = |name: &str| {
            conn.intern_atom(false, name.as_bytes())
                .unwrap()
                .reply()
                .unwrap()
                .atom
        };
        let (clipboard, utf8) = (atom("CLIPBOARD"), atom("UTF8_STRING"));
        let w = conn.generate_id().unwrap();
        conn.create_window(
            0,
            w,
            screen.root,
            0,
            0,
            1,
            1,
            0,
            WindowClass::INPUT_ONLY,
            0,
            &CreateWindowAux::new(),
        )
        .unwrap();
        conn.set_selection_owner(w, clipboard, x11rb::CURRENT_TIME)
            .unwrap();
        conn.flush().unwrap();
        ready_tx.send(()).unwrap();
        // Answer one request, then stop.
        while let Ok(ev) = conn.wait_for_event() {
            if let XEvent::SelectionRequest(req) = ev {
                let ok = req.target == utf8;
                if ok {
                    conn.change_property8(
                        PropMode::REPLACE,
                        req.requestor,
                        req.property,
                        utf8,
                        text.as_bytes(),
                    )
                    .unwrap();
                }
                let notify = SelectionNotifyEvent {
                    response_type: SELECTION_NOTIFY_EVENT,
                    sequence: 0,
                    time: req.time,
                    requestor: req.requestor,
                    selection: req.selection,
                    target: req.target,
                    property: if ok { req.property } else { x11rb::NONE },
                };
                conn.send_event(false, req.requestor, EventMask::NO_EVENT, notify)
                    .unwrap();
                conn.flush().unwrap();
                if ok {
                    // Keep the connection (and ownership) a moment so the reader can finish.
                    std::thread::sleep(Duration::from_millis(300));
                    return;
                }
            }
        }
    });
    ready_rx.recv().unwrap();
    h
}

/// Waits for an event of `kind` (other kinds are skipped) and returns its data.
async fn next_event(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = next_json(ws, 10).await;
        if m["type"] == "event" && m["event"]["type"] == kind {
            assert!(m["event"]["timestamp"].as_str().unwrap().ends_with('Z'));
            return m["event"]["data"].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_windows_clipboard_and_files() {
    let Some(x) = xvfb(640, 480) else { return };
    let wm = FakeWm::new(&x.display);
    let agent = start_agent(&x.display).await;
    let mut ws = connect(&agent.socket, "/ws/events").await;

    // Nothing is sent before subscribing; unknown types are named.
    send(&mut ws, json!({"type":"subscribe","event_types":["window_open","window_focus","window_close","clipboard","file_change","no_such_type"]})).await;
    let m = next_json(&mut ws, 5).await;
    assert_eq!(
        m,
        json!({"type":"error","message":"Unknown event type: no_such_type"})
    );
    let m = next_json(&mut ws, 5).await;
    assert_eq!(m["type"], "subscribed");
    assert_eq!(m["event_types"].as_array().unwrap().len(), 5);
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(next_json(&mut ws, 5).await, json!({"type":"pong"}));
    // Give the X watcher a moment to read the initial (empty) client list.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let w = wm.open("Test Window ✓");
    wm.set_list(&[w]);
    let d = next_event(&mut ws, "window_open").await;
    assert_eq!(d["window_id"], w);
    assert_eq!(d["title"], "Test Window ✓");

    wm.focus(w);
    let d = next_event(&mut ws, "window_focus").await;
    assert_eq!(d["window_id"], w);
    assert_eq!(d["title"], "Test Window ✓");

    wm.set_list(&[]);
    let d = next_event(&mut ws, "window_close").await;
    assert_eq!(d["window_id"], w);

    let owner = own_clipboard(&x.display, "copied text ✓");
    let d = next_event(&mut ws, "clipboard").await;
    assert_eq!(d["content"], "copied text ✓");
    owner.join().unwrap();

    let path = agent.home.join("Desktop").join("new-file.txt");
    std::fs::write(&path, "x").unwrap();
    let d = next_event(&mut ws, "file_change").await;
    assert_eq!(d["path"], path.to_string_lossy().as_ref());
    assert_eq!(d["action"], "created");

    // After unsubscribing, file events stop.
    send(
        &mut ws,
        json!({"type":"unsubscribe","event_types":["file_change"]}),
    )
    .await;
    loop {
        let m = next_json(&mut ws, 5).await;
        if m["type"] == "unsubscribed" {
            break;
        }
    }
    std::fs::write(agent.home.join("Downloads").join("ignored.txt"), "y").unwrap();
    send(&mut ws, json!({"type":"ping"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    loop {
        let m = next_json(&mut ws, 5).await;
        assert_ne!(m["event"]["type"], "file_change", "{m}");
        if m["type"] == "pong" {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_idle_active_and_processes() {
    let Some(x) = xvfb(320, 240) else { return };
    let agent =
        common::start_agent_with(&x.display, |c| c.idle_after = Duration::from_secs(1)).await;
    let mut ws = connect(&agent.socket, "/ws/events").await;
    send(
        &mut ws,
        json!({"type":"subscribe","event_types":["idle","active","process_start","process_stop"]}),
    )
    .await;
    assert_eq!(next_json(&mut ws, 5).await["type"], "subscribed");
    let d = next_event(&mut ws, "idle").await;
    assert!(d["idle_seconds"].as_u64().unwrap() >= 1);
    assert_eq!(
        common::post(&agent.socket, "/move", r#"{"x":3,"y":3}"#)
            .await
            .status,
        200
    );
    next_event(&mut ws, "active").await;

    // A process that lives across at least one /proc poll shows up as started, then stopped.
    let mut child = std::process::Command::new("sleep")
        .arg("2.5")
        .spawn()
        .unwrap();
    let pid = child.id();
    loop {
        let d = next_event(&mut ws, "process_start").await;
        if d["pid"] == pid {
            assert_eq!(d["name"], "sleep");
            break;
        }
    }
    child.wait().unwrap();
    loop {
        let d = next_event(&mut ws, "process_stop").await;
        if d["pid"] == pid {
            break;
        }
    }
}

/// Without a window manager (no EWMH properties), top-level maps, destroys and the X input focus
/// stand in for window_open, window_close and window_focus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_windows_without_a_window_manager() {
    let Some(x) = xvfb(320, 240) else { return };
    let agent = start_agent(&x.display).await;
    let mut ws = connect(&agent.socket, "/ws/events").await;
    send(
        &mut ws,
        json!({"type":"subscribe","event_types":["window_open","window_focus","window_close"]}),
    )
    .await;
    assert_eq!(next_json(&mut ws, 5).await["type"], "subscribed");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (conn, n) = RustConnection::connect(Some(&x.display)).unwrap();
    let screen = conn.setup().roots[n].clone();
    let w = conn.generate_id().unwrap();
    conn.create_window(
        screen.root_depth,
        w,
        screen.root,
        0,
        0,
        50,
        50,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new(),
    )
    .unwrap();
    conn.change_property8(
        PropMode::REPLACE,
        w,
        AtomEnum::WM_NAME,
        AtomEnum::STRING,
        b"plain title",
    )
    .unwrap();
    conn.map_window(w).unwrap();
    conn.flush().unwrap();
    let d = next_event(&mut ws, "window_open").await;
    assert_eq!(d["window_id"], w);
    assert_eq!(d["title"], "plain title");

    conn.set_input_focus(InputFocus::PARENT, w, x11rb::CURRENT_TIME)
        .unwrap();
    conn.flush().unwrap();
    let d = next_event(&mut ws, "window_focus").await;
    assert_eq!(d["window_id"], w);

    conn.destroy_window(w).unwrap();
    conn.flush().unwrap();
    let d = next_event(&mut ws, "window_close").await;
    assert_eq!(d["window_id"], w);
}

/// A RandR resize (what `xrandr --fb` does) is reported, and screenshots follow the new size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_screen_change_and_screenshot_follows() {
    use x11rb::protocol::randr::ConnectionExt as _;
    let Some(x) = xvfb(640, 480) else { return };
    let agent = start_agent(&x.display).await;
    let shot = common::request(&agent.socket, "GET", "/screenshot", None).await;
    assert_eq!(shot.headers[deskd_agent::protocol::HEADER_WIDTH], "640");
    let mut ws = connect(&agent.socket, "/ws/events").await;
    send(
        &mut ws,
        json!({"type":"subscribe","event_types":["screen_change"]}),
    )
    .await;
    assert_eq!(next_json(&mut ws, 5).await["type"], "subscribed");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (conn, n) = RustConnection::connect(Some(&x.display)).unwrap();
    let root = conn.setup().roots[n].root;
    conn.randr_query_version(1, 3).unwrap().reply().unwrap();
    let r = conn
        .randr_set_screen_size(root, 800, 600, 211, 158)
        .unwrap()
        .check();
    if let Err(e) = r {
        eprintln!("\n*** SKIPPED events_screen_change_and_screenshot_follows: this Xvfb cannot resize ({e}) ***\n");
        return;
    }
    let d = next_event(&mut ws, "screen_change").await;
    assert_eq!(
        (d["width"].as_u64(), d["height"].as_u64()),
        (Some(800), Some(600))
    );
    let shot = common::request(&agent.socket, "GET", "/screenshot", None).await;
    assert_eq!(shot.status, 200);
    assert_eq!(shot.headers[deskd_agent::protocol::HEADER_WIDTH], "800");
    assert_eq!(shot.headers[deskd_agent::protocol::HEADER_HEIGHT], "600");
}
