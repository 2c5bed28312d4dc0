//! The live view against a real TigerVNC Xvnc started as the image starts it (RFB on a Unix socket
//! only, VNC authentication from a password file): `/ws/vnc` carries a viewer's RFB session,
//! `POST /vnc/password` changes the password without restarting the X server, several viewers
//! share the desktop, and pixels drawn by an X client arrive in a framebuffer update.

mod common;

use std::time::Duration;

use des::cipher::{BlockEncrypt, KeyInit};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt as _, CreateWindowAux, WindowClass};

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

/// A minimal RFB 3.8 viewer over the agent's WebSocket (what noVNC does in a browser).
struct Viewer {
    ws: Ws,
    buf: Vec<u8>,
}

/// What the server says once a viewer is in.
#[derive(Debug)]
struct ServerInit {
    width: u16,
    height: u16,
    bits_per_pixel: u8,
    red_shift: u8,
    green_shift: u8,
    blue_shift: u8,
    big_endian: bool,
}

impl Viewer {
    async fn open(agent: &std::path::Path) -> Viewer {
        let stream = tokio::net::UnixStream::connect(agent).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async("ws://agent/ws/vnc", stream)
            .await
            .expect("upgrade");
        Viewer {
            ws,
            buf: Vec::new(),
        }
    }

    async fn read(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("the RFB server answers within 20 s");
            match m {
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                other => panic!("expected RFB bytes, got {other:?}"),
            }
        }
        self.buf.drain(..n).collect()
    }

    async fn write(&mut self, b: &[u8]) {
        self.ws
            .send(Message::Binary(b.to_vec().into()))
            .await
            .unwrap();
    }

    /// Version and VNC authentication; the server's SecurityResult (0 = accepted).
    async fn authenticate(&mut self, password: &str) -> u32 {
        let version = self.read(12).await;
        assert_eq!(&version[..4], b"RFB ", "{version:?}");
        self.write(b"RFB 003.008\n").await;
        let n = self.read(1).await[0] as usize;
        assert!(n > 0, "the server offered no security type");
        let types = self.read(n).await;
        assert!(
            types.contains(&2),
            "VNC authentication is offered: {types:?}"
        );
        self.write(&[2]).await;
        let challenge = self.read(16).await;
        self.write(&vnc_auth_response(password, &challenge)).await;
        let r = self.read(4).await;
        u32::from_be_bytes([r[0], r[1], r[2], r[3]])
    }

    async fn init(&mut self) -> ServerInit {
        self.write(&[1]).await; // shared
        let h = self.read(24).await;
        let name_len = u32::from_be_bytes([h[20], h[21], h[22], h[23]]) as usize;
        let _name = self.read(name_len).await;
        ServerInit {
            width: u16::from_be_bytes([h[0], h[1]]),
            height: u16::from_be_bytes([h[2], h[3]]),
            bits_per_pixel: h[4],
            big_endian: h[6] != 0,
            red_shift: h[14],
            green_shift: h[15],
            blue_shift: h[16],
        }
    }

    /// Asks for raw pixels of one rectangle and returns them (in the server's pixel format).
    async fn raw_rect(&mut self, x: u16, y: u16, w: u16, h: u16, bpp: usize) -> Vec<u8> {
        // SetEncodings: Raw only.
        self.write(&[2, 0, 0, 1, 0, 0, 0, 0]).await;
        let mut req = vec![3, 0];
        for v in [x, y, w, h] {
            req.extend_from_slice(&v.to_be_bytes());
        }
        self.write(&req).await;
        loop {
            let t = self.read(1).await[0];
            match t {
                0 => break,
                // Bell, or a cut text the session sent.
                2 => continue,
                3 => {
                    let h = self.read(7).await;
                    let len = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
                    self.read(len).await;
                }
                other => panic!("unexpected server message {other}"),
            }
        }
        let h = self.read(3).await;
        let rects = u16::from_be_bytes([h[1], h[2]]);
        let mut out = Vec::new();
        for _ in 0..rects {
            let r = self.read(12).await;
            let (rw, rh) = (
                u16::from_be_bytes([r[4], r[5]]) as usize,
                u16::from_be_bytes([r[6], r[7]]) as usize,
            );
            let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
            assert_eq!(enc, 0, "asked for Raw only");
            out.extend(self.read(rw * rh * bpp).await);
        }
        out
    }
}

/// RFB 7.2.2: the challenge DES-encrypted with the password (8 bytes, zero-padded) as the key,
/// each key byte's bits reversed.
fn vnc_auth_response(password: &str, challenge: &[u8]) -> Vec<u8> {
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(password.bytes()) {
        *k = b.reverse_bits();
    }
    let cipher = des::Des::new(&key.into());
    let mut out = challenge.to_vec();
    for block in out.chunks_mut(8) {
        cipher.encrypt_block(block.into());
    }
    out
}

