//! The audio stream and RTMP streaming through the daemon, end to end but for the VM
//! (`crate::api::test_rig`): a real X server, a real PulseAudio set up as the image sets up its
//! speaker, the real agent, the daemon's router. Audio: `/desktops/{id}/ws/audio` relays the
//! agent's frames, checks its parameters itself, and the audio events reach `/ws/events`.
//! Streaming: a saved stream connection, `stream/start|status|stop` reach the agent's encoder, an
//! RTMP receiver (Debian's ffmpeg listening on loopback) gets the stream, a bad URL ends as
//! `terminated`, and the stream key is in no answer.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::api::test_rig::{serve_one_computer, Served};

const PASSWORD: &str = "MediaPw8";
const KEY: &str = "live_Daemon-Sekr3t.7";

/// Kills and reaps a child on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn installed(program: &str, version_flag: &str, package: &str, why: &str) -> bool {
    let ok = Command::new(program)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!(
            "\n*** SKIPPED {why}: {program} is not installed (apt-get install -y {package}) ***\n"
        );
    }
    ok
}

/// Xvfb at `size` on a display it picks.
fn xvfb(size: &str) -> (Proc, String) {
    use std::io::{BufRead, BufReader};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let w_raw = w.as_raw_fd();
    let mut cmd = Command::new("Xvfb");
    cmd.args(["-displayfd", "3", "-screen", "0", size, "-nolisten", "tcp"])
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
    let child = Proc(cmd.spawn().unwrap());
    drop(w);
    let mut line = String::new();
    BufReader::new(std::fs::File::from(r))
        .read_line(&mut line)
        .unwrap();
    (child, format!(":{}", line.trim()))
}

/// PulseAudio with the image's speaker script and a socket in `dir`; returns its server string.
fn pulseaudio(dir: &Path) -> (Proc, String) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/images/rootfs/etc/pulse/default.pa.d/deskd-speaker.pa"
    );
    let socket = dir.join("pulse-native");
    let child = Proc(
        Command::new("pulseaudio")
            .args([
                "--daemonize=no",
                "--exit-idle-time=-1",
                "-n",
                "--use-pid-file=no",
            ])
            .args([
                "--disable-shm=yes",
                "-F",
                script,
                "--load=module-suspend-on-idle",
            ])
            .arg(format!(
                "--load=module-native-protocol-unix socket={} auth-anonymous=1",
                socket.display()
            ))
            .env("HOME", dir)
            .env("XDG_RUNTIME_DIR", dir)
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let server = format!("unix:{}", socket.display());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = Command::new("pactl")
            .arg(format!("--server={server}"))
            .args(["list", "short", "sinks"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("speaker"));
        if up {
            return (child, server);
        }
        assert!(Instant::now() < deadline, "pulseaudio did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A 440 Hz tone playing into the speaker (a generated WAV through `paplay`).
fn play_tone(dir: &Path, server: &str) -> Proc {
    let (rate, n) = (48_000u32, 48_000u32 * 60);
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + n * 2).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&[1, 0, 1, 0]); // PCM, mono
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 2).to_le_bytes());
    b.extend_from_slice(&[2, 0, 16, 0]); // 2 bytes a frame, 16 bits
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(n * 2).to_le_bytes());
    for i in 0..n {
        let v = (std::f64::consts::TAU * 440.0 * f64::from(i) / f64::from(rate)).sin() * 16000.0;
        b.extend_from_slice(&(v as i16).to_le_bytes());
    }
    let wav = dir.join("tone.wav");
    std::fs::write(&wav, b).unwrap();
    Proc(
        Command::new("paplay")
            .arg(format!("--server={server}"))
            .arg("--device=speaker")
            .arg(&wav)
            .spawn()
            .unwrap(),
    )
}

struct Rig {
    served: Served,
    pulse_server: String,
    dir: PathBuf,
    _pulse: Proc,
    _x: Proc,
    _tmp: tempfile::TempDir,
}

