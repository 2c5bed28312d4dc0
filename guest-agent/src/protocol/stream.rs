//! RTMP streaming (api.md section 5): the rules a stream connection must follow (checked by the
//! daemon when a connection is saved and by the agent when a stream starts), the request the
//! daemon sends the agent to start its encoder, and the status answers. The stream key is a
//! secret: [`StreamStartRequest`]'s `Debug` hides it, and [`redact`] removes it from any text
//! (the encoder's error lines) before that text leaves the agent.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

/// Longest connection name; names are also a path segment (`DELETE /stream-connections/{name}`).
pub const NAME_MAX: usize = 64;
/// Longest RTMP URL.
pub const URL_MAX: usize = 2048;
/// Longest stream key.
pub const KEY_MAX: usize = 512;
/// Video bitrates accepted, in kbit/s.
pub const BITRATE_KBPS: RangeInclusive<u32> = 250..=50_000;
/// Frame rates accepted, in frames per second.
pub const FRAMERATE: RangeInclusive<u32> = 1..=60;
/// Stream widths accepted (even: H.264 in 4:2:0 needs even sizes).
pub const WIDTH: RangeInclusive<u32> = 320..=3840;
/// Stream heights accepted (even, as the width).
pub const HEIGHT: RangeInclusive<u32> = 240..=2160;
/// What a connection gets when it names no bitrate, resolution or frame rate.
pub const DEFAULT_SETTINGS: StreamSettings = StreamSettings {
    bitrate_kbps: 2500,
    width: 1280,
    height: 720,
    framerate: 30,
};
/// What answers show in place of a stream key.
pub const KEY_MASK: &str = "********";

/// The agent's routes for the encoder.
pub mod paths {
    /// `POST` a [`super::StreamStartRequest`] → [`super::StreamStarted`]; 409 while one runs.
    pub const START: &str = "/stream/start";
    /// `GET` → [`super::StreamStatus`].
    pub const STATUS: &str = "/stream/status";
    /// `POST` → `{"success": true}`, also when nothing streams.
    pub const STOP: &str = "/stream/stop";
}

/// Checks a connection name: 1 to [`NAME_MAX`] letters, digits, `.`, `_`, `-`, starting with a
/// letter or digit (it is used as a URL path segment).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name must be 1 to {NAME_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit (got {:?})",
            name.chars().take(NAME_MAX + 8).collect::<String>()
        ))
    }
}

/// Checks an RTMP URL: `rtmp://` or `rtmps://`, a host, no spaces or control characters, at most
/// [`URL_MAX`] bytes. The key does not belong in it (it is a field of its own, kept secret).
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("rtmp://")
        .or_else(|| url.strip_prefix("rtmps://"))
        .ok_or_else(|| {
            format!(
                "rtmp_url must start with rtmp:// or rtmps:// (got {:?})",
                url.chars().take(40).collect::<String>()
            )
        })?;
    if url.len() > URL_MAX {
        return Err(format!("rtmp_url is longer than {URL_MAX} bytes"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("rtmp_url must not contain spaces or control characters".into());
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(format!(
            "rtmp_url names no host; use rtmp://HOST[:PORT]/APP (got {:?})",
            url.chars().take(40).collect::<String>()
        ));
    }
    Ok(())
}

/// Checks a stream key: 1 to [`KEY_MAX`] visible ASCII characters (no spaces). The message never
/// quotes the key.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("stream_key is empty; give the key your streaming service shows".into());
    }
    if key.len() > KEY_MAX {
        return Err(format!("stream_key is longer than {KEY_MAX} characters"));
    }
    if !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err("stream_key must be visible ASCII characters without spaces".into());
    }
    Ok(())
}

/// Reads `WIDTHxHEIGHT` and checks it against [`WIDTH`] and [`HEIGHT`].
pub fn parse_resolution(text: &str) -> Result<(u32, u32), String> {
    let bad = || {
        format!(
            "resolution must be WIDTHxHEIGHT with even numbers from {}x{} to {}x{}, e.g. 1280x720 (got {:?})",
            WIDTH.start(),
            HEIGHT.start(),
            WIDTH.end(),
            HEIGHT.end(),
            text.chars().take(20).collect::<String>()
        )
    };
    let (w, h) = text.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h) = (
        w.trim().parse::<u32>().map_err(|_| bad())?,
        h.trim().parse::<u32>().map_err(|_| bad())?,
    );
    if !WIDTH.contains(&w) || !HEIGHT.contains(&h) || w % 2 != 0 || h % 2 != 0 {
        return Err(bad());
    }
    Ok((w, h))
}

/// How a stream is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSettings {
    pub bitrate_kbps: u32,
    pub width: u32,
    pub height: u32,
    pub framerate: u32,
}

impl StreamSettings {
    /// Every value in its range, or the message naming the first that is not.
    pub fn check(&self) -> Result<(), String> {
        if !BITRATE_KBPS.contains(&self.bitrate_kbps) {
            return Err(format!(
                "bitrate_kbps must be from {} to {} (got {})",
                BITRATE_KBPS.start(),
                BITRATE_KBPS.end(),
                self.bitrate_kbps
            ));
        }
        if !FRAMERATE.contains(&self.framerate) {
            return Err(format!(
                "framerate must be from {} to {} frames per second (got {})",
                FRAMERATE.start(),
                FRAMERATE.end(),
                self.framerate
            ));
        }
        parse_resolution(&self.resolution()).map(|_| ())
    }

    /// `WIDTHxHEIGHT`.
    pub fn resolution(&self) -> String {
        format!("{}x{}", self.width, self.height)
    }
}

