//! The JSON Schema (draft 2020-12) of the canonical document, generated from the types in
//! `document.rs`, and the structural half of validation: the same schema compiled with the
//! `jsonschema` crate, its errors turned into [`Issue`]s with dotted field paths. What
//! `GET /api/template-schema` serves is exactly what the validator enforces.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::ValidationError;
use serde_json::Value;

use super::document::Document;
use super::issue::{Code, Issue};
use super::parse::kind;

/// `$id` of the served schema (a relative reference: the document lives at this path).
pub const SCHEMA_PATH: &str = "/api/template-schema";

/// The schema, generated once.
pub fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
        let mut v = generator.into_root_schema_for::<Document>().to_value();
        if let Value::Object(m) = &mut v {
            m.insert("$id".into(), Value::String(SCHEMA_PATH.into()));
        }
        v
    })
}

fn validator() -> Option<&'static jsonschema::Validator> {
    static VALIDATOR: OnceLock<Option<jsonschema::Validator>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| match jsonschema::draft202012::new(schema()) {
            Ok(v) => Some(v),
            Err(e) => {
                // A schema that does not compile is a bug caught by this module's tests.
                tracing::error!("the template schema does not compile: {e}");
                None
            }
        })
        .as_ref()
}

/// Every structural problem of `doc` (a canonical document).
pub fn check(doc: &Value) -> Vec<Issue> {
    let Some(v) = validator() else {
        return vec![Issue::new(
            "",
            Code::InvalidType,
            "deskd cannot check templates: its schema did not compile (see the daemon's log)",
        )];
    };
    let mut out = Vec::new();
    for e in v.iter_errors(doc) {
        issues_of(&e, &mut out);
    }
    // A value of the wrong type also fails its enum or pattern; the type is the one to fix.
    let wrong_type: std::collections::HashSet<String> = out
        .iter()
        .filter(|i| i.code == Code::InvalidType)
        .map(|i| i.field.clone())
        .collect();
    out.retain(|i| i.code == Code::InvalidType || !wrong_type.contains(&i.field));
    out
}

/// `/files/0/to` → `files[0].to`.
pub fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

fn field_name(path: &str) -> &str {
    if path.is_empty() {
        "the document"
    } else {
        path
    }
}

/// The schema object a keyword sits in, from the error's schema path (`/$defs/Hardware/...`).
fn schema_at(schema_path: &str) -> Option<&'static Value> {
    let parent = schema_path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
    schema().pointer(parent)
}

fn issues_of(e: &ValidationError<'_>, out: &mut Vec<Issue>) {
    let path = dotted(e.instance_path().as_str());
    let name = field_name(&path).to_string();
    let instance = e.instance();
    let issue = match e.kind() {
        ValidationErrorKind::Required { property } => {
            let p = property.as_str().unwrap_or_default();
            let field = super::issue::join(&path, p);
            Issue::new(
                field.clone(),
                Code::Required,
                format!("{field} is required: add it"),
            )
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed: Vec<String> = schema_at(e.schema_path().as_str())
                .and_then(|s| s.get("properties"))
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            for key in unexpected {
                let field = super::issue::join(&path, key);
                let mut issue = Issue::new(
                    field.clone(),
                    Code::UnknownField,
                    format!(
                        "{field} is not a field of {}: remove it or fix its name",
                        field_name(&path)
                    ),
                );
                if !allowed.is_empty() {
                    issue = issue.hint(format!("allowed: {}", allowed.join(", ")));
                }
                out.push(issue);
            }
            return;
        }
        ValidationErrorKind::Enum { options } => Issue::new(
            path.clone(),
            Code::InvalidEnum,
            format!("{name} must be one of {}, not {instance}", list(options)),
        ),
        ValidationErrorKind::Constant { expected_value } => Issue::new(
            path.clone(),
            Code::InvalidEnum,
            format!("{name} must be {expected_value}, not {instance}"),
        ),
        ValidationErrorKind::Type { kind: expected } => Issue::new(
            path.clone(),
            Code::InvalidType,
            format!(
                "{name} must be {}, not {}",
                type_names(expected),
                kind(instance)
            ),
        )
        .hint(if instance.is_number() {
            "quote values such as versions (\"1.0\") to make them strings".to_string()
        } else if instance.is_boolean() {
            "YAML reads bare yes/no/y/n/on/off as true/false: quote them (\"y\") to make them strings".to_string()
        } else {
            format!("see {SCHEMA_PATH} for the shape of {name}")
        }),
        ValidationErrorKind::Pattern { pattern } => Issue::new(
            path.clone(),
            Code::InvalidFormat,
            format_message(&path, instance, pattern),
        ),
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit } => Issue::new(
            path.clone(),
            Code::OutOfRange,
            format!("{name} must be at least {limit}, not {instance}"),
        ),
        ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => Issue::new(
            path.clone(),
            Code::OutOfRange,
            format!("{name} must be at most {limit}, not {instance}"),
        ),
        ValidationErrorKind::MinLength { limit } => Issue::new(
            path.clone(),
            Code::OutOfRange,
            format!("{name} must be at least {limit} characters long"),
        ),
        ValidationErrorKind::MaxLength { limit } => Issue::new(
            path.clone(),
            Code::OutOfRange,
            format!("{name} must be at most {limit} characters long"),
        ),
        ValidationErrorKind::MinItems { limit } => Issue::new(
            path.clone(),
            Code::OutOfRange,
            format!("{name} must have at least {limit} entries"),
        ),
        ValidationErrorKind::MaxItems { limit } => Issue::new(
            path.clone(),
            Code::OutOfRange,
            format!("{name} may have at most {limit} entries: split or combine them"),
        ),
        ValidationErrorKind::PropertyNames { error } => {
            let key = error.instance();
            let key = key.as_str().unwrap_or_default();
            let field = super::issue::join(&path, key);
            let rule = if path == "env" {
                "env names are UPPER_SNAKE_CASE (FOO_BAR)"
            } else {
                "names are letters, digits and _, not starting with a digit"
            };
            Issue::new(
                field,
                Code::InvalidFormat,
                format!("{key:?} is not a valid name in {name}: {rule}"),
            )
        }
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            one_of(e, &path, context, out);
            return;
        }
        other => Issue::new(
            path.clone(),
            Code::InvalidFormat,
            format!(
                "{name} is not valid ({}): see {SCHEMA_PATH}",
                other.keyword()
            ),
        ),
    };
    out.push(issue);
}

