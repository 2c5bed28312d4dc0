//! What a template build does inside its VM, as an ordered list of shell steps run as root
//! (templates.md, "The build"): `env` (a profile script), `build.apt`, `build.pip`, `build.npm`,
//! `build.run`, build-time `files`, each app's `install`, its services and its `autostart`
//! programs as systemd units,
//! `terminal` sessions, `hooks.on_first_boot`, every app's health check, `hooks.on_pre_snapshot`,
//! and a final `sync`; the package steps fetch from the config's `[build]` sources
//! (`super::package_sources`). Planning is pure (no VM): what the document asks for that this builder
//! cannot do fails here, naming the field, before any VM boots.

use std::time::Duration;

use super::build::{BuildFailure, Phase, Source};
use super::document::{self, Document, EnvValue, HealthKind, Hook, LogSetting, Restart, When};
use super::package_sources::PackageSources;

/// A `build.*` step's limit (the rig runs 50-100x slower than hardware; the build as a whole
/// has its own limit too).
const BUILD_STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// A hook's limit unless it names one (templates.md).
const HOOK_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Small steps: writing a file, a unit, a tmux session.
const SMALL_STEP_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long the build waits for an app to become healthy at least (its start-up; longer when
/// `retries` checks `every` apart take longer).
const HEALTH_PATIENCE_SECS: u64 = 600;
/// A health check that names no `every`/`timeout`/`retries`.
const HEALTH_EVERY_SECS: u64 = 5;
const HEALTH_PROBE_TIMEOUT_SECS: u64 = 10;
/// Checks retried after a failure before `on_fail` acts (Docker's HEALTHCHECK default).
const HEALTH_RETRIES: u32 = 3;
/// Where the build keeps the scripts of services (one per service).
pub const SERVICE_SCRIPTS: &str = "/usr/local/lib/deskd-template";
/// The profile script holding the template's `env` (read by every login shell).
pub const ENV_PROFILE: &str = "/etc/profile.d/deskd-template-env.sh";
/// The desktop user's home (`~/` in `files[].to`).
const HOME: &str = "/home/user";

/// One shell script the build runs as root in the guest.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub phase: Phase,
    pub source: Source,
    /// What the events and a failure call it: the document field, e.g. `build.run[2]`.
    pub label: String,
    /// bash text, run with `set -e` as root in a login shell.
    pub script: String,
    pub timeout: Duration,
    /// The step fetches from the internet (apt, pip, npm): it fails at once, saying so, in a
    /// guest without a network.
    pub needs_network: bool,
}

/// `'text'` for bash, whatever the text holds.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn step(phase: Phase, label: String, script: String, timeout: Duration) -> Step {
    Step {
        phase,
        source: Source::Builder,
        label,
        script,
        timeout,
        needs_network: false,
    }
}

fn refuse(field: &str, why: &str) -> BuildFailure {
    BuildFailure {
        phase: Phase::Compile,
        message: format!("{field}: {why}"),
    }
}

/// Seconds of a document duration (`10`, `500ms`, `10s`, `2m`, `1h`), at least 1.
pub fn seconds(d: &document::Duration) -> u64 {
    let s = match d {
        document::Duration::Seconds(n) => *n,
        document::Duration::Text(t) => {
            let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
            let n: u64 = digits.parse().unwrap_or(0);
            match &t[digits.len()..] {
                "ms" => n / 1000,
                // A publisher's number: saturate rather than overflow.
                "m" => n.saturating_mul(60),
                "h" => n.saturating_mul(3600),
                _ => n,
            }
        }
    };
    s.max(1)
}

/// A hook's text and limit (its own `timeout`, else [`HOOK_TIMEOUT`]).
pub(crate) fn hook(h: &Hook) -> (&str, Duration) {
    match h {
        Hook::Shell(s) => (s, HOOK_TIMEOUT),
        Hook::WithTimeout(spec) => (
            &spec.run,
            spec.timeout
                .as_ref()
                .map(|d| Duration::from_secs(seconds(d)))
                .unwrap_or(HOOK_TIMEOUT),
        ),
    }
}

/// `~/x` is the desktop user's; anything else is absolute already (validation made sure).
pub(crate) fn guest_path(to: &str) -> String {
    match to.strip_prefix("~/") {
        Some(rest) => format!("{HOME}/{rest}"),
        None if to == "~" => HOME.to_string(),
        None => to.to_string(),
    }
}