/// `POST /stream/start` to the agent: where to push and how to encode. Built by the daemon from a
/// stored connection.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamStartRequest {
    /// `rtmp://HOST[:PORT]/APP`, see [`check_url`].
    pub url: String,
    /// Appended to `url` as its last path segment, see [`push_url`].
    pub stream_key: String,
    #[serde(flatten)]
    pub settings: StreamSettings,
}

impl std::fmt::Debug for StreamStartRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamStartRequest")
            .field("url", &self.url)
            .field("stream_key", &KEY_MASK)
            .field("settings", &self.settings)
            .finish()
    }
}

impl StreamStartRequest {
    /// Every field by the rules above.
    pub fn check(&self) -> Result<(), String> {
        check_url(&self.url)?;
        check_key(&self.stream_key)?;
        self.settings.check()
    }
}

/// The URL the encoder pushes to: the service's URL with the key as its last path segment (how
/// RTMP services hand out `server` and `key`).
pub fn push_url(url: &str, key: &str) -> String {
    format!("{}/{key}", url.trim_end_matches('/'))
}

/// `text` with every appearance of `key` (as is, or percent-encoded as tools print URLs) replaced
/// by [`KEY_MASK`].
pub fn redact(text: &str, key: &str) -> String {
    if key.is_empty() {
        return text.to_string();
    }
    let mut out = text.replace(key, KEY_MASK);
    for upper in [true, false] {
        let encoded: String = key
            .bytes()
            .map(|b| match b {
                b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') => {
                    (b as char).to_string()
                }
                b if upper => format!("%{b:02X}"),
                b => format!("%{b:02x}"),
            })
            .collect();
        if encoded != key {
            out = out.replace(&encoded, KEY_MASK);
        }
    }
    out
}

/// Answer of a start: `{"success":true,"status":"streaming","pid":N,"start_time":"..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamStarted {
    pub success: bool,
    pub status: String,
    pub pid: u32,
    /// ISO-8601 UTC with milliseconds.
    pub start_time: String,
}

/// Answer of `GET .../stream/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum StreamStatus {
    /// No stream since the agent started, or the last one was stopped.
    Idle,
    Streaming {
        start_time: String,
        pid: u32,
    },
    /// The encoder ended by itself; `message` is why (its last error line, key removed).
    Terminated {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_urls_and_keys() {
        assert!(check_name("twitch").is_ok());
        assert!(check_name("my.yt-main_2").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"n".repeat(65), "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_url("rtmp://live.twitch.tv/app").is_ok());
        assert!(check_url("rtmps://a.rtmp.youtube.com:443/live2").is_ok());
        assert!(check_url("rtmp://127.0.0.1:1935/live").is_ok());
        for bad in [
            "http://x/live",
            "rtmp://",
            "rtmp:///live",
            "rtmp://:1935/live",
            "rtmp://h/a b",
            "rtmp://h/\n",
            "RTMP://h/x",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?}");
        }
        assert!(check_url(&format!("rtmp://h/{}", "a".repeat(URL_MAX))).is_err());
        assert!(check_key("live_123_abc?x=1").is_ok());
        for bad in ["", "a b", "ключ", &"k".repeat(KEY_MAX + 1)] {
            let e = check_key(bad).unwrap_err();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
    }

    #[test]
    fn settings_ranges() {
        assert!(DEFAULT_SETTINGS.check().is_ok());
        assert_eq!(parse_resolution("1920x1080"), Ok((1920, 1080)));
        for bad in ["1280", "1281x720", "100x100", "4000x2000", "axb", ""] {
            assert!(parse_resolution(bad).is_err(), "{bad:?}");
        }
        let s = |b, f| StreamSettings {
            bitrate_kbps: b,
            framerate: f,
            ..DEFAULT_SETTINGS
        };
        assert!(s(100, 30).check().unwrap_err().contains("bitrate_kbps"));
        assert!(s(2500, 0).check().unwrap_err().contains("framerate"));
        assert!(s(2500, 61).check().is_err());
    }

    #[test]
    fn the_key_never_shows() {
        let r = StreamStartRequest {
            url: "rtmp://h/live".into(),
            stream_key: "sek/ret key".into(),
            settings: DEFAULT_SETTINGS,
        };
        assert!(!format!("{r:?}").contains("sek"), "{r:?}");
        assert_eq!(push_url("rtmp://h/live/", "abc"), "rtmp://h/live/abc");
        assert_eq!(
            redact("rtmp://h/live/abc: Connection refused (abc)", "abc"),
            "rtmp://h/live/********: Connection refused (********)"
        );
        assert_eq!(redact("x sek%2Fret%20key y", "sek/ret key"), "x ******** y");
        assert_eq!(redact("x sek%2fret%20key y", "sek/ret key"), "x ******** y");
        assert_eq!(redact("nothing", ""), "nothing");
    }

    #[test]
    fn status_shapes() {
        let v = serde_json::to_value(StreamStatus::Idle).unwrap();
        assert_eq!(v, serde_json::json!({"status": "idle"}));
        let v = serde_json::to_value(StreamStatus::Streaming {
            start_time: "t".into(),
            pid: 7,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "streaming", "start_time": "t", "pid": 7})
        );
        let v = serde_json::to_value(StreamStatus::Terminated {
            message: "m".into(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status": "terminated", "message": "m"})
        );
        let req: StreamStartRequest = serde_json::from_value(serde_json::json!({
            "url": "rtmp://h/live", "stream_key": "k", "bitrate_kbps": 1000,
            "width": 1280, "height": 720, "framerate": 15
        }))
        .unwrap();
        assert_eq!(req.settings.framerate, 15);
        assert!(req.check().is_ok());
    }
}
