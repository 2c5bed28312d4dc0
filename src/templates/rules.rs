//! The checks a schema cannot express, on the resolved document (references expanded): semver,
//! file paths (absolute or `~/`, no `..`, nothing reserved), `from` XOR `inline` and its
//! schemes, references to declared secrets and services, unique names, the health check's
//! field for its type, egress rules. Each section is read on its own, so a shape mistake in one
//! section does not hide the findings in another.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::document::{
    Action, App, EgressPolicy, EnvValue, FileEntry, HealthKind, Secret, Stream, TemplateMeta,
    Terminal, Trigger, TriggerSource,
};
use super::issue::{index, join, Code, Issue};
use deskd_agent::protocol::stream;

/// Paths a template may not write: the guest's virtual filesystems and volatile directories,
/// and deskd's own files in the guest (its agent, helpers and units, the secrets file written at
/// launch).
pub const RESERVED_PATHS: &[&str] = &[
    "/proc",
    "/sys",
    "/boot",
    "/dev",
    "/tmp",
    "/run",
    "/usr/local/bin/deskd-agent",
    "/usr/local/lib/deskd",
    "/etc/deskd",
    "/var/lib/deskd",
    "/var/cache/deskd",
    "/etc/systemd/system/deskd-",
    "/root/.env",
];

/// URL schemes `files[].from` takes.
pub const FROM_SCHEMES: &[&str] = &[
    "file://",
    "http://",
    "https://",
    "git://",
    "git+https://",
    "git+ssh://",
    "secret://",
];

