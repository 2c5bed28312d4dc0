#![cfg(feature = "agent")]
//! `/ws/audio` against a real X server and a real PulseAudio set up as the image sets it up: a
//! tone played into the `speaker` sink arrives as 20 ms s16le frames at the asked rate, silence
//! when nothing plays, the audio events bracket a stream, and failures are an error then 4500.

mod common;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use common::pulse::{pulseaudio, tone_wav, PulseServer};
use common::{start_agent_with, xvfb, AgentRig, Xvfb};

type Ws = WebSocketStream<tokio::net::UnixStream>;

async fn connect(sock: &std::path::Path, path: &str) -> Ws {
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://agent{path}"), stream)
        .await
        .expect("websocket handshake");
    ws
}

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("a message within 30 s")
        .expect("socket open")
        .expect("no socket error")
}

fn json_of(m: &Message) -> Value {
    match m {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
}

/// The next `n` binary frames, each of `bytes` bytes, as samples.
async fn frames(ws: &mut Ws, n: usize, bytes: usize) -> Vec<i16> {
    let mut samples = Vec::new();
    for i in 0..n {
        match next(ws).await {
            Message::Binary(b) => {
                assert_eq!(b.len(), bytes, "frame {i} is not 20 ms");
                samples.extend(b.chunks_exact(2).map(|s| i16::from_le_bytes([s[0], s[1]])));
            }
            other => panic!("expected PCM, got {other:?}"),
        }
    }
    samples
}

/// Frequency of the strongest component of `samples` at `rate` Hz (Hann window, FFT).
fn peak_hz(samples: &[i16], rate: u32) -> f64 {
    use rustfft::num_complex::Complex;
    let n = samples.len();
    let mut buf: Vec<Complex<f64>> = samples
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let w = 0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / n as f64).cos();
            Complex::new(f64::from(s) * w, 0.0)
        })
        .collect();
    rustfft::FftPlanner::new()
        .plan_fft_forward(n)
        .process(&mut buf);
    let (bin, _) = buf[1..n / 2]
        .iter()
        .enumerate()
        .map(|(i, c)| (i + 1, c.norm()))
        .fold((0, 0.0), |best, x| if x.1 > best.1 { x } else { best });
    bin as f64 * f64::from(rate) / n as f64
}

