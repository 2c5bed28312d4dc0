//! RTMP streaming (api.md section 5): one ffmpeg at a time grabs the screen (x11grab) and the
//! speaker's monitor (PulseAudio), encodes H.264 and AAC and pushes FLV to the connection's URL
//! over the guest's network. The agent supervises it: a task owns the process, keeps its last
//! error line (stream key removed as it is read), and records how it ended, so the status says
//! `streaming` while it runs and `terminated` with the reason when it died by itself. Nothing
//! here logs the request or the URL with the key.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _};
use tokio::sync::oneshot;

use crate::audio::Pulse;
use crate::protocol::stream::{push_url, redact, StreamStartRequest, StreamStarted, StreamStatus};

/// How long ffmpeg gets to finish the FLV stream after SIGINT before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest error line kept.
const LINE_MAX: usize = 512;
/// Audio of every stream: AAC at the rate and channel count RTMP services expect.
const AUDIO_BITRATE: &str = "128k";
const AUDIO_RATE: &str = "44100";

/// Why a stream could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    BadRequest(String),
    #[error("a stream is already running (pid {0}); stop it first (one stream per computer)")]
    AlreadyStreaming(u32),
    #[error("cannot run ffmpeg (apt-get install ffmpeg): {0}")]
    Spawn(std::io::Error),
}

/// The ffmpeg arguments of a stream of `display` and the speaker in `pulse` to `req`. The encoder
/// settings favour a guest's small CPU share: x264's fastest preset, no B-frames or look-ahead
/// (`zerolatency`), a keyframe every two seconds (what RTMP services ask for), constant bitrate.
pub fn ffmpeg_args(display: &str, pulse: &Pulse, req: &StreamStartRequest) -> Vec<String> {
    let s = &req.settings;
    let fps = s.framerate.to_string();
    let kbps = |n: u32| format!("{n}k");
    let mut args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "warning",
        "-thread_queue_size",
        "512",
        "-f",
        "x11grab",
        "-draw_mouse",
        "1",
        "-framerate",
        &fps,
        "-i",
        display,
        "-thread_queue_size",
        "512",
        "-f",
        "pulse",
        "-name",
        "deskd-stream",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(server) = &pulse.server {
        args.extend(["-server".to_string(), server.clone()]);
    }
    let rest: Vec<String> = vec![
        "-i".into(),
        pulse.source.clone(),
        "-map".into(),
        "0:v:0".into(),
        "-map".into(),
        "1:a:0".into(),
        "-vf".into(),
        format!("scale={}:{},format=yuv420p", s.width, s.height),
        "-c:v".into(),
        "libx264".into(),
        "-preset".into(),
        "ultrafast".into(),
        "-tune".into(),
        "zerolatency".into(),
        "-r".into(),
        fps.clone(),
        "-g".into(),
        (s.framerate * 2).to_string(),
        "-b:v".into(),
        kbps(s.bitrate_kbps),
        "-maxrate".into(),
        kbps(s.bitrate_kbps),
        "-bufsize".into(),
        kbps(s.bitrate_kbps.saturating_mul(2)),
        "-c:a".into(),
        "aac".into(),
        "-b:a".into(),
        AUDIO_BITRATE.into(),
        "-ar".into(),
        AUDIO_RATE.into(),
        "-ac".into(),
        "2".into(),
        "-f".into(),
        "flv".into(),
        "-flvflags".into(),
        "no_duration_filesize".into(),
        push_url(&req.url, &req.stream_key),
    ];
    args.extend(rest);
    args
}

enum State {
    Idle,
    Running {
        pid: u32,
        start_time: String,
        /// Hands the supervisor a channel to answer on once the encoder is gone.
        stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    },
    Terminated {
        message: String,
    },
}

