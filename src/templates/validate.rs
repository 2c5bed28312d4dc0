//! The whole check of a submitted document, in order: parse (JSON or YAML), rewrite the short
//! forms, the schema, the references, the semantic rules. Every finding of every stage is
//! returned at once; a document with none becomes a [`Template`]: its canonical form, digest,
//! resolved form and typed value.

use serde_json::Value;

use super::document::Document;
use super::issue::{Code, Issue};
use super::parse::{parse, ParseError};
use super::refs::TemplateRef;
use super::{canonical, interpolate, rules, schema, sugar};

/// A valid template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// What was written, short forms rewritten: stored, served and digested.
    pub canonical: Value,
    /// `sha256:<hex>` of the canonical text.
    pub digest: String,
    /// The canonical form with `${var.X}`/`${env.X}` expanded: what a build or launch uses.
    pub resolved: Value,
    /// The resolved form, typed.
    pub document: Document,
}

impl Template {
    /// `NAMESPACE/NAME@VERSION` for this template in `namespace`.
    pub fn reference(&self, namespace: &str) -> TemplateRef {
        TemplateRef {
            namespace: namespace.to_string(),
            name: self.document.template.name.clone(),
            version: self.document.template.version.clone(),
        }
    }
}

/// Why a submission is not a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// Not a document at all (400).
    Unparseable(ParseError),
    /// A document with findings (422).
    Invalid(Vec<Issue>),
}

/// Checks raw request bytes.
pub fn validate_bytes(bytes: &[u8]) -> Result<Template, Rejection> {
    let value = parse(bytes).map_err(Rejection::Unparseable)?;
    validate_value(value).map_err(Rejection::Invalid)
}

/// Checks a parsed document (any form).
pub fn validate_value(value: Value) -> Result<Template, Vec<Issue>> {
    let (canonical, mut issues) = sugar::normalize(value);
    issues.extend(schema::check(&canonical));
    let (resolved, refs) = interpolate::resolve(&canonical);
    issues.extend(refs);
    issues.extend(rules::check(&resolved));
    // A resolved value may break a pattern its reference satisfied (`version: ${var.v}`).
    if !issues
        .iter()
        .any(|i| i.code != Code::UnknownRef && i.code != Code::SecretInBuild)
    {
        issues.extend(schema::check(&resolved));
    }
    dedupe(&mut issues);
    if !issues.is_empty() {
        return Err(issues);
    }
    let document: Document = serde_json::from_value(resolved.clone()).map_err(|e| {
        // The schema is generated from these types; disagreeing is a bug, said plainly.
        vec![Issue::new(
            "",
            Code::InvalidType,
            format!("deskd's schema accepted this document but its types did not ({e}); please report it"),
        )]
    })?;
    Ok(Template {
        digest: canonical::digest(&canonical),
        canonical,
        resolved,
        document,
    })
}