/// Owner and group of a file at `path` (resolved): as given, else the desktop user's below its
/// home and root's elsewhere; the group defaults to the owner's name.
pub(crate) fn default_owner(
    path: &str,
    owner: Option<&str>,
    group: Option<&str>,
) -> (String, String) {
    let mine = path.starts_with(&format!("{HOME}/")) || path == HOME;
    let owner = owner.unwrap_or(if mine { "user" } else { "root" });
    (owner.to_string(), group.unwrap_or(owner).to_string())
}

/// A script that writes `content` to `path` with its mode and owner.
fn write_file(path: &str, content: &[u8], mode: &str, owner: &str, group: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(content);
    let p = quote(path);
    format!(
        "mkdir -p \"$(dirname {p})\"\nprintf '%s' {b64} | base64 -d > {p}\nchmod {mode} {p}\nchown {o}:{g} {p}\n",
        b64 = quote(&b64),
        o = quote(owner),
        g = quote(group),
    )
}

/// The build of `doc`, in order, its package steps fetching from `sources`; a field this builder
/// cannot carry out is refused, named.
pub fn plan(doc: &Document, sources: &PackageSources) -> Result<Vec<Step>, BuildFailure> {
    let mut steps = Vec::new();
    // Literal env only: secrets are given per computer at launch and never baked in.
    if let Some(env) = &doc.env {
        let lines: String = env
            .iter()
            .filter_map(|(k, v)| match v {
                EnvValue::Literal(s) => Some(format!("export {k}={}\n", quote(s))),
                EnvValue::Secret(_) => None,
            })
            .collect();
        if !lines.is_empty() {
            steps.push(step(
                Phase::Install,
                "env".into(),
                write_file(ENV_PROFILE, lines.as_bytes(), "0644", "root", "root"),
                SMALL_STEP_TIMEOUT,
            ));
        }
    }
    if let Some(build) = &doc.build {
        let packages = |list: &Option<Vec<String>>| -> Option<String> {
            list.as_ref()
                .filter(|l| !l.is_empty())
                .map(|l| l.iter().map(|p| quote(p)).collect::<Vec<_>>().join(" "))
        };
        for (field, source, list, script) in [
            (
                "build.apt",
                Source::Apt,
                &build.apt,
                PackageSources::apt_script as fn(&PackageSources, &str) -> String,
            ),
            (
                "build.pip",
                Source::Pip,
                &build.pip,
                PackageSources::pip_script,
            ),
            (
                "build.npm",
                Source::Npm,
                &build.npm,
                PackageSources::npm_script,
            ),
        ] {
            if let Some(pkgs) = packages(list) {
                steps.push(Step {
                    phase: Phase::Install,
                    source,
                    label: field.into(),
                    script: script(sources, &pkgs),
                    timeout: BUILD_STEP_TIMEOUT,
                    needs_network: true,
                });
            }
        }
        for (i, cmd) in build.run.iter().flatten().enumerate() {
            steps.push(step(
                Phase::Install,
                format!("build.run[{i}]"),
                format!("{cmd}\n"),
                BUILD_STEP_TIMEOUT,
            ));
        }
    }
    for (i, f) in doc.files.iter().flatten().enumerate() {
        if f.when == Some(When::Runtime) {
            continue;
        }
        let field = format!("files[{i}]");
        let Some(inline) = &f.inline else {
            return Err(refuse(
                &format!("{field}.from"),
                &format!(
                    "{:?} cannot be fetched by this deskd's builder yet (only inline content is); put the content in `inline`",
                    f.from.as_deref().unwrap_or("")
                ),
            ));
        };
        let path = guest_path(&f.to);
        let (owner, group) = default_owner(&path, f.owner.as_deref(), f.group.as_deref());
        let mode = f.mode.as_deref().unwrap_or("0644");
        steps.push(step(
            Phase::Install,
            format!("{field} ({path})"),
            write_file(&path, inline.as_bytes(), mode, &owner, &group),
            SMALL_STEP_TIMEOUT,
        ));
    }
    let mut health = Vec::new();
    for (a, app) in doc.apps.iter().flatten().enumerate() {
        if let Some(install) = &app.install {
            steps.push(step(
                Phase::Install,
                format!("apps[{a}].install ({})", app.name),
                format!("{install}\n"),
                BUILD_STEP_TIMEOUT,
            ));
        }
        for (s, svc) in app.services.iter().flatten().enumerate() {
            steps.push(step(
                Phase::Install,
                format!("apps[{a}].services[{s}] ({}/{})", app.name, svc.name),
                service_unit(&app.name, svc)?,
                SMALL_STEP_TIMEOUT,
            ));
        }
        for (i, entry) in app.autostart.iter().flatten().enumerate() {
            steps.push(step(
                Phase::Install,
                format!("apps[{a}].autostart[{i}] ({})", app.name),
                autostart_unit(&app.name, i, entry),
                SMALL_STEP_TIMEOUT,
            ));
        }
        if let Some(h) = &app.health {
            let field = format!("apps[{a}].health");
            let (script, timeout) = health_check(h, &field)?;
            health.push(step(
                Phase::Install,
                format!("{field} ({})", app.name),
                script,
                timeout,
            ));
            health.push(step(
                Phase::Install,
                format!("{field} watch ({})", app.name),
                health_watch_unit(&app.name, h, &field)?,
                SMALL_STEP_TIMEOUT,
            ));
        }
    }
    for (i, t) in doc.terminal.iter().flatten().enumerate() {
        let cwd = guest_path(t.cwd.as_deref().unwrap_or("~"));
        let mut cmd = format!(
            "sudo -u user -H tmux new-session -d -s {} -c {}",
            quote(&t.name),
            quote(&cwd)
        );
        if let Some(run) = &t.run {
            cmd.push(' ');
            cmd.push_str(&quote(run));
        }
        steps.push(step(
            Phase::Install,
            format!("terminal[{i}] ({})", t.name),
            format!("{cmd}\n"),
            SMALL_STEP_TIMEOUT,
        ));
    }
    let hooks = doc.hooks.clone().unwrap_or_default();
    if let Some(h) = &hooks.on_first_boot {
        let (run, timeout) = hook(h);
        steps.push(step(
            Phase::Install,
            "hooks.on_first_boot".into(),
            format!("{run}\n"),
            timeout,
        ));
    }
    steps.extend(health);
    if let Some(h) = &hooks.on_pre_snapshot {
        let (run, timeout) = hook(h);
        steps.push(step(
            Phase::Snapshot,
            "hooks.on_pre_snapshot".into(),
            format!("{run}\n"),
            timeout,
        ));
    }
    // What the steps wrote reaches the disk before the VM is paused and its disk kept.
    steps.push(step(
        Phase::Snapshot,
        "sync".into(),
        "sync\n".into(),
        SMALL_STEP_TIMEOUT,
    ));
    Ok(steps)
}

