//! The canonical text of a document (keys sorted at every level, no insignificant whitespace)
//! and its digest, `sha256:<hex>` of that text: the key of builds and golden snapshots.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Compact JSON with object keys in byte order, whatever map type serde_json was built with.
pub fn text(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = m.get(k) {
                    write(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `sha256:<64 hex>` of [`text`].
pub fn digest(v: &Value) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text(v).as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "é"}], "a": true}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":true,"b":[1,{"x":"é","y":2}]}"#).unwrap();
        assert_eq!(text(&a), r#"{"a":true,"b":[1,{"x":"é","y":2}]}"#);
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"a": false})));
        assert!(digest(&a).starts_with("sha256:") && digest(&a).len() == 71);
    }
}
