#![cfg(feature = "agent")]
//! Pointer and keyboard input through the agent's HTTP API, checked by a real X client window.

mod common;

use common::{post, start_agent, xvfb, Seen, TestWindow};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_arrive_at_the_right_place_with_the_right_button() {
    let Some(x) = xvfb(640, 480) else { return };
    let win = TestWindow::open(&x.display);
    let agent = start_agent(&x.display).await;

    let r = post(&agent.socket, "/click", r#"{"x":100,"y":50}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let j = r.json();
    assert_eq!(j["success"], true);
    assert_eq!(j["action"], "click");
    assert_eq!(j["details"]["x"], 100);
    assert_eq!(j["details"]["button"], "left");
    win.wait_for("left click", |s| {
        s.contains(&Seen::Release {
            button: 1,
            x: 100,
            y: 50,
        })
    });
    assert!(win.take().contains(&Seen::Press {
        button: 1,
        x: 100,
        y: 50
    }));

    for (name, button, x, y) in [("right", 3, 300, 200), ("middle", 2, 10, 470)] {
        let body = serde_json::json!({"x": x, "y": y, "button": name}).to_string();
        let r = post(&agent.socket, "/click", &body).await;
        assert_eq!(r.status, 200);
        win.wait_for(&format!("{name} click"), |s| {
            s.contains(&Seen::Release { button, x, y })
        });
        win.take();
    }

    let r = post(&agent.socket, "/click", r#"{"x":20,"y":30,"double":true}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["action"], "double_click");
    let seen = win.wait_for("double click", |s| {
        s.iter()
            .filter(|e| matches!(e, Seen::Release { button: 1, .. }))
            .count()
            == 2
    });
    let presses: Vec<_> = seen
        .iter()
        .filter(|e| matches!(e, Seen::Press { .. }))
        .collect();
    assert_eq!(
        presses,
        vec![
            &Seen::Press {
                button: 1,
                x: 20,
                y: 30
            };
            2
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_drag_and_scroll() {
    let Some(x) = xvfb(640, 480) else { return };
    let win = TestWindow::open(&x.display);
    let agent = start_agent(&x.display).await;

    assert_eq!(
        post(&agent.socket, "/move", r#"{"x":321,"y":123}"#)
            .await
            .status,
        200
    );
    win.wait_for("motion", |s| {
        s.iter()
            .any(|e| matches!(e, Seen::Motion { x: 321, y: 123, .. }))
    });
    win.take();

    let r = post(
        &agent.socket,
        "/drag",
        r#"{"start_x":50,"start_y":60,"end_x":250,"end_y":160,"duration":0.2}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let seen = win.wait_for("drag release", |s| {
        s.iter().any(|e| matches!(e, Seen::Release { .. }))
    });
    assert_eq!(
        seen.iter().find(|e| matches!(e, Seen::Press { .. })),
        Some(&Seen::Press {
            button: 1,
            x: 50,
            y: 60
        })
    );
    assert_eq!(
        seen.last(),
        Some(&Seen::Release {
            button: 1,
            x: 250,
            y: 160
        })
    );
    // In between, the pointer moved with button 1 held (Button1Mask = 0x100).
    let held_moves = seen
        .iter()
        .filter(|e| matches!(e, Seen::Motion { buttons, .. } if buttons & 0x100 != 0))
        .count();
    assert!(held_moves >= 3, "expected a dragged movement, saw {seen:?}");
    win.take();

    let r = post(
        &agent.socket,
        "/scroll",
        r#"{"direction":"down","amount":4,"x":200,"y":100}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["details"]["amount"], 4);
    let seen = win.wait_for("scroll", |s| {
        s.iter()
            .filter(|e| matches!(e, Seen::Release { button: 5, .. }))
            .count()
            == 4
    });
    assert!(seen
        .iter()
        .all(|e| !matches!(e, Seen::Press { button, .. } if *button != 5)));
    assert!(seen.contains(&Seen::Press {
        button: 5,
        x: 200,
        y: 100
    }));
    win.take();
    assert_eq!(
        post(&agent.socket, "/scroll", r#"{"direction":"up"}"#)
            .await
            .status,
        200
    );
    win.wait_for("scroll up x3", |s| {
        s.iter()
            .filter(|e| matches!(e, Seen::Release { button: 4, .. }))
            .count()
            == 3
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_unicode_arrives_intact() {
    let Some(x) = xvfb(640, 480) else { return };
    let win = TestWindow::open(&x.display);
    let agent = start_agent(&x.display).await;
    let text = "héllo ✓ 世界 Hi!\n";
    let body = serde_json::json!({"text": text, "delay_ms": 5}).to_string();
    let r = post(&agent.socket, "/type", &body).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["details"]["text_length"], text.chars().count());
    let want = text.to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while win.typed_text() != want && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(win.typed_text(), want);

    // No delay at all still keeps every character.
    win.take();
    let body = serde_json::json!({"text": "ÆØÅ→€ abc", "delay_ms": 0}).to_string();
    assert_eq!(post(&agent.socket, "/type", &body).await.status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while win.typed_text() != "ÆØÅ→€ abc" && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(win.typed_text(), "ÆØÅ→€ abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_names_aliases_and_combos() {
    let Some(x) = xvfb(640, 480) else { return };
    let win = TestWindow::open(&x.display);
    let agent = start_agent(&x.display).await;
    const CONTROL: u16 = 1 << 2;
    const SHIFT: u16 = 1;

    for (key, keysym) in [
        ("Return", 0xff0d),
        ("Enter", 0xff0d),
        ("Esc", 0xff1b),
        ("BackSpace", 0xff08),
        ("PageUp", 0xff55),
        ("F5", 0xffc2),
    ] {
        let r = post(
            &agent.socket,
            "/key",
            &serde_json::json!({"key": key}).to_string(),
        )
        .await;
        assert_eq!(r.status, 200, "{key}: {:?}", r.json());
        assert_eq!(r.json()["action"], "key_press");
        let seen = win.wait_for(key, |s| s.iter().any(|e| matches!(e, Seen::Key { .. })));
        assert!(
            matches!(seen.last(), Some(Seen::Key { keysym: k, .. }) if *k == keysym),
            "{key}: {seen:?}"
        );
        win.take();
    }

    let r = post(&agent.socket, "/key", r#"{"key":"CTRL+Shift+t"}"#).await;
    assert_eq!(r.status, 200);
    let seen = win.wait_for("ctrl+shift+t", |s| s.iter().any(|e| matches!(e, Seen::Key { keysym, .. } if *keysym == 'T' as u32 || *keysym == 't' as u32)));
    let t = seen.iter().find_map(|e| match e {
        Seen::Key { keysym, state } if *keysym == 'T' as u32 || *keysym == 't' as u32 => {
            Some(*state)
        }
        _ => None,
    });
    let state = t.expect("t pressed");
    assert!(
        state & CONTROL != 0 && state & SHIFT != 0,
        "state {state:#x}"
    );
    win.take();

    let r = post(&agent.socket, "/key", r#"{"key":"ctrl+c"}"#).await;
    assert_eq!(r.status, 200);
    let seen = win.wait_for("ctrl+c", |s| {
        s.iter()
            .any(|e| matches!(e, Seen::Key { keysym: 0x63, .. }))
    });
    assert!(seen.iter().any(|e| matches!(e, Seen::Key { keysym: 0x63, state } if state & CONTROL != 0 && state & SHIFT == 0)));

    let r = post(&agent.socket, "/key", r#"{"key":"ctrl+Bogus_Thing"}"#).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("Bogus_Thing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_with_a_message() {
    let Some(x) = xvfb(640, 480) else { return };
    let agent = start_agent(&x.display).await;
    let cases = [
        ("/click", "{not json", "invalid JSON"),
        ("/click", "", "empty"),
        ("/click", r#"{"x":10}"#, "missing field `y`"),
        ("/click", r#"{"x":640,"y":10}"#, "off the screen"),
        ("/click", r#"{"x":-1,"y":10}"#, "off the screen"),
        (
            "/click",
            r#"{"x":1,"y":1,"button":"fourth"}"#,
            "unknown button",
        ),
        ("/move", r#"{"x":5,"y":99999}"#, "off the screen"),
        (
            "/drag",
            r#"{"start_x":1,"start_y":1,"end_x":1000,"end_y":1}"#,
            "off the screen",
        ),
        (
            "/scroll",
            r#"{"direction":"sideways"}"#,
            "unknown direction",
        ),
        ("/scroll", r#"{"direction":"up","amount":0}"#, "amount"),
        ("/key", r#"{"key":"NoSuchKey"}"#, "NoSuchKey"),
        ("/wait", r#"{"seconds":61}"#, "between 0 and 60"),
        ("/bash", r#"{"command":"true","timeout":-1}"#, "timeout"),
        ("/exec", r#"{"code":"1","timeout":301}"#, "timeout"),
    ];
    for (path, body, needle) in cases {
        let r = post(&agent.socket, path, body).await;
        assert_eq!(r.status, 400, "{path} {body}");
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{path} {body}: {msg}");
    }
    let r = common::request(&agent.socket, "GET", "/screenshot?format=gif", None).await;
    assert_eq!(r.status, 400);
    let r = common::request(&agent.socket, "GET", "/nope", None).await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let r = common::request(&agent.socket, "GET", "/click", None).await;
    assert_eq!(r.status, 405);
    assert!(r.json()["error"].is_string());
    // wait takes `seconds` or `duration`.
    let r = post(&agent.socket, "/wait", r#"{"duration":0.05}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["action"], "wait");
}
