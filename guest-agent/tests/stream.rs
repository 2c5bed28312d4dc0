#![cfg(feature = "agent")]
//! RTMP streaming by the agent's supervised ffmpeg against a real X server, a real PulseAudio and
//! a real RTMP receiver (Debian's ffmpeg listening on loopback): the receiver gets H.264 video of
//! the screen's size and an AAC track, the status follows the encoder, a bad URL ends as
//! `terminated` with the reason, and the stream key shows in no answer and no log line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::pulse::{pulseaudio, tone_wav, PulseServer};
use common::{post, request, start_agent_with, xvfb, AgentRig, TempDir, Xvfb};

const KEY: &str = "live_Sekr3t-KEY.42";

/// Every log line of this test process (the agent runs in it), to look for the key in.
fn captured_log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&captured_log().lock().unwrap()).into_owned()
}

fn have(program: &str, why: &str) -> bool {
    let ok = Command::new(program)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!(
            "\n*** SKIPPED {why}: {program} is not installed (apt-get install -y ffmpeg) ***\n"
        );
    }
    ok
}

struct Rig {
    agent: AgentRig,
    pulse: PulseServer,
    _x: Xvfb,
}

async fn rig(why: &str) -> Option<Rig> {
    captured_log();
    if !have("ffmpeg", why) || !have("ffprobe", why) {
        return None;
    }
    let pulse = pulseaudio(why)?;
    let x = xvfb(1280, 720)?;
    let server = pulse.server.clone();
    let agent = start_agent_with(&x.display, |c| c.pulse.server = Some(server)).await;
    Some(Rig {
        agent,
        pulse,
        _x: x,
    })
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// True once something listens on 127.0.0.1:`port` (read from /proc: a probe connection would be
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

/// `ffmpeg -listen 1`: an RTMP server for one publisher, writing what it receives to `out`.
struct Receiver {
    child: Child,
    out: PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn receiver(dir: &Path, port: u16) -> Receiver {
    let out = dir.join("received.flv");
    let child = Command::new("ffmpeg")
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
        .stderr(std::fs::File::create(dir.join("receiver.log")).unwrap())
        .spawn()
        .expect("spawn the receiver");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listening(port) {
        assert!(
            Instant::now() < deadline,
            "the RTMP receiver did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Receiver { child, out }
}

async fn status(agent: &AgentRig) -> Value {
    let r = request(&agent.socket, "GET", "/stream/status", None).await;
    assert_eq!(r.status, 200);
    assert_no_key(&r.body);
    r.json()
}

#[track_caller]
fn assert_no_key(body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    assert!(!text.contains(KEY), "the stream key leaked: {text}");
}

fn start_body(url: &str) -> String {
    json!({"url": url, "stream_key": KEY, "bitrate_kbps": 1500, "width": 1280, "height": 720,
           "framerate": 15})
    .to_string()
}

/// What ffprobe sees in `file`: (codec_type, codec_name, width, height) per stream, duration.
fn probe(file: &Path) -> (Vec<(String, String, u64, u64)>, f64) {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,width,height",
        ])
        .args(["-show_entries", "format=duration", "-of", "json"])
        .arg(file)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["codec_type"].as_str().unwrap_or("").to_string(),
                s["codec_name"].as_str().unwrap_or("").to_string(),
                s["width"].as_u64().unwrap_or(0),
                s["height"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (streams, duration)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_gets_720p_video_with_audio_and_stop_ends_it() {
    let Some(r) = rig("RTMP stream test").await else {
        return;
    };
    let dir = TempDir::new("rtmp");
    let wav = dir.0.join("tone.wav");
    tone_wav(&wav, 440.0, 60.0);
    let _playing = r.pulse.play(&wav);
    let port = free_port();
    let mut rx = receiver(&dir.0, port);

    assert_eq!(status(&r.agent).await, json!({"status": "idle"}));
    let url = format!("rtmp://127.0.0.1:{port}/live");
    let started = post(&r.agent.socket, "/stream/start", &start_body(&url)).await;
    assert_eq!(
        started.status,
        200,
        "{}",
        String::from_utf8_lossy(&started.body)
    );
    assert_no_key(&started.body);
    let started = started.json();
    assert_eq!(started["success"], true);
    assert_eq!(started["status"], "streaming");
    let pid = started["pid"].as_u64().unwrap();
    assert!(pid > 0 && started["start_time"].is_string(), "{started}");

    // One stream per computer.
    let again = post(&r.agent.socket, "/stream/start", &start_body(&url)).await;
    assert_eq!(again.status, 409);
    assert_no_key(&again.body);

    // At least 5 s of stream reach the receiver.
    // The clock starts once the receiver has data: the encoder's start and the RTMP hand-shake
    // take seconds on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut flowing: Option<Instant> = None;
    while flowing.is_none_or(|t| t.elapsed() < Duration::from_secs(8)) {
        let s = status(&r.agent).await;
        assert_eq!(
            s["status"],
            "streaming",
            "{s} (receiver: {})",
            std::fs::read_to_string(dir.0.join("receiver.log")).unwrap_or_default()
        );
        assert_eq!(s["pid"], pid);
        if flowing.is_none() && std::fs::metadata(&rx.out).is_ok_and(|m| m.len() > 0) {
            flowing = Some(Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "the receiver got nothing in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stopped = post(&r.agent.socket, "/stream/stop", "{}").await;
    assert_eq!(stopped.json(), json!({"success": true}));
    assert_eq!(status(&r.agent).await, json!({"status": "idle"}));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the encoder is gone after stop"
    );

    // The receiver ends with its publisher.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the receiver did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (streams, duration) = probe(&rx.out);
    assert!(duration >= 5.0, "only {duration} s arrived: {streams:?}");
    assert!(
        streams.contains(&("video".into(), "h264".into(), 1280, 720)),
        "no 1280x720 H.264 video: {streams:?}"
    );
    assert!(
        streams.iter().any(|s| s.0 == "audio" && s.1 == "aac"),
        "no AAC audio track: {streams:?}"
    );
    let log = log_text();
    assert!(
        log.contains("stream started"),
        "the agent's log was captured"
    );
    assert!(!log.contains(KEY), "the key is in the agent's log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_ends_as_terminated_with_the_reason_and_bad_requests_are_400() {
    let Some(r) = rig("RTMP failure test").await else {
        return;
    };
    // Nobody listens on this port: the encoder cannot connect and exits.
    let url = format!("rtmp://127.0.0.1:{}/live", free_port());
    let started = post(&r.agent.socket, "/stream/start", &start_body(&url)).await;
    assert_eq!(started.status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    let message = loop {
        let s = status(&r.agent).await;
        if s["status"] == "terminated" {
            break s["message"].as_str().unwrap().to_string();
        }
        assert_eq!(s["status"], "streaming", "{s}");
        assert!(Instant::now() < deadline, "the encoder never gave up: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(message.contains("ffmpeg"), "{message}");
    assert!(
        message.to_lowercase().contains("connection refused"),
        "the reason is the encoder's last line: {message}"
    );
    assert!(
        message.contains("********"),
        "the URL is shown with the key masked: {message}"
    );
    // Terminated stays until the next start or a stop.
    assert_eq!(status(&r.agent).await["status"], "terminated");
    post(&r.agent.socket, "/stream/stop", "").await;
    assert_eq!(status(&r.agent).await, json!({"status": "idle"}));

    for (body, says) in [
        (
            json!({"url": "http://h/live", "stream_key": KEY, "bitrate_kbps": 1500, "width": 1280, "height": 720, "framerate": 15}),
            "rtmp://",
        ),
        (
            json!({"url": "rtmp://h/live", "stream_key": "has space", "bitrate_kbps": 1500, "width": 1280, "height": 720, "framerate": 15}),
            "stream_key",
        ),
        (
            json!({"url": "rtmp://h/live", "stream_key": KEY, "bitrate_kbps": 1, "width": 1280, "height": 720, "framerate": 15}),
            "bitrate_kbps",
        ),
        (
            json!({"url": "rtmp://h/live", "stream_key": KEY, "bitrate_kbps": 1500, "width": 1281, "height": 720, "framerate": 15}),
            "resolution",
        ),
        (
            json!({"url": "rtmp://h/live", "stream_key": KEY, "bitrate_kbps": 1500, "width": 1280, "height": 720, "framerate": 0}),
            "framerate",
        ),
    ] {
        let r = post(&r.agent.socket, "/stream/start", &body.to_string()).await;
        assert_eq!(r.status, 400, "{body}");
        assert_no_key(&r.body);
        let e = r.json()["error"].as_str().unwrap().to_string();
        assert!(e.contains(says), "{body}: {e}");
    }
    assert_eq!(status(&r.agent).await, json!({"status": "idle"}));
    let log = log_text();
    assert!(!log.contains(KEY), "the key is in the agent's log:\n{log}");
}
