//! `${var.X}` and `${env.X}` in the document's strings, and the `$${...}` escape for a literal
//! `${...}`. Any other `${...}` (a shell's `${HOME}`) is left alone. Var values are taken
//! literally; env values may use vars. The canonical form keeps the references (its digest is of
//! what was written); [`resolve`] gives the document the build and the launch use.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::issue::{index, join, Code, Issue};

/// One reference inside a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    Var(String),
    Env(String),
}

/// What a string is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Ref(Ref),
}

/// Splits `s` into text and references; a malformed reference is an error message.
fn pieces(s: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        text.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$${") {
            text.push_str("${");
            rest = after;
            continue;
        }
        let Some(inner_start) = tail.strip_prefix("${") else {
            text.push('$');
            rest = &tail[1..];
            continue;
        };
        let (ns, kind): (&str, fn(String) -> Ref) = if inner_start.starts_with("var.") {
            ("var.", Ref::Var)
        } else if inner_start.starts_with("env.") {
            ("env.", Ref::Env)
        } else {
            // Not ours: `${HOME}` and friends belong to the shell.
            text.push_str("${");
            rest = inner_start;
            continue;
        };
        let Some(end) = inner_start.find('}') else {
            return Err(format!("${{{ns}... is not closed with }}"));
        };
        let name = &inner_start[ns.len()..end];
        if !is_name(name) {
            return Err(format!(
                "${{{ns}{name}}} is not a reference: names are letters, digits and _ (write $${{...}} for a literal ${{...}})"
            ));
        }
        if !text.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut text)));
        }
        out.push(Piece::Ref(kind(name.to_string())));
        rest = &inner_start[end + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

fn is_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The references in `s` (for checks that do not expand).
pub fn references(s: &str) -> Result<Vec<Ref>, String> {
    Ok(pieces(s)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(r) => Some(r),
            Piece::Text(_) => None,
        })
        .collect())
}

/// What `${env.X}` may become: a literal (with its vars expanded) or a secret known at launch.
enum EnvSlot {
    Literal(String),
    Secret(String),
}

/// The document with every reference expanded and every escape unescaped, and the problems:
/// unknown names, malformed references, a secret-backed env value used inside a string.
pub fn resolve(doc: &Value) -> (Value, Vec<Issue>) {
    let mut issues = Vec::new();
    let vars: BTreeMap<String, String> = doc
        .get("vars")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let mut env: BTreeMap<String, EnvSlot> = BTreeMap::new();
    let mut resolved_env = Map::new();
    if let Some(m) = doc.get("env").and_then(Value::as_object) {
        for (k, v) in m {
            resolved_env.insert(k.clone(), v.clone());
            match v {
                Value::String(s) => {
                    let expanded = expand(s, &join("env", k), &vars, None, &mut issues);
                    resolved_env.insert(k.clone(), Value::String(expanded.clone()));
                    env.insert(k.clone(), EnvSlot::Literal(expanded));
                }
                Value::Object(o) => {
                    if let Some(Value::String(secret)) = o.get("secret") {
                        env.insert(k.clone(), EnvSlot::Secret(secret.clone()));
                    }
                }
                _ => {}
            }
        }
    }
    let Value::Object(top) = doc else {
        return (doc.clone(), issues);
    };
    let mut out = Map::new();
    for (k, v) in top {
        let resolved = match k.as_str() {
            // Var values are literal text.
            "vars" => v.clone(),
            "env" if v.is_object() => Value::Object(resolved_env.clone()),
            _ => walk(v, k, &vars, Some(&env), &mut issues),
        };
        out.insert(k.clone(), resolved);
    }
    (Value::Object(out), issues)
}

fn walk(
    v: &Value,
    path: &str,
    vars: &BTreeMap<String, String>,
    env: Option<&BTreeMap<String, EnvSlot>>,
    issues: &mut Vec<Issue>,
) -> Value {
    match v {
        Value::String(s) => Value::String(expand(s, path, vars, env, issues)),
        Value::Array(a) => Value::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| walk(x, &index(path, i), vars, env, issues))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), walk(x, &join(path, k), vars, env, issues)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `env: None` means env references are not allowed here (inside `env` itself).
