//! A template computer's secrets and what its guest gets at every start (templates.md rows
//! `secrets`, `env`, `files`, `hooks`): the create's `secrets` map checked ([`parse`]), the
//! `/root/.env` text ([`render_env`]), the runtime `files` ([`runtime_files`]), the start's hook
//! (`hooks.on_resume` after a restore, `hooks.on_every_boot` after a cold boot) and the stream to
//! start ([`autostart_stream`]), together a [`GuestPlan`]; and the hook a stop runs first
//! ([`shutdown_hook`]).
//!
//! Where secrets live: one row per computer in the daemon's SQLite database (`computer_secrets`,
//! root-only: 0600 in a 0700 directory, like the stream keys), because every restore (a launch
//! from the golden snapshot, a resume after suspend, a clone) writes `/root/.env` again and the
//! daemon must have them then; a clone gets its source's. They are never in a build (builds get
//! none, so no golden snapshot holds one), never in an answer and never in a log line: the
//! [`Secrets`] type prints names only, and recorded hook output has their values masked.
//!
//! `/root/.env` shape: a comment, then one `NAME='value'` line per variable, values single-quoted
//! for POSIX sh (a `'` becomes `'\''`; newlines and `$` stay literal), so `set -a; . /root/.env;
//! set +a` loads them. The variables are every given secret under its [`env_name`] (`api-key` →
//! `API_KEY`), then every `env` entry `{secret: NAME}` under its own key; a later line of the same
//! name replaces the earlier one (an `env` key wins over a secret's own name). A secret that is
//! optional and not given is not written, nor are the `env` entries that name it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::build_plan::{self, quote};
use super::document::{Document, EnvValue, Hook, When};
use deskd_agent::protocol::files::InstallFile;
use deskd_agent::protocol::stream::{StreamStartRequest, DEFAULT_SETTINGS};

/// Where the secrets go in the guest.
pub const ENV_FILE: &str = "/root/.env";
/// Largest value of one secret, bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Largest sum of all of one computer's secret values, bytes.
pub const MAX_SECRETS_BYTES: usize = 256 * 1024;
/// Most secrets one create may give (a template declares them; this bounds a hostile body).
pub const MAX_SECRETS: usize = 64;
/// Longest secret name (the document's rule).
const MAX_NAME: usize = 64;

/// The values of a computer's secrets, by name. `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Secrets {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `text` with every secret value replaced by `[secret NAME]` (longest first, so a value
    /// that holds another is masked whole). Values shorter than 4 bytes are left: masking every
    /// `1` or `a` would ruin the output and reveal the value's length and place anyway.
    pub fn mask(&self, text: &str) -> String {
        let mut by_len: Vec<(&String, &String)> =
            self.0.iter().filter(|(_, v)| v.len() >= 4).collect();
        by_len.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        let mut out = text.to_string();
        for (name, value) in by_len {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), &format!("[secret {name}]"));
            }
        }
        out
    }
}

/// A bad `secrets` map in a create body (a 400): the field at fault and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SecretsError {
    /// `secrets` or `secrets.NAME`.
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> SecretsError {
    SecretsError {
        field: field.into(),
        message: message.into(),
    }
}

