//! Fuzz target: the agent protocol, the contract between the daemon and the agent. Every type
//! either side parses from the other (requests, answers, WebSocket messages, events, health,
//! queries) is fed any bytes: parsing refuses or succeeds, never panics, and what it accepts
//! serialises again to what parses equal. The checks built on the types (click counts, times,
//! screenshot queries and regions, terminal sizes, file names, identities) take any value.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::events::{Event, EventKind};
use super::files::{clash_name, sanitize_filename, FileWritten, ReadQuery, WriteQuery};
use super::health::Health;
use super::resumed::{is_hostname, NewIdentity, Resumed, ResumedDone};
use super::screenshot::{scaled_size, Region, ScreenshotQuery};
use super::*;

/// Inputs that parsed as the type they were sent as (printed at the end: the target must reach
/// the types' own checks, not only the JSON parser's refusals).
static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static INPUTS: AtomicU64 = AtomicU64::new(0);

/// Parses `bytes` as `T`; when it parses, checks the round trip and hands the value over.
fn parsed<T>(bytes: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let v: T = serde_json::from_slice(bytes).ok()?;
    ACCEPTED.fetch_add(1, Ordering::Relaxed);
    let again = serde_json::to_vec(&v).expect("an accepted value serialises");
    let back: T = serde_json::from_slice(&again).expect("a serialised value parses");
    assert_eq!(
        back,
        v,
        "changed through a round trip: {}",
        String::from_utf8_lossy(&again)
    );
    Some(v)
}

/// Every field name of the protocol's types, and the tags of its tagged enums.
const FIELDS: &[&str] = &[
    "action",
    "amount",
    "button",
    "clicks",
    "clock_step_ms",
    "code",
    "cols",
    "command",
    "content",
    "data",
    "default",
    "delay_ms",
    "desktop",
    "details",
    "direction",
    "display",
    "double",
    "duration",
    "end_x",
    "end_y",
    "entropy_hex",
    "error",
    "error_type",
    "exit_code",
    "field",
    "format",
    "height",
    "host_time_unix_ns",
    "hostname",
    "identity",
    "identity_applied",
    "idle_seconds",
    "key",
    "kind",
    "machine_id",
    "max",
    "max_pixels",
    "min",
    "name",
    "output",
    "owned",
    "panel",
    "password",
    "path",
    "pid",
    "quality",
    "ready",
    "region",
    "rows",
    "seconds",
    "size_bytes",
    "start_x",
    "start_y",
    "status",
    "success",
    "text",
    "timed_out",
    "timeout",
    "timestamp",
    "title",
    "truncated",
    "version",
    "width",
    "window_id",
    "window_manager",
    "x",
    "x_server",
    "y",
    "type",
];
const WORDS: &[&str] = &[
    "left",
    "right",
    "middle",
    "png",
    "jpeg",
    "input",
    "resize",
    "output",
    "exit",
    "subscribe",
    "window_focus",
    "clipboard",
    "file_change",
    "created",
    "ok",
    "",
    "a/../b",
    "host-1",
];

/// The next byte of `input` (0 past its end).
fn next(input: &mut &[u8]) -> u8 {
    let (b, rest) = input.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
    *input = rest;
    b
}

/// A JSON value whose objects mostly use the protocol's field names, so that inputs get past the
/// JSON parser into the types' own rules.
fn json(input: &mut &[u8], depth: u32) -> serde_json::Value {
    use serde_json::{json, Value};
    let pick = next(input);
    match pick % 9 {
        0 => Value::Null,
        1 => Value::Bool(pick & 0x10 != 0),
        2 => json!(i64::from(next(input) as i8) * i64::from(next(input))),
        3 => json!(f64::from(next(input)) / 7.0 - 10.0),
        4 => json!([u64::MAX, 1 << 40, 0][usize::from(next(input) % 3)]),
        5 => Value::String(WORDS[usize::from(next(input)) % WORDS.len()].to_string()),
        6 => Value::String(
            String::from_utf8_lossy(&[next(input), next(input), next(input)]).into_owned(),
        ),
        7 if depth < 3 => {
            let n = next(input) % 4;
            Value::Array((0..n).map(|_| json(input, depth + 1)).collect())
        }
        _ if depth < 3 => {
            let n = next(input) % 6;
            let mut m = serde_json::Map::new();
            for _ in 0..n {
                let name = FIELDS[usize::from(next(input)) % FIELDS.len()];
                m.insert(name.to_string(), json(input, depth + 1));
            }
            Value::Object(m)
        }
        _ => Value::Null,
    }
}

