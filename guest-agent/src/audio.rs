//! `/ws/audio`: the desktop's speaker as 20 ms frames of s16le PCM (api.md section 4).
//!
//! Each stream records the monitor of PulseAudio's `speaker` sink with one long-running `parec`
//! (pulseaudio-utils, in the image) that asks PulseAudio for the client's sample spec, so the
//! server does the resampling and channel mixing. A process per stream rather than libpulse in
//! the agent keeps the agent free of a C library at build time (every machine that builds the
//! workspace would need libpulse-dev) and a PulseAudio bug or hang out of the agent's process;
//! the agent supervises it: killed when the client goes, its last error line reported when it
//! dies, a stall counted as a failure.
//!
//! Buffering is bounded: frames pass through a queue of [`QUEUE_FRAMES`] that drops the oldest
//! when the client (or the daemon's relay before it) does not keep up, so a slow client loses
//! audio, never grows the agent's memory. `parec` is always read at the rate PulseAudio delivers.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{Sink, SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::broadcast;

use crate::events::EventHub;
use crate::protocol::audio::{AudioFormat, AudioIn, AudioOut, CAPTURE_FAILED, SPEAKER_MONITOR};
use crate::protocol::{EventData, NoData};

/// Frames held for a slow client before the oldest is dropped: 0.64 s of audio (a power of two:
/// the broadcast queue rounds its capacity up to one).
pub const QUEUE_FRAMES: usize = 32;
/// How long `parec` may take to deliver its first frame (PulseAudio may be starting with the
/// session; guests in the test rig run 50-100x slower than hardware).
const FIRST_FRAME_DEADLINE: Duration = Duration::from_secs(20);
/// A running capture that delivers nothing for this long has failed (PulseAudio hung or its
/// sink was removed); a null sink's monitor delivers silence continuously.
const STALL_LIMIT: Duration = Duration::from_secs(10);
/// Close code for "could not start" (api.md section 4).
const CLOSE_COULD_NOT_START: u16 = 4500;
/// Longest error line of `parec` kept for the failure message.
const LINE_MAX: usize = 512;

/// Where the desktop's sound is: the PulseAudio server (None: libpulse's default, the session's
/// server in `$XDG_RUNTIME_DIR/pulse/native`) and the source to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulse {
    pub server: Option<String>,
    pub source: String,
}

impl Default for Pulse {
    fn default() -> Pulse {
        Pulse {
            server: None,
            source: SPEAKER_MONITOR.to_string(),
        }
    }
}

/// Why a capture did not start or did not go on.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot run parec (apt-get install pulseaudio-utils): {0}")]
    Spawn(std::io::Error),
    #[error("parec ended before it delivered sound: {0}")]
    Ended(String),
    #[error("parec delivered no sound within {0:?}; is PulseAudio running in the session?")]
    NoFirstFrame(Duration),
    #[error("parec delivered no sound for {0:?}; the capture stalled")]
    Stalled(Duration),
}

/// The `parec` arguments for one stream: raw PCM in the client's format from the speaker's
/// monitor, with PulseAudio's fragments as long as one frame so frames arrive as they happen.
pub fn parec_args(pulse: &Pulse, format: AudioFormat) -> Vec<String> {
    let mut args = vec![
        "--raw".to_string(),
        "--format=s16le".to_string(),
        format!("--rate={}", format.sample_rate),
        format!("--channels={}", format.channels),
        format!("--device={}", pulse.source),
        format!("--latency-msec={}", crate::protocol::audio::FRAME_MS),
        "--client-name=deskd-agent".to_string(),
        "--stream-name=deskd audio stream".to_string(),
    ];
    if let Some(server) = &pulse.server {
        args.push(format!("--server={server}"));
    }
    args
}

/// One running `parec`: frames come out of [`Capture::frames`]; dropping it kills the process.
pub struct Capture {
    child: tokio::process::Child,
    frames: broadcast::Receiver<Bytes>,
    last_error: Arc<Mutex<String>>,
    /// Frames dropped for a slow reader so far.
    pub dropped: u64,
}