/// The script a service's unit runs: its env (secrets read from `/root/.env` when the service
/// starts), its working directory, its command.
fn service_script(svc: &document::Service) -> String {
    let mut script = String::from("#!/bin/bash\n");
    for (k, v) in svc.env.iter().flatten() {
        match v {
            EnvValue::Literal(s) => script.push_str(&format!("export {k}={}\n", quote(s))),
            // Secrets arrive with the launch (/root/.env, shell-quoted: see
            // `super::secrets`), never in the snapshot; read in a subshell so that only this
            // one variable comes out of the file (the `x` keeps trailing newlines, which `$(...)`
            // would strip).
            EnvValue::Secret(r) => script.push_str(&format!(
                "if [ -r {env} ]; then deskd_v=\"$(set -a; . {env}; printf '%sx' \"${{{var}-}}\")\"; export {k}=\"${{deskd_v%x}}\"; unset deskd_v; fi\n",
                env = super::secrets::ENV_FILE,
                var = super::secrets::env_name(&r.secret)
            )),
        }
    }
    if let Some(cwd) = &svc.cwd {
        script.push_str(&format!("cd {}\n", quote(&guest_path(cwd))));
    }
    script.push_str(&format!("exec bash -c {}\n", quote(&svc.run)));
    script
}

/// A systemd unit for `svc` of app `app`, started now and at every boot. Its command lives in a
/// script of its own, so that no shell text ever has to survive systemd's quoting rules.
fn service_unit(app: &str, svc: &document::Service) -> Result<String, BuildFailure> {
    let unit = format!("deskd-app-{app}-{}", svc.name);
    let script_path = format!("{SERVICE_SCRIPTS}/{unit}.sh");
    let user = svc.user.as_deref().unwrap_or("root");
    let script = service_script(svc);
    let restart = match svc.restart.unwrap_or(Restart::Always) {
        Restart::Always => "always",
        Restart::OnFailure => "on-failure",
        Restart::No => "no",
    };
    let output = match &svc.log {
        Some(LogSetting::Enabled(false)) => "null".to_string(),
        Some(LogSetting::Path(p)) => {
            if p.contains(char::is_whitespace) {
                return Err(refuse(
                    &format!("apps.services.{}.log", svc.name),
                    "a log path with spaces cannot be given to systemd; choose one without",
                ));
            }
            format!("append:{}", guest_path(p))
        }
        _ => "journal".to_string(),
    };
    let mut unit_text = format!(
        "[Unit]\nDescription=template app {app}, service {name}\nAfter=network.target\n\n\
         [Service]\nExecStart=/bin/bash -l {script_path}\nUser={user}\nRestart={restart}\nRestartSec=2\n\
         StandardOutput={output}\nStandardError={output}\n",
        name = svc.name,
    );
    if let Some(sig) = &svc.stop_signal {
        let sig = if sig.starts_with("SIG") {
            sig.clone()
        } else {
            format!("SIG{sig}")
        };
        unit_text.push_str(&format!("KillSignal={sig}\n"));
    }
    unit_text.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    Ok(install_unit(
        &unit,
        &script_path,
        &script,
        &unit_text,
        Start::Now,
    ))
}