/// The computer's one stream (cheap to clone; clones share it).
#[derive(Clone)]
pub struct Streamer {
    /// The number of the latest run (so a supervisor of an older one never overwrites the
    /// state of a newer) and the state.
    state: Arc<Mutex<(u64, State)>>,
    display: String,
    pulse: Pulse,
    program: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Streamer {
    /// Streams of `display` and the speaker in `pulse`, encoded by `program` (`ffmpeg`).
    pub fn new(display: &str, pulse: Pulse, program: &str) -> Streamer {
        Streamer {
            state: Arc::new(Mutex::new((0, State::Idle))),
            display: display.to_string(),
            pulse,
            program: program.to_string(),
        }
    }

    /// Starts the encoder; it runs until [`Streamer::stop`] or until it dies.
    pub fn start(&self, req: StreamStartRequest) -> Result<StreamStarted, StreamError> {
        req.check().map_err(StreamError::BadRequest)?;
        let mut guard = lock(&self.state);
        if let State::Running { pid, .. } = guard.1 {
            return Err(StreamError::AlreadyStreaming(pid));
        }
        let mut cmd = tokio::process::Command::new(&self.program);
        let mut child = crate::child::die_with_agent(&mut cmd)
            .args(ffmpeg_args(&self.display, &self.pulse, &req))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(StreamError::Spawn)?;
        let pid = child.id().unwrap_or(0);
        guard.0 += 1;
        let run = guard.0;
        let start_time = crate::events::time::now_iso8601();
        let (stop_tx, stop_rx) = oneshot::channel();
        guard.1 = State::Running {
            pid,
            start_time: start_time.clone(),
            stop: Some(stop_tx),
        };
        drop(guard);
        let last = Arc::new(Mutex::new(String::new()));
        let reader = child
            .stderr
            .take()
            .map(|err| tokio::spawn(keep_last_line(err, req.stream_key.clone(), last.clone())));
        tokio::spawn(supervise(
            self.state.clone(),
            run,
            child,
            reader,
            last,
            stop_rx,
        ));
        tracing::info!(
            "stream started: encoder pid {pid}, {} at {} fps, {} kbit/s",
            req.settings.resolution(),
            req.settings.framerate,
            req.settings.bitrate_kbps
        );
        Ok(StreamStarted {
            success: true,
            status: "streaming".into(),
            pid,
            start_time,
        })
    }

    pub fn status(&self) -> StreamStatus {
        match &lock(&self.state).1 {
            State::Idle => StreamStatus::Idle,
            State::Running {
                pid, start_time, ..
            } => StreamStatus::Streaming {
                start_time: start_time.clone(),
                pid: *pid,
            },
            State::Terminated { message } => StreamStatus::Terminated {
                message: message.clone(),
            },
        }
    }

    /// Ends the stream (if any) and waits until the encoder is gone; the status is `idle` after.
    pub async fn stop(&self) {
        let done = {
            let mut guard = lock(&self.state);
            match &mut guard.1 {
                State::Running { stop, .. } => stop.take().and_then(|stop| {
                    let (tx, rx) = oneshot::channel();
                    stop.send(tx).ok().map(|()| rx)
                }),
                state => {
                    *state = State::Idle;
                    None
                }
            }
        };
        if let Some(done) = done {
            // The supervisor answers within STOP_GRACE plus the kill.
            let _ = tokio::time::timeout(STOP_GRACE * 2, done).await;
        }
    }
}

/// Owns one encoder process until it ends: by a stop (SIGINT so ffmpeg closes the FLV stream
/// cleanly, SIGKILL after [`STOP_GRACE`]) → idle, or by itself → terminated with its last line.
async fn supervise(
    state: Arc<Mutex<(u64, State)>>,
    run: u64,
    mut child: tokio::process::Child,
    reader: Option<tokio::task::JoinHandle<()>>,
    last: Arc<Mutex<String>>,
    stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    let set = |new: State| {
        let mut guard = lock(&state);
        if guard.0 == run {
            guard.1 = new;
        }
    };
    tokio::select! {
        status = child.wait() => {
            // The last line is written just before the exit; read the pipe to its end.
            if let Some(r) = reader {
                let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
            }
            let line = lock(&last).clone();
            let how = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("status unknown: {e}"),
            };
            let message = if line.is_empty() {
                format!("the encoder (ffmpeg) ended: {how}")
            } else {
                format!("the encoder (ffmpeg) ended ({how}): {line}")
            };
            tracing::warn!("stream terminated: {message}");
            set(State::Terminated { message });
        }
        asked = stop => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
            }
            if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            tracing::info!("stream stopped");
            set(State::Idle);
            if let Ok(done) = asked {
                let _ = done.send(());
            }
        }
    }
}