fn word(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn fuzz_agent_protocol() {
    bolero::check!()
        .with_test_time(std::time::Duration::from_secs(1))
        .for_each(|data: &[u8]| {
            INPUTS.fetch_add(1, Ordering::Relaxed);
            let (pick, raw) = data.split_first().map_or((0, data), |(p, b)| (*p, b));
            // Half the inputs as raw bytes, half as JSON built from them with the protocol's
            // field names.
            let built;
            let bytes = if pick & 0x80 == 0 {
                raw
            } else {
                let mut rest = raw;
                built = serde_json::to_vec(&json(&mut rest, 0)).unwrap_or_default();
                &built[..]
            };
            let text = word(raw);
            match pick % 24 {
                0 => {
                    if let Some(c) = parsed::<ClickRequest>(bytes) {
                        if let Ok(n) = c.click_count() {
                            let _ = ClickRequest::action_name(n);
                        }
                    }
                }
                1 => {
                    if let Some(m) = parsed::<MouseButtonRequest>(bytes) {
                        let _ = m.position();
                    }
                }
                2 => {
                    let _ = parsed::<HoldKeyRequest>(bytes);
                }
                3 => {
                    let _ = parsed::<DragRequest>(bytes);
                }
                4 => {
                    let _ = parsed::<ScrollRequest>(bytes);
                }
                5 => {
                    let _ = parsed::<TypeRequest>(bytes);
                }
                6 => {
                    let _ = parsed::<BashRequest>(bytes);
                }
                7 => {
                    let _ = parsed::<ExecRequest>(bytes);
                }
                8 => {
                    let _ = parsed::<BashResponse>(bytes);
                }
                9 => {
                    let _ = parsed::<ExecResponse>(bytes);
                }
                10 => {
                    let _ = parsed::<ErrorBody>(bytes);
                }
                11 => {
                    let _ = parsed::<TerminalIn>(bytes);
                }
                12 => {
                    let _ = parsed::<TerminalOut>(bytes);
                }
                13 => {
                    let _ = parsed::<EventsIn>(bytes);
                }
                14 => {
                    let _ = parsed::<EventsOut>(bytes);
                }
                15 => {
                    if let Some(e) = parsed::<Event>(bytes) {
                        let _ = e.data.kind().data_fields();
                    }
                    let _ = EventKind::parse(&text);
                }
                16 => {
                    if let Some(h) = parsed::<Health>(bytes) {
                        let _ = (h.desktop.all_up(), h.desktop.missing());
                    }
                }
                17 => {
                    if let Some(q) = parsed::<ScreenshotQuery>(bytes) {
                        if let Ok(options) = q.parse() {
                            let _ = options.path();
                        }
                    }
                }
                18 => {
                    if let Some(r) = parsed::<Region>(bytes) {
                        let (w, h) = (u16::from(pick), u16::from(pick).wrapping_mul(7));
                        let _ = r.check_on(w, h);
                    }
                    let n = |i: usize| bytes.get(i).copied().map_or(0, u32::from);
                    let _ = scaled_size(n(0) << 8 | n(1), n(2) << 8 | n(3), u64::from(n(4)) << 16);
                }
                19 => {
                    let _ = sanitize_filename(&text);
                    let _ = clash_name(&text, u32::from(pick));
                    let _ = parsed::<WriteQuery>(bytes);
                    let _ = parsed::<ReadQuery>(bytes);
                    let _ = parsed::<FileWritten>(bytes);
                }
                20 => {
                    if let Some(identity) = parsed::<NewIdentity>(bytes) {
                        let _ = identity.check();
                    }
                    let _ = parsed::<Resumed>(bytes);
                    let _ = parsed::<ResumedDone>(bytes);
                    let _ = is_hostname(&text);
                }
                21 => {
                    let (cols, rows) = text.split_once('&').unwrap_or((&text, ""));
                    let _ = TerminalSize::from_values(Some(cols), Some(rows)).path();
                    let _ = TerminalSize::from_query(Some(&text)).path();
                }
                22 => {
                    let asked = serde_json::from_slice::<f64>(bytes).ok();
                    for s in [
                        BASH_TIMEOUT,
                        EXEC_TIMEOUT,
                        DRAG_DURATION,
                        HOLD_KEY_DURATION,
                        WAIT,
                    ] {
                        let _ = s.check(asked);
                    }
                }
                _ => {
                    let _ = parsed::<VncPasswordRequest>(bytes);
                    let _ = parsed::<ClipboardSet>(bytes);
                    let _ = parsed::<WaitRequest>(bytes);
                    let _ = parsed::<KeyRequest>(bytes);
                    let _ = parsed::<MoveRequest>(bytes);
                    let _ = parsed::<CursorPosition>(bytes);
                    let _ = parsed::<ActionResponse>(bytes);
                    let _ = parsed::<ClipboardText>(bytes);
                }
            }
        });
    let (n, ok) = (
        INPUTS.load(Ordering::Relaxed),
        ACCEPTED.load(Ordering::Relaxed),
    );
    eprintln!("fuzz_agent_protocol: {n} inputs, {ok} parsed as their type");
    assert!(n > 0, "no input ran");
}
