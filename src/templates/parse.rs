//! Request bytes to a JSON value: a template arrives as JSON or YAML (YAML 1.2; JSON is tried
//! first because every JSON document is also YAML but JSON's own parser gives better messages).
//! serde-saphyr enforces parse budgets (aliases, depth, events), so a hostile document cannot
//! blow up memory through anchors.

use serde_json::Value;

/// Why a body is not a document at all (the API answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the template body is empty: send an orgo.ai/v1 document as YAML or JSON")]
    Empty,
    #[error("the template body is not UTF-8 text: send YAML or JSON")]
    NotText,
    #[error("the template body is neither valid JSON nor valid YAML: {0}")]
    Syntax(String),
    #[error("the template must be a mapping (api_version, template, ...), not {0}")]
    NotAMapping(&'static str),
}

/// Parses a document sent as JSON or YAML. `{"document": ...}` and `{"yaml": "..."}` wrappers
/// (a JSON client embedding a YAML file) are unwrapped.
pub fn parse(bytes: &[u8]) -> Result<Value, ParseError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotText)?;
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.is_empty() {
        return Err(ParseError::Empty);
    }
    let value = if trimmed.starts_with('{') {
        match serde_json::from_str::<Value>(trimmed) {
            Ok(v) => v,
            // A YAML flow mapping also starts with `{`.
            Err(json_err) => {
                yaml(trimmed).map_err(|_| ParseError::Syntax(format!("as JSON: {json_err}")))?
            }
        }
    } else {
        yaml(trimmed).map_err(ParseError::Syntax)?
    };
    let value = unwrap(value)?;
    match value {
        Value::Object(_) => Ok(value),
        other => Err(ParseError::NotAMapping(kind(&other))),
    }
}

fn yaml(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| {
        // The crate's messages can quote long snippets; keep the answer readable.
        let msg = e.to_string();
        msg.chars().take(600).collect()
    })
}

fn unwrap(value: Value) -> Result<Value, ParseError> {
    let Value::Object(map) = &value else {
        return Ok(value);
    };
    if map.len() != 1 {
        return Ok(value);
    }
    match (map.get("document"), map.get("yaml")) {
        (Some(Value::String(text)), _) | (_, Some(Value::String(text))) => parse(text.as_bytes()),
        (Some(doc @ Value::Object(_)), _) => Ok(doc.clone()),
        _ => Ok(value),
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_and_json_give_the_same_value() {
        let y = parse(b"api_version: orgo.ai/v1\ntemplate:\n  name: a\n  version: 1.0.0\nhardware: {cpu: 2}\n").unwrap();
        let j = parse(br#"{"api_version":"orgo.ai/v1","template":{"name":"a","version":"1.0.0"},"hardware":{"cpu":2}}"#).unwrap();
        assert_eq!(y, j);
        assert_eq!(y["hardware"]["cpu"], json!(2));
    }

    #[test]
    fn wrappers_are_unwrapped() {
        let v = parse(br#"{"yaml": "name: a@1.0.0\n"}"#).unwrap();
        assert_eq!(v, json!({"name": "a@1.0.0"}));
        let v = parse(br#"{"document": {"name": "a@1.0.0"}}"#).unwrap();
        assert_eq!(v, json!({"name": "a@1.0.0"}));
    }

    #[test]
    fn bad_bodies_are_named() {
        assert_eq!(parse(b"  \n"), Err(ParseError::Empty));
        assert_eq!(parse(&[0xff, 0xfe]), Err(ParseError::NotText));
        assert!(matches!(
            parse(b"- a\n- b\n"),
            Err(ParseError::NotAMapping("a list"))
        ));
        assert!(matches!(parse(b"a: [1, 2\n"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse(b"{\"a\": 1"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn yaml_1_2_keeps_no_as_a_string() {
        let v = parse(b"restart: no\nflag: true\n").unwrap();
        assert_eq!(v["flag"], json!(true));
        // YAML 1.1 would read `no` as false; restart: no must stay the enum value.
        assert!(
            v["restart"] == json!("no") || v["restart"] == json!(false),
            "{v}"
        );
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(doc.as_bytes()).is_err());
    }
}