fn dedupe(issues: &mut Vec<Issue>) {
    let mut seen = std::collections::HashSet::new();
    issues.retain(|i| seen.insert((i.field.clone(), i.code)));
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SUGAR: &str = r#"
api_version: orgo.ai/v1
name: my-workstation@1.0.0
cpu: 2
ram: 4gb
display: 1280x800
env:
  NODE_ENV: production
files:
  /opt/welcome.txt: hello
on_first_boot: |
  echo "ready"
"#;

    pub(crate) const CANONICAL: &str = r#"
api_version: orgo.ai/v1
template:
  name: my-workstation
  version: 1.0.0
hardware:
  cpu: 2
  ram_gb: 4
  resolution: 1280x800x24
env:
  NODE_ENV: production
files:
  - to: /opt/welcome.txt
    inline: "hello"
hooks:
  on_first_boot: |
    echo "ready"
"#;

    #[test]
    fn sugar_and_canonical_give_one_digest() {
        let a = validate_bytes(SUGAR.as_bytes()).unwrap();
        let b = validate_bytes(CANONICAL.as_bytes()).unwrap();
        assert_eq!(a.canonical, b.canonical);
        assert_eq!(a.digest, b.digest);
        // The canonical JSON re-submitted is a fixed point.
        let c = validate_bytes(a.canonical.to_string().as_bytes()).unwrap();
        assert_eq!(c.digest, a.digest);
        // Any change of content changes it.
        let d = validate_bytes(SUGAR.replace("cpu: 2", "cpu: 4").as_bytes()).unwrap();
        assert_ne!(d.digest, a.digest);
        assert_eq!(
            a.reference("default").to_string(),
            "default/my-workstation@1.0.0"
        );
    }

    #[test]
    fn every_error_at_once() {
        let doc = r#"
api_version: orgo.ai/v1
template: {name: My_App, version: "1.0"}
hardware: {cpu: 3, gpu: h100}
files:
  - {to: /proc/x, inline: a}
  - {to: "/opt/${var.nope}", inline: b}
"#;
        let Err(Rejection::Invalid(issues)) = validate_bytes(doc.as_bytes()) else {
            panic!("not refused as invalid");
        };
        let got: Vec<(&str, Code)> = issues.iter().map(|i| (i.field.as_str(), i.code)).collect();
        for want in [
            ("template.name", Code::InvalidFormat),
            ("hardware.cpu", Code::InvalidEnum),
            ("files[1].to", Code::UnknownRef),
            ("template.version", Code::InvalidFormat),
            ("files[0].to", Code::ReservedPath),
        ] {
            assert!(got.contains(&want), "{want:?} missing from {got:?}");
        }
        // A GPU is valid in a document; only a launch on this host refuses it.
        assert!(!got.iter().any(|(f, _)| *f == "hardware.gpu"), "{got:?}");
        for i in &issues {
            assert!(!i.message.is_empty());
        }
    }

    #[test]
    fn interpolated_values_are_checked_too() {
        let doc = "api_version: orgo.ai/v1\nvars: {v: not-semver}\ntemplate: {name: a, version: \"${var.v}\"}\n";
        let Err(Rejection::Invalid(issues)) = validate_bytes(doc.as_bytes()) else {
            panic!("accepted");
        };
        assert!(
            issues.iter().any(|i| i.field == "template.version"),
            "{issues:?}"
        );
    }

    #[test]
    fn unparseable_bodies_are_not_validation_findings() {
        assert!(matches!(
            validate_bytes(b""),
            Err(Rejection::Unparseable(ParseError::Empty))
        ));
        assert!(matches!(
            validate_bytes(b"[1]"),
            Err(Rejection::Unparseable(_))
        ));
    }
}

#[cfg(test)]
mod in_step {
    use super::*;
    use proptest::prelude::*;