fn rms(samples: &[i16]) -> f64 {
    (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

struct Rig {
    agent: AgentRig,
    pulse: PulseServer,
    _x: Xvfb,
}

async fn rig(why: &str) -> Option<Rig> {
    let pulse = pulseaudio(why)?;
    let x = xvfb(320, 240)?;
    let server = pulse.server.clone();
    let agent = start_agent_with(&x.display, |c| c.pulse.server = Some(server)).await;
    Some(Rig {
        agent,
        pulse,
        _x: x,
    })
}

/// Waits until PulseAudio plays something into the speaker.
async fn wait_playing(p: &PulseServer) {
    for _ in 0..200 {
        let out = std::process::Command::new("pactl")
            .arg(format!("--server={}", p.server))
            .args(["list", "short", "sink-inputs"])
            .output()
            .unwrap();
        if !out.stdout.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("paplay never started playing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_440_hz_tone_arrives_at_the_asked_rate_in_20_ms_frames() {
    let Some(r) = rig("audio tone test").await else {
        return;
    };
    let wav = r.pulse.dir.join("tone.wav");
    tone_wav(&wav, 440.0, 30.0);
    let _playing = r.pulse.play(&wav);
    wait_playing(&r.pulse).await;

    let mut ws = connect(&r.agent.socket, "/ws/audio?sample_rate=24000&channels=1").await;
    assert_eq!(
        json_of(&next(&mut ws).await),
        json!({"type": "started", "sample_rate": 24000, "channels": 1})
    );
    // The first frames may still hold the moment before the tone reached the sink.
    frames(&mut ws, 10, 960).await;
    let s = frames(&mut ws, 100, 960).await;
    assert_eq!(s.len(), 48_000, "2 s at 24 kHz mono");
    let hz = peak_hz(&s, 24_000);
    assert!((hz - 440.0).abs() <= 5.0, "spectral peak at {hz} Hz");
    assert!(rms(&s) > 3000.0, "the tone is loud: rms {}", rms(&s));
    ws.send(Message::Text(r#"{"type":"stop"}"#.into()))
        .await
        .unwrap();

    // Other formats: PulseAudio resamples and upmixes to what is asked.
    for (rate, channels) in [(48_000u32, 2usize), (8_000, 1), (11_025, 1)] {
        let path = format!("/ws/audio?sample_rate={rate}&channels={channels}");
        let mut ws = connect(&r.agent.socket, &path).await;
        let started = json_of(&next(&mut ws).await);
        assert_eq!(started["sample_rate"], rate);
        assert_eq!(started["channels"], channels);
        let per_frame = (rate / 50) as usize * channels * 2;
        frames(&mut ws, 10, per_frame).await;
        let s = frames(&mut ws, 50, per_frame).await;
        let left: Vec<i16> = s.iter().step_by(channels).copied().collect();
        let hz = peak_hz(&left, rate);
        assert!(
            (hz - 440.0).abs() <= 5.0,
            "{rate} Hz x{channels}: peak at {hz} Hz"
        );
        if channels == 2 {
            let right: Vec<i16> = s.iter().skip(1).step_by(2).copied().collect();
            assert!(rms(&right) > 3000.0, "both channels carry the tone");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_when_nothing_plays() {
    let Some(r) = rig("audio silence test").await else {
        return;
    };
    let mut ws = connect(&r.agent.socket, "/ws/audio?sample_rate=24000&channels=1").await;
    assert_eq!(json_of(&next(&mut ws).await)["type"], "started");
    let s = frames(&mut ws, 50, 960).await;
    let loudest = s.iter().map(|v| v.unsigned_abs()).max().unwrap();
    assert!(loudest <= 1, "nothing plays, yet a sample is {loudest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_bracket_a_stream_and_ping_and_stop_work() {
    let Some(r) = rig("audio events test").await else {
        return;
    };
    let mut ev = connect(&r.agent.socket, "/ws/events").await;
    ev.send(Message::Text(
        json!({"type":"subscribe","event_types":["audio_stream_start","audio_stream_stop"]})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(json_of(&next(&mut ev).await)["type"], "subscribed");

    // The default format is the contract's 24 kHz mono.
    let mut ws = connect(&r.agent.socket, "/ws/audio").await;
    assert_eq!(
        json_of(&next(&mut ws).await),
        json!({"type": "started", "sample_rate": 24000, "channels": 1})
    );
    let e = json_of(&next(&mut ev).await);
    assert_eq!(e["event"]["type"], "audio_stream_start", "{e}");
    assert_eq!(e["event"]["data"], json!({}));

    ws.send(Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    loop {
        match next(&mut ws).await {
            Message::Binary(b) => assert_eq!(b.len(), 960),
            m => {
                assert_eq!(json_of(&m), json!({"type": "pong"}));
                break;
            }
        }
    }
    ws.send(Message::Text(r#"{"type":"stop"}"#.into()))
        .await
        .unwrap();
    loop {
        match next(&mut ws).await {
            Message::Binary(_) => {}
            Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 1000);
                break;
            }
            other => panic!("expected the close after stop, got {other:?}"),
        }
    }
    let e = json_of(&next(&mut ev).await);
    assert_eq!(e["event"]["type"], "audio_stream_stop", "{e}");

    // A client that just goes away also ends its stream.
    let mut ws = connect(&r.agent.socket, "/ws/audio").await;
    assert_eq!(json_of(&next(&mut ws).await)["type"], "started");
    assert_eq!(
        json_of(&next(&mut ev).await)["event"]["type"],
        "audio_stream_start"
    );
    drop(ws);
    assert_eq!(
        json_of(&next(&mut ev).await)["event"]["type"],
        "audio_stream_stop"
    );
}

async fn expect_error_then_4500(ws: &mut Ws) -> Value {
    let err = json_of(&next(ws).await);
    assert_eq!(err["type"], "error", "{err}");
    match next(ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4500),
        other => panic!("expected close 4500, got {other:?}"),
    }
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_formats_and_failed_captures_are_an_error_then_4500() {
    let Some(r) = rig("audio failure test").await else {
        return;
    };
    for (query, field) in [
        ("sample_rate=96000", "sample_rate"),
        ("sample_rate=abc", "sample_rate"),
        ("channels=3", "channels"),
    ] {
        let mut ws = connect(&r.agent.socket, &format!("/ws/audio?{query}")).await;
        let err = expect_error_then_4500(&mut ws).await;
        assert!(
            err["message"].as_str().unwrap().contains(field),
            "{query}: {err}"
        );
    }

    // No PulseAudio where the agent looks: the contract's message, the reason beside it.
    let x = xvfb(320, 240).unwrap();
    let nowhere = r.pulse.dir.join("no-such-socket");
    let lost = start_agent_with(&x.display, |c| {
        c.pulse.server = Some(format!("unix:{}", nowhere.display()))
    })
    .await;
    let mut ws = connect(&lost.socket, "/ws/audio").await;
    let err = expect_error_then_4500(&mut ws).await;
    assert_eq!(err["message"], "Failed to start audio capture");
    assert!(
        err["detail"].as_str().unwrap().contains("parec"),
        "the reason names the capture: {err}"
    );

    // PulseAudio going away during a stream.
    let mut ws = connect(&r.agent.socket, "/ws/audio").await;
    assert_eq!(json_of(&next(&mut ws).await)["type"], "started");
    frames(&mut ws, 5, 960).await;
    drop(r.pulse);
    loop {
        match next(&mut ws).await {
            Message::Binary(_) => {}
            m => {
                let err = json_of(&m);
                assert_eq!(err["message"], "Failed to start audio capture", "{err}");
                break;
            }
        }
    }
    match next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 4500),
        other => panic!("expected close 4500, got {other:?}"),
    }
}