fn section<T: DeserializeOwned>(doc: &Value, key: &str) -> Option<T> {
    doc.get(key)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// Every semantic finding of a resolved document.
pub fn check(doc: &Value) -> Vec<Issue> {
    let mut out = Vec::new();
    if let Some(meta) = section::<TemplateMeta>(doc, "template") {
        if let Err(e) = semver::Version::parse(&meta.version) {
            out.push(
                Issue::new(
                    "template.version",
                    Code::InvalidFormat,
                    format!("template.version {:?} is not a semantic version ({e}): write MAJOR.MINOR.PATCH, e.g. 1.0.0", meta.version),
                )
                .hint("pre-releases and build metadata are allowed: 1.2.0-rc.1, 1.2.0+build.5"),
            );
        }
    }
    let secrets: Vec<Secret> = section(doc, "secrets").unwrap_or_default();
    unique(secrets.iter().map(|s| s.name.as_str()), "secrets", &mut out);
    let declared: BTreeSet<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    let secret_ref = |name: &str, field: String, out: &mut Vec<Issue>| {
        if !declared.contains(name) {
            out.push(
                Issue::new(
                    field,
                    Code::UnknownRef,
                    format!("secret {name:?} is not declared: add {{name: {name}}} to secrets"),
                )
                .hint(known(&declared)),
            );
        }
    };
    if let Some(env) = doc.get("env").and_then(Value::as_object) {
        for (k, v) in env {
            if let Ok(EnvValue::Secret(s)) = serde_json::from_value::<EnvValue>(v.clone()) {
                secret_ref(&s.secret, join(&join("env", k), "secret"), &mut out);
            }
        }
    }
    if let Some(files) = doc.get("files").and_then(Value::as_array) {
        for (i, f) in files.iter().enumerate() {
            let Ok(f) = serde_json::from_value::<FileEntry>(f.clone()) else {
                continue;
            };
            let at = index("files", i);
            if let Err(issue) = check_path(&f.to, &join(&at, "to")) {
                out.push(issue);
            }
            match (&f.from, &f.inline) {
                (None, None) => out.push(Issue::new(join(&at, "inline"), Code::Required, format!("{at} needs its content: give inline text or a from source"))),
                (Some(_), Some(_)) => out.push(Issue::new(join(&at, "from"), Code::Conflict, format!("{at} has both from and inline: keep one"))),
                (Some(from), None) => match from.strip_prefix("secret://") {
                    Some(name) => secret_ref(name, join(&at, "from"), &mut out),
                    None if !FROM_SCHEMES.iter().any(|s| from.starts_with(s)) => out.push(
                        Issue::new(join(&at, "from"), Code::InvalidFormat, format!("{at}.from {from:?} has no known scheme: use file://, http(s)://, git:// or secret://NAME")),
                    ),
                    None => {}
                },
                (None, Some(_)) => {}
            }
        }
        let paths: Vec<&str> = files
            .iter()
            .filter_map(|f| f.get("to").and_then(Value::as_str))
            .collect();
        unique_with(paths.into_iter(), "files", "to", Code::Duplicate, &mut out);
    }
    let apps: Vec<App> = section(doc, "apps").unwrap_or_default();
    unique(apps.iter().map(|a| a.name.as_str()), "apps", &mut out);
    let mut all_services = BTreeSet::new();
    for (i, app) in apps.iter().enumerate() {
        let at = index("apps", i);
        let services = app.services.as_deref().unwrap_or_default();
        unique(
            services.iter().map(|s| s.name.as_str()),
            &join(&at, "services"),
            &mut out,
        );
        for (j, s) in services.iter().enumerate() {
            all_services.insert(s.name.clone());
            for (k, v) in s.env.iter().flatten() {
                if let EnvValue::Secret(r) = v {
                    secret_ref(
                        &r.secret,
                        join(&join(&index(&join(&at, "services"), j), "env"), k),
                        &mut out,
                    );
                }
            }
        }
        if let Some(h) = &app.health {
            let hp = join(&at, "health");
            let (needed, given) = match h.kind {
                HealthKind::Http => ("url", h.url.is_some()),
                HealthKind::Tcp => ("port", h.port.is_some()),
                HealthKind::Command => ("command", h.command.is_some()),
                HealthKind::Process => ("process", h.process.is_some()),
            };
            if !given {
                out.push(Issue::new(
                    join(&hp, needed),
                    Code::Required,
                    format!(
                        "a health check of type {} needs {needed}: add {hp}.{needed}",
                        json!(h.kind).as_str().unwrap_or_default()
                    ),
                ));
            }
            if let Some(target) = h
                .on_fail
                .as_deref()
                .and_then(|o| o.strip_prefix("restart_service:"))
            {
                if !services.iter().any(|s| s.name == target) {
                    out.push(Issue::new(join(&hp, "on_fail"), Code::UnknownRef, format!("restart_service:{target} names no service of app {}: use one of its services' names", app.name)));
                }
            }
        }
    }
    let triggers: Vec<Trigger> = section(doc, "triggers").unwrap_or_default();
    unique(
        triggers.iter().map(|t| t.name.as_str()),
        "triggers",
        &mut out,
    );
    for (i, t) in triggers.iter().enumerate() {
        let at = index("triggers", i);
        if let TriggerSource::Log { service, .. } = &t.source {
            if !all_services.contains(service) {
                out.push(Issue::new(join(&join(&at, "source"), "service"), Code::UnknownRef, format!("service {service:?} is not a service of any app: name one declared under apps[].services")));
            }
        }
        if let TriggerSource::Cron { schedule } = &t.source {
            if schedule.split_whitespace().count() != 5 {
                out.push(Issue::new(join(&join(&at, "source"), "schedule"), Code::InvalidFormat, format!("{schedule:?} is not a five-field cron expression (minute hour day month weekday), e.g. \"*/5 * * * *\"")));
            }
        }
        for (j, a) in t.actions.iter().enumerate() {
            if let Action::Service { target, .. } = a {
                if !all_services.contains(target) {
                    out.push(Issue::new(join(&index(&join(&at, "actions"), j), "target"), Code::UnknownRef, format!("service {target:?} is not a service of any app: name one declared under apps[].services")));
                }
            }
        }
    }
    let terminals: Vec<Terminal> = section(doc, "terminal").unwrap_or_default();
    unique(
        terminals.iter().map(|t| t.name.as_str()),
        "terminal",
        &mut out,
    );
    let streams: Vec<Stream> = section(doc, "streaming").unwrap_or_default();
    unique(
        streams.iter().map(|s| s.name.as_str()),
        "streaming",
        &mut out,
    );
    let mut autostart: Option<usize> = None;
    for (i, s) in streams.iter().enumerate() {
        let at = index("streaming", i);
        match &s.key {
            Some(EnvValue::Secret(r)) => secret_ref(&r.secret, join(&at, "key"), &mut out),
            // The agent's rules, so a launch never meets a key it refuses; the message never
            // quotes the key.
            Some(EnvValue::Literal(k)) => {
                if let Err(why) = stream::check_key(k) {
                    out.push(
                        Issue::new(
                            join(&at, "key"),
                            Code::InvalidFormat,
                            format!("{}: {why}", join(&at, "key")),
                        )
                        .hint("a key that must stay out of the document: key: {secret: NAME}"),
                    );
                }
            }
            None if s.autostart == Some(true) => out.push(
                Issue::new(
                    join(&at, "key"),
                    Code::Required,
                    format!(
                        "{} is required when autostart is true: the stream is pushed to url/key",
                        join(&at, "key")
                    ),
                )
                .hint("key: {secret: NAME} keeps it out of the document"),
            ),
            None => {}
        }
        // The schema checks the scheme; the rest of the agent's URL rules here (one message).
        if s.url.starts_with("rtmp://") || s.url.starts_with("rtmps://") {
            if let Err(why) = stream::check_url(&s.url) {
                out.push(Issue::new(
                    join(&at, "url"),
                    Code::InvalidFormat,
                    format!("{}: {why}", join(&at, "url")),
                ));
            }
        }
        if s.autostart == Some(true) {
            match autostart {
                None => autostart = Some(i),
                Some(first) => out.push(Issue::new(join(&at, "autostart"), Code::Conflict, format!("{}: only one stream may autostart (a computer streams one at a time), and {} already does; keep autostart: true on one entry only", join(&at, "autostart"), index("streaming", first)))),
            }
        }
    }
    if let Some(policy) = section::<EgressPolicy>(doc, "egress_policy") {
        out.extend(check_egress(&policy));
    }
    out
}

fn known(declared: &BTreeSet<&str>) -> String {
    if declared.is_empty() {
        "this document declares no secrets".into()
    } else {
        format!(
            "declared: {}",
            declared.iter().copied().collect::<Vec<_>>().join(", ")
        )
    }
}

fn unique<'a>(names: impl Iterator<Item = &'a str>, list: &str, out: &mut Vec<Issue>) {
    unique_with(names, list, "name", Code::Duplicate, out);
}