/// When a unit the build installs starts, besides at every boot: now, waited for or not.
enum Start {
    Now,
    NoWait,
}

/// The step text that installs unit `unit` (its file `unit_text`, running the root-owned
/// `script` at `script_path`), enables it for every boot and starts it now.
fn install_unit(
    unit: &str,
    script_path: &str,
    script: &str,
    unit_text: &str,
    start: Start,
) -> String {
    let mut out = write_file(script_path, script.as_bytes(), "0755", "root", "root");
    out.push_str(&write_file(
        &format!("/etc/systemd/system/{unit}.service"),
        unit_text.as_bytes(),
        "0644",
        "root",
        "root",
    ));
    out.push_str(&match start {
        Start::Now => format!("systemctl daemon-reload\nsystemctl enable --now {unit}.service\n"),
        Start::NoWait => format!(
            "systemctl daemon-reload\nsystemctl enable {unit}.service\nsystemctl start --no-block {unit}.service\n"
        ),
    });
    out
}

/// The environment of a program in the desktop session, as the agent's own unit has it.
const DESKTOP_SESSION_ENV: &str = "DISPLAY=:0 HOME=/home/user XDG_RUNTIME_DIR=/run/user/1000 \
     DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/1000/bus";

/// A systemd unit that starts `entry` of app `app`'s `autostart` in the desktop session, as the
/// desktop user, `delay` after the session is up: once now (so it runs in the golden snapshot and
/// in every computer restored from it) and at every boot. Not waited for (`--no-block`): the
/// delay is the program's, not the build's.
fn autostart_unit(app: &str, index: usize, entry: &document::Autostart) -> String {
    let (unit, script_path, script, unit_text) = autostart_files(app, index, entry);
    install_unit(&unit, &script_path, &script, &unit_text, Start::NoWait)
}

/// The unit name, script path, script and unit file of [`autostart_unit`].
fn autostart_files(
    app: &str,
    index: usize,
    entry: &document::Autostart,
) -> (String, String, String, String) {
    let unit = format!("deskd-app-{app}-autostart-{index}");
    let script_path = format!("{SERVICE_SCRIPTS}/{unit}.sh");
    let delay = entry.delay.as_ref().map(seconds).unwrap_or(0);
    let script = format!(
        "#!/bin/bash\nsleep {delay}\nexec bash -c {}\n",
        quote(&entry.run)
    );
    let unit_text = format!(
        "[Unit]\nDescription=template app {app}, autostart[{index}]\n\
         After=deskd-session.service deskd-display.service\nWants=deskd-session.service\n\n\
         [Service]\nExecStart=/bin/bash -l {script_path}\nUser=user\nWorkingDirectory=/home/user\n\
         Environment={DESKTOP_SESSION_ENV}\nRestart=no\nStandardOutput=journal\nStandardError=journal\n\n\
         [Install]\nWantedBy=graphical.target\n"
    );
    (unit, script_path, script, unit_text)
}

