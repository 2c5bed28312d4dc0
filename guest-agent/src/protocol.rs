//! The agent's face: everything the daemon and the agent must agree on, in one place. The port,
//! the routes the daemon names itself, the defaults and limits of every request, the request and
//! answer bodies, the error body, the screenshot query rules ([`screenshot`]), the event
//! catalogue with its data shapes ([`events`]) and the health answer with its readiness contract
//! ([`health`]). The agent serves these and the daemon imports them; neither side re-declares any.
//!
//! The daemon forwards the public action API (api.md sections 3 and 4) to the agent, so field
//! names here are the public ones. Answers that are not JSON (screenshots) carry their metadata in
//! the headers named below. The audio stream's format and messages are in [`audio`], RTMP
//! streaming's rules, requests and status in [`stream`].

pub mod audio;
pub mod events;
pub mod files;
pub mod growfs;
pub mod health;
pub mod resumed;
pub mod screenshot;
pub mod stream;

#[cfg(test)]
mod fuzz;

use serde::{Deserialize, Serialize};

pub use events::{
    event_catalogue, ClipboardData, Event, EventData, EventKind, EventTypeInfo, FileAction,
    FileChangeData, IdleData, NoData, ProcessData, ScreenData, WindowCloseData, WindowData,
    EVENT_QUEUE_SIZE,
};
pub use health::{DesktopParts, Health};
pub use screenshot::{
    scaled_size, ImageFormat, Region, ScreenshotOptions, ScreenshotQuery, DEFAULT_JPEG_QUALITY,
    JPEG_QUALITY, MAX_PIXELS,
};

/// Port the agent listens on inside the guest (virtio-vsock).
pub const VSOCK_PORT: u32 = 1024;

/// Routes the daemon names itself; the actions are forwarded as `/{action}` (`/click`, `/bash`...).
pub mod paths {
    /// `GET`: [`super::Health`], the readiness probe.
    pub const HEALTH: &str = "/health";
    /// `POST`: after a restore, [`super::resumed::Resumed`] → [`super::resumed::ResumedDone`].
    pub const RESUMED: &str = "/resumed";
    /// `POST`: after the host grew the disk, [`super::growfs::GrowRootFs`] →
    /// [`super::growfs::RootFsGrown`].
    pub const GROW_ROOT_FS: &str = "/root-fs/grow";
    /// `GET`: the screen as an image, see [`super::ScreenshotQuery`].
    pub const SCREENSHOT: &str = "/screenshot";
    /// WebSocket: a terminal, see [`super::TerminalSize`], [`super::TerminalIn`].
    pub const WS_TERMINAL: &str = "/ws/terminal";
    /// WebSocket: desktop events, see [`super::EventsIn`].
    pub const WS_EVENTS: &str = "/ws/events";
    /// `GET`: [`super::CursorPosition`].
    pub const CURSOR_POSITION: &str = "/cursor_position";
    /// `GET`: [`super::ClipboardText`]; `POST` a [`super::ClipboardSet`] to set it.
    pub const CLIPBOARD: &str = "/clipboard";
    /// WebSocket: the desktop's RFB (VNC) stream, bytes in binary messages both ways.
    pub const WS_VNC: &str = "/ws/vnc";
    /// `POST`: [`super::VncPasswordRequest`], the password VNC viewers must give from now on.
    pub const VNC_PASSWORD: &str = "/vnc/password";
    /// WebSocket: the desktop's speaker, see [`super::audio`].
    pub const WS_AUDIO: &str = "/ws/audio";
}

/// Screenshot answers: width of the image in pixels.
pub const HEADER_WIDTH: &str = "x-deskd-width";
/// Screenshot answers: height of the image in pixels.
pub const HEADER_HEIGHT: &str = "x-deskd-height";
/// Scaled screenshot answers (`max_pixels`): image pixels per screen pixel, see
/// [`ScreenshotOptions::scale`].
pub const HEADER_SCALE: &str = "x-deskd-scale";
/// Default cap on captured bash/exec output.
pub const DEFAULT_OUTPUT_CAP: usize = 10 * 1024 * 1024;

/// A duration a request may name, in seconds: what it is when the request names none, and the
/// range the agent accepts (anything else is a 400).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seconds {
    /// The request field, for messages.
    pub field: &'static str,
    pub default: f64,
    pub min: f64,
    pub max: f64,
}

