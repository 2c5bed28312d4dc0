#![cfg(feature = "agent")]
//! The actions computer-use models emit (issue 16): triple click, mouse down/up, hold_key,
//! cursor_position, and region and scaled screenshots, checked on a real X server.

mod common;

use std::time::Duration;

use common::{post, request, start_agent, xvfb, Seen, TestWindow};
use deskd_agent::protocol::{HEADER_HEIGHT, HEADER_SCALE, HEADER_WIDTH};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::*;
use x11rb::rust_connection::RustConnection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triple_click_is_three_presses_and_old_answers_keep_their_shape() {
    let Some(x) = xvfb(640, 480) else { return };
    let win = TestWindow::open(&x.display);
    let agent = start_agent(&x.display).await;

    let r = post(&agent.socket, "/click", r#"{"x":40,"y":50,"clicks":3}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let j = r.json();
    assert_eq!(j["action"], "triple_click");
    assert_eq!(j["details"]["clicks"], 3);
    assert_eq!(j["details"]["double"], false);
    let seen = win.wait_for("three releases", |s| {
        s.iter()
            .filter(|e| matches!(e, Seen::Release { button: 1, .. }))
            .count()
            == 3
    });
    let presses = seen
        .iter()
        .filter(|e| {
            **e == Seen::Press {
                button: 1,
                x: 40,
                y: 50,
            }
        })
        .count();
    assert_eq!(presses, 3);
    win.take();

    // Without `clicks` the answer is exactly the contract's.
    let r = post(&agent.socket, "/click", r#"{"x":1,"y":2,"double":true}"#).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"success": true, "action": "double_click",
            "details": {"x": 1, "y": 2, "button": "left", "double": true}})
    );
    let r = post(&agent.socket, "/click", r#"{"x":1,"y":2,"clicks":2}"#).await;
    assert_eq!(r.json()["action"], "double_click");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mouse_down_move_up_is_a_drag_and_the_cursor_position_follows() {
    let Some(x) = xvfb(640, 480) else { return };
    let win = TestWindow::open(&x.display);
    let agent = start_agent(&x.display).await;

    let r = post(
        &agent.socket,
        "/mouse_down",
        r#"{"button":"right","x":100,"y":110}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["action"], "mouse_down");
    assert_eq!(r.json()["details"]["x"], 100);
    win.wait_for("right press", |s| {
        s.contains(&Seen::Press {
            button: 3,
            x: 100,
            y: 110,
        })
    });
    assert_eq!(
        post(&agent.socket, "/move", r#"{"x":300,"y":200}"#)
            .await
            .status,
        200
    );
    // The motion carries the held button (Button3Mask = 0x400).
    win.wait_for("motion with the button held", |s| {
        s.contains(&Seen::Motion {
            x: 300,
            y: 200,
            buttons: 0x400,
        })
    });
    let r = request(&agent.socket, "GET", "/cursor_position", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"success": true, "action": "cursor_position", "x": 300, "y": 200})
    );
    let r = post(&agent.socket, "/mouse_up", r#"{"button":"right"}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["action"], "mouse_up");
    assert!(r.json()["details"].get("x").is_none());
    win.wait_for("right release where the pointer is", |s| {
        s.contains(&Seen::Release {
            button: 3,
            x: 300,
            y: 200,
        })
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_key_keeps_shift_down_while_typing() {
    let Some(x) = xvfb(640, 480) else { return };
    let win = TestWindow::open(&x.display);
    let agent = start_agent(&x.display).await;

    let socket = agent.socket.clone();
    let hold = tokio::spawn(async move {
        post(&socket, "/hold_key", r#"{"key":"shift","duration":1.5}"#).await
    });
    // Let the hold start, then type while it lasts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = post(&agent.socket, "/type", r#"{"text":"abc","delay_ms":0}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let seen = win.wait_for("three letters", |s| {
        s.iter()
            .filter(|e| matches!(e, Seen::Key { keysym, .. } if (0x41..=0x7a).contains(keysym)))
            .count()
            >= 3
    });
    let letters: Vec<u32> = seen
        .iter()
        .filter_map(|e| match e {
            Seen::Key { keysym, .. } if (0x41..=0x7a).contains(keysym) => Some(*keysym),
            _ => None,
        })
        .collect();
    assert_eq!(
        letters,
        vec![0x41, 0x42, 0x43],
        "capitals while shift is held"
    );
    let r = hold.await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(
        r.json(),
        serde_json::json!({"success": true, "action": "hold_key",
            "details": {"key": "shift", "duration": 1.5}})
    );
    // Released: typing is lowercase again.
    win.take();
    post(&agent.socket, "/type", r#"{"text":"d","delay_ms":0}"#).await;
    win.wait_for("lowercase d", |s| {
        s.iter()
            .any(|e| matches!(e, Seen::Key { keysym: 0x64, .. }))
    });
}

/// A window of one colour at a given place (the server paints its background itself).
fn paint(conn: &RustConnection, root: Window, depth: u8, r: (i16, i16, u16, u16), pixel: u32) {
    let id = conn.generate_id().unwrap();
    conn.create_window(
        depth,
        id,
        root,
        r.0,
        r.1,
        r.2,
        r.3,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new().background_pixel(pixel),
    )
    .unwrap();
    conn.map_window(id).unwrap();
}

fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    (info.width, info.height, buf)
}

fn pixel(buf: &[u8], w: u32, x: u32, y: u32) -> [u8; 3] {
    let i = ((y * w + x) * 3) as usize;
    [buf[i], buf[i + 1], buf[i + 2]]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_and_scaled_screenshots() {
    let Some(x) = xvfb(1920, 1080) else { return };
    let (conn, n) = RustConnection::connect(Some(&x.display)).unwrap();
    let screen = conn.setup().roots[n].clone();
    // Black screen, a red square at (100, 200) size 50, a green one at (1800, 1000) size 100.
    paint(&conn, screen.root, screen.root_depth, (0, 0, 1920, 1080), 0);
    paint(
        &conn,
        screen.root,
        screen.root_depth,
        (100, 200, 50, 50),
        0xff0000,
    );
    paint(
        &conn,
        screen.root,
        screen.root_depth,
        (1800, 1000, 100, 80),
        0x00ff00,
    );
    conn.get_input_focus().unwrap().reply().unwrap();
    let agent = start_agent(&x.display).await;

    let full = request(&agent.socket, "GET", "/screenshot", None).await;
    let (fw, _, fbuf) = decode_png(&full.body);
    let r = request(
        &agent.socket,
        "GET",
        "/screenshot?x=90&y=190&width=70&height=40",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers[HEADER_WIDTH], "70");
    assert_eq!(r.headers[HEADER_HEIGHT], "40");
    assert!(!r.headers.contains_key(HEADER_SCALE));
    let (w, h, buf) = decode_png(&r.body);
    assert_eq!((w, h), (70, 40));
    // Every pixel of the region is the full screenshot's pixel at the same place.
    for yy in 0..h {
        for xx in 0..w {
            assert_eq!(
                pixel(&buf, w, xx, yy),
                pixel(&fbuf, fw, 90 + xx, 190 + yy),
                "({xx}, {yy})"
            );
        }
    }
    assert_eq!(pixel(&buf, w, 10, 10), [0xff, 0, 0]);
    assert_eq!(pixel(&buf, w, 0, 0), [0, 0, 0]);

    // 1920x1080 under a 1.15 MP cap: scaled, with the scale in the answer.
    let r = request(&agent.socket, "GET", "/screenshot?max_pixels=1150000", None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let scale: f64 = r.headers[HEADER_SCALE].parse().unwrap();
    let (w, h, buf) = decode_png(&r.body);
    assert!(u64::from(w) * u64::from(h) <= 1_150_000, "{w}x{h}");
    assert_eq!(r.headers[HEADER_WIDTH], w.to_string());
    assert_eq!(r.headers[HEADER_HEIGHT], h.to_string());
    assert!((scale - 0.7447).abs() < 0.001, "{scale}");
    // The middle of the green rectangle maps back through the scale.
    let (gx, gy) = ((1850.0 * scale) as u32, (1040.0 * scale) as u32);
    assert_eq!(pixel(&buf, w, gx, gy), [0, 0xff, 0]);
    let (rx, ry) = ((125.0 * scale) as u32, (225.0 * scale) as u32);
    assert_eq!(pixel(&buf, w, rx, ry), [0xff, 0, 0]);

    // A region and a cap together; JPEG too.
    let r = request(
        &agent.socket,
        "GET",
        "/screenshot?x=1700&y=900&width=220&height=180&max_pixels=9900&format=jpeg",
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "image/jpeg");
    let scale: f64 = r.headers[HEADER_SCALE].parse().unwrap();
    assert!((scale - 0.5).abs() < 1e-9, "{scale}");
    assert_eq!(r.headers[HEADER_WIDTH], "110");
    assert_eq!(r.headers[HEADER_HEIGHT], "90");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_to_the_new_actions_is_a_400_naming_the_field() {
    let Some(x) = xvfb(640, 480) else { return };
    let agent = start_agent(&x.display).await;
    let cases = [
        (
            "/click",
            r#"{"x":1,"y":1,"clicks":4}"#,
            "clicks must be 1 to 3",
        ),
        (
            "/click",
            r#"{"x":1,"y":1,"clicks":0}"#,
            "clicks must be 1 to 3",
        ),
        (
            "/click",
            r#"{"x":1,"y":1,"clicks":3,"double":true}"#,
            "double: true means clicks: 2",
        ),
        ("/mouse_down", r#"{"x":5}"#, "y is missing"),
        ("/mouse_up", r#"{"y":5}"#, "x is missing"),
        ("/mouse_down", r#"{"btn":"left"}"#, "unknown field `btn`"),
        ("/mouse_down", r#"{"button":"fourth"}"#, "unknown button"),
        ("/mouse_up", r#"{"x":700,"y":5}"#, "off the screen"),
        ("/mouse_down", "", "empty"),
        ("/hold_key", r#"{"duration":1}"#, "missing field `key`"),
        ("/hold_key", r#"{"key":"NoSuchKey"}"#, "NoSuchKey"),
        (
            "/hold_key",
            r#"{"key":"a","duration":61}"#,
            "duration must be between 0 and 60",
        ),
        (
            "/hold_key",
            r#"{"key":"a","seconds":1}"#,
            "unknown field `seconds`",
        ),
    ];
    for (path, body, needle) in cases {
        let r = post(&agent.socket, path, body).await;
        assert_eq!(r.status, 400, "{path} {body}");
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{path} {body}: {msg}");
    }
    for (query, needle) in [
        ("x=1&y=1&width=10", "missing: height"),
        ("x=600&y=0&width=41&height=10", "x + width is 641"),
        ("x=0&y=0&width=0&height=10", "width must be a whole number"),
        ("max_pixels=10", "max_pixels must be a whole number"),
    ] {
        let r = request(&agent.socket, "GET", &format!("/screenshot?{query}"), None).await;
        assert_eq!(r.status, 400, "{query}");
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{query}: {msg}");
    }
    let r = post(&agent.socket, "/cursor_position", "{}").await;
    assert_eq!(r.status, 405);
}