struct Setup {
    _x: common::Xvfb,
    display: String,
    agent: common::AgentRig,
    _dir: common::TempDir,
}

async fn setup(w: u16, h: u16) -> Option<Setup> {
    let dir = common::TempDir::new("vnc");
    let rfb = dir.0.join("rfb.sock");
    let passwd = dir.0.join("passwd");
    let x = common::xvnc_serving(w, h, &rfb, &passwd)?;
    let display = x.display.clone();
    let agent = common::start_agent_with(&display, |c| {
        c.vnc_socket = rfb.clone();
        c.vnc_password_file = passwd.clone();
    })
    .await;
    // Xvnc makes its RFB socket while it starts; -displayfd fires once X clients may connect.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !rfb.exists() {
        assert!(std::time::Instant::now() < deadline, "no RFB socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(Setup {
        _x: x,
        display,
        agent,
        _dir: dir,
    })
}

async fn set_password(agent: &common::AgentRig, pw: &str) -> u16 {
    let body = serde_json::json!({ "password": pw }).to_string();
    common::post(&agent.socket, "/vnc/password", &body)
        .await
        .status
}

#[tokio::test(flavor = "multi_thread")]
async fn viewers_authenticate_with_the_current_password_and_share_the_desktop() {
    let Some(s) = setup(800, 600).await else {
        return;
    };
    // Before any password is set nobody gets in.
    let mut v = Viewer::open(&s.agent.socket).await;
    assert_ne!(v.authenticate("anything").await, 0);

    assert_eq!(set_password(&s.agent, "").await, 400, "empty password");
    assert_eq!(set_password(&s.agent, "first-pw-1234567").await, 200);
    let mut v = Viewer::open(&s.agent.socket).await;
    assert_eq!(
        v.authenticate("wrong-pw").await,
        1,
        "a wrong password is refused"
    );
    let mut a = Viewer::open(&s.agent.socket).await;
    assert_eq!(a.authenticate("first-pw-1234567").await, 0);
    let init = a.init().await;
    assert_eq!((init.width, init.height), (800, 600));

    // Rotation: the X server keeps running; the old password no longer opens a session, the
    // viewer already in stays, and a second viewer joins it with the new one.
    assert_eq!(set_password(&s.agent, "second-pw-765432").await, 200);
    let mut old = Viewer::open(&s.agent.socket).await;
    assert_ne!(old.authenticate("first-pw-1234567").await, 0);
    let mut b = Viewer::open(&s.agent.socket).await;
    assert_eq!(b.authenticate("second-pw-765432").await, 0);
    assert_eq!(b.init().await.width, 800);

    // Both viewers see what an X client draws: a red window at (100, 100).
    let (conn, screen_num) = x11rb::connect(Some(&s.display)).unwrap();
    let screen = &conn.setup().roots[screen_num];
    let win = conn.generate_id().unwrap();
    let red = 0xff0000; // TrueColor 24-bit: 0xRRGGBB
    conn.create_window(
        screen.root_depth,
        win,
        screen.root,
        100,
        100,
        200,
        150,
        0,
        WindowClass::INPUT_OUTPUT,
        screen.root_visual,
        &CreateWindowAux::new()
            .background_pixel(red)
            .override_redirect(1),
    )
    .unwrap();
    conn.map_window(win).unwrap();
    conn.flush().unwrap();
    conn.get_input_focus().unwrap().reply().unwrap(); // the server has drawn it
    for v in [&mut a, &mut b] {
        let bpp = init.bits_per_pixel as usize / 8;
        assert_eq!(bpp, 4);
        let px = v.raw_rect(150, 150, 4, 4, bpp).await;
        assert_eq!(px.len(), 16 * 4);
        let p = if init.big_endian {
            u32::from_be_bytes([px[0], px[1], px[2], px[3]])
        } else {
            u32::from_le_bytes([px[0], px[1], px[2], px[3]])
        };
        let (r, g, bl) = (
            (p >> init.red_shift) & 0xff,
            (p >> init.green_shift) & 0xff,
            (p >> init.blue_shift) & 0xff,
        );
        assert_eq!((r, g, bl), (0xff, 0, 0), "the window's red arrives: {p:#x}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_vnc_server_closes_with_4500() {
    let Some(x) = common::xvfb(320, 240) else {
        return;
    };
    let agent = common::start_agent_with(&x.display, |c| {
        c.vnc_socket = "/nonexistent/rfb.sock".into();
    })
    .await;
    let mut v = Viewer::open(&agent.socket).await;
    match v.ws.next().await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4500),
        other => panic!("expected close 4500, got {other:?}"),
    }
}
