//! Reading JSON request bodies and checking their fields, with one clear message per field.
//! Handlers read fields from a `serde_json::Map` rather than deriving `Deserialize` so that aliases
//! (`project_id`/`workspace_id`), SDK quirks (`cpu: 0.5`) and per-field messages are all explicit.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::AppState;

/// A request body that is a JSON object. An empty body counts as `{}` (the SDK sends
/// `Content-Type: application/json` with no body on bodyless POSTs).
pub struct JsonObject(pub Map<String, Value>);

impl FromRequest<AppState> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.config.limits.max_json_body_bytes;
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("").to_ascii_lowercase());
        let declared_len = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared_len.is_some_and(|n| n > limit) {
            return Err(too_large(limit));
        }
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| too_large(limit))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonObject(Map::new()));
        }
        match content_type.as_deref() {
            Some(ct) if is_json(ct) => {}
            Some(ct) => {
                return Err(ApiError::bad_request(format!(
                    "Content-Type must be application/json (got {:?}).",
                    ct.chars().take(100).collect::<String>()
                )))
            }
            None => {
                return Err(ApiError::bad_request(
                    "Content-Type must be application/json (the header is missing).",
                ))
            }
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("Request body is not valid JSON: {e}.")))?;
        match value {
            Value::Object(map) => Ok(JsonObject(map)),
            other => Err(ApiError::bad_request(format!(
                "Request body must be a JSON object, not {}.",
                kind(&other)
            ))),
        }
    }
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        format!("Request body too large: the limit is {limit} bytes (limits.max_json_body_bytes)."),
    )
}

/// JSON type name for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A field's value, treating `null` as absent.
pub fn field<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

/// A required string of `min..=max` characters (after trimming) without control characters.
pub fn required_name(
    body: &Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<String, ApiError> {
    match field(body, name) {
        None => Err(ApiError::bad_request(format!("{name} is required."))),
        Some(v) => check_name(v, name, max),
    }
}

/// Like [`required_name`] for a value already taken out of the body.
pub fn check_name(v: &Value, name: &str, max: usize) -> Result<String, ApiError> {
    let Some(s) = v.as_str() else {
        return Err(ApiError::bad_request(format!(
            "{name} must be a string, not {}.",
            kind(v)
        )));
    };
    let s = s.trim();
    let len = s.chars().count();
    if len == 0 || len > max {
        return Err(ApiError::bad_request(format!(
            "{name} must be 1-{max} characters long (got {len})."
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{name} must not contain control characters."
        )));
    }
    Ok(s.to_string())
}

/// An optional string of at most `max` characters.
pub fn optional_string(
    body: &Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match field(body, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(ApiError::bad_request(format!(
            "{name} must be at most {max} characters long."
        ))),
        Some(v) => Err(ApiError::bad_request(format!(
            "{name} must be a string, not {}.",
            kind(v)
        ))),
    }
}

/// An optional whole number in `min..=max`; whole floats like `8.0` are accepted.
pub fn optional_int(
    body: &Map<String, Value>,
    name: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    match field(body, name) {
        None => Ok(None),
        Some(v) => check_int(v, name, min, max).map(Some),
    }
}

/// Checks a whole number in `min..=max`.
pub fn check_int(v: &Value, name: &str, min: i64, max: i64) -> Result<i64, ApiError> {
    let n = v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
            .map(|f| f as i64)
    });
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(_) | None if v.is_number() => Err(ApiError::bad_request(format!(
            "{name} must be a whole number from {min} to {max}."
        ))),
        _ => Err(ApiError::bad_request(format!(
            "{name} must be a whole number, not {}.",
            kind(v)
        ))),
    }
}

/// Checks that a value is a UUID string (ids in bodies and paths).
pub fn check_uuid(v: &Value, name: &str) -> Result<String, ApiError> {
    match v.as_str() {
        Some(s) if uuid::Uuid::parse_str(s).is_ok() => Ok(s.to_ascii_lowercase()),
        Some(_) => Err(ApiError::bad_request(format!("{name} must be a UUID."))),
        None => Err(ApiError::bad_request(format!(
            "{name} must be a UUID string, not {}.",
            kind(v)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn names() {
        let b = obj(json!({"name": "  ok  ", "bad": 3, "long": "x".repeat(65), "ctl": "a\u{7}"}));
        assert_eq!(required_name(&b, "name", 64).unwrap(), "ok");
        assert!(required_name(&b, "missing", 64)
            .unwrap_err()
            .message
            .contains("required"));
        assert!(required_name(&b, "bad", 64)
            .unwrap_err()
            .message
            .contains("must be a string"));
        assert!(required_name(&b, "long", 64)
            .unwrap_err()
            .message
            .contains("1-64"));
        assert!(required_name(&b, "ctl", 64)
            .unwrap_err()
            .message
            .contains("control"));
    }

    #[test]
    fn ints() {
        let b = obj(json!({"a": 5, "b": 5.0, "c": 5.5, "d": "5", "e": -1, "f": 1e300}));
        assert_eq!(optional_int(&b, "a", 0, 10).unwrap(), Some(5));
        assert_eq!(optional_int(&b, "b", 0, 10).unwrap(), Some(5));
        assert!(optional_int(&b, "c", 0, 10).is_err());
        assert!(optional_int(&b, "d", 0, 10)
            .unwrap_err()
            .message
            .contains("not a string"));
        assert!(optional_int(&b, "e", 0, 10)
            .unwrap_err()
            .message
            .contains("from 0 to 10"));
        assert!(optional_int(&b, "f", 0, 10).is_err());
        assert_eq!(optional_int(&b, "zz", 0, 10).unwrap(), None);
    }
}
