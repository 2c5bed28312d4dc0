//! The short forms of templates.md, rewritten to the canonical document: `name: foo@1.0.0`,
//! top-level `cpu`, `ram: 4gb`, `display: 1280x800`, `files` as a map, top-level
//! `on_first_boot`. Also the spellings that mean the same value (a resolution without depth, a
//! whole number written `2.0`, YAML's empty `key:`), so that every way of writing one template
//! gives one canonical form and one digest. Runs before the schema sees the document.

use serde_json::{Map, Number, Value};

use super::issue::{Code, Issue};

/// Depth added to a resolution given as `WIDTHxHEIGHT`.
pub const DEFAULT_DEPTH: u32 = 24;

/// Rewrites `doc` (a mapping) to the canonical shape; contradictions between a short form and
/// the long one are reported, and the long form wins.
pub fn normalize(doc: Value) -> (Value, Vec<Issue>) {
    let mut issues = Vec::new();
    let Value::Object(mut top) = tidy(doc) else {
        return (Value::Null, issues);
    };
    name(&mut top, &mut issues);
    for (short, long) in [("cpu", "cpu"), ("ram", "ram_gb"), ("display", "resolution")] {
        if let Some(v) = top.remove(short) {
            let v = if short == "ram" { ram(v) } else { v };
            put(&mut top, "hardware", long, v, short, &mut issues);
        }
    }
    if let Some(hook) = top.remove("on_first_boot") {
        put(
            &mut top,
            "hooks",
            "on_first_boot",
            hook,
            "on_first_boot",
            &mut issues,
        );
    }
    if let Some(Value::Object(files)) = top.get("files").cloned() {
        top.insert("files".into(), Value::Array(files_list(files)));
    }
    if let Some(Value::Object(hw)) = top.get_mut("hardware") {
        if let Some(v) = hw.get("ram_gb").cloned() {
            hw.insert("ram_gb".into(), ram(v));
        }
        if let Some(Value::String(r)) = hw.get("resolution").cloned() {
            hw.insert("resolution".into(), Value::String(resolution(&r)));
        }
    }
    restart_no(&mut top);
    (Value::Object(top), issues)
}

/// `name: foo@1.0.0` → `template: {name: foo, version: 1.0.0}`.
fn name(top: &mut Map<String, Value>, issues: &mut Vec<Issue>) {
    let Some(short) = top.remove("name") else {
        return;
    };
    let Value::String(s) = &short else {
        issues.push(Issue::new(
            "name",
            Code::InvalidType,
            "name (the short form of template) must be a string like my-app@1.0.0",
        ));
        return;
    };
    let (n, v) = match s.split_once('@') {
        Some((n, v)) => (n.to_string(), Some(v.to_string())),
        None => (s.clone(), None),
    };
    let template = top
        .entry("template")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(t) = template else {
        return;
    };
    for (key, value) in [("name", Some(n)), ("version", v)] {
        let Some(value) = value else { continue };
        match t.get(key) {
            None => {
                t.insert(key.into(), Value::String(value));
            }
            Some(Value::String(existing)) if *existing == value => {}
            Some(existing) => issues.push(Issue::new(
                format!("template.{key}"),
                Code::Conflict,
                format!(
                    "name: {s} says {key} {value:?} but template.{key} is {existing}: keep one of them"
                ),
            )),
        }
    }
}

/// Puts a top-level short form into `section.key` unless the long form says otherwise.
fn put(
    top: &mut Map<String, Value>,
    section: &str,
    key: &str,
    value: Value,
    short: &str,
    issues: &mut Vec<Issue>,
) {
    let entry = top
        .entry(section)
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(sec) = entry else {
        return;
    };
    match sec.get(key) {
        None => {
            sec.insert(key.into(), value);
        }
        Some(existing) if *existing == value => {}
        Some(existing) => issues.push(Issue::new(
            format!("{section}.{key}"),
            Code::Conflict,
            format!(
                "top-level {short}: {value} contradicts {section}.{key}: {existing}: keep one of them"
            ),
        )),
    }
}

/// `4gb`, `4 GB`, `4G`, "4" → 4; anything else is left for the schema to refuse.
fn ram(v: Value) -> Value {
    let Value::String(s) = &v else {
        return v;
    };
    let lower = s.trim().to_ascii_lowercase();
    let digits = lower
        .strip_suffix("gb")
        .or_else(|| lower.strip_suffix('g'))
        .unwrap_or(&lower)
        .trim();
    match digits.parse::<u64>() {
        Ok(n) => Value::Number(Number::from(n)),
        Err(_) => v,
    }
}

