//! The events WebSocket's catalogue: every event kind, the typed shape of its `data`, and how many
//! events a client's queue holds. The agent emits these types; the daemon serves the catalogue
//! (`GET /computers/{id}/events`) from [`event_catalogue`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Events queued per client; when a slow client's queue is full the oldest is dropped.
pub const EVENT_QUEUE_SIZE: usize = 256;

/// Every kind of event the agent knows (api.md section 4). The audio route emits the audio events
/// when a stream starts and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    WindowFocus,
    WindowOpen,
    WindowClose,
    Clipboard,
    FileChange,
    ScreenChange,
    AudioStreamStart,
    AudioStreamStop,
    ProcessStart,
    ProcessStop,
    Idle,
    Active,
}

impl EventKind {
    /// All kinds, in the catalogue's order.
    pub const ALL: [EventKind; 12] = [
        EventKind::WindowFocus,
        EventKind::WindowOpen,
        EventKind::WindowClose,
        EventKind::Clipboard,
        EventKind::FileChange,
        EventKind::ScreenChange,
        EventKind::AudioStreamStart,
        EventKind::AudioStreamStop,
        EventKind::ProcessStart,
        EventKind::ProcessStop,
        EventKind::Idle,
        EventKind::Active,
    ];

    /// The wire name (`window_focus`...).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::WindowFocus => "window_focus",
            EventKind::WindowOpen => "window_open",
            EventKind::WindowClose => "window_close",
            EventKind::Clipboard => "clipboard",
            EventKind::FileChange => "file_change",
            EventKind::ScreenChange => "screen_change",
            EventKind::AudioStreamStart => "audio_stream_start",
            EventKind::AudioStreamStop => "audio_stream_stop",
            EventKind::ProcessStart => "process_start",
            EventKind::ProcessStop => "process_stop",
            EventKind::Idle => "idle",
            EventKind::Active => "active",
        }
    }

    /// The kind with this wire name.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The fields of this kind's `data` and their JSON types, as the catalogue shows them. Each
    /// matches the struct in [`EventData`] (a unit test holds them together).
    pub fn data_fields(self) -> &'static [(&'static str, &'static str)] {
        const WINDOW: &[(&str, &str)] = &[("window_id", "integer"), ("title", "string")];
        const PROCESS: &[(&str, &str)] = &[("pid", "integer"), ("name", "string")];
        match self {
            EventKind::WindowFocus | EventKind::WindowOpen => WINDOW,
            EventKind::WindowClose => &[("window_id", "integer")],
            EventKind::Clipboard => &[("content", "string")],
            EventKind::FileChange => &[("path", "string"), ("action", FileAction::CHOICES)],
            EventKind::ScreenChange => &[("width", "integer"), ("height", "integer")],
            EventKind::ProcessStart | EventKind::ProcessStop => PROCESS,
            EventKind::Idle => &[("idle_seconds", "integer")],
            EventKind::AudioStreamStart | EventKind::AudioStreamStop | EventKind::Active => &[],
        }
    }
}

/// `window_focus`, `window_open`: an X window id and its title (`_NET_WM_NAME`, else `WM_NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowData {
    pub window_id: u32,
    pub title: String,
}

/// `window_close`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCloseData {
    pub window_id: u32,
}

/// `clipboard`: the new text of the CLIPBOARD selection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipboardData {
    pub content: String,
}

/// What happened to a file in `~/Desktop` or `~/Downloads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileAction {
    Created,
    Modified,
    Deleted,
}

impl FileAction {
    /// The catalogue's description of the field.
    pub const CHOICES: &'static str = "created|modified|deleted";
}

/// `file_change`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChangeData {
    pub path: String,
    pub action: FileAction,
}

/// `screen_change`: the new size of the screen in pixels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScreenData {
    pub width: u32,
    pub height: u32,
}

/// `process_start`, `process_stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessData {
    pub pid: u32,
    pub name: String,
}

/// `idle`: seconds since the last user input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleData {
    pub idle_seconds: u64,
}

/// `data` of the kinds that carry none: `{}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NoData {}

/// An event's kind with its data: `{"type": ..., "data": {...}}` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum EventData {
    WindowFocus(WindowData),
    WindowOpen(WindowData),
    WindowClose(WindowCloseData),
    Clipboard(ClipboardData),
    FileChange(FileChangeData),
    ScreenChange(ScreenData),
    AudioStreamStart(NoData),
    AudioStreamStop(NoData),
    ProcessStart(ProcessData),
    ProcessStop(ProcessData),
    Idle(IdleData),
    Active(NoData),
}