impl Capture {
    /// Starts `parec` for `format`.
    pub fn start(pulse: &Pulse, format: AudioFormat) -> Result<Capture, AudioError> {
        let mut cmd = tokio::process::Command::new("parec");
        let mut child = crate::child::die_with_agent(&mut cmd)
            .args(parec_args(pulse, format))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(AudioError::Spawn)?;
        let last_error = Arc::new(Mutex::new(String::new()));
        let (tx, frames) = broadcast::channel(QUEUE_FRAMES);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(read_frames(out, format.frame_bytes(), tx));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(keep_last_line(err, last_error.clone()));
        }
        Ok(Capture {
            child,
            frames,
            last_error,
            dropped: 0,
        })
    }

    /// The next frame, waiting at most `limit`; Ok(None) when `parec` ended.
    async fn next_within(&mut self, limit: Duration) -> Result<Option<Bytes>, ()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                Err(_) => return Err(()),
                Ok(Ok(frame)) => return Ok(Some(frame)),
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => self.dropped += n,
                Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(None),
            }
        }
    }

    /// The next frame; an error when `parec` ended or stalled.
    pub async fn next_frame(&mut self, limit: Duration) -> Result<Bytes, AudioError> {
        match self.next_within(limit).await {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(AudioError::Ended(self.why_ended().await)),
            Err(()) => Err(AudioError::Stalled(limit)),
        }
    }

    /// `parec`'s exit status and last error line, once its output has ended.
    async fn why_ended(&mut self) -> String {
        let status = match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(s)) => s.to_string(),
            Ok(Err(e)) => format!("its status is unknown ({e})"),
            Err(_) => "it closed its output but is still running".to_string(),
        };
        // The error line arrives on its own pipe; give it a moment to be read.
        for _ in 0..20 {
            if !lock(&self.last_error).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let line = lock(&self.last_error).clone();
        if line.is_empty() {
            status
        } else {
            format!("{line} ({status})")
        }
    }

    /// Ends `parec` and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cuts `parec`'s output into frames of `frame_bytes` and queues them; a full queue loses its
/// oldest frame (broadcast semantics), so this never waits for the client.
async fn read_frames(
    mut out: impl AsyncRead + Unpin,
    frame_bytes: usize,
    tx: broadcast::Sender<Bytes>,
) {
    loop {
        let mut frame = vec![0u8; frame_bytes];
        if out.read_exact(&mut frame).await.is_err() {
            return;
        }
        // Err only when the receiver is gone: the stream is over.
        if tx.send(Bytes::from(frame)).is_err() {
            return;
        }
    }
}

/// Keeps the last non-empty line `parec` wrote to stderr (at most [`LINE_MAX`] bytes of it).
async fn keep_last_line(err: impl AsyncRead + Unpin, last: Arc<Mutex<String>>) {
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(err);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut lines)
            .take(64 << 10)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim();
                if !line.is_empty() {
                    *lock(&last) = line.chars().take(LINE_MAX).collect();
                }
            }
        }
    }
}

async fn send_json(tx: &mut (impl Sink<Message> + Unpin), msg: &AudioOut) -> bool {
    match serde_json::to_string(msg) {
        Ok(t) => tx.send(Message::Text(t.into())).await.is_ok(),
        Err(_) => false,
    }
}

/// The error frame and close 4500 of a stream that could not start or could not go on.
async fn fail(tx: &mut (impl Sink<Message> + Unpin), message: &str, detail: Option<String>) {
    let _ = send_json(
        tx,
        &AudioOut::Error {
            message: message.to_string(),
            detail,
        },
    )
    .await;
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code: CLOSE_COULD_NOT_START,
            reason: close_reason(message).into(),
        })))
        .await;
}