impl Seconds {
    /// The value asked for (or the default), checked against the range.
    pub fn check(&self, asked: Option<f64>) -> Result<f64, String> {
        let s = asked.unwrap_or(self.default);
        if !s.is_finite() || s < self.min || s > self.max {
            return Err(format!(
                "{} must be between {} and {} seconds (got {s})",
                self.field, self.min, self.max
            ));
        }
        Ok(s)
    }
}

/// `/bash` `timeout`.
pub const BASH_TIMEOUT: Seconds = Seconds {
    field: "timeout",
    default: 200.0,
    min: 0.001,
    max: 86_400.0,
};
/// `/exec` `timeout`.
pub const EXEC_TIMEOUT: Seconds = Seconds {
    field: "timeout",
    default: 10.0,
    min: 1.0,
    max: 300.0,
};
/// `/drag` `duration`.
pub const DRAG_DURATION: Seconds = Seconds {
    field: "duration",
    default: 0.5,
    min: 0.0,
    max: 60.0,
};
/// `/hold_key` `duration`: how long the key stays down.
pub const HOLD_KEY_DURATION: Seconds = Seconds {
    field: "duration",
    default: 0.5,
    min: 0.0,
    max: 60.0,
};
/// `/wait` `seconds` (alias `duration`).
pub const WAIT: Seconds = Seconds {
    field: "seconds",
    default: 1.0,
    min: 0.0,
    max: 60.0,
};
/// `/type` `delay_ms`: pause between characters when the request names none.
pub const DEFAULT_TYPE_DELAY_MS: u64 = 12;
/// `/type` `delay_ms`: the longest pause accepted.
pub const MAX_TYPE_DELAY_MS: u64 = 5000;
/// `/scroll` `amount` when the request names none.
pub const DEFAULT_SCROLL_AMOUNT: i64 = 3;
/// `/scroll` `amount`: the range accepted.
pub const SCROLL_AMOUNT: std::ops::RangeInclusive<i64> = 1..=1000;
/// `/click` `clicks`: 1 (a click), 2 (as `double: true`) or 3 (a triple click, which selects a
/// line or paragraph in most toolkits).
pub const CLICKS: std::ops::RangeInclusive<i64> = 1..=3;

/// `POST /vnc/password`: the computer's `vnc_password`. The daemon sends it before it relays a
/// viewer, so the guest always holds the password of the current boot (it rotates at every start,
/// and a restored or cloned VM must not keep its source's). VNC authentication uses only the first
/// [`VNC_PASSWORD_SIGNIFICANT`] bytes (RFB 6.2.2); the rest is accepted and ignored by the server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VncPasswordRequest {
    pub password: String,
}

/// Bytes of a password that VNC authentication compares (RFB's DES key is 8 bytes).
pub const VNC_PASSWORD_SIGNIFICANT: usize = 8;

/// Body of every non-2xx answer. The daemon adds `request_id` and `upstream_status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Button {
    #[default]
    Left,
    Right,
    Middle,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClickRequest {
    pub x: i64,
    pub y: i64,
    #[serde(default)]
    pub button: Option<String>,
    #[serde(default)]
    pub double: bool,
    /// See [`CLICKS`]; `double: true` with no `clicks` means 2.
    #[serde(default)]
    pub clicks: Option<i64>,
}

impl ClickRequest {
    /// How many clicks the request asks for, or the message for a 400.
    pub fn click_count(&self) -> Result<u8, String> {
        match self.clicks {
            None => Ok(if self.double { 2 } else { 1 }),
            Some(n) if CLICKS.contains(&n) => {
                if self.double && n != 2 {
                    return Err(format!(
                        "double: true means clicks: 2, but clicks is {n}; send one of the two"
                    ));
                }
                Ok(n as u8)
            }
            Some(n) => Err(format!(
                "clicks must be {} to {} (got {n})",
                CLICKS.start(),
                CLICKS.end()
            )),
        }
    }

    /// The answer's `action` for `clicks` clicks.
    pub fn action_name(clicks: u8) -> &'static str {
        match clicks {
            2 => "double_click",
            3 => "triple_click",
            _ => "click",
        }
    }
}