impl EventData {
    pub fn kind(&self) -> EventKind {
        match self {
            EventData::WindowFocus(_) => EventKind::WindowFocus,
            EventData::WindowOpen(_) => EventKind::WindowOpen,
            EventData::WindowClose(_) => EventKind::WindowClose,
            EventData::Clipboard(_) => EventKind::Clipboard,
            EventData::FileChange(_) => EventKind::FileChange,
            EventData::ScreenChange(_) => EventKind::ScreenChange,
            EventData::AudioStreamStart(_) => EventKind::AudioStreamStart,
            EventData::AudioStreamStop(_) => EventKind::AudioStreamStop,
            EventData::ProcessStart(_) => EventKind::ProcessStart,
            EventData::ProcessStop(_) => EventKind::ProcessStop,
            EventData::Idle(_) => EventKind::Idle,
            EventData::Active(_) => EventKind::Active,
        }
    }
}

/// One desktop event: `{"type", "timestamp", "data"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// ISO-8601 UTC with milliseconds.
    pub timestamp: String,
    #[serde(flatten)]
    pub data: EventData,
}

/// One entry of the catalogue: a kind and its `data` fields with their JSON types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTypeInfo {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub data: BTreeMap<String, String>,
}

/// The whole catalogue, every kind in [`EventKind::ALL`]'s order.
pub fn event_catalogue() -> Vec<EventTypeInfo> {
    EventKind::ALL
        .into_iter()
        .map(|kind| EventTypeInfo {
            kind,
            data: kind
                .data_fields()
                .iter()
                .map(|(f, t)| (f.to_string(), t.to_string()))
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// One event of each kind, with every field filled.
    fn sample(kind: EventKind) -> EventData {
        let window = WindowData {
            window_id: 0x40_0008,
            title: "t".into(),
        };
        let process = ProcessData {
            pid: 42,
            name: "sh".into(),
        };
        match kind {
            EventKind::WindowFocus => EventData::WindowFocus(window),
            EventKind::WindowOpen => EventData::WindowOpen(window),
            EventKind::WindowClose => EventData::WindowClose(WindowCloseData { window_id: 7 }),
            EventKind::Clipboard => EventData::Clipboard(ClipboardData {
                content: "c".into(),
            }),
            EventKind::FileChange => EventData::FileChange(FileChangeData {
                path: "/home/user/Desktop/a".into(),
                action: FileAction::Modified,
            }),
            EventKind::ScreenChange => EventData::ScreenChange(ScreenData {
                width: 800,
                height: 600,
            }),
            EventKind::AudioStreamStart => EventData::AudioStreamStart(NoData {}),
            EventKind::AudioStreamStop => EventData::AudioStreamStop(NoData {}),
            EventKind::ProcessStart => EventData::ProcessStart(process),
            EventKind::ProcessStop => EventData::ProcessStop(process),
            EventKind::Idle => EventData::Idle(IdleData { idle_seconds: 30 }),
            EventKind::Active => EventData::Active(NoData {}),
        }
    }

    fn json_type_fits(v: &Value, described: &str) -> bool {
        match described {
            "integer" => v.is_u64(),
            "string" => v.is_string(),
            choices => v
                .as_str()
                .is_some_and(|s| choices.split('|').any(|c| c == s)),
        }
    }

    #[test]
    fn catalogue_describes_the_data_the_types_carry() {
        for kind in EventKind::ALL {
            let data = sample(kind);
            assert_eq!(data.kind(), kind);
            let v = serde_json::to_value(&data).unwrap();
            assert_eq!(v["type"], kind.name());
            let fields = v["data"].as_object().unwrap();
            let described = kind.data_fields();
            assert_eq!(fields.len(), described.len(), "{kind:?}: {fields:?}");
            for (name, ty) in described {
                let value = &fields[*name];
                assert!(
                    json_type_fits(value, ty),
                    "{kind:?}.{name} is {value}, not {ty}"
                );
            }
            // The serde name and `name()` agree.
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
            assert_eq!(EventKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(EventKind::parse("bogus"), None);
        let c = serde_json::to_value(event_catalogue()).unwrap();
        assert_eq!(c.as_array().unwrap().len(), 12);
        assert_eq!(c[0]["type"], "window_focus");
        assert_eq!(c[0]["data"]["window_id"], "integer");
        assert_eq!(c[4]["data"]["action"], "created|modified|deleted");
    }

    #[test]
    fn events_have_the_wire_shape_and_read_back() {
        let ev = Event {
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            data: EventData::Active(NoData {}),
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "active", "timestamp": "2026-01-01T00:00:00.000Z", "data": {}})
        );
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), ev);
        let read: Event = serde_json::from_str(
            r#"{"type":"file_change","timestamp":"t","data":{"path":"/p","action":"created"}}"#,
        )
        .unwrap();
        assert_eq!(
            read.data,
            EventData::FileChange(FileChangeData {
                path: "/p".into(),
                action: FileAction::Created
            })
        );
    }
}
