//! deskd-agent benchmark (issue 4): native, on Xvfb at 1280x720 and 1920x1080.
//!
//! Run: `cargo bench -p deskd-agent --bench agent_bench` (or `make bench`).
//! Measures, through the agent's HTTP API on a Unix socket (one keep-alive connection, like a
//! forwarding daemon): screenshot capture + encode (PNG, JPEG q80), click round trip, bash `true`
//! round trip; and, in the same run on the same screen, the common tools doing the same job
//! (`xdotool click`, `import`, `scrot`, `xwd | convert`, a plain `bash -lc true`). Tools that are
//! not installed are listed as missing, not faked. Prints p50/p95 in milliseconds.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::*;
use x11rb::rust_connection::RustConnection;

struct Xvfb(std::process::Child);

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn start_xvfb(w: u16, h: u16) -> Option<(Xvfb, String)> {
    for n in 400..460 {
        if Path::new(&format!("/tmp/.X{n}-lock")).exists() {
            continue;
        }
        let display = format!(":{n}");
        let child = Command::new("Xvfb")
            .arg(&display)
            .args([
                "-screen",
                "0",
                &format!("{w}x{h}x24"),
                "-nolisten",
                "tcp",
                "-noreset",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let x = Xvfb(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if RustConnection::connect(Some(&display)).is_ok() {
                return Some((x, display));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    None
}

/// Paints a desktop-like screen: a gradient wallpaper, window-like panels and rows of small
/// "glyph" blocks (text stand-ins), so encoders see realistic, not blank, content.
fn paint_desktop(display: &str, w: u16, h: u16) -> RustConnection {
    let (conn, n) = RustConnection::connect(Some(display)).expect("connect");
    let screen = conn.setup().roots[n].clone();
    let win = conn.generate_id().unwrap();
    conn.create_window(
        screen.root_depth,
        win,
        screen.root,
        0,
        0,
        w,
        h,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new().background_pixel(0),
    )
    .unwrap();
    conn.map_window(win).unwrap();
    let gc = conn.generate_id().unwrap();
    conn.create_gc(gc, win, &CreateGCAux::new()).unwrap();
    // Wallpaper: vertical gradient, one row at a time through PutImage (B, G, R, X).
    let mut seed = 0x2545_f491_u32;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let rows_per_put = 16u16;
    for y0 in (0..h).step_by(rows_per_put.into()) {
        let rows = rows_per_put.min(h - y0);
        let mut data = Vec::with_capacity(usize::from(w) * usize::from(rows) * 4);
        for y in y0..y0 + rows {
            for x in 0..w {
                let r = (u32::from(y) * 255 / u32::from(h)) as u8;
                let g = (u32::from(x) * 255 / u32::from(w)) as u8;
                data.extend_from_slice(&[160, g / 2 + 40, r / 2 + 30, 0]);
            }
        }
        conn.put_image(
            ImageFormat::Z_PIXMAP,
            win,
            gc,
            w,
            rows,
            0,
            y0 as i16,
            0,
            24,
            &data,
        )
        .unwrap();
    }
    // Windows with title bars and text-like glyph rows.
    for i in 0..4u16 {
        let (x, y) = (40 + i * (w / 5), 40 + i * (h / 8));
        let (ww, wh) = (w / 3, h / 2);
        conn.change_gc(gc, &ChangeGCAux::new().foreground(0xf0f0f0))
            .unwrap();
        conn.poly_fill_rectangle(
            win,
            gc,
            &[Rectangle {
                x: x as i16,
                y: y as i16,
                width: ww,
                height: wh,
            }],
        )
        .unwrap();
        conn.change_gc(gc, &ChangeGCAux::new().foreground(0x3050a0))
            .unwrap();
        conn.poly_fill_rectangle(
            win,
            gc,
            &[Rectangle {
                x: x as i16,
                y: y as i16,
                width: ww,
                height: 24,
            }],
        )
        .unwrap();
        let mut glyphs = Vec::new();
        for line in 0..(wh / 18).saturating_sub(2) {
            let mut gx = x + 8;
            while gx + 10 < x + ww {
                let gw = 3 + (rand() % 6) as u16;
                if rand() % 7 != 0 {
                    glyphs.push(Rectangle {
                        x: gx as i16,
                        y: (y + 34 + line * 18) as i16,
                        width: gw,
                        height: 9 + (rand() % 3) as u16,
                    });
                }
                gx += gw + 2;
            }
        }
        conn.change_gc(gc, &ChangeGCAux::new().foreground(0x202020))
            .unwrap();
        conn.poly_fill_rectangle(win, gc, &glyphs).unwrap();
    }
    conn.get_input_focus().unwrap().reply().unwrap();
    conn
}

fn pct(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn report(name: &str, mut ms: Vec<f64>, extra: &str) {
    let p50 = pct(&mut ms, 0.5);
    let p95 = pct(&mut ms, 0.95);
    println!(
        "  {name:<44} p50 {p50:>8.2} ms   p95 {p95:>8.2} ms   n={:<4} {extra}",
        ms.len()
    );
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` the way the agent runs commands: clean environment, HOME = the agent's home.
fn time_shell(cmd: &str, display: &str, home: &Path, n: usize) -> Option<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let st = Command::new("sh")
            .args(["-c", cmd])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("DISPLAY", display)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !st.success() {
            return None;
        }
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Some(v)
}

struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(sock: &Path) -> Client {
        let stream = tokio::net::UnixStream::connect(sock)
            .await
            .expect("connect agent");
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        Client { sender }
    }

    async fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, Bytes) {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "agent")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        self.sender.ready().await.expect("connection ready");
        let resp = self.sender.send_request(req).await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    async fn time(&mut self, method: &str, path: &str, body: &str, n: usize) -> (Vec<f64>, usize) {
        let mut v = Vec::with_capacity(n);
        let mut size = 0;
        for _ in 0..n {
            let t = Instant::now();
            let (status, bytes) = self.call(method, path, body).await;
            v.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&bytes));
            size = bytes.len();
        }
        (v, size)
    }
}

async fn bench_resolution(w: u16, h: u16) {
    let Some((_x, display)) = start_xvfb(w, h) else {
        println!("*** SKIPPED {w}x{h}: could not start Xvfb (apt-get install -y xvfb) ***");
        return;
    };
    let _painter = paint_desktop(&display, w, h);
    let dir = std::env::temp_dir().join(format!("deskd-agent-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let sock = dir.join("agent.sock");
    let cfg = deskd_agent::Config {
        listen: deskd_agent::Listen::Unix(sock.clone()),
        display: display.clone(),
        user: None,
        home: Some(dir.clone()),
        output_cap: deskd_agent::protocol::DEFAULT_OUTPUT_CAP,
        idle_after: Duration::from_secs(30),
        x_call_limit: Duration::from_secs(30),
        vnc_socket: deskd_agent::vnc::DEFAULT_RFB_SOCKET.into(),
        vnc_password_file: deskd_agent::vnc::DEFAULT_PASSWORD_FILE.into(),
        pulse: deskd_agent::audio::Pulse::default(),
    };
    let agent = deskd_agent::build(&cfg).expect("agent");
    let desktop_probe = deskd_agent::x11::Desktop::new(&display);
    let listen = cfg.listen.clone();
    let server = tokio::spawn(async move { deskd_agent::server::serve(&listen, agent).await });
    while !sock.exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut c = Client::connect(&sock).await;
    println!("\n== {w}x{h} (Xvfb {display}) ==");

    // Breakdown in-process: capture alone, then each encoder alone.
    let mut cap = Vec::new();
    let mut frame = None;
    for _ in 0..50 {
        let t = Instant::now();
        let f = desktop_probe
            .with(deskd_agent::x11::capture::capture)
            .expect("capture");
        cap.push(t.elapsed().as_secs_f64() * 1000.0);
        frame = Some(f);
    }
    let shm = desktop_probe
        .with(|s| Ok(s.capturer.lock().map(|c| c.uses_shm()).unwrap_or(false)))
        .unwrap_or(false);
    report(
        "agent capture only (in-process)",
        cap,
        if shm { "MIT-SHM" } else { "GetImage" },
    );
    let frame = frame.expect("frame");
    let mut enc = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let _ = deskd_agent::encode::png(&frame).unwrap();
        enc.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    report("agent PNG encode only (in-process)", enc, "");
    let mut enc = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let _ = deskd_agent::encode::jpeg(&frame, 80).unwrap();
        enc.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    report("agent JPEG q80 encode only (in-process)", enc, "");

    let (v, size) = c.time("GET", "/screenshot", "", 60).await;
    report(
        "agent GET /screenshot PNG (capture+encode)",
        v,
        &format!("{} KiB", size / 1024),
    );
    let (v, size) = c
        .time("GET", "/screenshot?format=jpeg&quality=80", "", 60)
        .await;
    report(
        "agent GET /screenshot JPEG q80",
        v,
        &format!("{} KiB", size / 1024),
    );
    let (v, _) = c.time("POST", "/click", r#"{"x":5,"y":5}"#, 300).await;
    report("agent POST /click (round trip)", v, "");
    let (v, _) = c.time("POST", "/bash", r#"{"command":"true"}"#, 40).await;
    report("agent POST /bash true (bash -lc)", v, "");

    println!("  -- common tools, same screen, same run --");
    let tools: [(&str, &str, &str, usize); 6] = [
        ("xdotool", "xdotool click 1", "xdotool click 1", 30),
        (
            "import",
            "import -window root png",
            "import -window root png:/dev/null",
            10,
        ),
        (
            "scrot",
            "scrot (PNG)",
            "scrot -o /tmp/deskd-bench-scrot.png",
            10,
        ),
        (
            "xwd",
            "xwd -root | convert png",
            "xwd -root -silent | convert xwd:- png:/dev/null",
            10,
        ),
        (
            "xwd",
            "xwd -root | convert jpeg q80",
            "xwd -root -silent | convert xwd:- -quality 80 jpeg:/dev/null",
            10,
        ),
        ("bash", "bash -lc true (no agent)", "bash -lc true", 40),
    ];
    for (tool, name, cmd, n) in tools {
        if !have(tool) {
            println!("  {name:<44} (not installed: {tool})");
            continue;
        }
        match time_shell(cmd, &display, &dir, n) {
            Some(v) => report(name, v, ""),
            None => println!("  {name:<44} (failed to run)"),
        }
    }
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs it with no flag: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("agent_bench: run with `cargo bench -p deskd-agent --bench agent_bench`");
        return;
    }
    if Command::new("Xvfb")
        .arg("-help")
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        println!("*** SKIPPED: Xvfb is not installed (apt-get install -y xvfb) ***");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("deskd-agent benchmark (goals: 1280x720 PNG <= 15 ms p50, click <= 1 ms p50)");
    rt.block_on(async {
        bench_resolution(1280, 720).await;
        bench_resolution(1920, 1080).await;
    });
}