/// Keeps the last non-empty line of the encoder's stderr, with the key removed, at most
/// [`LINE_MAX`] characters. Lines end at `\n` or `\r` (ffmpeg redraws progress with `\r`).
async fn keep_last_line(err: impl AsyncRead + Unpin, key: String, last: Arc<Mutex<String>>) {
    let mut r = tokio::io::BufReader::new(err);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut r).take(64 << 10).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                if let Some(line) = text.split('\r').map(str::trim).rfind(|l| !l.is_empty()) {
                    let clean = redact(line, &key);
                    *lock(&last) = clean.chars().take(LINE_MAX).collect();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::stream::DEFAULT_SETTINGS;

    fn request(url: &str) -> StreamStartRequest {
        StreamStartRequest {
            url: url.into(),
            stream_key: "s3cret-KEY".into(),
            settings: DEFAULT_SETTINGS,
        }
    }

    #[test]
    fn ffmpeg_grabs_screen_and_speaker_and_pushes_flv() {
        let args = ffmpeg_args(":5", &Pulse::default(), &request("rtmp://h/live/"));
        let joined = args.join(" ");
        assert!(
            joined.contains("-f x11grab -draw_mouse 1 -framerate 30 -i :5"),
            "{joined}"
        );
        assert!(
            joined.contains("-f pulse -name deskd-stream -i speaker.monitor"),
            "{joined}"
        );
        assert!(joined.contains("scale=1280:720"), "{joined}");
        assert!(joined.contains("-c:v libx264"), "{joined}");
        assert!(
            joined.contains("-b:v 2500k -maxrate 2500k -bufsize 5000k"),
            "{joined}"
        );
        assert!(joined.contains("-g 60"), "{joined}");
        assert!(joined.contains("-c:a aac"), "{joined}");
        assert_eq!(args.last().unwrap(), "rtmp://h/live/s3cret-KEY");
        let p = Pulse {
            server: Some("unix:/x".into()),
            ..Pulse::default()
        };
        let joined = ffmpeg_args(":0", &p, &request("rtmp://h/live")).join(" ");
        assert!(
            joined.contains("-f pulse -name deskd-stream -server unix:/x -i speaker.monitor"),
            "{joined}"
        );
    }

    #[tokio::test]
    async fn error_lines_lose_the_key() {
        let last = Arc::new(Mutex::new(String::new()));
        let text: &[u8] = b"frame=1\rframe=2\rrtmp://h/live/s3cret-KEY: Connection refused\r\n";
        keep_last_line(text, "s3cret-KEY".into(), last.clone()).await;
        assert_eq!(*lock(&last), "rtmp://h/live/********: Connection refused");
    }

    #[tokio::test]
    async fn bad_requests_and_a_missing_encoder() {
        let s = Streamer::new(":0", Pulse::default(), "/nonexistent/ffmpeg");
        let e = s.start(request("http://h/live")).unwrap_err();
        assert!(matches!(e, StreamError::BadRequest(_)), "{e}");
        let e = s.start(request("rtmp://h/live")).unwrap_err();
        assert!(matches!(e, StreamError::Spawn(_)), "{e}");
        assert_eq!(s.status(), StreamStatus::Idle);
        s.stop().await;
        assert_eq!(s.status(), StreamStatus::Idle);
    }
}