/// A name as a document may declare it: `[a-z0-9_-]`, 1-64.
fn is_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The create body's `secrets` (absent: none): an object of name → string, each value at most
/// [`MAX_SECRET_BYTES`], all at most [`MAX_SECRETS_BYTES`], no NUL (a shell variable cannot hold
/// one). Whether the names are the template's is [`super::host::check_secrets`]'s question.
/// Messages name the field and never echo a value.
pub fn parse(value: Option<&Value>) -> Result<Secrets, SecretsError> {
    let map = match value {
        None | Some(Value::Null) => return Ok(Secrets::default()),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(bad(
                "secrets",
                format!(
                    "secrets must be an object of name: value (strings), not {}.",
                    json_kind(other)
                ),
            ))
        }
    };
    if map.len() > MAX_SECRETS {
        return Err(bad(
            "secrets",
            format!(
                "secrets may hold at most {MAX_SECRETS} entries (got {}).",
                map.len()
            ),
        ));
    }
    let mut out = BTreeMap::new();
    let mut total = 0usize;
    for (name, v) in map {
        let shown: String = name.chars().take(MAX_NAME).collect();
        let field = format!("secrets.{shown}");
        if !is_secret_name(name) {
            return Err(bad(
                &field,
                format!("{field}: a secret name is 1-64 of a-z, 0-9, '_' and '-' (as the template declares it)."),
            ));
        }
        let Some(s) = v.as_str() else {
            return Err(bad(
                &field,
                format!("{field} must be a string, not {}.", json_kind(v)),
            ));
        };
        if s.len() > MAX_SECRET_BYTES {
            return Err(bad(
                &field,
                format!(
                    "{field} is {} bytes; a secret may be at most {MAX_SECRET_BYTES} bytes (64 KiB).",
                    s.len()
                ),
            ));
        }
        if s.contains('\0') {
            return Err(bad(
                &field,
                format!("{field} holds a NUL byte, which no environment variable can carry."),
            ));
        }
        total += s.len();
        out.insert(name.clone(), s.to_string());
    }
    if total > MAX_SECRETS_BYTES {
        return Err(bad(
            "secrets",
            format!("the secrets hold {total} bytes together; at most {MAX_SECRETS_BYTES} (256 KiB) per computer."),
        ));
    }
    Ok(Secrets(out))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `/root/.env` variable of secret `name`: upper case, `-` as `_` (a shell name cannot hold
/// `-`), and a leading `_` when it would start with a digit.
pub fn env_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The variables of `/root/.env`, in file order (see the module comment).
pub fn env_vars(doc: &Document, secrets: &Secrets) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut put = |k: String, v: &str| {
        vars.retain(|(name, _)| *name != k);
        vars.push((k, v.to_string()));
    };
    for s in doc.secrets.iter().flatten() {
        if let Some(v) = secrets.get(&s.name) {
            put(env_name(&s.name), v);
        }
    }
    for (k, v) in doc.env.iter().flatten() {
        if let EnvValue::Secret(r) = v {
            if let Some(value) = secrets.get(&r.secret) {
                put(k.clone(), value);
            }
        }
    }
    vars
}

/// The text of `/root/.env`, or `None` when it would hold no variable (nothing is written).
pub fn render_env(doc: &Document, secrets: &Secrets) -> Option<String> {
    let vars = env_vars(doc, secrets);
    if vars.is_empty() {
        return None;
    }
    let mut out = String::from(
        "# Written by deskd at every start of this computer: the template's secrets (never part of\n\
         # its snapshot). Load them with: set -a; . /root/.env; set +a\n",
    );
    for (k, v) in vars {
        out.push_str(&format!("{k}={}\n", quote(&v)));
    }
    Some(out)
}

/// The runtime `files` of `doc` (inline text, or `secret://NAME`'s value), in document order,
/// with their mode (default 0644), owner (the desktop user below its home, else root) and group
/// (the owner's). A `secret://` of an optional secret not given is left out. Other sources are
/// refused at create ([`super::host::check_runtime_files`]), so they never reach here; should
/// one, it is left out too, and the second value lists such fields.
pub fn runtime_files(doc: &Document, secrets: &Secrets) -> (Vec<InstallFile>, Vec<String>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for (i, f) in doc.files.iter().flatten().enumerate() {
        if f.when != Some(When::Runtime) {
            continue;
        }
        let content = match (&f.inline, f.from.as_deref()) {
            (Some(text), _) => text.clone(),
            (None, Some(from)) => match from
                .strip_prefix("secret://")
                .and_then(|name| secrets.get(name))
            {
                Some(v) => v.to_string(),
                None => {
                    skipped.push(format!("files[{i}]"));
                    continue;
                }
            },
            (None, None) => {
                skipped.push(format!("files[{i}]"));
                continue;
            }
        };
        let path = build_plan::guest_path(&f.to);
        let (owner, group) =
            build_plan::default_owner(&path, f.owner.as_deref(), f.group.as_deref());
        files.push(InstallFile {
            path,
            content,
            mode: f.mode.clone().unwrap_or_else(|| "0644".to_string()),
            owner,
            group,
        });
    }
    (files, skipped)
}