/// The timing of a health check: (every, timeout, retries) in seconds and tries.
fn health_timing(h: &document::Health) -> (u64, u64, u32) {
    let every = h.every.as_ref().map(seconds).unwrap_or(HEALTH_EVERY_SECS);
    let timeout = h
        .timeout
        .as_ref()
        .map(seconds)
        .unwrap_or(HEALTH_PROBE_TIMEOUT_SECS);
    (every, timeout, h.retries.unwrap_or(HEALTH_RETRIES))
}

/// One probe of the check, a shell command that succeeds when the app is healthy.
fn health_probe(h: &document::Health, field: &str) -> Result<String, BuildFailure> {
    let (_, timeout, _) = health_timing(h);
    let missing = |what: &str| {
        refuse(
            &format!("{field}.{what}"),
            "is required by this type of check",
        )
    };
    Ok(match h.kind {
        HealthKind::Http => format!(
            "curl -fsS -o /dev/null --max-time {timeout} {}",
            quote(h.url.as_deref().ok_or_else(|| missing("url"))?)
        ),
        HealthKind::Tcp => format!(
            "timeout {timeout} bash -c {}",
            quote(&format!(
                "</dev/tcp/127.0.0.1/{}",
                h.port.ok_or_else(|| missing("port"))?
            ))
        ),
        HealthKind::Command => format!(
            "timeout {timeout} bash -c {}",
            quote(h.command.as_deref().ok_or_else(|| missing("command"))?)
        ),
        HealthKind::Process => format!(
            "pgrep -f -- {} >/dev/null",
            quote(h.process.as_deref().ok_or_else(|| missing("process"))?)
        ),
    })
}

/// The build's wait for the app to become healthy: the check `every` seconds until it passes,
/// for [`HEALTH_PATIENCE_SECS`] or `retries + 1` tries, whichever is longer; and how long that
/// may take at most. (`retries` is the runtime watch's tolerance; a start-up deserves more.)
fn health_check(h: &document::Health, field: &str) -> Result<(String, Duration), BuildFailure> {
    let (every, timeout, retries) = health_timing(h);
    let check = health_probe(h, field)?;
    let patience = HEALTH_PATIENCE_SECS
        .max((u64::from(retries) + 1).saturating_mul(every.saturating_add(timeout)));
    let script = format!(
        "set +e\ntry=0\nwhile :; do\n  try=$((try + 1))\n  if {check}; then echo \"healthy (try $try)\"; exit 0; fi\n  \
         [ \"$SECONDS\" -ge {patience} ] && break\n  sleep {every}\ndone\n\
         echo \"not healthy within {patience} s ($try tries)\"\nexit 1\n"
    );
    Ok((
        script,
        SMALL_STEP_TIMEOUT.saturating_add(Duration::from_secs(
            patience.saturating_add(every).saturating_add(timeout),
        )),
    ))
}

/// What the watch does once the check has failed `retries + 1` times in a row (`on_fail`;
/// `alert` when absent: a line in the guest's journal, which is all an alert is yet).
fn on_fail_action(app: &str, on_fail: Option<&str>) -> String {
    match on_fail.unwrap_or("alert") {
        "restart_vm" => "echo \"rebooting the VM (on_fail: restart_vm)\"\n    systemctl reboot\n".into(),
        "none" => "echo \"nothing done (on_fail: none)\"\n".into(),
        other => match other.strip_prefix("restart_service:") {
            Some(service) => format!(
                "echo \"restarting deskd-app-{app}-{service} (on_fail: restart_service:{service})\"\n    \
                 systemctl restart deskd-app-{app}-{service}.service\n"
            ),
            None => format!(
                "logger -p user.err -t deskd-health {}\n",
                quote(&format!("template app {app} is not healthy"))
            ),
        },
    }
}

