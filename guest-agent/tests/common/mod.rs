//! Test rig: a private X server (Xvfb or Xvnc), an in-process agent on a Unix socket, a tiny HTTP
//! client, and a test X client window that records what it receives.
#![allow(dead_code)]

pub mod pulse;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskd_agent::{Config, Listen};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::*;
use x11rb::protocol::Event;
use x11rb::rust_connection::RustConnection;

/// A private X server (Xvfb, or TigerVNC's Xvnc: see [`server_kind`]), killed on drop.
pub struct Xvfb {
    child: Child,
    pub display: String,
    pub width: u16,
    pub height: u16,
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM lets the server remove its lock file and socket, so the display number is free.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// Which X server the tests run against: `DESKD_TEST_X_SERVER=xvnc` picks TigerVNC's Xvnc (the
/// image's display), anything else Xvfb. `make agent-test-xvnc` runs the agent's tests on Xvnc.
pub fn server_kind() -> &'static str {
    match std::env::var("DESKD_TEST_X_SERVER").as_deref() {
        Ok("xvnc") => "Xvnc",
        _ => "Xvfb",
    }
}

/// The program and arguments of a server of `kind` at `width`x`height`, without its display.
fn server_command(kind: &str, width: u16, height: u16) -> Command {
    let mut cmd = Command::new(kind);
    if kind == "Xvnc" {
        // No RFB listener at all: these tests drive X, not VNC (tests/vnc.rs does VNC).
        cmd.args(["-geometry", &format!("{width}x{height}"), "-depth", "24"])
            .args(["-rfbport", "-1", "-SecurityTypes", "None"]);
    } else {
        cmd.args(["-screen", "0", &format!("{width}x{height}x24")]);
    }
    cmd.args(["-nolisten", "tcp", "-noreset"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

impl Xvfb {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts another server on this one's display number (after this one was dropped).
    pub fn restart_on(display: &str, width: u16, height: u16) -> Xvfb {
        let child = server_command(server_kind(), width, height)
            .arg(display)
            .spawn()
            .expect("spawn the X server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while RustConnection::connect(Some(display)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the X server did not come back on {display}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Xvfb {
            child,
            display: display.to_string(),
            width,
            height,
        }
    }
}

/// Starts the tests' X server ([`server_kind`]) on a display number it picks itself, or returns
/// None (printing why) when that server is not installed.
pub fn xvfb(width: u16, height: u16) -> Option<Xvfb> {
    let kind = server_kind();
    start_server(kind, server_command(kind, width, height), width, height)
}

/// Starts Xvnc as the image does: RFB only on the Unix socket `rfb`, VNC authentication with the
/// password file `passwd` (which need not exist yet). None (printing why) without Xvnc.
pub fn xvnc_serving(width: u16, height: u16, rfb: &Path, passwd: &Path) -> Option<Xvfb> {
    let mut cmd = Command::new("Xvnc");
    cmd.args(["-geometry", &format!("{width}x{height}"), "-depth", "24"])
        .args(["-nolisten", "tcp", "-noreset", "-rfbport", "-1"])
        .arg("-rfbunixpath")
        .arg(rfb)
        .args(["-rfbunixmode", "0600", "-SecurityTypes", "VncAuth"])
        .arg("-rfbauth")
        .arg(passwd)
        .args(["-AlwaysShared", "-AcceptSetDesktopSize=0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    start_server("Xvnc", cmd, width, height)
}

fn start_server(kind: &str, mut cmd: Command, width: u16, height: u16) -> Option<Xvfb> {
    use std::io::{BufRead, BufReader};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    if Command::new(kind)
        .arg("-help")
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        let package = if kind == "Xvnc" {
            "tigervnc-standalone-server"
        } else {
            "xvfb"
        };
        eprintln!(
            "\n*** SKIPPED: {kind} is not installed (apt-get install -y {package}); this test needs a real X server ***\n"
        );
        return None;
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let w_raw = w.as_raw_fd();
    cmd.args(["-displayfd", "3"]);
    // SAFETY: dup2 is async-signal-safe; it gives the child the pipe as fd 3 without CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(w_raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn the X server");
    drop(w);
    let mut x = Xvfb {
        child,
        display: String::new(),
        width,
        height,
    };
    let mut line = String::new();
    BufReader::new(std::fs::File::from(r))
        .read_line(&mut line)
        .expect("read display number");
    let n: u32 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{kind} did not start (said {line:?})"));
    x.display = format!(":{n}");
    Some(x)
}

/// A running agent in this process.
pub struct AgentRig {
    pub socket: PathBuf,
    pub home: PathBuf,
    pub display: String,
    _dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "deskd-agent-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn start_agent(display: &str) -> AgentRig {
    start_agent_with(display, |_| {}).await
}

pub async fn start_agent_with(display: &str, tweak: impl FnOnce(&mut Config)) -> AgentRig {
    let dir = TempDir::new("agent");
    let home = dir.0.join("home");
    std::fs::create_dir_all(home.join("Desktop")).expect("Desktop");
    std::fs::create_dir_all(home.join("Downloads")).expect("Downloads");
    let socket = dir.0.join("agent.sock");
    let mut cfg = Config {
        listen: Listen::Unix(socket.clone()),
        display: display.to_string(),
        user: None,
        home: Some(home.clone()),
        output_cap: deskd_agent::protocol::DEFAULT_OUTPUT_CAP,
        idle_after: Duration::from_secs(30),
        x_call_limit: Duration::from_secs(30),
        vnc_socket: deskd_agent::vnc::DEFAULT_RFB_SOCKET.into(),
        vnc_password_file: deskd_agent::vnc::DEFAULT_PASSWORD_FILE.into(),
        pulse: deskd_agent::audio::Pulse::default(),
    };
    tweak(&mut cfg);
    let agent = deskd_agent::build(&cfg).expect("build agent");
    let listen = cfg.listen.clone();
    tokio::spawn(async move {
        if let Err(e) = deskd_agent::server::serve(&listen, agent).await {
            eprintln!("agent stopped: {e}");
        }
    });
    // Until a connection is taken, not only until the file exists: the file appears at bind(),
    // a moment before listen(), and a connect in between is refused (seen under load).
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::UnixStream::connect(&socket).await.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    AgentRig {
        socket,
        home,
        display: display.to_string(),
        _dir: dir,
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request over the agent's Unix socket.
pub async fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Reply {
    request_bytes(socket, method, path, body.unwrap_or("").as_bytes().to_vec()).await
}

/// [`request`] with a body of any bytes.
pub async fn request_bytes(socket: &Path, method: &str, path: &str, body: Vec<u8>) -> Reply {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect agent");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "agent")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = sender.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn post(socket: &Path, path: &str, body: &str) -> Reply {
    request(socket, "POST", path, Some(body)).await
}

/// Everything the test window saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    Press { button: u8, x: i16, y: i16 },
    Release { button: u8, x: i16, y: i16 },
    Motion { x: i16, y: i16, buttons: u16 },
    Key { keysym: u32, state: u16 },
}

/// A full-screen window that records pointer and key events from its own thread.
pub struct TestWindow {
    pub conn: Arc<RustConnection>,
    pub window: Window,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

struct Keymap {
    min: u8,
    per: usize,
    syms: Vec<u32>,
}

impl Keymap {
    fn load(conn: &RustConnection) -> Keymap {
        let s = conn.setup();
        let (min, max) = (s.min_keycode, s.max_keycode);
        let r = conn
            .get_keyboard_mapping(min, max - min + 1)
            .unwrap()
            .reply()
            .unwrap();
        Keymap {
            min,
            per: r.keysyms_per_keycode.into(),
            syms: r.keysyms,
        }
    }
    fn keysym(&self, keycode: u8, shift: bool) -> u32 {
        let base = usize::from(keycode - self.min) * self.per;
        let row = &self.syms[base..base + self.per];
        let plain = row[0];
        let shifted = if self.per > 1 && row[1] != 0 {
            row[1]
        } else {
            plain
        };
        if shift {
            // Core protocol rule: a lone lowercase letter shifts to its uppercase form.
            if row[1] == 0 && (0x61..=0x7a).contains(&plain) {
                return plain - 0x20;
            }
            shifted
        } else {
            plain
        }
    }
}

impl TestWindow {
    pub fn open(display: &str) -> TestWindow {
        let (conn, screen_num) = RustConnection::connect(Some(display)).expect("connect X");
        let screen = conn.setup().roots[screen_num].clone();
        let window = conn.generate_id().unwrap();
        conn.create_window(
            screen.root_depth,
            window,
            screen.root,
            0,
            0,
            screen.width_in_pixels,
            screen.height_in_pixels,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new()
                .background_pixel(screen.white_pixel)
                .event_mask(
                    EventMask::BUTTON_PRESS
                        | EventMask::BUTTON_RELEASE
                        | EventMask::POINTER_MOTION
                        | EventMask::KEY_PRESS
                        | EventMask::EXPOSURE,
                ),
        )
        .unwrap();
        conn.map_window(window).unwrap();
        conn.flush().unwrap();
        // Wait until mapped, then take the keyboard focus (no window manager gives it to us).
        loop {
            let attrs = conn.get_window_attributes(window).unwrap().reply().unwrap();
            if attrs.map_state == MapState::VIEWABLE {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        conn.set_input_focus(InputFocus::POINTER_ROOT, window, x11rb::CURRENT_TIME)
            .unwrap();
        conn.get_input_focus().unwrap().reply().unwrap();
        let conn = Arc::new(conn);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c2, s2) = (conn.clone(), seen.clone());
        std::thread::spawn(move || {
            let mut keymap = Keymap::load(&c2);
            while let Ok(ev) = c2.wait_for_event() {
                let rec = match ev {
                    Event::ButtonPress(e) => Seen::Press {
                        button: e.detail,
                        x: e.event_x,
                        y: e.event_y,
                    },
                    Event::ButtonRelease(e) => Seen::Release {
                        button: e.detail,
                        x: e.event_x,
                        y: e.event_y,
                    },
                    Event::MotionNotify(e) => Seen::Motion {
                        x: e.event_x,
                        y: e.event_y,
                        buttons: u16::from(e.state) & 0x1f00,
                    },
                    Event::KeyPress(e) => {
                        let shift = u16::from(e.state) & 1 != 0;
                        Seen::Key {
                            keysym: keymap.keysym(e.detail, shift),
                            state: u16::from(e.state),
                        }
                    }
                    Event::MappingNotify(_) => {
                        keymap = Keymap::load(&c2);
                        continue;
                    }
                    _ => continue,
                };
                s2.lock().unwrap().push(rec);
            }
        });
        TestWindow { conn, window, seen }
    }

    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    /// Waits until `pred` holds on what was seen so far (events arrive asynchronously).
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            {
                let s = self.seen.lock().unwrap();
                if pred(&s) {
                    return s.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; saw {:?}",
                    self.seen.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Text typed into the window so far (printable keysyms, modifiers skipped).
    pub fn typed_text(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                Seen::Key { keysym, .. } => deskd_agent::x11::keys::char_for_keysym(*keysym),
                _ => None,
            })
            .collect()
    }
}