/// A hook ready to run: `(label, /bash commands, limit)`, the hook as root with `set -e`, see
/// [`super::vm_builder::commands_for`].
pub type HookPlan = (String, Vec<String>, Duration);

fn hook_plan(label: &str, h: &Hook) -> HookPlan {
    let (run, timeout) = build_plan::hook(h);
    (
        label.to_string(),
        super::vm_builder::commands_for(&format!("{run}\n"), 0),
        timeout,
    )
}

/// The stream a template's computer starts at every start (templates.md `streaming`, the first
/// entry with `autostart: true`; validation refuses a second). `Debug` hides the key.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoStream {
    /// `streaming.NAME`, the launch log's step.
    pub label: String,
    /// What `POST /computers/{id}/stream/start` would send the agent: the entry's `url`, its key
    /// (a `{secret: NAME}` resolved), the default encoder settings (a template names none).
    pub request: StreamStartRequest,
}

/// Why a template's autostart stream is not started: its label (`streaming.NAME`) and a line
/// naming the entry, never holding the key.
pub type StreamSkip = (String, String);

/// The autostart stream of `doc` for a computer with `secrets`: `None` when no entry asks for
/// one, `Some(Err(..))` when it cannot start (its key is an optional secret that was not given,
/// or it breaks the agent's rules).
pub fn autostart_stream(
    doc: &Document,
    secrets: &Secrets,
) -> Option<Result<AutoStream, StreamSkip>> {
    let s = doc
        .streaming
        .iter()
        .flatten()
        .find(|s| s.autostart == Some(true))?;
    let label = format!("streaming.{}", s.name);
    let key = match &s.key {
        Some(EnvValue::Literal(k)) => k.clone(),
        Some(EnvValue::Secret(r)) => match secrets.get(&r.secret) {
            Some(v) => v.to_string(),
            None => {
                let why = format!(
                    "{label} was not started: its key is the secret {:?}, which was not given at create",
                    r.secret
                );
                return Some(Err((label, why)));
            }
        },
        None => {
            let why = format!(
                "{label} was not started: it has no key (give key: or key: {{secret: NAME}})"
            );
            return Some(Err((label, why)));
        }
    };
    let request = StreamStartRequest {
        url: s.url.clone(),
        stream_key: key,
        settings: DEFAULT_SETTINGS,
    };
    // The agent checks the same; checked here so the launch log says it without a round trip.
    if let Err(why) = request.check() {
        let why = format!("{label} was not started: {why}");
        return Some(Err((label, why)));
    }
    Some(Ok(AutoStream { label, request }))
}

/// What a template's computer gets once its agent answers: files in order (`/root/.env` first),
/// then its start's hook, then its autostart stream.
#[derive(Default)]
pub struct GuestPlan {
    pub files: Vec<InstallFile>,
    /// `hooks.on_resume` after a restore, `hooks.on_every_boot` after a cold boot.
    pub hook: Option<HookPlan>,
    /// Runtime files that could not be given (see [`runtime_files`]).
    pub skipped: Vec<String>,
    /// The stream to start, or why the template's autostart stream cannot start.
    pub stream: Option<Result<AutoStream, StreamSkip>>,
}

/// The plan for a computer of `doc` with `secrets`. `restored` (a launch from the golden
/// snapshot, a resume, a clone) runs `hooks.on_resume`; a cold boot (the image or the golden disk
/// booted, a stopped computer's start, a restart, a reboot by the guest) runs
/// `hooks.on_every_boot`. Never both: a restored VM did not boot, and the processes the last
/// boot's hook started are still there.
pub fn plan(doc: &Document, secrets: &Secrets, restored: bool) -> GuestPlan {
    let mut files = Vec::new();
    if let Some(text) = render_env(doc, secrets) {
        files.push(InstallFile {
            path: ENV_FILE.to_string(),
            content: text,
            mode: "0600".to_string(),
            owner: "root".to_string(),
            group: "root".to_string(),
        });
    }
    let (runtime, skipped) = runtime_files(doc, secrets);
    files.extend(runtime);
    let hooks = doc.hooks.as_ref();
    let hook = if restored {
        hooks
            .and_then(|h| h.on_resume.as_ref())
            .map(|h| hook_plan("hooks.on_resume", h))
    } else {
        hooks
            .and_then(|h| h.on_every_boot.as_ref())
            .map(|h| hook_plan("hooks.on_every_boot", h))
    };
    GuestPlan {
        files,
        hook,
        skipped,
        stream: autostart_stream(doc, secrets),
    }
}

