//! The error model of section 0: every non-2xx answer is `{"error": ..., "request_id": ...}`.
//! Handlers return [`ApiError`]; it travels as a response extension and the outermost middleware
//! ([`super::middleware::finish`]) renders the body once the request id is known.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::computers::LifecycleError;
use crate::store::StoreError;

/// A failed request: status, message and any extra fields of the error body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub extra: Map<String, Value>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            extra: Map::new(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// Adds a field to the error body.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// The JSON body for this error.
    pub fn body(&self, request_id: &str) -> Value {
        let mut body = Map::new();
        body.insert("error".into(), Value::String(self.message.clone()));
        body.insert("request_id".into(), Value::String(request_id.to_string()));
        for (k, v) in &self.extra {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some(secs) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert("retry-after", v);
            }
        }
        response.extensions_mut().insert(self);
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { what } => {
                ApiError::not_found(format!("{} not found", capitalise(what)))
            }
            StoreError::NameTaken(m) => ApiError::conflict(m),
            StoreError::QuotaExceeded(m) => ApiError::forbidden(m).with("code", "quota_exceeded"),
            e if e.is_disk_full() => {
                tracing::error!("store error: {e}");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "The daemon's disk is full: its database cannot take this change, and nothing \
                     was changed. Free space on the data directory's filesystem, then retry.",
                )
                .with("code", "disk_full")
            }
            other => {
                tracing::error!("store error: {other}");
                ApiError::internal("The daemon could not read or write its state; see its log.")
            }
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> ApiError {
        match e {
            LifecycleError::Conflict(m) => ApiError::conflict(m),
            LifecycleError::NotFound => ApiError::not_found("Computer not found"),
            // The host cannot run this computer now: a service condition, not a client mistake.
            e @ LifecycleError::CannotStart(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                    .with("code", "cannot_start")
            }
            LifecycleError::Host(m) => {
                tracing::error!("host operation failed: {m}");
                ApiError::internal(m)
            }
            LifecycleError::Store(e) => e.into(),
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// The message for an error status that reached the client without an [`ApiError`] (the
/// router's own 404/405, a body-limit 413...).
pub fn default_message(status: StatusCode) -> String {
    match status {
        StatusCode::NOT_FOUND => "Not found: no such API route.".into(),
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed on this route.".into(),
        StatusCode::PAYLOAD_TOO_LARGE => "Request body too large.".into(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "Content-Type must be application/json.".into(),
        other => other
            .canonical_reason()
            .unwrap_or("Request failed")
            .to_string(),
    }
}