fn unique_with<'a>(
    names: impl Iterator<Item = &'a str>,
    list: &str,
    key: &str,
    code: Code,
    out: &mut Vec<Issue>,
) {
    let mut seen = BTreeSet::new();
    for (i, n) in names.enumerate() {
        if !seen.insert(n) {
            let field = join(&index(list, i), key);
            out.push(Issue::new(
                field,
                code,
                format!("{list} has {key} {n:?} twice: give each entry its own {key}"),
            ));
        }
    }
}

/// A destination path: absolute or `~/...`, no `..`, nothing reserved.
pub fn check_path(to: &str, field: &str) -> Result<(), Issue> {
    let absolute = if let Some(rest) = to.strip_prefix("~/") {
        format!("/home/user/{rest}")
    } else if to.starts_with('/') {
        to.to_string()
    } else {
        return Err(Issue::new(
            field,
            Code::InvalidFormat,
            format!("{to:?} is not absolute: start it with / or ~/"),
        ));
    };
    if absolute.split('/').any(|c| c == "..") {
        return Err(Issue::new(
            field,
            Code::InvalidFormat,
            format!("{to:?} contains ..: write the path without parent steps"),
        ));
    }
    if absolute.contains('\0') || absolute.ends_with('/') {
        return Err(Issue::new(
            field,
            Code::InvalidFormat,
            format!("{to:?} must name a file (no trailing /, no NUL)"),
        ));
    }
    // Compare on the normalised form so `//proc/x` and `/./proc` are caught as well.
    let normal: String = absolute
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .fold(String::new(), |acc, c| acc + "/" + c);
    for r in RESERVED_PATHS {
        let hit = if r.ends_with('-') {
            normal.starts_with(r)
        } else {
            normal == *r || normal.starts_with(&format!("{r}/"))
        };
        if hit {
            return Err(Issue::new(field, Code::ReservedPath, format!("{to:?} is under {r}, which templates may not write: choose another path (e.g. under /opt or ~/)"))
                .hint(format!("reserved: {}", RESERVED_PATHS.join(", "))));
        }
    }
    if normal.is_empty() {
        return Err(Issue::new(
            field,
            Code::InvalidFormat,
            "the path is empty: name a file",
        ));
    }
    Ok(())
}

/// The template's egress rules, checked by the network module's own grammar (one home for it).
fn check_egress(policy: &EgressPolicy) -> Vec<Issue> {
    let rules: Vec<Value> = policy
        .rules
        .iter()
        .flatten()
        .map(|r| rule_json(r))
        .collect();
    let mode = json!(policy.mode);
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let one = json!({"mode": mode, "rules": [r]});
        if let Err(e) = crate::network::EgressPolicy::from_json(&one) {
            let msg = e.0.trim_start_matches("rules[0]: ").to_string();
            out.push(Issue::new(
                index("egress_policy.rules", i),
                Code::InvalidFormat,
                format!("{msg}: write a domain, *.domain, an IPv4 address or a CIDR"),
            ));
        }
    }
    out
}

