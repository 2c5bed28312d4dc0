//! One validation finding: the field it is about (dotted path, `files[0].to`), a stable code, a
//! message that says what to do, and sometimes a hint. `POST /api/templates/validate` answers
//! with all of them at once.

use serde::Serialize;

/// Stable machine-readable codes of validation findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// A field that must be there is missing.
    Required,
    /// A value is not one of the allowed ones.
    InvalidEnum,
    /// A value has the wrong JSON type (a string where a number goes...).
    InvalidType,
    /// A string does not have the required shape (semver, kebab case, a path, a URL...).
    InvalidFormat,
    /// A number or a length is outside its bounds.
    OutOfRange,
    /// A key the document format does not have.
    UnknownField,
    /// `${var.X}`, `${env.X}`, a secret or a service that the document does not declare.
    UnknownRef,
    /// A file path deskd or the guest's system owns.
    ReservedPath,
    /// Two entries of one list with the same name.
    Duplicate,
    /// Two fields that cannot both be given (or a short form contradicting the long one).
    Conflict,
    /// A secret used where its value would end up in a build or a snapshot.
    SecretInBuild,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Required => "required",
            Code::InvalidEnum => "invalid_enum",
            Code::InvalidType => "invalid_type",
            Code::InvalidFormat => "invalid_format",
            Code::OutOfRange => "out_of_range",
            Code::UnknownField => "unknown_field",
            Code::UnknownRef => "unknown_ref",
            Code::ReservedPath => "reserved_path",
            Code::Duplicate => "duplicate",
            Code::Conflict => "conflict",
            Code::SecretInBuild => "secret_in_build",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub field: String,
    pub code: Code,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Issue {
    pub fn new(field: impl Into<String>, code: Code, message: impl Into<String>) -> Issue {
        Issue {
            field: field.into(),
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Issue {
        self.hint = Some(hint.into());
        self
    }
}

/// Joins a parent path and a key (`hardware` + `cpu` = `hardware.cpu`).
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A list element's path (`files` + 0 = `files[0]`).
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}