/// `1280x800` → `1280x800x24`; other shapes are left for the schema to refuse.
fn resolution(r: &str) -> String {
    let parts: Vec<&str> = r.trim().split(['x', 'X']).collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    match parts.len() {
        2 if numeric => format!("{}x{}x{DEFAULT_DEPTH}", parts[0], parts[1]),
        3 if numeric => format!("{}x{}x{}", parts[0], parts[1], parts[2]),
        _ => r.to_string(),
    }
}

/// `files: {"/path": "text" | {mode, inline, ...}}` → `[{to: "/path", ...}]`, in path order.
fn files_list(files: Map<String, Value>) -> Vec<Value> {
    files
        .into_iter()
        .map(|(to, v)| {
            let mut entry = match v {
                Value::Object(m) => m,
                other => {
                    let mut m = Map::new();
                    m.insert("inline".into(), other);
                    m
                }
            };
            entry.insert("to".into(), Value::String(to));
            Value::Object(entry)
        })
        .collect()
}

/// `restart: no` read as YAML 1.1's boolean false means the enum value "no".
fn restart_no(top: &mut Map<String, Value>) {
    let Some(Value::Array(apps)) = top.get_mut("apps") else {
        return;
    };
    for app in apps {
        let Some(Value::Array(services)) = app.get_mut("services") else {
            continue;
        };
        for s in services {
            if let Some(r @ Value::Bool(false)) = s.get_mut("restart") {
                *r = Value::String("no".into());
            }
        }
    }
}

/// Drops `null` members of mappings (YAML's `key:` with nothing after it) and writes whole
/// numbers as integers (`2.0` → `2`), everywhere.
fn tidy(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, tidy(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(tidy).collect()),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                Value::Number(Number::from(f as i64))
            }
            _ => Value::Number(n),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_short_form_becomes_the_long_one() {
        let (doc, issues) = normalize(json!({
            "api_version": "orgo.ai/v1",
            "name": "foo@1.0.0",
            "cpu": 2,
            "ram": "4gb",
            "display": "1280x800",
            "files": {"/opt/a.txt": "hello", "/opt/run.sh": {"mode": "0755", "inline": "echo"}},
            "on_first_boot": "echo ready",
        }));
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(
            doc,
            json!({
                "api_version": "orgo.ai/v1",
                "template": {"name": "foo", "version": "1.0.0"},
                "hardware": {"cpu": 2, "ram_gb": 4, "resolution": "1280x800x24"},
                "files": [{"to": "/opt/a.txt", "inline": "hello"},
                          {"to": "/opt/run.sh", "mode": "0755", "inline": "echo"}],
                "hooks": {"on_first_boot": "echo ready"},
            })
        );
    }

    #[test]
    fn contradictions_are_reported_and_the_long_form_wins() {
        let (doc, issues) = normalize(json!({
            "name": "foo@2.0.0",
            "template": {"name": "foo", "version": "1.0.0"},
            "cpu": 4,
            "hardware": {"cpu": 2},
        }));
        assert_eq!(doc["template"]["version"], "1.0.0");
        assert_eq!(doc["hardware"]["cpu"], 2);
        let fields: Vec<_> = issues.iter().map(|i| (i.field.as_str(), i.code)).collect();
        assert_eq!(
            fields,
            [
                ("template.version", Code::Conflict),
                ("hardware.cpu", Code::Conflict)
            ]
        );
    }

    #[test]
    fn spellings_of_one_value_agree() {
        let (a, _) = normalize(
            json!({"hardware": {"ram_gb": "8 GB", "cpu": 2.0, "resolution": "1920X1080", "disk_gb": null}}),
        );
        assert_eq!(
            a,
            json!({"hardware": {"ram_gb": 8, "cpu": 2, "resolution": "1920x1080x24"}})
        );
        let (b, _) = normalize(
            json!({"apps": [{"name": "a", "services": [{"name": "s", "run": "x", "restart": false}]}]}),
        );
        assert_eq!(b["apps"][0]["services"][0]["restart"], "no");
        // Values that are not a size are left for the schema to refuse, not guessed at.
        let (c, _) = normalize(json!({"ram": "lots", "display": "wide"}));
        assert_eq!(
            c["hardware"],
            json!({"ram_gb": "lots", "resolution": "wide"})
        );
    }
}