/// `hooks.on_shutdown` of `doc`, with its own limit (the stop caps it further,
/// `crate::computers::Lifecycle`).
pub fn shutdown_hook(doc: &Document) -> Option<HookPlan> {
    doc.hooks
        .as_ref()
        .and_then(|h| h.on_shutdown.as_ref())
        .map(|h| hook_plan("hooks.on_shutdown", h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::validate_bytes;
    use serde_json::json;

    fn doc(yaml: &str) -> Document {
        validate_bytes(yaml.as_bytes()).unwrap().document
    }

    #[test]
    fn the_secrets_map_is_checked_field_by_field_and_never_echoed() {
        assert!(parse(None).unwrap().is_empty());
        assert!(parse(Some(&Value::Null)).unwrap().is_empty());
        let ok = parse(Some(&json!({"api_key": "sk-1", "db-pass": ""}))).unwrap();
        assert_eq!(ok.get("api_key"), Some("sk-1"));
        let big = "x".repeat(MAX_SECRET_BYTES + 1);
        let many: serde_json::Map<String, Value> = (0..=MAX_SECRETS)
            .map(|i| (format!("s{i}"), json!("v")))
            .collect();
        let total: serde_json::Map<String, Value> = (0..5)
            .map(|i| (format!("s{i}"), json!("y".repeat(MAX_SECRET_BYTES - 1))))
            .collect();
        for (body, field, says) in [
            (json!("sk-1"), "secrets", "must be an object"),
            (json!(["a"]), "secrets", "not an array"),
            (
                json!({"api_key": 5}),
                "secrets.api_key",
                "must be a string, not a number",
            ),
            (json!({"api_key": null}), "secrets.api_key", "not null"),
            (json!({"API_KEY": "v"}), "secrets.API_KEY", "a-z, 0-9"),
            (json!({"": "v"}), "secrets.", "1-64"),
            (json!({"k": big}), "secrets.k", "at most 65536 bytes"),
            (json!({"k": "a\u{0}b"}), "secrets.k", "NUL"),
            (Value::Object(many), "secrets", "at most 64 entries"),
            (Value::Object(total), "secrets", "at most 262144"),
        ] {
            let e = parse(Some(&body)).unwrap_err();
            assert_eq!(e.field, field, "{body}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
            assert!(!e.message.contains("yyyy") && !e.message.contains("xxxx"));
        }
        // Debug shows names, never values.
        assert_eq!(format!("{ok:?}"), r#"{"api_key", "db-pass"}"#);
    }

    #[test]
    fn env_names_are_shell_names() {
        assert_eq!(env_name("api_key"), "API_KEY");
        assert_eq!(env_name("db-pass"), "DB_PASS");
        assert_eq!(env_name("1password"), "_1PASSWORD");
    }

    #[test]
    fn the_env_file_survives_any_value_through_a_real_shell() {
        let d = doc(r#"
api_version: orgo.ai/v1
name: envs@1.0.0
env: {GREETING: hello, OPENAI_API_KEY: {secret: api-key}, MAYBE: {secret: extra}}
secrets: [{name: api-key}, {name: extra, optional: true}, {name: "2fa"}]
"#);
        let nasty = "it's \"quoted\" $HOME `id` \\ \n second line $(echo no) '";
        let mut given = BTreeMap::new();
        given.insert("api-key".to_string(), nasty.to_string());
        given.insert("2fa".to_string(), "123456".to_string());
        let secrets = Secrets(given);
        let text = render_env(&d, &secrets).unwrap();
        // The literal env entry is the build's business (/etc/profile.d), not this file's; the
        // optional secret not given is left out with the entry that names it.
        assert!(!text.contains("GREETING") && !text.contains("MAYBE") && !text.contains("EXTRA"));
        let vars: Vec<String> = env_vars(&d, &secrets).into_iter().map(|(k, _)| k).collect();
        assert_eq!(vars, ["API_KEY", "_2FA", "OPENAI_API_KEY"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(&file, &text).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("set -a; . \"$1\"; set +a; printf '%s\\0%s\\0%s' \"$API_KEY\" \"$OPENAI_API_KEY\" \"$_2FA\"")
            .arg("sh")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = String::from_utf8(out.stdout).unwrap();
        let parts: Vec<&str> = got.split('\0').collect();
        assert_eq!(parts, [nasty, nasty, "123456"]);
        // Nothing to write: no file at all.
        let plain = doc("api_version: orgo.ai/v1\nname: plain@1.0.0\nenv: {A: b}\n");
        assert_eq!(render_env(&plain, &Secrets::default()), None);
    }

    #[test]
    fn an_env_key_wins_over_a_secrets_own_name() {
        let d = doc(r#"
api_version: orgo.ai/v1
name: clash@1.0.0
env: {TOKEN: {secret: other}}
secrets: [{name: token}, {name: other}]
"#);
        let secrets = Secrets(
            [("token", "a-token"), ("other", "b-other")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        assert_eq!(
            env_vars(&d, &secrets),
            [
                ("OTHER".to_string(), "b-other".to_string()),
                ("TOKEN".to_string(), "b-other".to_string())
            ]
        );
    }

    #[test]
    fn runtime_files_resolve_home_owner_mode_and_secret_sources() {
        let d = doc(r#"
api_version: orgo.ai/v1
name: files@1.0.0
secrets: [{name: cert}, {name: spare, optional: true}]
files:
  - {to: /etc/baked.conf, inline: "build time"}
  - {to: ~/.config/app.json, inline: "{}", when: runtime}
  - {to: /etc/ssl/private/app.pem, from: "secret://cert", mode: "0400", when: runtime}
  - {to: ~/shared.txt, inline: "x", owner: root, when: runtime}
  - {to: /opt/spare, from: "secret://spare", when: runtime}
hooks: {on_resume: "systemctl restart app", on_first_boot: "echo first"}
"#);
        let secrets = Secrets([("cert".to_string(), "PEM".to_string())].into());
        let (files, skipped) = runtime_files(&d, &secrets);
        let shape: Vec<(&str, &str, &str, &str, &str)> = files
            .iter()
            .map(|f| {
                (
                    f.path.as_str(),
                    f.content.as_str(),
                    f.mode.as_str(),
                    f.owner.as_str(),
                    f.group.as_str(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("/home/user/.config/app.json", "{}", "0644", "user", "user"),
                ("/etc/ssl/private/app.pem", "PEM", "0400", "root", "root"),
                ("/home/user/shared.txt", "x", "0644", "root", "root"),
            ]
        );
        assert_eq!(skipped, ["files[4]"]);
        for f in &files {
            f.check().unwrap();
        }
        // The plan: .env first (secrets exist), then the runtime files; the hook after a restore
        // only.
        let p = plan(&d, &secrets, true);
        let paths: Vec<&str> = p.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths[0], ENV_FILE);
        assert_eq!(p.files[0].mode, "0600");
        assert_eq!(
            (p.files[0].owner.as_str(), p.files[0].group.as_str()),
            ("root", "root")
        );
        assert_eq!(paths.len(), 4);
        let (label, commands, timeout) = p.hook.unwrap();
        assert_eq!(label, "hooks.on_resume");
        assert_eq!(timeout, Duration::from_secs(600));
        assert!(commands.last().unwrap().contains("sudo -n -H bash -l"));
        assert!(plan(&d, &secrets, false).hook.is_none());
    }

    #[test]
    fn masking_hides_every_value_longest_first() {
        let s = Secrets(
            [("a", "sk-123"), ("b", "sk-123456"), ("c", "xy")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        assert_eq!(
            s.mask("key sk-123456 and sk-123, xy"),
            "key [secret b] and [secret a], xy"
        );
    }

    /// The hook text that `commands_for`'s commands carry (base64 in `printf` pieces).
    fn script_of(commands: &[String]) -> String {
        use base64::Engine;
        let b64: String = commands
            .iter()
            .filter_map(|c| c.strip_prefix("printf '%s' '"))
            .map(|c| c.split('\'').next().unwrap())
            .collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_cold_boot_runs_on_every_boot_a_restore_on_resume_and_a_stop_on_shutdown() {
        let d = doc(r#"
api_version: orgo.ai/v1
name: hooks@1.0.0
hooks:
  on_first_boot: "echo first"
  on_every_boot: "echo boot"
  on_resume: "echo resumed"
  on_shutdown: {run: "echo bye", timeout: 30s}
"#);
        let none = Secrets::default();
        let (label, commands, timeout) = plan(&d, &none, false).hook.unwrap();
        assert_eq!(label, "hooks.on_every_boot");
        assert_eq!(script_of(&commands), "set -e\necho boot\n");
        assert_eq!(timeout, Duration::from_secs(600));
        let (label, commands, _) = plan(&d, &none, true).hook.unwrap();
        assert_eq!(label, "hooks.on_resume");
        assert_eq!(script_of(&commands), "set -e\necho resumed\n");
        let (label, commands, timeout) = shutdown_hook(&d).unwrap();
        assert_eq!(label, "hooks.on_shutdown");
        assert_eq!(script_of(&commands), "set -e\necho bye\n");
        assert_eq!(timeout, Duration::from_secs(30));
        assert!(commands.last().unwrap().contains("sudo -n -H bash -l"));
        // Without hooks: none at any start or stop.
        let bare = doc("api_version: orgo.ai/v1\nname: bare@1.0.0\n");
        assert!(plan(&bare, &none, false).hook.is_none());
        assert!(plan(&bare, &none, true).hook.is_none());
        assert!(shutdown_hook(&bare).is_none());
    }

    #[test]
    fn the_first_autostart_stream_starts_with_its_key_resolved_and_hidden() {
        let d = doc(r#"
api_version: orgo.ai/v1
name: streams@1.0.0
secrets: [{name: sk}]
streaming:
  - {name: manual, url: "rtmp://a.example.com/live", key: "manual-key-1"}
  - {name: live, url: "rtmp://b.example.com/live", key: {secret: sk}, autostart: true}
"#);
        let secrets = Secrets([("sk".to_string(), "live_Secret-9".to_string())].into());
        let s = autostart_stream(&d, &secrets).unwrap().unwrap();
        assert_eq!(s.label, "streaming.live");
        assert_eq!(s.request.url, "rtmp://b.example.com/live");
        assert_eq!(s.request.stream_key, "live_Secret-9");
        assert_eq!(s.request.settings, DEFAULT_SETTINGS);
        assert!(!format!("{s:?}").contains("live_Secret-9"), "{s:?}");
        assert_eq!(plan(&d, &secrets, false).stream, Some(Ok(s.clone())));
        assert_eq!(plan(&d, &secrets, true).stream, Some(Ok(s)));
        // Its secret not given (an optional one): not started, said without a key.
        let (label, why) = autostart_stream(&d, &Secrets::default())
            .unwrap()
            .unwrap_err();
        assert_eq!(label, "streaming.live");
        assert!(
            why.contains("secret \"sk\"") && why.contains("not given"),
            "{why}"
        );
        // A literal key is taken as it is; no autostart entry, no stream.
        let lit = doc(r#"
api_version: orgo.ai/v1
name: lit@1.0.0
streaming: [{name: s, url: "rtmps://c.example.com/app", key: "lit-Key_2", autostart: true}]
"#);
        let s = autostart_stream(&lit, &Secrets::default())
            .unwrap()
            .unwrap();
        assert_eq!(s.request.stream_key, "lit-Key_2");
        let off = doc(r#"
api_version: orgo.ai/v1
name: off@1.0.0
streaming: [{name: s, url: "rtmps://c.example.com/app", key: "k", autostart: false}]
"#);
        assert!(autostart_stream(&off, &Secrets::default()).is_none());
    }
}