/// A value that fits none of its forms. For a `type`-tagged form (trigger sources, actions)
/// whose tag is known, the errors of that form; for an unknown tag, the tags there are; else one
/// finding naming the forms.
fn one_of(
    e: &ValidationError<'_>,
    path: &str,
    context: &[Vec<ValidationError<'static>>],
    out: &mut Vec<Issue>,
) {
    let instance = e.instance();
    let here = e.instance_path().as_str();
    // Forms whose only complaint is the value's type at this very place (the `null` of an
    // optional field, the string form of "string or {secret}") are not what was meant: when
    // one form is left, its findings are the precise ones.
    let wrong_type_only = |errs: &Vec<ValidationError<'static>>| {
        errs.iter().all(|x| {
            x.instance_path().as_str() == here
                && matches!(x.kind(), ValidationErrorKind::Type { .. })
        })
    };
    let candidates: Vec<&Vec<ValidationError<'static>>> =
        context.iter().filter(|b| !wrong_type_only(b)).collect();
    if let [only] = candidates.as_slice() {
        for x in only.iter() {
            issues_of(x, out);
        }
        return;
    }
    let tag_path = format!("{here}/type");
    if instance.get("type").is_some() {
        let matching: Vec<&Vec<ValidationError<'static>>> = context
            .iter()
            .filter(|errs| !errs.iter().any(|x| x.instance_path().as_str() == tag_path))
            .collect();
        if let [only] = matching.as_slice() {
            for x in only.iter() {
                issues_of(x, out);
            }
            return;
        }
        let tags: Vec<String> = context
            .iter()
            .flatten()
            .filter(|x| x.instance_path().as_str() == tag_path)
            .filter_map(|x| match x.kind() {
                ValidationErrorKind::Constant { expected_value } => {
                    Some(expected_value.to_string())
                }
                _ => None,
            })
            .collect();
        if !tags.is_empty() {
            let field = super::issue::join(path, "type");
            out.push(Issue::new(
                field.clone(),
                Code::InvalidEnum,
                format!(
                    "{field} must be one of {}, not {}",
                    tags.join(", "),
                    instance["type"]
                ),
            ));
            return;
        }
    }
    let def = e
        .schema_path()
        .as_str()
        .split('/')
        .skip_while(|s| *s != "$defs")
        .nth(1)
        .unwrap_or("")
        .to_string();
    let forms = match def.as_str() {
        "EnvValue" => "a string or {secret: NAME}".to_string(),
        "Duration" => "a number of seconds or text such as 10s, 2m, 500ms".to_string(),
        "Hook" => "shell text or {run, timeout}".to_string(),
        "LogSetting" => "a log file path or false".to_string(),
        "" => format!("one of the forms in {SCHEMA_PATH}"),
        d => format!("one of the forms of $defs.{d} in {SCHEMA_PATH}"),
    };
    out.push(Issue::new(
        path,
        Code::InvalidType,
        format!(
            "{} must be {forms}, not {}",
            field_name(path),
            compact(instance)
        ),
    ));
}

