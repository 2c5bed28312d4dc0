//! The VNC relay end to end but for the VM (`crate::api::test_rig`: a real daemon router, a
//! stand-in for the VM's hybrid vsock, the real agent) and a real TigerVNC Xvnc set up as the
//! image sets it up. A viewer speaks RFB through `/desktops/{id}/websockify` and `/ws/websockify`
//! with the computer's `vnc_password`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use des::cipher::{BlockEncrypt, KeyInit};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::api::test_rig::{serve_one_computer_with, Options, Served};
use crate::store::{ComputerStatus, Store};

struct Xvnc(Child);

impl Drop for Xvnc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

/// Xvnc as images/rootfs/usr/local/lib/deskd/display starts it, on a display it picks; None (and
/// a loud skip) without Xvnc.
fn xvnc(rfb: &Path, passwd: &Path) -> Option<(Xvnc, String)> {
    use std::io::{BufRead, BufReader};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    if Command::new("Xvnc")
        .arg("-help")
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("\n*** SKIPPED vnc relay test: Xvnc is not installed (apt-get install -y tigervnc-standalone-server) ***\n");
        return None;
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let w_raw = w.as_raw_fd();
    let mut cmd = Command::new("Xvnc");
    cmd.args(["-displayfd", "3", "-geometry", "640x480", "-depth", "24"])
        .args([
            "-nolisten",
            "tcp",
            "-noreset",
            "-rfbport",
            "-1",
            "-rfbunixpath",
        ])
        .arg(rfb)
        .args(["-SecurityTypes", "VncAuth", "-rfbauth"])
        .arg(passwd)
        .args(["-AlwaysShared", "-AcceptSetDesktopSize=0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it gives the child the pipe as fd 3 without CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(w_raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = Xvnc(cmd.spawn().unwrap());
    drop(w);
    let mut line = String::new();
    BufReader::new(std::fs::File::from(r))
        .read_line(&mut line)
        .unwrap();
    Some((child, format!(":{}", line.trim())))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

struct Viewer {
    ws: Ws,
    buf: Vec<u8>,
}

impl Viewer {
    async fn open(api: &Path, path: &str) -> Viewer {
        let s = tokio::net::UnixStream::connect(api).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://localhost{path}"), s)
            .await
            .unwrap();
        Viewer {
            ws,
            buf: Vec::new(),
        }
    }

    /// The next `n` bytes of RFB, or the close code the socket ended with.
    async fn read(&mut self, n: usize) -> Result<Vec<u8>, u16> {
        while self.buf.len() < n {
            match tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("an answer within 20 s")
            {
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(Message::Close(Some(f)))) => return Err(u16::from(f.code)),
                other => panic!("expected RFB bytes, got {other:?}"),
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn write(&mut self, b: &[u8]) {
        self.ws
            .send(Message::Binary(b.to_vec().into()))
            .await
            .unwrap();
    }

    /// RFB 3.8 with VNC authentication; Ok(screen width) once in, Err(security result or close
    /// code) if refused.
    async fn log_in(&mut self, password: &str) -> Result<u16, u32> {
        let v = self.read(12).await.map_err(u32::from)?;
        assert_eq!(&v, b"RFB 003.008\n");
        self.write(&v).await;
        let n = self.read(1).await.unwrap()[0] as usize;
        assert_eq!(
            self.read(n).await.unwrap(),
            vec![2],
            "VNC authentication only"
        );
        self.write(&[2]).await;
        let challenge = self.read(16).await.unwrap();
        let mut key = [0u8; 8];
        for (k, b) in key.iter_mut().zip(password.bytes()) {
            *k = b.reverse_bits();
        }
        let cipher = des::Des::new(&key.into());
        let mut answer = challenge.clone();
        for block in answer.chunks_mut(8) {
            cipher.encrypt_block(block.into());
        }
        self.write(&answer).await;
        let r = self.read(4).await.unwrap();
        let result = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
        if result != 0 {
            return Err(result);
        }
        self.write(&[1]).await;
        let init = self.read(24).await.unwrap();
        let name = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
        self.read(name as usize).await.unwrap();
        Ok(u16::from_be_bytes([init[0], init[1]]))
    }

    /// RFB 3.8 up to the security type; then the failure reason the daemon sends where the
    /// challenge would be.
    async fn refused_before_challenge(&mut self) -> String {
        let v = self.read(12).await.unwrap();
        self.write(&v).await;
        let n = self.read(1).await.unwrap()[0] as usize;
        self.read(n).await.unwrap();
        self.write(&[2]).await;
        let result = self.read(4).await.unwrap();
        assert_eq!(result, vec![0, 0, 0, 1], "a failed SecurityResult");
        let len = self.read(4).await.unwrap();
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        String::from_utf8(self.read(len).await.unwrap()).unwrap()
    }

    async fn close_code(&mut self) -> Option<u16> {
        match self.ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => Some(u16::from(f.code)),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Everything but the VM: Xvnc, the agent in front of it behind a stand-in vsock, the daemon's
/// router on a Unix socket and on loopback TCP (for the browser), one running computer.
struct Rig {
    store: Arc<Store>,
    c: crate::store::Computer,
    api: PathBuf,
    tcp: std::net::SocketAddr,
    passwd: PathBuf,
    display: String,
    _served: Served,
    _x: Xvnc,
    _dir: tempfile::TempDir,
}

async fn rig(password: &str) -> Option<Rig> {
    rig_with(password, Options::default()).await
}

/// [`rig`] with the daemon set up by `options`.
async fn rig_with(password: &str, options: Options) -> Option<Rig> {
    let dir = tempfile::tempdir().unwrap();
    let (rfb, passwd) = (dir.path().join("rfb.sock"), dir.path().join("passwd"));
    let (x, display) = xvnc(&rfb, &passwd)?;

    // The agent, as in the guest but on a Unix socket, and the daemon in front of it.
    let cfg = deskd_agent::Config {
        listen: deskd_agent::Listen::Unix(dir.path().join("agent.sock")),
        display: display.clone(),
        user: None,
        home: Some(dir.path().to_path_buf()),
        output_cap: 1 << 20,
        idle_after: Duration::from_secs(30),
        x_call_limit: Duration::from_secs(30),
        vnc_socket: rfb.clone(),
        vnc_password_file: passwd.clone(),
        pulse: deskd_agent::audio::Pulse::default(),
    };
    let served = serve_one_computer_with(dir.path(), cfg, password, "640x480x24", &options).await;
    Some(Rig {
        store: served.store.clone(),
        c: served.c.clone(),
        api: served.api.clone(),
        tcp: served.tcp,
        passwd,
        display,
        _served: served,
        _x: x,
        _dir: dir,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_reach_the_desktop_through_the_relay_with_the_current_password() {
    let Some(r) = rig("FirstPw8rest-ignored").await else {
        return;
    };
    let (store, c, api, passwd) = (&r.store, &r.c, &r.api, &r.passwd);
    let inst = c.instance_id.clone();
    let orgo_path = format!("/desktops/{inst}/websockify");
    let novnc_path = format!("/desktops/{}/ws/websockify", c.id);
    assert!(
        !passwd.exists(),
        "the guest has no password before a viewer comes"
    );

    // Two viewers at once, on both paths, without a token: the password is the check.
    let mut a = Viewer::open(api, &orgo_path).await;
    assert_eq!(a.log_in("FirstPw8").await, Ok(640));
    let mut b = Viewer::open(api, &novnc_path).await;
    assert_eq!(b.log_in("FirstPw8rest-ignored").await, Ok(640));
    let mut wrong = Viewer::open(api, &orgo_path).await;
    assert_eq!(
        wrong.log_in("not-it").await,
        Err(1),
        "a wrong password is refused"
    );

    // A bad token is refused before RFB; the right one is accepted.
    let mut v = Viewer::open(api, &format!("{novnc_path}?token=nope")).await;
    assert_eq!(v.close_code().await, Some(4401));
    let mut v = Viewer::open(api, &format!("{novnc_path}?token=FirstPw8rest-ignored")).await;
    assert_eq!(v.log_in("FirstPw8rest-ignored").await, Ok(640));

    // A new boot's password (what start does) reaches the guest with the next viewer; the X
    // server (and the viewers already in) carry on.
    store.set_vnc_password(&c.id, "SecondPw").unwrap();
    let mut old = Viewer::open(api, &orgo_path).await;
    assert_eq!(old.log_in("FirstPw8").await, Err(1));
    let mut new = Viewer::open(api, &orgo_path).await;
    assert_eq!(new.log_in("SecondPw").await, Ok(640));
    // The first viewer still gets framebuffer updates (a full one, any encoding).
    a.write(&[3, 0, 0, 0, 0, 0, 2, 128, 1, 224]).await;
    let t = a.read(1).await.unwrap();
    assert_eq!(t[0], 0, "a FramebufferUpdate");

    // A stopped computer: 4404.
    store
        .set_computer_status(&c.id, ComputerStatus::Stopped, None)
        .unwrap();
    let mut v = Viewer::open(api, &orgo_path).await;
    assert_eq!(v.close_code().await, Some(4404));
}

/// Wrong passwords end in the daemon: Xvnc, which blocks its one source (the agent) after five
/// failures, never sees them, so they cannot lock the right password out; past the peer's budget
/// of wrong credentials it gets no challenge until it waits.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_passwords_stop_at_the_daemon_and_count_against_their_peer() {
    let options = Options {
        bad_key_burst: Some(8),
        ..Options::default()
    };
    let Some(r) = rig_with("RightPw8", options).await else {
        return;
    };
    let path = format!("/desktops/{}/websockify", r.c.instance_id);
    for _ in 0..7 {
        let mut v = Viewer::open(&r.api, &path).await;
        assert_eq!(v.log_in("wrong-pw").await, Err(1));
    }
    // Xvnc would refuse its source now (five failures); the daemon never passed them on.
    let mut v = Viewer::open(&r.api, &path).await;
    assert_eq!(v.log_in("RightPw8").await, Ok(640));
    let mut v = Viewer::open(&r.api, &path).await;
    assert_eq!(v.log_in("wrong-pw").await, Err(1), "the eighth");
    // The budget is spent: the next viewer gets a failed SecurityResult with the reason in place
    // of a challenge, the right password or not.
    let mut v = Viewer::open(&r.api, &path).await;
    let refused = v.refused_before_challenge().await;
    assert!(
        refused.contains("too many wrong passwords or keys") && refused.contains("retry after"),
        "{refused}"
    );
}

mod browser;

/// noVNC (Debian's package, unmodified) in headless Chromium, through the daemon's relay on
/// loopback TCP: the canvas shows the desktop (the root window painted red by `xsetroot`), and a
/// wrong password ends in noVNC's security failure.
#[tokio::test(flavor = "multi_thread")]
async fn novnc_in_chromium_shows_the_desktop_and_a_wrong_password_is_refused() {
    if !Path::new(browser::NOVNC_DIR).join("core/rfb.js").exists() {
        eprintln!("\n*** SKIPPED noVNC browser test: noVNC is not installed (apt-get install -y novnc) ***\n");
        return;
    }
    let Some(r) = rig("NoVncPw8").await else {
        return;
    };
    match Command::new("xsetroot")
        .args(["-display", &r.display, "-solid", "#ff0000"])
        .status()
    {
        Ok(s) => assert!(s.success(), "xsetroot failed"),
        Err(_) => {
            eprintln!("\n*** SKIPPED noVNC browser test: xsetroot is not installed (apt-get install -y x11-xserver-utils) ***\n");
            return;
        }
    }
    let Some(mut chromium) = browser::Chromium::start() else {
        return;
    };
    let pages = browser::serve_novnc().await;
    let ws = format!("ws://{}/desktops/{}/websockify", r.tcp, r.c.instance_id);
    let seen = tokio::task::spawn_blocking(move || {
        let page = |pw: &str| format!("http://{pages}/page.html?ws={ws}&pw={pw}");
        chromium.open(&page("NoVncPw8"));
        let state = chromium.wait_for(
            "window.vnc && window.vnc.state",
            Duration::from_secs(60),
            |v| v != "connecting" && !v.is_null(),
        );
        let probe = "(() => { const c = document.querySelector('#screen canvas'); \
                     const d = c.getContext('2d').getImageData(320, 240, 1, 1).data; \
                     return [c.width, c.height, d[0], d[1], d[2]]; })()";
        let pixels = if state == "connected" {
            chromium.wait_for(probe, Duration::from_secs(60), |v| {
                v.get(2).and_then(Value::as_u64) == Some(255)
            })
        } else {
            Value::Null
        };
        chromium.open(&page("wrong-pw"));
        let refused = chromium.wait_for(
            "window.vnc && window.vnc.state === 'disconnected' && window.vnc.security",
            Duration::from_secs(60),
            |v| !v.is_null() && v != &Value::Bool(false),
        );
        (state, pixels, refused)
    })
    .await
    .unwrap();
    assert_eq!(
        seen.0, "connected",
        "noVNC connected with the right password"
    );
    assert_eq!(
        seen.1,
        json!([640, 480, 255, 0, 0]),
        "the canvas shows the red desktop"
    );
    assert_eq!(seen.2, json!(1), "noVNC reports the security failure");
}

/// The tools tests/viewer/viewer.py needs, or the first one missing.
fn missing_viewer_tool() -> Option<&'static str> {
    let on_path = |t: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false)
    };
    [
        "chromium",
        "nginx",
        "openssl",
        "node",
        "npm",
        "lxterminal",
        "xwininfo",
        "python3",
    ]
    .into_iter()
    .find(|t| !on_path(t))
    .or_else(|| (!Path::new(browser::NOVNC_DIR).join("vnc.html").exists()).then_some("novnc"))
}

/// orgo-vnc (npm, unmodified, on React) and noVNC's `vnc.html` in headless Chromium, behind nginx
/// configured with README.md's snippet, against this host's Xvnc through the daemon's relay:
/// tests/viewer/viewer.py, the same checks the rig runs against a VM (connect with the API's
/// `hostname` and password, the canvas matches the API's screenshot, a click moves the pointer,
/// typed text reaches a terminal, a wrong password is refused).
#[tokio::test(flavor = "multi_thread")]
async fn orgo_vnc_and_novnc_through_the_readme_proxy() {
    if let Some(tool) = missing_viewer_tool() {
        eprintln!("\n*** SKIPPED orgo-vnc viewer test: {tool} is not installed (tests/install-deps) ***\n");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public_url = format!("https://127.0.0.1:{port}");
    let options = Options {
        public_url: Some(public_url),
        ..Options::default()
    };
    let Some(r) = rig_with("ViewerPw", options).await else {
        return;
    };
    // Something to see besides a flat root window: the terminal the checks open is drawn on it.
    let _ = Command::new("xsetroot")
        .args(["-display", &r.display, "-solid", "#336699"])
        .status();
    let printed = run_flow_script(
        &r,
        "tests/viewer/viewer.py",
        &["--proxy-port", &port.to_string()],
    )
    .await;
    assert!(printed.contains("all viewer steps passed"), "{printed}");
}

/// Runs a rig flow script (its `--info-dir` and `--computer` given) against this daemon and the
/// computer on this host's Xvnc; panics if it fails, else returns what it printed.
async fn run_flow_script(r: &Rig, script: &str, args: &[&str]) -> String {
    let info = r._dir.path().join("info");
    std::fs::create_dir_all(&info).unwrap();
    for (name, value) in [
        ("socket", r.api.display().to_string()),
        ("key", r._served.key.clone()),
        ("url", format!("http://{}/api", r.tcp)),
    ] {
        std::fs::write(info.join(name), value).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg("--info-dir")
        .arg(&info)
        .args(args)
        .args(["--computer", &r.c.id])
        .env("DISPLAY", &r.display)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{printed}");
    assert!(
        out.status.success(),
        "{} failed: {printed}",
        script.display()
    );
    printed
}

/// The rig's clipboard and actions flow (tests/sdk/rig_actions_flow.py) against this host's Xvnc
/// with the image's window manager and terminal, through the daemon's routes: paste and copy,
/// triple_click, hold_key, a window dragged by its title bar, region and scaled screenshots.
#[tokio::test(flavor = "multi_thread")]
async fn clipboard_and_actions_through_the_daemon_on_a_desktop() {
    if let Some(tool) = ["openbox", "lxterminal", "xwininfo", "python3"]
        .into_iter()
        .find(|t| {
            Command::new("which")
                .arg(t)
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
    {
        eprintln!("\n*** SKIPPED clipboard and actions test: {tool} is not installed (tests/install-deps) ***\n");
        return;
    }
    let Some(r) = rig("ActionsP").await else {
        return;
    };
    // The image's window manager: the drag moves a window by its title bar.
    let mut wm = Command::new("openbox")
        .env("DISPLAY", &r.display)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let printed = run_flow_script(&r, "tests/sdk/rig_actions_flow.py", &[]).await;
    let _ = wm.kill();
    let _ = wm.wait();
    assert!(
        printed.contains("all clipboard and action steps passed"),
        "{printed}"
    );
}