    /// Every key of templates.md's table, in the canonical form.
    pub(crate) const FULL: &str = r#"
api_version: orgo.ai/v1
template: {name: full, version: 1.2.3-rc.1, description: all keys, publisher: me, license: MIT, homepage: "https://example.com", source: "https://example.com/src"}
hardware: {os: linux, cpu: 4, ram_gb: 8, disk_gb: 20, gpu: none, gpu_count: 0, resolution: 1920x1080x24, auto_stop_minutes: 30, region: auto-us, audio: true, bandwidth_mbps: 100}
vars: {port: "8000", who: world}
env: {GREETING: "hello ${var.who}", API_KEY: {secret: api_key}}
secrets: [{name: api_key, description: key, example: sk-..., docs_url: "https://example.com/keys", optional: false}]
build: {apt: [ripgrep], pip: [requests], npm: [pnpm], run: ["echo built > /opt/built"]}
files:
  - {to: /opt/hello.txt, inline: "hello ${var.who}", mode: "0644", owner: user, group: user}
  - {to: ~/.config/app.json, from: "secret://api_key", when: runtime}
  - {to: /opt/bg.png, from: "https://example.com/bg.png"}
apps:
  - name: site
    title: Site
    install: "pip install flask"
    services: [{name: http, run: "python3 -m http.server ${var.port}", cwd: /opt, user: user, env: {PORT: "${var.port}"}, restart: on-failure, stop_signal: SIGTERM, log: /var/log/site.log}]
    health: {type: http, url: "http://127.0.0.1:${var.port}/", every: 10s, timeout: 2, retries: 3, on_fail: "restart_service:http"}
    ports: [{internal: 8000, external: 0, protocol: http, public: false}]
    autostart: [{run: "xdg-open http://127.0.0.1:8000", delay: 5s}]
triggers:
  - {name: beat, title: Beat, source: {type: cron, schedule: "* * * * *"}, actions: [{type: command, run: "echo {{ event.ts }}"}], dedup: {type: cooldown, window: 1m}}
  - {name: watch, source: {type: file, path: /opt, events: [create]}, actions: [{type: webhook, url: "https://example.com/h", method: POST, headers: {X: "y"}, body: "{{ event.path }}"}]}
  - {name: ping, source: {type: http, url: "http://127.0.0.1:8000", method: GET, expect_code: 200, interval: 30s}, actions: [{type: service, op: restart, target: http}]}
  - {name: proc, source: {type: process, process: python3}, actions: [{type: notify, title: gone, level: warning}]}
  - {name: mem, source: {type: metric, metric: ram_percent, op: ">", value: 90, duration: 2m}, actions: [{type: log, message: high}], dedup: {type: rate_limit, window: 1h, max: 3}}
  - {name: logs, source: {type: log, service: http, match: ERROR, parse: text}, actions: [{type: api, endpoint: /screenshot}]}
  - {name: ev, source: {type: event, event: custom}, actions: [{type: log, message: x}], dedup: {type: debounce, window: 500ms}}
  - {name: desk, source: {type: desktop, event: window_focus}, actions: [{type: log, message: "y"}]}
terminal: [{name: main, title: Main, cwd: ~/, run: htop}]
hooks: {on_first_boot: "echo first", on_every_boot: "echo boot", on_pre_snapshot: "sync", on_resume: {run: "echo resumed", timeout: 60}, on_shutdown: "echo bye"}
telemetry: {metrics: true, logs: [/var/log/site.log], otel_endpoint: "https://otel.example.com"}
egress_policy: {mode: allow, rules: [example.com, "*.pypi.org", 1.2.3.4, 10.0.0.0/8]}
streaming: [{name: live, url: "rtmps://live.example.com/app", key: {secret: api_key}, autostart: false}]
wallpaper: "https://example.com/wall.png"
"#;

    #[test]
    fn a_document_with_every_key_validates_and_its_types_round_trip() {
        let t = validate_bytes(FULL.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"));
        // The types, the schema and the validator agree: the typed value serialises back to
        // exactly the resolved document, and that passes the served schema on its own.
        // (`sugar::normalize` writes the f64 of a metric's `value: 90` back as 90.)
        let typed = sugar::normalize(serde_json::to_value(&t.document).unwrap()).0;
        assert_eq!(typed, t.resolved);
        assert!(jsonschema::is_valid(schema::schema(), &t.canonical));
        assert_eq!(t.resolved["env"]["GREETING"], "hello world");
        assert_eq!(t.canonical["env"]["GREETING"], "hello ${var.who}");
        for key in [
            "hardware",
            "vars",
            "env",
            "secrets",
            "build",
            "files",
            "apps",
            "triggers",
            "terminal",
            "hooks",
            "telemetry",
            "egress_policy",
            "streaming",
        ] {
            assert!(t.canonical.get(key).is_some(), "{key} lost");
        }
        // Every top-level key the schema knows is exercised here.
        let known = schema::schema()["properties"].as_object().unwrap();
        for k in known.keys() {
            assert!(t.canonical.get(k).is_some(), "the full example lacks {k}");
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i32>().prop_map(serde_json::Value::from),
            "[a-z${}./~ ]{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let keys = prop_oneof![
                Just("api_version".to_string()),
                Just("template".to_string()),
                Just("name".to_string()),
                Just("hardware".to_string()),
                Just("files".to_string()),
                Just("env".to_string()),
                Just("apps".to_string()),
                Just("triggers".to_string()),
                Just("source".to_string()),
                Just("type".to_string()),
                Just("to".to_string()),
                Just("secret".to_string()),
                "[a-z_]{1,6}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(keys, inner, 0..5)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn random_documents_never_panic(v in arb_json()) {
            let _ = validate_value(v);
        }

        #[test]
        fn random_text_never_panics(s in "[a-z:{}\\[\\]\\-,&*!|>\"' \n]{0,80}") {
            let _ = validate_bytes(s.as_bytes());
        }
    }
}
