#![cfg(feature = "agent")]
//! Screenshots: a window painted with known colours comes back with those pixels.

mod common;

use common::{request, start_agent, xvfb};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::*;
use x11rb::rust_connection::RustConnection;

/// Paints four coloured rectangles as child windows with background pixels (the server paints
/// them itself, no Expose handling needed). Returns the connection to keep them alive.
fn paint(display: &str) -> RustConnection {
    let (conn, n) = RustConnection::connect(Some(display)).unwrap();
    let screen = conn.setup().roots[n].clone();
    let rects: [(i16, i16, u16, u16, u32); 4] = [
        (0, 0, 320, 240, 0xff0000),
        (320, 0, 320, 240, 0x00ff00),
        (0, 240, 320, 240, 0x0000ff),
        (320, 240, 320, 240, 0x123456),
    ];
    for (x, y, w, h, pixel) in rects {
        let id = conn.generate_id().unwrap();
        conn.create_window(
            screen.root_depth,
            id,
            screen.root,
            x,
            y,
            w,
            h,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new().background_pixel(pixel),
        )
        .unwrap();
        conn.map_window(id).unwrap();
    }
    conn.get_input_focus().unwrap().reply().unwrap();
    conn
}

fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    (info.width, info.height, buf)
}

fn pixel(buf: &[u8], w: u32, x: u32, y: u32) -> [u8; 3] {
    let i = ((y * w + x) * 3) as usize;
    [buf[i], buf[i + 1], buf[i + 2]]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn png_screenshot_has_the_painted_pixels() {
    let Some(x) = xvfb(640, 480) else { return };
    let _painter = paint(&x.display);
    let agent = start_agent(&x.display).await;
    let r = request(&agent.socket, "GET", "/screenshot", None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "image/png");
    assert_eq!(r.headers[deskd_agent::protocol::HEADER_WIDTH], "640");
    assert_eq!(r.headers[deskd_agent::protocol::HEADER_HEIGHT], "480");
    let (w, h, buf) = decode_png(&r.body);
    assert_eq!((w, h), (640, 480));
    assert_eq!(pixel(&buf, w, 10, 10), [0xff, 0, 0]);
    assert_eq!(pixel(&buf, w, 319, 239), [0xff, 0, 0]);
    assert_eq!(pixel(&buf, w, 320, 0), [0, 0xff, 0]);
    assert_eq!(pixel(&buf, w, 100, 400), [0, 0, 0xff]);
    assert_eq!(pixel(&buf, w, 639, 479), [0x12, 0x34, 0x56]);
    assert_eq!(pixel(&buf, w, 320, 240), [0x12, 0x34, 0x56]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpeg_screenshot_with_quality() {
    let Some(x) = xvfb(640, 480) else { return };
    let _painter = paint(&x.display);
    let agent = start_agent(&x.display).await;
    let hi = request(
        &agent.socket,
        "GET",
        "/screenshot?format=jpeg&quality=95",
        None,
    )
    .await;
    assert_eq!(hi.status, 200);
    assert_eq!(hi.headers["content-type"], "image/jpeg");
    assert_eq!(&hi.body[..2], &[0xff, 0xd8]);
    assert_eq!(hi.headers[deskd_agent::protocol::HEADER_WIDTH], "640");
    let lo = request(
        &agent.socket,
        "GET",
        "/screenshot?format=jpg&quality=5",
        None,
    )
    .await;
    assert_eq!(lo.status, 200);
    assert!(
        lo.body.len() < hi.body.len(),
        "quality must change the size"
    );
    let bad = request(
        &agent.socket,
        "GET",
        "/screenshot?format=jpeg&quality=0",
        None,
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_server_gone_is_a_503_and_recovers() {
    let Some(x) = xvfb(320, 240) else { return };
    let display = x.display.clone();
    let agent = start_agent(&display).await;
    assert_eq!(
        request(&agent.socket, "GET", "/screenshot", None)
            .await
            .status,
        200
    );
    drop(x);
    let r = request(&agent.socket, "GET", "/screenshot", None).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"].as_str().unwrap().contains("X server"));
    let r = common::post(&agent.socket, "/click", r#"{"x":1,"y":1}"#).await;
    assert_eq!(r.status, 503);
    let h = request(&agent.socket, "GET", "/health", None).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["display"], false);
    // Shell work does not need the display.
    let b = common::post(&agent.socket, "/bash", r#"{"command":"echo still here"}"#).await;
    assert_eq!(b.json()["output"], "still here\n");
    // The X server comes back: the agent reconnects by itself.
    let _again = common::Xvfb::restart_on(&display, 400, 300);
    let r = request(&agent.socket, "GET", "/screenshot", None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers[deskd_agent::protocol::HEADER_WIDTH], "400");
}

#[test]
fn shm_capture_and_get_image_fallback_agree() {
    let Some(x) = xvfb(640, 480) else { return };
    let _painter = paint(&x.display);
    let desktop = deskd_agent::x11::Desktop::new(&x.display);
    let (shm, used_shm) = desktop
        .with(|s| {
            let f = deskd_agent::x11::capture::capture(s)?;
            Ok((f.bgrx, s.capturer.lock().unwrap().uses_shm()))
        })
        .unwrap();
    assert!(used_shm, "Xvfb offers MIT-SHM 1.2; the agent should use it");
    let plain = desktop
        .with(|s| {
            s.capturer.lock().unwrap().disable_shm();
            deskd_agent::x11::capture::capture(s).map(|f| f.bgrx)
        })
        .unwrap();
    assert_eq!(shm.len(), 640 * 480 * 4);
    assert!(shm == plain, "SHM and GetImage captures differ");
    // B, G, R order at (10, 10): red.
    assert_eq!(&shm[(10 * 640 + 10) * 4..][..3], &[0, 0, 0xff]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_screen() {
    let Some(x) = xvfb(800, 600) else { return };
    let agent = start_agent(&x.display).await;
    let h = request(&agent.socket, "GET", "/health", None).await;
    assert_eq!(h.status, 200);
    let j = h.json();
    assert_eq!(j["status"], "ok");
    assert_eq!(j["display"], true);
    assert_eq!(
        (j["width"].as_u64(), j["height"].as_u64()),
        (Some(800), Some(600))
    );
}

/// A client that half-closes its connection after the request (what `socat` does by default)
/// still gets the whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_survives_a_client_half_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(x) = xvfb(320, 200) else { return };
    let agent = start_agent(&x.display).await;
    let mut stream = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .expect("connect agent");
    stream
        .write_all(b"GET /screenshot HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .await
        .expect("send request");
    stream.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("answer within 20 s")
    .expect("read answer");
    let head = String::from_utf8_lossy(&answer[..answer.len().min(12)]).to_string();
    assert_eq!(head, "HTTP/1.1 200", "answer: {head:?}");
    let png_magic = b"\x89PNG";
    assert!(
        answer.windows(4).any(|w| w == png_magic),
        "the answer carries no PNG ({} bytes)",
        answer.len()
    );
}

/// The guest listens on vsock; on a host with vsock loopback (CID 1) the same code path can be
/// exercised end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_over_vsock_loopback() {
    let Some(x) = xvfb(320, 240) else { return };
    let port = 40_000 + std::process::id() % 20_000;
    let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_LOCAL, port);
    // Probe: can this kernel listen and connect over vsock loopback at all?
    let probe = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
        tokio_vsock::VMADDR_CID_ANY,
        port + 1,
    ));
    let reachable = match probe {
        Ok(_l) => tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(
            tokio_vsock::VMADDR_CID_LOCAL,
            port + 1,
        ))
        .await
        .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = reachable {
        eprintln!("\n*** SKIPPED health_over_vsock_loopback: no vsock loopback on this kernel ({e}) ***\n");
        return;
    }
    let cfg = deskd_agent::Config {
        listen: deskd_agent::Listen::Vsock(port),
        display: x.display.clone(),
        user: None,
        home: Some(std::env::temp_dir()),
        output_cap: 1 << 20,
        idle_after: std::time::Duration::from_secs(30),
        x_call_limit: std::time::Duration::from_secs(30),
        vnc_socket: deskd_agent::vnc::DEFAULT_RFB_SOCKET.into(),
        vnc_password_file: deskd_agent::vnc::DEFAULT_PASSWORD_FILE.into(),
        pulse: deskd_agent::audio::Pulse::default(),
    };
    let agent = deskd_agent::build(&cfg).unwrap();
    let listen = cfg.listen.clone();
    tokio::spawn(async move { deskd_agent::server::serve(&listen, agent).await });
    let mut stream = None;
    for _ in 0..100 {
        if let Ok(s) = tokio_vsock::VsockStream::connect(addr).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stream = stream.expect("connect to the agent over vsock");
    use http_body_util::BodyExt;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/health")
        .header("host", "agent")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["width"], 320);
}

/// An X server that stops answering (here: SIGSTOP) makes requests fail with 503 after the limit
/// instead of hanging; once it answers again, so does the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_x_server_is_a_503_not_a_hang() {
    let Some(x) = xvfb(320, 240) else { return };
    let agent = common::start_agent_with(&x.display, |c| {
        c.x_call_limit = std::time::Duration::from_millis(700)
    })
    .await;
    assert_eq!(
        request(&agent.socket, "GET", "/screenshot", None)
            .await
            .status,
        200
    );
    let pid = nix::unistd::Pid::from_raw(x.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t0 = std::time::Instant::now();
    let r = common::post(&agent.socket, "/click", r#"{"x":1,"y":1}"#).await;
    let shot = request(&agent.socket, "GET", "/screenshot", None).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("did not answer"));
    assert_eq!(shot.status, 503);
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    let bash = common::post(&agent.socket, "/bash", r#"{"command":"echo ok"}"#).await;
    assert_eq!(bash.json()["output"], "ok\n");
    let mut ok = false;
    for _ in 0..50 {
        if request(&agent.socket, "GET", "/screenshot", None)
            .await
            .status
            == 200
        {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "screenshots work again after the X server resumes");
}