/// A rule string in the network policy's JSON form.
pub fn rule_json(rule: &str) -> Value {
    let r = rule.trim();
    if r.contains('/') {
        json!({"cidr": r})
    } else if r.parse::<std::net::Ipv4Addr>().is_ok() {
        json!({"ip": r})
    } else {
        json!({"domain": r})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(doc: Value) -> Vec<(String, Code)> {
        check(&doc).into_iter().map(|i| (i.field, i.code)).collect()
    }

    #[test]
    fn paths() {
        for ok in [
            "/opt/a.txt",
            "~/notes.md",
            "/etc/nginx/conf.d/site.conf",
            "/runner/x",
            "/procfile",
        ] {
            assert!(check_path(ok, "f").is_ok(), "{ok}");
        }
        let code = |p: &str| check_path(p, "f").unwrap_err().code;
        for reserved in [
            "/proc/x",
            "/sys",
            "/tmp/a",
            "/run/x",
            "//proc/x",
            "/./dev/null",
            "/usr/local/bin/deskd-agent",
            "/usr/local/lib/deskd/session",
            "/etc/systemd/system/deskd-restore.socket",
            "/root/.env",
        ] {
            assert_eq!(code(reserved), Code::ReservedPath, "{reserved}");
        }
        for bad in [
            "relative/x",
            "/opt/../etc/passwd",
            "~/../root/x",
            "/opt/dir/",
            "/",
        ] {
            assert_eq!(code(bad), Code::InvalidFormat, "{bad}");
        }
    }

    #[test]
    fn semantic_mistakes_get_their_code_and_field() {
        let got = codes(json!({
            "template": {"name": "a", "version": "1.0"},
            "secrets": [{"name": "tok"}, {"name": "tok"}],
            "env": {"A": {"secret": "missing"}},
            "files": [
                {"to": "/opt/a"},
                {"to": "/opt/b", "inline": "x", "from": "https://x"},
                {"to": "/opt/c", "from": "ftp://x"},
                {"to": "/opt/d", "from": "secret://nope"},
                {"to": "/opt/a", "inline": "again"},
            ],
            "apps": [{"name": "web", "services": [{"name": "srv", "run": "x"}],
                      "health": {"type": "http", "on_fail": "restart_service:other"}}],
            "triggers": [{"name": "t", "source": {"type": "log", "service": "ghost", "match": "x"},
                          "actions": [{"type": "service", "op": "restart", "target": "srv"}]},
                         {"name": "c", "source": {"type": "cron", "schedule": "daily"},
                          "actions": [{"type": "log", "message": "x"}]}],
            "egress_policy": {"mode": "allow", "rules": ["example.com", "*.pypi.org", "10.0.0.0/8", "1.2.3.4", "bad domain!"]},
        }));
        let expected: Vec<(String, Code)> = [
            ("template.version", Code::InvalidFormat),
            ("secrets[1].name", Code::Duplicate),
            ("env.A.secret", Code::UnknownRef),
            ("files[0].inline", Code::Required),
            ("files[1].from", Code::Conflict),
            ("files[2].from", Code::InvalidFormat),
            ("files[3].from", Code::UnknownRef),
            ("files[4].to", Code::Duplicate),
            ("apps[0].health.url", Code::Required),
            ("apps[0].health.on_fail", Code::UnknownRef),
            ("triggers[0].source.service", Code::UnknownRef),
            ("triggers[1].source.schedule", Code::InvalidFormat),
            ("egress_policy.rules[4]", Code::InvalidFormat),
        ]
        .into_iter()
        .map(|(f, c)| (f.to_string(), c))
        .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn streams_follow_the_agents_rules_and_one_at_most_autostarts() {
        let issues = check(&json!({
            "secrets": [{"name": "sk"}],
            "streaming": [
                {"name": "a", "url": "rtmp://live.example.com/app", "key": {"secret": "sk"}, "autostart": true},
                {"name": "b", "url": "rtmp://live.example.com/app", "key": "has space", "autostart": true},
                {"name": "c", "url": "rtmp:///app", "key": "k"},
                {"name": "d", "url": "rtmps://x.example.com/app", "autostart": true},
                {"name": "e", "url": "rtmps://x.example.com/app"},
            ],
        }));
        let got: Vec<(&str, Code)> = issues.iter().map(|i| (i.field.as_str(), i.code)).collect();
        assert_eq!(
            got,
            [
                ("streaming[1].key", Code::InvalidFormat),
                ("streaming[1].autostart", Code::Conflict),
                ("streaming[2].url", Code::InvalidFormat),
                ("streaming[3].key", Code::Required),
                ("streaming[3].autostart", Code::Conflict),
            ]
        );
        let conflict = &issues[1].message;
        assert!(
            conflict.contains("only one stream may autostart") && conflict.contains("streaming[0]"),
            "{conflict}"
        );
        // A literal key is never quoted back.
        assert!(issues.iter().all(|i| !i.message.contains("has space")));
        assert!(
            issues[2].message.contains("names no host"),
            "{}",
            issues[2].message
        );
    }
}