/// `message` cut to what a close frame holds (123 bytes), at a character boundary.
fn close_reason(message: &str) -> &str {
    let mut end = message.len().min(123);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Serves one audio client: `started`, then frames until the client stops or leaves (close 1000)
/// or the capture fails (error, close 4500). `audio_stream_start` and `audio_stream_stop` bracket
/// every stream that started.
pub async fn serve(
    ws: WebSocket,
    format: Result<AudioFormat, String>,
    pulse: Pulse,
    events: EventHub,
) {
    let (mut tx, mut rx) = ws.split();
    let format = match format {
        Ok(f) => f,
        Err(message) => return fail(&mut tx, &message, None).await,
    };
    let mut capture = match Capture::start(&pulse, format) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("audio: {e}");
            return fail(&mut tx, CAPTURE_FAILED, Some(e.to_string())).await;
        }
    };
    let first = match capture.next_within(FIRST_FRAME_DEADLINE).await {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            let e = AudioError::Ended(capture.why_ended().await);
            tracing::warn!("audio: {e}");
            capture.stop().await;
            return fail(&mut tx, CAPTURE_FAILED, Some(e.to_string())).await;
        }
        Err(()) => {
            let e = AudioError::NoFirstFrame(FIRST_FRAME_DEADLINE);
            tracing::warn!("audio: {e}");
            capture.stop().await;
            return fail(&mut tx, CAPTURE_FAILED, Some(e.to_string())).await;
        }
    };
    let started = AudioOut::Started {
        sample_rate: format.sample_rate,
        channels: format.channels,
    };
    if !send_json(&mut tx, &started).await {
        return capture.stop().await;
    }
    events.emit(EventData::AudioStreamStart(NoData {}));
    tracing::info!(
        "audio stream started: {} Hz, {} channel(s)",
        format.sample_rate,
        format.channels
    );
    let mut pending = Some(first);
    let end: Result<(), AudioError> = loop {
        if let Some(frame) = pending.take() {
            if tx.send(Message::Binary(frame)).await.is_err() {
                break Ok(());
            }
        }
        tokio::select! {
            biased;
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<AudioIn>(t.as_str()) {
                    Ok(AudioIn::Stop) => {
                        let _ = tx
                            .send(Message::Close(Some(CloseFrame {
                                code: 1000,
                                reason: "stopped".into(),
                            })))
                            .await;
                        break Ok(());
                    }
                    Ok(AudioIn::Ping) => {
                        if !send_json(&mut tx, &AudioOut::Pong).await {
                            break Ok(());
                        }
                    }
                    // An unknown message is not a capture failure; an error frame would read as one.
                    Err(e) => tracing::debug!("audio: ignored a client message: {e}"),
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Ok(()),
                Some(Ok(_)) => {}
            },
            frame = capture.next_frame(STALL_LIMIT) => match frame {
                Ok(frame) => pending = Some(frame),
                Err(e) => break Err(e),
            },
        }
    };
    let dropped = capture.dropped;
    capture.stop().await;
    events.emit(EventData::AudioStreamStop(NoData {}));
    match end {
        Ok(()) => tracing::info!("audio stream ended ({dropped} frames dropped for a slow client)"),
        Err(e) => {
            tracing::warn!("audio stream failed: {e}");
            fail(&mut tx, CAPTURE_FAILED, Some(e.to_string())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parec_asks_pulseaudio_for_the_clients_format() {
        let f = AudioFormat {
            sample_rate: 24000,
            channels: 1,
        };
        let args = parec_args(&Pulse::default(), f);
        assert!(args.contains(&"--rate=24000".to_string()));
        assert!(args.contains(&"--channels=1".to_string()));
        assert!(args.contains(&"--device=speaker.monitor".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--server")));
        let p = Pulse {
            server: Some("unix:/tmp/p".into()),
            source: "x.monitor".into(),
        };
        let args = parec_args(&p, f);
        assert!(args.contains(&"--server=unix:/tmp/p".to_string()));
        assert!(args.contains(&"--device=x.monitor".to_string()));
    }

    #[tokio::test]
    async fn a_slow_reader_loses_the_oldest_frames_and_the_queue_stays_bounded() {
        // 100 frames written at once into a reader that takes none until the end.
        let (mut w, r) = tokio::io::duplex(1 << 20);
        let (tx, mut rx) = broadcast::channel(QUEUE_FRAMES);
        let reader = tokio::spawn(read_frames(r, 4, tx));
        for i in 0..100u32 {
            tokio::io::AsyncWriteExt::write_all(&mut w, &i.to_le_bytes())
                .await
                .unwrap();
        }
        drop(w);
        reader.await.unwrap();
        let mut got = Vec::new();
        let mut lagged = 0;
        loop {
            match rx.recv().await {
                Ok(b) => got.push(u32::from_le_bytes(b[..].try_into().unwrap())),
                Err(broadcast::error::RecvError::Lagged(n)) => lagged += n,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        assert_eq!(got.len(), QUEUE_FRAMES, "only the queue's worth is kept");
        assert_eq!(lagged as usize, 100 - QUEUE_FRAMES);
        assert_eq!(got[0] as usize, 100 - QUEUE_FRAMES, "the oldest went first");
        assert_eq!(*got.last().unwrap(), 99);
    }

    #[tokio::test]
    async fn the_last_error_line_is_kept() {
        let last = Arc::new(Mutex::new(String::new()));
        let text: &[u8] = b"first\nConnection failure: Connection refused\n\n";
        keep_last_line(text, last.clone()).await;
        assert_eq!(*lock(&last), "Connection failure: Connection refused");
    }
}