/// `/mouse_down` and `/mouse_up`: press or release `button` (default left), first moving to
/// (`x`, `y`) when both are given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MouseButtonRequest {
    #[serde(default)]
    pub button: Option<String>,
    #[serde(default)]
    pub x: Option<i64>,
    #[serde(default)]
    pub y: Option<i64>,
}

impl MouseButtonRequest {
    /// Where to move first: both coordinates or neither, else the message for a 400.
    pub fn position(&self) -> Result<Option<(i64, i64)>, String> {
        match (self.x, self.y) {
            (Some(x), Some(y)) => Ok(Some((x, y))),
            (None, None) => Ok(None),
            (Some(_), None) => Err("y is missing: give both x and y, or neither".into()),
            (None, Some(_)) => Err("x is missing: give both x and y, or neither".into()),
        }
    }
}

/// `/hold_key`: holds `key` (a key or a `+` combo, as for `/key`) down for `duration` seconds
/// ([`HOLD_KEY_DURATION`]); other actions sent meanwhile see it held.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HoldKeyRequest {
    pub key: String,
    #[serde(default)]
    pub duration: Option<f64>,
}

/// Largest clipboard text the agent reads or sets, in bytes.
pub const MAX_CLIPBOARD_BYTES: usize = 16 << 20;

/// `POST /clipboard`: the text to own the CLIPBOARD selection with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClipboardSet {
    pub text: String,
}

/// Answer of `GET /clipboard`: the CLIPBOARD selection as text (empty when nobody owns it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClipboardText {
    pub success: bool,
    pub text: String,
    /// Someone owns the selection (false: `text` is empty because there is no clipboard).
    pub owned: bool,
}

/// Answer of `GET /cursor_position`: where the pointer is, in screen pixels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CursorPosition {
    pub success: bool,
    pub action: String,
    pub x: i64,
    pub y: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MoveRequest {
    pub x: i64,
    pub y: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DragRequest {
    pub start_x: i64,
    pub start_y: i64,
    pub end_x: i64,
    pub end_y: i64,
    #[serde(default)]
    pub button: Option<String>,
    /// Seconds the drag takes, see [`DRAG_DURATION`].
    #[serde(default)]
    pub duration: Option<f64>,
}

/// `/scroll`, see [`SCROLL_AMOUNT`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScrollRequest {
    pub direction: String,
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub x: Option<i64>,
    #[serde(default)]
    pub y: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TypeRequest {
    pub text: String,
    /// Pause between characters in milliseconds, see [`DEFAULT_TYPE_DELAY_MS`].
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRequest {
    pub key: String,
}

/// `/wait`, see [`WAIT`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WaitRequest {
    #[serde(default)]
    pub seconds: Option<f64>,
    /// Alias used by the Python SDK.
    #[serde(default)]
    pub duration: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BashRequest {
    pub command: String,
    /// Seconds, see [`BASH_TIMEOUT`].
    #[serde(default)]
    pub timeout: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    pub code: String,
    /// Seconds, see [`EXEC_TIMEOUT`].
    #[serde(default)]
    pub timeout: Option<f64>,
}

/// Answer of the pointer and keyboard routes and of `/wait`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ActionResponse {
    pub success: bool,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BashResponse {
    /// The command ran to its end (false when it timed out).
    pub success: bool,
    pub action: String,
    pub command: String,
    /// stdout and stderr interleaved in the order they were written (lossy UTF-8).
    pub output: String,
    /// The real exit status; 128+N when killed by signal N (shell convention), 124 on timeout.
    pub exit_code: i32,
    /// Output went past the cap and was cut.
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecResponse {
    pub output: String,
    pub success: bool,
    pub action: String,
    pub timeout: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(default)]
    pub truncated: bool,
}

/// Size of a terminal, from the `cols` and `rows` query values of `/ws/terminal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub cols: u16,
    pub rows: u16,
}

impl TerminalSize {
    /// The size when the query names none (api.md section 4).
    pub const DEFAULT: TerminalSize = TerminalSize { cols: 80, rows: 24 };
    /// Largest number of columns or rows; larger values are cut to it, 0 becomes 1.
    pub const MAX: u16 = 1000;

    /// From the query values: a missing or unreadable value keeps its default.
    pub fn from_values(cols: Option<&str>, rows: Option<&str>) -> TerminalSize {
        let num = |v: Option<&str>, default: u16| {
            v.and_then(|v| v.parse::<u16>().ok())
                .map_or(default, |n| n.clamp(1, Self::MAX))
        };
        TerminalSize {
            cols: num(cols, Self::DEFAULT.cols),
            rows: num(rows, Self::DEFAULT.rows),
        }
    }

    /// From a raw query string (`cols=120&rows=40&token=...`; other keys are ignored).
    pub fn from_query(query: Option<&str>) -> TerminalSize {
        let (mut cols, mut rows) = (None, None);
        for pair in query.unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("cols", v)) => cols = Some(v),
                Some(("rows", v)) => rows = Some(v),
                _ => {}
            }
        }
        TerminalSize::from_values(cols, rows)
    }

    /// The agent's path for a terminal of this size.
    pub fn path(&self) -> String {
        format!(
            "{}?cols={}&rows={}",
            paths::WS_TERMINAL,
            self.cols,
            self.rows
        )
    }
}