fn expand(
    s: &str,
    path: &str,
    vars: &BTreeMap<String, String>,
    env: Option<&BTreeMap<String, EnvSlot>>,
    issues: &mut Vec<Issue>,
) -> String {
    let parts = match pieces(s) {
        Ok(p) => p,
        Err(msg) => {
            issues.push(Issue::new(path, Code::InvalidFormat, msg));
            return s.to_string();
        }
    };
    let mut out = String::new();
    for p in parts {
        match p {
            Piece::Text(t) => out.push_str(&t),
            Piece::Ref(Ref::Var(name)) => match vars.get(&name) {
                Some(v) => out.push_str(v),
                None => {
                    let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                    issues.push(
                        Issue::new(
                            path,
                            Code::UnknownRef,
                            format!("${{var.{name}}} names no entry of vars: add {name} to vars or fix the name"),
                        )
                        .hint(if known.is_empty() {
                            "this document has no vars".to_string()
                        } else {
                            format!("vars: {}", known.join(", "))
                        }),
                    );
                }
            },
            Piece::Ref(Ref::Env(name)) => match env.map(|e| e.get(&name)) {
                None => issues.push(Issue::new(
                    path,
                    Code::UnknownRef,
                    format!("${{env.{name}}} inside env: env values may use ${{var.X}} only"),
                )),
                Some(None) => issues.push(Issue::new(
                    path,
                    Code::UnknownRef,
                    format!("${{env.{name}}} names no entry of env: add {name} to env or fix the name"),
                )),
                Some(Some(EnvSlot::Literal(v))) => out.push_str(v),
                Some(Some(EnvSlot::Secret(secret))) => issues.push(
                    Issue::new(
                        path,
                        Code::SecretInBuild,
                        format!(
                            "${{env.{name}}} is secret {secret}, known only when a computer is created: \
                             read ${name} at run time instead (services get it in their environment, \
                             /root/.env holds it)"
                        ),
                    )
                    .hint("secrets are never written into the template, a build or a snapshot"),
                ),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vars_env_escapes_and_shell_references() {
        let doc = json!({
            "vars": {"port": "8000", "greeting": "hi ${var.port}"},
            "env": {"PORT": "${var.port}", "KEY": {"secret": "api_key"}},
            "build": {"run": [
                "echo ${var.port} ${env.PORT}",
                "echo $${var.port} $$ ${HOME} $HOME",
                "echo ${var.greeting}",
            ]},
        });
        let (out, issues) = resolve(&doc);
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(out["env"]["PORT"], "8000");
        assert_eq!(out["build"]["run"][0], "echo 8000 8000");
        assert_eq!(out["build"]["run"][1], "echo ${var.port} $$ ${HOME} $HOME");
        // Var values are literal: no second round of expansion.
        assert_eq!(out["build"]["run"][2], "echo hi ${var.port}");
        assert_eq!(out["vars"], doc["vars"]);
    }

    #[test]
    fn unknown_malformed_and_secret_references_are_reported_with_their_field() {
        let doc = json!({
            "vars": {"a": "1"},
            "env": {"X": "${env.Y}", "S": {"secret": "tok"}},
            "files": [{"to": "/opt/${var.b}", "inline": "${env.S}"}],
            "hooks": {"on_resume": "${var.not closed", "on_first_boot": "${env.NOPE}"},
        });
        let (_, issues) = resolve(&doc);
        let got: Vec<(&str, Code)> = issues.iter().map(|i| (i.field.as_str(), i.code)).collect();
        assert_eq!(
            got,
            [
                ("env.X", Code::UnknownRef),
                ("files[0].inline", Code::SecretInBuild),
                ("files[0].to", Code::UnknownRef),
                ("hooks.on_first_boot", Code::UnknownRef),
                ("hooks.on_resume", Code::InvalidFormat),
            ]
        );
        assert!(
            issues[2].message.contains("add b to vars"),
            "{}",
            issues[2].message
        );
        assert!(issues[1].message.contains("$S"), "{}", issues[1].message);
    }

    #[test]
    fn references_lists_names() {
        assert_eq!(
            references("a ${var.x} $${var.y} ${env.Z}").unwrap(),
            [Ref::Var("x".into()), Ref::Env("Z".into())]
        );
        assert!(references("${var.}").is_err());
        assert!(references("${var.a-b}").is_err());
    }
}