/// The script of the runtime watch of app `app`'s health: the check every `every` seconds, and
/// after `retries + 1` failures in a row the `on_fail` action, then the count starts again.
fn health_watch_script(
    app: &str,
    h: &document::Health,
    field: &str,
) -> Result<String, BuildFailure> {
    let (every, _, retries) = health_timing(h);
    let check = health_probe(h, field)?;
    let limit = u64::from(retries) + 1;
    let action = on_fail_action(app, h.on_fail.as_deref());
    Ok(format!(
        "#!/bin/bash\n# The runtime health watch of template app {app} ({field}).\nfailures=0\n\
         while :; do\n  sleep {every}\n  if {check}; then\n    \
         [ \"$failures\" -eq 0 ] || echo \"healthy again after $failures failed checks\"\n    \
         failures=0\n    continue\n  fi\n  failures=$((failures + 1))\n  \
         echo \"check $failures of {limit} failed\"\n  \
         if [ \"$failures\" -ge {limit} ]; then\n    echo \"not healthy after {limit} checks in a row\"\n    \
         {action}    failures=0\n  fi\ndone\n"
    ))
}

/// A unit that runs [`health_watch_script`] as root from now on (so in the golden snapshot and
/// every computer restored from it) and at every boot.
fn health_watch_unit(app: &str, h: &document::Health, field: &str) -> Result<String, BuildFailure> {
    let unit = format!("deskd-app-{app}-health");
    let script_path = format!("{SERVICE_SCRIPTS}/{unit}.sh");
    let unit_text = format!(
        "[Unit]\nDescription=template app {app}, health watch ({field})\nAfter=network.target\n\n\
         [Service]\nExecStart=/bin/bash -l {script_path}\nUser=root\nRestart=always\nRestartSec=5\n\
         StandardOutput=journal\nStandardError=journal\n\n[Install]\nWantedBy=multi-user.target\n"
    );
    let script = health_watch_script(app, h, field)?;
    Ok(install_unit(
        &unit,
        &script_path,
        &script,
        &unit_text,
        Start::Now,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::validate_bytes;

    fn doc(text: &str) -> Document {
        validate_bytes(text.as_bytes()).unwrap().document
    }

    #[test]
    fn steps_follow_the_documented_order() {
        let d = doc(r#"
api_version: orgo.ai/v1
name: ordered@1.0.0
env: {GREETING: "it's here"}
build: {apt: [jq], pip: [requests], run: ["echo one", "echo two"]}
files:
  - {to: "~/notes.txt", inline: "hi"}
  - {to: /etc/later.conf, inline: "x", when: runtime}
apps:
  - name: web
    install: "echo install"
    services: [{name: srv, run: "python3 -m http.server 8000", cwd: "~"}]
    autostart: [{run: "xdg-open http://127.0.0.1:8000"}]
    health: {type: http, url: "http://127.0.0.1:8000/", retries: 3, every: 1}
terminal: [{name: main, run: top}]
hooks:
  on_first_boot: "echo first"
  on_pre_snapshot: {run: "echo pre", timeout: 30s}
"#);
        let steps = plan(&d, &PackageSources::default()).unwrap();
        let labels: Vec<&str> = steps.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "env",
                "build.apt",
                "build.pip",
                "build.run[0]",
                "build.run[1]",
                "files[0] (/home/user/notes.txt)",
                "apps[0].install (web)",
                "apps[0].services[0] (web/srv)",
                "apps[0].autostart[0] (web)",
                "terminal[0] (main)",
                "hooks.on_first_boot",
                "apps[0].health (web)",
                "apps[0].health watch (web)",
                "hooks.on_pre_snapshot",
                "sync",
            ]
        );
        let by = |l: &str| steps.iter().find(|s| s.label == l).unwrap();
        assert!(by("build.apt").needs_network && by("build.pip").needs_network);
        assert!(!by("build.run[0]").needs_network);
        assert_eq!(by("build.apt").source, Source::Apt);
        assert!(by("env").script.contains("/etc/profile.d/"));
        assert!(by("files[0] (/home/user/notes.txt)")
            .script
            .contains("chown 'user':'user'"));
        assert_eq!(by("hooks.on_pre_snapshot").timeout, Duration::from_secs(30));
        assert_eq!(by("hooks.on_pre_snapshot").phase, Phase::Snapshot);
        assert_eq!(by("hooks.on_first_boot").timeout, HOOK_TIMEOUT);
        let unit = &by("apps[0].services[0] (web/srv)").script;
        assert!(
            unit.contains("systemctl enable --now deskd-app-web-srv.service"),
            "{unit}"
        );
        // At least the build's patience, however few the retries.
        assert!(by("apps[0].health (web)")
            .script
            .contains(&format!("-ge {HEALTH_PATIENCE_SECS} ]")));
        assert!(by("apps[0].health watch (web)")
            .script
            .contains("systemctl enable --now deskd-app-web-health.service"));
    }

    #[test]
    fn a_source_the_builder_cannot_fetch_is_refused_before_any_vm() {
        let d = doc("api_version: orgo.ai/v1\nname: far@1.0.0\nfiles:\n  - {to: /opt/x, from: \"https://example.com/x\"}\n");
        let e = plan(&d, &PackageSources::default()).unwrap_err();
        assert_eq!(e.phase, Phase::Compile);
        assert!(e.message.starts_with("files[0].from"), "{}", e.message);
        // A runtime file is not the build's business.
        let d = doc("api_version: orgo.ai/v1\nname: far@1.0.0\nfiles:\n  - {to: /opt/x, from: \"https://example.com/x\", when: runtime}\n");
        assert_eq!(
            plan(&d, &PackageSources::default()).unwrap().len(),
            1,
            "only the final sync"
        );
    }

    #[test]
    fn file_contents_survive_any_quoting_and_durations_parse() {
        let nasty = "it's \"quoted\" $HOME `x` \\ \n";
        let s = write_file("/opt/a b", nasty.as_bytes(), "0600", "root", "root");
        // Run the script's write (not the chown) in a real shell into a temporary directory.
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("a b");
        let script = write_file(
            path.to_str().unwrap(),
            nasty.as_bytes(),
            "0600",
            &whoami(),
            &whoami(),
        );
        let out = std::process::Command::new("bash")
            .arg("-ec")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), nasty);
        assert!(s.contains("'/opt/a b'"));
        assert_eq!(quote("a'b"), r"'a'\''b'");
        assert_eq!(seconds(&document::Duration::Text("2m".into())), 120);
        assert_eq!(seconds(&document::Duration::Text("500ms".into())), 1);
        assert_eq!(seconds(&document::Duration::Seconds(7)), 7);
    }

    #[test]
    fn an_autostart_program_runs_in_the_desktop_session_after_its_delay_now_and_at_every_boot() {
        let d = doc(r#"
api_version: orgo.ai/v1
name: auto@1.0.0
apps:
  - name: web
    autostart: [{run: "xdg-open 'http://127.0.0.1:8000'"}, {run: "xterm", delay: 2m}]
"#);
        let steps = plan(&d, &PackageSources::default()).unwrap();
        let app = &d.apps.as_ref().unwrap()[0];
        let entries = app.autostart.as_ref().unwrap();
        let (unit, path, script, unit_text) = autostart_files("web", 0, &entries[0]);
        assert_eq!(unit, "deskd-app-web-autostart-0");
        assert_eq!(
            path,
            format!("{SERVICE_SCRIPTS}/deskd-app-web-autostart-0.sh")
        );
        assert_eq!(
            script,
            "#!/bin/bash\nsleep 0\nexec bash -c 'xdg-open '\\''http://127.0.0.1:8000'\\'''\n"
        );
        for want in [
            "User=user\n",
            "Environment=DISPLAY=:0 ",
            "After=deskd-session.service",
            "Restart=no\n",
            "WantedBy=graphical.target\n",
        ] {
            assert!(unit_text.contains(want), "{want:?} not in {unit_text}");
        }
        let (_, _, later, _) = autostart_files("web", 1, &entries[1]);
        assert!(later.contains("sleep 120\n"), "{later}");
        let step = steps
            .iter()
            .find(|s| s.label == "apps[0].autostart[1] (web)")
            .unwrap();
        // Enabled for the boots to come, started now without waiting out its delay.
        assert!(step
            .script
            .contains("systemctl enable deskd-app-web-autostart-1.service\n"));
        assert!(step
            .script
            .contains("systemctl start --no-block deskd-app-web-autostart-1.service\n"));
    }

    fn health_of(on_fail: &str) -> document::Health {
        let d = doc(&format!(
            r#"
api_version: orgo.ai/v1
name: watched@1.0.0
apps:
  - name: web
    services: [{{name: srv, run: "true"}}]
    health: {{type: command, command: "test -e \"$WATCHED\"", every: 1, retries: 1, on_fail: "{on_fail}"}}
"#
        ));
        d.apps.unwrap()[0].health.clone().unwrap()
    }

    /// Runs `script` in bash for at most `secs` seconds with WATCHED=`watched`; its output.
    fn run_for(script: &str, secs: u32, watched: &std::path::Path) -> String {
        let out = std::process::Command::new("timeout")
            .arg(secs.to_string())
            .args(["bash", "-c", script])
            .env("WATCHED", watched)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_health_watch_acts_after_retries_plus_one_failures_in_a_row_and_counts_again() {
        let dir = tempfile::tempdir().unwrap();
        let watched = dir.path().join("healthy");
        let script = health_watch_script("web", &health_of("none"), "apps[0].health").unwrap();
        // Unhealthy throughout: every second check (retries 1) acts, then counting restarts.
        let out = run_for(&script, 5, &watched);
        assert!(out.starts_with("check 1 of 2 failed\ncheck 2 of 2 failed\nnot healthy after 2 checks in a row\nnothing done (on_fail: none)\ncheck 1 of 2 failed\n"), "{out}");
        // Healthy: silent.
        std::fs::write(&watched, "").unwrap();
        assert_eq!(run_for(&script, 3, &watched), "");
        // The actions, as they would run in the guest.
        let restart = on_fail_action("web", Some("restart_service:srv"));
        assert!(
            restart.contains("systemctl restart deskd-app-web-srv.service"),
            "{restart}"
        );
        assert!(on_fail_action("web", Some("restart_vm")).contains("systemctl reboot"));
        assert!(on_fail_action("web", None).contains("logger -p user.err -t deskd-health"));
    }

    #[test]
    fn huge_durations_from_a_document_saturate_instead_of_overflowing() {
        let huge = document::Duration::Text(format!("{}h", u64::MAX));
        assert_eq!(seconds(&huge), u64::MAX);
        let mut h = health_of("none");
        (h.every, h.timeout) = (Some(huge.clone()), Some(huge));
        assert!(health_check(&h, "apps[0].health").is_ok());
    }

    #[test]
    fn the_builds_health_wait_passes_once_healthy_and_fails_at_its_patience() {
        let dir = tempfile::tempdir().unwrap();
        let watched = dir.path().join("healthy");
        let (script, limit) = health_check(&health_of("none"), "apps[0].health").unwrap();
        assert!(limit >= Duration::from_secs(HEALTH_PATIENCE_SECS));
        std::fs::write(&watched, "").unwrap();
        assert_eq!(run_for(&script, 5, &watched), "healthy (try 1)\n");
        // Not healthy yet: it goes on trying (beyond retries + 1 tries) until its patience.
        std::fs::remove_file(&watched).unwrap();
        let quick = script.replace(&format!("-ge {HEALTH_PATIENCE_SECS} ]"), "-ge 3 ]");
        let out = run_for(&quick, 10, &watched);
        assert!(out.starts_with("not healthy within"), "{out}");
        assert!(out.contains("tries)"), "{out}");
    }

    #[test]
    fn a_service_reads_its_secret_from_the_env_file_whatever_it_holds() {
        let d = doc(r#"
api_version: orgo.ai/v1
name: svc@1.0.0
secrets: [{name: api-key}]
apps:
  - name: web
    services: [{name: srv, run: "true", env: {KEY: {secret: api-key}}}]
"#);
        let svc = &d.apps.as_ref().unwrap()[0].services.as_ref().unwrap()[0];
        assert!(service_unit("web", svc).is_ok());
        let script = service_script(svc);
        let line = script
            .lines()
            .find(|l| l.contains("export KEY="))
            .unwrap()
            .to_string();
        // The line as the service script has it, reading a stand-in for /root/.env.
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join(".env");
        let value = "it's $HOME\nand more\n\n";
        let mut given = std::collections::BTreeMap::new();
        given.insert("api-key".to_string(), value.to_string());
        let text =
            crate::templates::secrets::render_env(&d, &crate::templates::secrets::Secrets(given))
                .unwrap();
        std::fs::write(&env, text).unwrap();
        let line = line.replace("/root/.env", env.to_str().unwrap());
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("{line}\nprintf '%s' \"$KEY\""))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), value);
    }

    fn whoami() -> String {
        let out = std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}