/// Messages a terminal client sends (JSON text frames).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TerminalIn {
    Input { data: String },
    Resize { cols: u16, rows: u16 },
    Ping,
}

/// Messages the terminal sends back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TerminalOut {
    Output { data: String },
    Error { message: String },
    Exit { code: i32 },
    Pong,
}

/// Messages an events client sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EventsIn {
    Subscribe {
        #[serde(default)]
        event_types: Vec<String>,
    },
    Unsubscribe {
        #[serde(default)]
        event_types: Vec<String>,
    },
    Ping,
}

/// Messages the events socket sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EventsOut {
    Subscribed { event_types: Vec<String> },
    Unsubscribed { event_types: Vec<String> },
    Event { event: Event },
    Error { message: String },
    Pong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_messages_use_spec_shapes() {
        let m: TerminalIn =
            serde_json::from_str(r#"{"type":"resize","cols":100,"rows":30}"#).unwrap();
        assert_eq!(
            m,
            TerminalIn::Resize {
                cols: 100,
                rows: 30
            }
        );
        let out = serde_json::to_string(&TerminalOut::Exit { code: 3 }).unwrap();
        assert_eq!(out, r#"{"type":"exit","code":3}"#);
    }

    #[test]
    fn events_messages_use_spec_shapes() {
        let m: EventsIn =
            serde_json::from_str(r#"{"type":"subscribe","event_types":["clipboard"]}"#).unwrap();
        assert_eq!(
            m,
            EventsIn::Subscribe {
                event_types: vec!["clipboard".into()]
            }
        );
        let ev = EventsOut::Event {
            event: Event {
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                data: EventData::Idle(IdleData { idle_seconds: 30 }),
            },
        };
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["event"]["type"], "idle");
        assert_eq!(v["event"]["data"]["idle_seconds"], 30);
        let back: EventsOut = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn terminal_size_from_queries() {
        assert_eq!(TerminalSize::from_query(None), TerminalSize::DEFAULT);
        assert_eq!(
            TerminalSize::from_query(Some("cols=120&rows=40&token=x")),
            TerminalSize {
                cols: 120,
                rows: 40
            }
        );
        assert_eq!(
            TerminalSize::from_query(Some("cols=0&rows=abc")),
            TerminalSize { cols: 1, rows: 24 }
        );
        assert_eq!(
            TerminalSize::from_values(Some("5000"), Some("-1")),
            TerminalSize {
                cols: TerminalSize::MAX,
                rows: 24
            }
        );
        assert_eq!(
            TerminalSize { cols: 9, rows: 3 }.path(),
            "/ws/terminal?cols=9&rows=3"
        );
    }

    #[test]
    fn seconds_rules() {
        assert_eq!(BASH_TIMEOUT.check(None), Ok(200.0));
        assert_eq!(EXEC_TIMEOUT.check(Some(300.0)), Ok(300.0));
        assert_eq!(
            EXEC_TIMEOUT.check(Some(0.5)).unwrap_err(),
            "timeout must be between 1 and 300 seconds (got 0.5)"
        );
        assert!(WAIT
            .check(Some(61.0))
            .unwrap_err()
            .contains("between 0 and 60"));
        assert!(DRAG_DURATION.check(Some(f64::NAN)).is_err());
        assert_eq!(DRAG_DURATION.check(None), Ok(0.5));
    }
}