async fn rig(why: &str, ffmpeg: bool) -> Option<Rig> {
    if !installed("Xvfb", "-help", "xvfb", why)
        || !installed("pulseaudio", "--version", "pulseaudio", why)
        || !installed("parec", "--version", "pulseaudio-utils", why)
        || !installed("paplay", "--version", "pulseaudio-utils", why)
        || (ffmpeg
            && (!installed("ffmpeg", "-version", "ffmpeg", why)
                || !installed("ffprobe", "-version", "ffmpeg", why)))
    {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (x, display) = xvfb("1280x720x24");
    let (pulse, pulse_server) = pulseaudio(&dir);
    let cfg = deskd_agent::Config {
        listen: deskd_agent::Listen::Unix(dir.join("agent.sock")),
        display,
        user: None,
        home: Some(dir.clone()),
        output_cap: 1 << 20,
        idle_after: Duration::from_secs(30),
        x_call_limit: Duration::from_secs(30),
        vnc_socket: dir.join("no-rfb.sock"),
        vnc_password_file: dir.join("passwd"),
        pulse: deskd_agent::audio::Pulse {
            server: Some(pulse_server.clone()),
            ..Default::default()
        },
    };
    let served = serve_one_computer(&dir, cfg, PASSWORD, "1280x720x24").await;
    Some(Rig {
        served,
        pulse_server,
        dir,
        _pulse: pulse,
        _x: x,
        _tmp: tmp,
    })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

async fn ws(api: &Path, path: &str) -> Ws {
    let s = tokio::net::UnixStream::connect(api).await.unwrap();
    tokio_tungstenite::client_async(format!("ws://localhost{path}"), s)
        .await
        .unwrap()
        .0
}

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("a message within 30 s")
        .expect("open")
        .expect("no error")
}

fn json_of(m: &Message) -> Value {
    match m {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected JSON, got {other:?}"),
    }
}

fn close_code(m: &Message) -> u16 {
    match m {
        Message::Close(Some(f)) => u16::from(f.code),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// The next message that is not PCM.
async fn next_text_or_close(ws: &mut Ws) -> Message {
    loop {
        match next(ws).await {
            Message::Binary(_) => {}
            m => return m,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audio_and_its_events_through_the_daemon() {
    let Some(r) = rig("audio relay test", false).await else {
        return;
    };
    let (api, c) = (&r.served.api, &r.served.c);
    let _tone = play_tone(&r.dir, &r.pulse_server);

    let mut ev = ws(
        api,
        &format!("/desktops/{}/ws/events?token={PASSWORD}", c.id),
    )
    .await;
    ev.send(Message::Text(
        json!({"type":"subscribe","event_types":["audio_stream_start","audio_stream_stop"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(json_of(&next(&mut ev).await)["type"], "subscribed");

    let path = format!(
        "/desktops/{}/ws/audio?token={PASSWORD}&sample_rate=24000&channels=1",
        c.instance_id
    );
    let mut a = ws(api, &path).await;
    assert_eq!(
        json_of(&next(&mut a).await),
        json!({"type": "started", "sample_rate": 24000, "channels": 1})
    );
    let mut loud = 0;
    for _ in 0..100 {
        match next(&mut a).await {
            Message::Binary(b) => {
                assert_eq!(b.len(), 960, "20 ms at 24 kHz mono");
                let peak = b
                    .chunks_exact(2)
                    .map(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs())
                    .max()
                    .unwrap();
                if peak > 8000 {
                    loud += 1;
                }
            }
            other => panic!("expected PCM, got {other:?}"),
        }
    }
    assert!(loud > 80, "the tone came through in {loud} of 100 frames");
    assert_eq!(
        json_of(&next(&mut ev).await)["event"]["type"],
        "audio_stream_start"
    );
    a.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    assert_eq!(
        json_of(&next_text_or_close(&mut a).await),
        json!({"type": "pong"})
    );
    a.send(Message::Text(r#"{"type":"stop"}"#.into()))
        .await
        .unwrap();
    assert_eq!(close_code(&next_text_or_close(&mut a).await), 1000);
    assert_eq!(
        json_of(&next(&mut ev).await)["event"]["type"],
        "audio_stream_stop"
    );

    // The daemon checks the format and the token itself.
    let mut a = ws(
        api,
        &format!(
            "/desktops/{}/ws/audio?token={PASSWORD}&sample_rate=96000",
            c.id
        ),
    )
    .await;
    let err = json_of(&next(&mut a).await);
    assert_eq!(err["type"], "error");
    assert!(
        err["message"].as_str().unwrap().contains("sample_rate"),
        "{err}"
    );
    assert_eq!(close_code(&next(&mut a).await), 4500);
    let mut a = ws(
        api,
        &format!("/desktops/{}/ws/audio?channels=5&token={PASSWORD}", c.id),
    )
    .await;
    assert!(json_of(&next(&mut a).await)["message"]
        .as_str()
        .unwrap()
        .contains("channels"));
    assert_eq!(close_code(&next(&mut a).await), 4500);
    let mut a = ws(api, &format!("/desktops/{}/ws/audio?token=wrong", c.id)).await;
    assert_eq!(close_code(&next(&mut a).await), 4401);
}

/// One REST call over the daemon's socket: status and body text.
async fn call(r: &Rig, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let s = tokio::net::UnixStream::connect(&r.served.api)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "deskd")
        .header("authorization", format!("Bearer {}", r.served.key))
        .header("content-type", "application/json")
        .body(Full::new(hyper::body::Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(
        !text.contains(KEY),
        "the stream key is in an answer: {text}"
    );
    (status, text)
}

async fn json_call(r: &Rig, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, text) = call(r, method, path, body).await;
    (status, serde_json::from_str(&text).unwrap())
}

/// True once something listens on 127.0.0.1:`port` (from /proc: a probe connection would be
/// taken by the one-shot receiver as its publisher).
fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_a_saved_connection_through_the_daemon() {
    let Some(r) = rig("RTMP relay test", true).await else {
        return;
    };
    let id = r.served.c.id.clone();
    let _tone = play_tone(&r.dir, &r.pulse_server);
    let port = free_port();
    let out = r.dir.join("received.flv");
    let mut receiver = Proc(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-nostdin",
                "-listen",
                "1",
            ])
            .args(["-f", "flv", "-i"])
            .arg(format!("rtmp://127.0.0.1:{port}/live/{KEY}"))
            .args(["-c", "copy", "-f", "flv", "-y"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listening(port) {
        assert!(Instant::now() < deadline, "the receiver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, created) = json_call(
        &r,
        "POST",
        "/api/stream-connections",
        Some(
            json!({"name": "local", "rtmp_url": format!("rtmp://127.0.0.1:{port}/live"),
                    "stream_key": KEY, "bitrate_kbps": 1500, "framerate": 15}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, idle) = json_call(
        &r,
        "GET",
        &format!("/api/computers/{id}/stream/status"),
        None,
    )
    .await;
    assert_eq!((status, idle), (200, json!({"status": "idle"})));

    let (status, started) = json_call(
        &r,
        "POST",
        &format!("/api/computers/{id}/stream/start"),
        Some(json!({"connection_name": "local"})),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["success"], true);
    assert_eq!(started["status"], "streaming");
    let pid = started["pid"].as_u64().unwrap();
    assert!(started["start_time"].is_string());
    let (status, again) = json_call(
        &r,
        "POST",
        &format!("/api/computers/{id}/stream/start"),
        Some(json!({"connection_name": "local"})),
    )
    .await;
    assert_eq!(status, 409, "one stream per computer: {again}");
    assert_eq!(again["upstream_status"], 409);

    // The clock starts once the receiver has data: the encoder's start and the RTMP hand-shake
    // take seconds on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut flowing: Option<Instant> = None;
    while flowing.is_none_or(|t| t.elapsed() < Duration::from_secs(8)) {
        let (_, s) = json_call(
            &r,
            "GET",
            &format!("/api/computers/{id}/stream/status"),
            None,
        )
        .await;
        assert_eq!(s["status"], "streaming", "{s}");
        assert_eq!(s["pid"], pid);
        if flowing.is_none() && std::fs::metadata(&out).is_ok_and(|m| m.len() > 0) {
            flowing = Some(Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "the receiver got nothing in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, stopped) = json_call(
        &r,
        "POST",
        &format!("/api/computers/{id}/stream/stop"),
        None,
    )
    .await;
    assert_eq!((status, stopped), (200, json!({"success": true})));
    let (_, s) = json_call(
        &r,
        "GET",
        &format!("/api/computers/{id}/stream/status"),
        None,
    )
    .await;
    assert_eq!(s, json!({"status": "idle"}));

    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the receiver did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,width,height",
        ])
        .args(["-show_entries", "format=duration", "-of", "json"])
        .arg(&out)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&probe.stdout).unwrap();
    let streams = v["streams"].as_array().unwrap();
    assert!(
        streams.iter().any(|s| s["codec_type"] == "video"
            && s["codec_name"] == "h264"
            && s["width"] == 1280
            && s["height"] == 720),
        "{v}"
    );
    assert!(
        streams
            .iter()
            .any(|s| s["codec_type"] == "audio" && s["codec_name"] == "aac"),
        "{v}"
    );
    let duration: f64 = v["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!(duration >= 5.0, "{duration} s arrived");

    // A connection nobody answers: the encoder gives up and the status says why.
    let (status, _) = json_call(
        &r,
        "POST",
        "/api/stream-connections",
        Some(
            json!({"name": "nowhere", "rtmp_url": format!("rtmp://127.0.0.1:{}/live", free_port()),
                    "stream_key": KEY}),
        ),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = json_call(
        &r,
        "POST",
        &format!("/api/computers/{id}/stream/start"),
        Some(json!({"connection_name": "nowhere"})),
    )
    .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let message = loop {
        let (_, s) = json_call(
            &r,
            "GET",
            &format!("/api/computers/{id}/stream/status"),
            None,
        )
        .await;
        if s["status"] == "terminated" {
            break s["message"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "still {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        message.to_lowercase().contains("connection refused"),
        "{message}"
    );
    let (status, listed) = call(&r, "GET", "/api/stream-connections", None).await;
    assert_eq!(status, 200);
    assert!(listed.contains("\"stream_key\":\"********\""), "{listed}");
}
