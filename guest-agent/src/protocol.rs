//! The agent's wire types: request bodies, answers, WebSocket messages.
//!
//! The daemon reuses these to forward the public action API (api.md sections 3 and 4) to the agent,
//! so field names here are the public ones. Answers that are not JSON (screenshots) carry their
//! metadata in the headers named below.

use serde::{Deserialize, Serialize};

/// Port the agent listens on inside the guest (virtio-vsock).
pub const VSOCK_PORT: u32 = 1024;

/// Screenshot answers: width of the image in pixels.
pub const HEADER_WIDTH: &str = "x-deskd-width";
/// Screenshot answers: height of the image in pixels.
pub const HEADER_HEIGHT: &str = "x-deskd-height";
/// `/bash` timeout when the request names none, in seconds.
pub const DEFAULT_BASH_TIMEOUT_S: f64 = 200.0;
/// Default cap on captured bash/exec output.
pub const DEFAULT_OUTPUT_CAP: usize = 10 * 1024 * 1024;

/// Body of every non-2xx answer. The daemon adds `request_id` and `upstream_status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Health {
    pub status: String,
    pub version: String,
    /// Whether the X display answers; the agent serves shell routes even when it does not.
    pub display: bool,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Button {
    #[default]
    Left,
    Right,
    Middle,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg,
}

/// Query of `GET /screenshot`: `format=png|jpeg` (alias `jpg`), `quality=1..100` (JPEG only).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScreenshotQuery {
    pub format: Option<String>,
    pub quality: Option<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClickRequest {
    pub x: i64,
    pub y: i64,
    #[serde(default)]
    pub button: Option<String>,
    #[serde(default)]
    pub double: bool,
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
    /// Seconds the drag takes (default 0.5).
    #[serde(default)]
    pub duration: Option<f64>,
}

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
    /// Pause between characters in milliseconds (default 12).
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyRequest {
    pub key: String,
}

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
    /// Seconds (default 200).
    #[serde(default)]
    pub timeout: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    pub code: String,
    /// Seconds, 1..=300 (default 10).
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

/// One desktop event: `{"type", "timestamp", "data"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    /// ISO-8601 UTC with milliseconds.
    pub timestamp: String,
    pub data: serde_json::Value,
}

/// Every event type the agent knows. Audio events come with the audio route.
pub const EVENT_TYPES: &[&str] = &[
    "window_focus",
    "window_open",
    "window_close",
    "clipboard",
    "file_change",
    "screen_change",
    "audio_stream_start",
    "audio_stream_stop",
    "process_start",
    "process_stop",
    "idle",
    "active",
];

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
                kind: "idle".into(),
                timestamp: "2026-01-01T00:00:00.000Z".into(),
                data: serde_json::json!({"idle_seconds": 30}),
            },
        };
        let v: serde_json::Value = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["event"]["type"], "idle");
        assert_eq!(v["event"]["data"]["idle_seconds"], 30);
    }
}