fn format_message(path: &str, instance: &Value, pattern: &str) -> String {
    let name = field_name(path);
    let what = if path == "template.name" || path.ends_with(".name") {
        "lowercase kebab case (letters, digits and -, e.g. my-app)"
    } else if path.ends_with("resolution") {
        "WIDTHxHEIGHTxDEPTH with depth 16 or 24, e.g. 1280x800x24"
    } else if path.ends_with(".mode") {
        "octal permissions as a string, e.g. \"0644\""
    } else if path.ends_with("on_fail") {
        "restart_service:NAME, restart_vm, alert or none"
    } else if path.ends_with("url") || path == "wallpaper" || path.ends_with("otel_endpoint") {
        "a URL with the scheme shown in the pattern"
    } else {
        ""
    };
    if what.is_empty() {
        format!("{name} is {}: it must match {pattern}", compact(instance))
    } else {
        format!("{name} is {}: it must be {what}", compact(instance))
    }
}

fn compact(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

fn list(options: &Value) -> String {
    match options {
        Value::Array(a) => a
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn type_names(k: &TypeKind) -> String {
    let name = |t: String| match t.as_str() {
        "object" => "a mapping".to_string(),
        "array" => "a list".to_string(),
        "string" => "a string".to_string(),
        "integer" => "a whole number".to_string(),
        "number" => "a number".to_string(),
        "boolean" => "true or false".to_string(),
        other => other.to_string(),
    };
    match k {
        TypeKind::Single(t) => name(t.to_string()),
        TypeKind::Multiple(set) => set
            .iter()
            .map(|t| t.to_string())
            .filter(|t| t != "null")
            .map(name)
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn codes(doc: Value) -> Vec<(String, Code)> {
        check(&doc).into_iter().map(|i| (i.field, i.code)).collect()
    }

    const MIN: &str = r#"{"api_version":"orgo.ai/v1","template":{"name":"a","version":"1.0.0"}}"#;

    fn min() -> Value {
        serde_json::from_str(MIN).unwrap()
    }

    #[test]
    fn the_schema_is_draft_2020_12_with_defs_per_section() {
        let s = schema();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(s["required"], json!(["api_version", "template"]));
        for def in [
            "TemplateMeta",
            "Hardware",
            "Build",
            "FileEntry",
            "App",
            "Trigger",
            "Hooks",
            "EgressPolicy",
            "Stream",
        ] {
            assert!(s["$defs"].get(def).is_some(), "no $defs.{def}");
        }
        jsonschema::meta::validate(s).expect("a valid 2020-12 schema");
        assert!(validator().is_some());
    }

    #[test]
    fn structural_mistakes_get_their_code_and_field() {
        assert!(check(&min()).is_empty());
        assert_eq!(
            codes(json!({"template": {"name": "a"}})),
            [
                ("api_version".to_string(), Code::Required),
                ("template.version".to_string(), Code::Required),
            ]
        );
        let mut d = min();
        d["hardware"] = json!({"cpu": 3, "gpu": "v100", "ram_gb": "lots", "auto_stop_minutes": 5000, "colour": 1});
        d["api_version"] = json!("orgo.ai/v2");
        let mut got = codes(d);
        got.sort();
        assert_eq!(
            got,
            [
                ("api_version".to_string(), Code::InvalidEnum),
                ("hardware.auto_stop_minutes".to_string(), Code::OutOfRange),
                ("hardware.colour".to_string(), Code::UnknownField),
                ("hardware.cpu".to_string(), Code::InvalidEnum),
                ("hardware.gpu".to_string(), Code::InvalidEnum),
                ("hardware.ram_gb".to_string(), Code::InvalidType),
            ]
        );
    }

    #[test]
    fn tagged_forms_report_the_inner_mistake() {
        let mut d = min();
        d["triggers"] = json!([
            {"name": "t", "source": {"type": "cron"}, "actions": [{"type": "log", "message": "x"}]},
            {"name": "u", "source": {"type": "sometimes"}, "actions": [{"type": "command", "run": "x", "bogus": 1}]},
        ]);
        d["env"] = json!({"A": 1, "lower": "x"});
        let mut got = codes(d);
        got.sort();
        assert_eq!(
            got,
            [
                ("env.A".to_string(), Code::InvalidType),
                ("env.lower".to_string(), Code::InvalidFormat),
                ("triggers[0].source.schedule".to_string(), Code::Required),
                (
                    "triggers[1].actions[0].bogus".to_string(),
                    Code::UnknownField
                ),
                ("triggers[1].source.type".to_string(), Code::InvalidEnum),
            ]
        );
    }

    #[test]
    fn dotted_paths() {
        assert_eq!(dotted(""), "");
        assert_eq!(dotted("/files/0/to"), "files[0].to");
        assert_eq!(dotted("/env/A~1B"), "env.A/B");
    }
}
