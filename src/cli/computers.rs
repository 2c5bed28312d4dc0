//! The lifecycle verbs (`ls`, `create`, `show`, `start`, `stop`, `rm`), finding a computer or a
//! workspace by name, and waiting for a computer to reach a status.

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Map, Value};

use super::client::Client;
use super::error::CliError;
use super::{output, CreateArgs, LsArgs, Target, TransitionArgs, Wait};

/// How often `--wait` looks at the computer.
const POLL: Duration = Duration::from_millis(500);

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

fn list_of(v: &Value, key: &str) -> Vec<Value> {
    v.get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The ID of the computer the user named: an ID as it is (the daemon says whether it exists),
/// else the one computer with that name or instance ID.
pub fn computer_id(client: &Client, named: &str) -> Result<String, CliError> {
    if is_uuid(named) {
        return Ok(named.to_string());
    }
    let all = list_of(
        &client.json(Method::GET, "/api/computers", None)?,
        "computers",
    );
    let matches: Vec<&Value> = all
        .iter()
        .filter(|c| c["name"].as_str() == Some(named) || c["instance_id"].as_str() == Some(named))
        .collect();
    match matches.as_slice() {
        [] => Err(CliError::NotFound(format!(
            "no computer has the ID, name or instance ID {named:?} (`deskd ls` lists them)"
        ))),
        [one] => Ok(output::text(one, "id")),
        many => Err(CliError::Usage(format!(
            "{} computers are named {named:?} (in workspaces {}): name one by its ID",
            many.len(),
            many.iter()
                .map(|c| output::text(c, "project_name"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

pub fn ls(client: &Client, args: &LsArgs) -> Result<(), CliError> {
    let path = match &args.workspace {
        None => "/api/computers".to_string(),
        Some(w) => format!("/api/computers?workspace_id={}", workspace_id(client, w)?),
    };
    let answer = client.json(Method::GET, &path, None)?;
    if args.conn.json {
        return output::json(&answer);
    }
    let computers = list_of(&answer, "computers");
    if computers.is_empty() {
        let here = if args.workspace.is_some() {
            " in that workspace"
        } else {
            ""
        };
        eprintln!("deskd: no computers{here} yet (`deskd create` makes one)");
    }
    output::stdout(output::table(&computers).as_bytes())
}

/// The ID of an existing workspace, by ID or name.
fn workspace_id(client: &Client, named: &str) -> Result<String, CliError> {
    let all = list_of(
        &client.json(Method::GET, "/api/workspaces", None)?,
        "workspaces",
    );
    all.iter()
        .find(|w| w["id"].as_str() == Some(named))
        .or_else(|| all.iter().find(|w| w["name"].as_str() == Some(named)))
        .map(|w| output::text(w, "id"))
        .ok_or_else(|| {
            CliError::NotFound(format!(
                "no workspace has the ID or name {named:?} (`deskd ls` shows each computer's)"
            ))
        })
}

/// The workspace a new computer goes to: the one named (created when a name is new), else the
/// only one there is, else `default` (created when missing).
fn workspace_for_create(
    client: &Client,
    named: Option<&str>,
    quiet: bool,
) -> Result<String, CliError> {
    let all = list_of(
        &client.json(Method::GET, "/api/workspaces", None)?,
        "workspaces",
    );
    let by_name = |n: &str| all.iter().find(|w| w["name"].as_str() == Some(n));
    let name = match named {
        Some(n) => {
            if let Some(w) = all
                .iter()
                .find(|w| w["id"].as_str() == Some(n))
                .or_else(|| by_name(n))
            {
                return Ok(output::text(w, "id"));
            }
            if is_uuid(n) {
                return Err(CliError::NotFound(format!("no workspace has the ID {n}")));
            }
            n
        }
        None => match all.as_slice() {
            [only] => return Ok(output::text(only, "id")),
            _ => {
                if let Some(w) = by_name("default") {
                    return Ok(output::text(w, "id"));
                }
                if !all.is_empty() {
                    return Err(CliError::Usage(format!(
                        "there are {} workspaces and none is named \"default\": choose one with --workspace ({})",
                        all.len(),
                        all.iter().map(|w| output::text(w, "name")).collect::<Vec<_>>().join(", ")
                    )));
                }
                "default"
            }
        },
    };
    let created = client.json(
        Method::POST,
        "/api/workspaces",
        Some(&json!({ "name": name })),
    )?;
    if !quiet {
        eprintln!(
            "deskd: created workspace {name:?} ({})",
            output::text(&created, "id")
        );
    }
    Ok(output::text(&created, "id"))
}

pub fn create(client: &Client, args: &CreateArgs) -> Result<(), CliError> {
    let workspace = workspace_for_create(client, args.workspace.as_deref(), args.conn.json)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("computer-{}", rand::random_range(1000..10000)));
    let mut body = Map::new();
    body.insert("workspace_id".into(), json!(workspace));
    body.insert("name".into(), json!(name));
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    };
    put("cpu", args.cpu.map(|n| json!(n)));
    put("ram", args.ram.map(|n| json!(n)));
    put("disk_size_gb", args.disk.map(|n| json!(n)));
    put("resolution", args.resolution.as_ref().map(|s| json!(s)));
    put("template_ref", args.template.as_ref().map(|s| json!(s)));
    put("auto_stop_minutes", args.auto_stop.map(|n| json!(n)));
    let created = client.json(Method::POST, "/api/computers", Some(&Value::Object(body)))?;
    let id = output::text(&created, "id");
    let (computer, outcome) = if args.wait.wait {
        match wait_for(client, &id, "running", &args.wait, args.conn.json) {
            Ok(c) => (c, Ok(())),
            Err((c, e)) => (c.unwrap_or(created), Err(e)),
        }
    } else {
        (created, Ok(()))
    };
    print_computer(&computer, args.conn.json)?;
    if outcome.is_ok() && !args.wait.wait && computer["status"] == "error" {
        eprintln!(
            "deskd: the computer was created but could not start: {}",
            output::text(&computer, "status_reason")
        );
    }
    outcome
}

fn print_computer(c: &Value, json: bool) -> Result<(), CliError> {
    if json {
        output::json(c)
    } else {
        output::stdout(output::summary(c).as_bytes())
    }
}

pub fn show(client: &Client, t: &Target) -> Result<(), CliError> {
    let id = computer_id(client, &t.computer)?;
    let c = client.json(Method::GET, &format!("/api/computers/{id}"), None)?;
    print_computer(&c, t.conn.json)
}

#[derive(Clone, Copy)]
pub enum Transition {
    Start,
    Stop,
}

pub fn transition(client: &Client, args: &TransitionArgs, op: Transition) -> Result<(), CliError> {
    let json = args.target.conn.json;
    let id = computer_id(client, &args.target.computer)?;
    let (verb, target) = match op {
        Transition::Start => ("start", "running"),
        Transition::Stop => ("stop", "stopped"),
    };
    let answer = client.json(
        Method::POST,
        &format!("/api/computers/{id}/{verb}"),
        Some(&json!({})),
    )?;
    if !args.wait.wait {
        return if json {
            output::json(&answer)
        } else {
            output::stdout(format!("{id} {}\n", output::text(&answer, "status")).as_bytes())
        };
    }
    let (computer, outcome) = match wait_for(client, &id, target, &args.wait, json) {
        Ok(c) => (Some(c), Ok(())),
        Err((c, e)) => (c, Err(e)),
    };
    if let Some(c) = computer {
        if json {
            output::json(&c)?;
        } else {
            output::stdout(format!("{id} {}\n", output::text(&c, "status")).as_bytes())?;
        }
    }
    outcome
}

pub fn rm(client: &Client, t: &Target) -> Result<(), CliError> {
    let id = computer_id(client, &t.computer)?;
    let answer = client.json(Method::DELETE, &format!("/api/computers/{id}"), None)?;
    if t.conn.json {
        output::json(&answer)
    } else {
        output::stdout(format!("{id} deleted\n").as_bytes())
    }
}

/// What a computer on its way to `target` is doing now.
#[derive(Debug, PartialEq)]
enum Progress {
    Arrived,
    OnItsWay,
    Failed(String),
}

fn progress(c: &Value, target: &str) -> Progress {
    let status = c["status"].as_str().unwrap_or("");
    if status == target {
        return Progress::Arrived;
    }
    match status {
        "creating" | "starting" | "restarting" | "stopping" => Progress::OnItsWay,
        "error" => Progress::Failed(format!(
            "the computer is in error: {}",
            output::text(c, "status_reason")
        )),
        other => Progress::Failed(format!("the computer is {other}, not {target}")),
    }
}

/// Polls the computer until it is `target`. On failure, the computer as last seen (if any) and
/// why.
fn wait_for(
    client: &Client,
    id: &str,
    target: &str,
    wait: &Wait,
    quiet: bool,
) -> Result<Value, (Option<Value>, CliError)> {
    let deadline = Instant::now() + Duration::from_secs(wait.wait_timeout);
    let mut said = false;
    loop {
        let c = client
            .json(Method::GET, &format!("/api/computers/{id}"), None)
            .map_err(|e| (None, e))?;
        match progress(&c, target) {
            Progress::Arrived => return Ok(c),
            Progress::Failed(why) => return Err((Some(c), CliError::Failed(why))),
            Progress::OnItsWay if Instant::now() >= deadline => {
                let why = format!(
                    "the computer is still {} after {} s (it goes on; `deskd show {id}` tells)",
                    output::text(&c, "status"),
                    wait.wait_timeout
                );
                return Err((Some(c), CliError::TimedOut(why)));
            }
            Progress::OnItsWay => {
                if !said && !quiet {
                    eprintln!(
                        "deskd: waiting for {id} to be {target} (now {})",
                        output::text(&c, "status")
                    );
                    said = true;
                }
                std::thread::sleep(POLL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_goes_on_through_transitional_states_only() {
        let c = |s: &str| json!({"status": s, "status_reason": "why"});
        assert_eq!(progress(&c("running"), "running"), Progress::Arrived);
        assert_eq!(progress(&c("starting"), "running"), Progress::OnItsWay);
        assert_eq!(progress(&c("stopping"), "stopped"), Progress::OnItsWay);
        assert_eq!(
            progress(&c("error"), "running"),
            Progress::Failed("the computer is in error: why".into())
        );
        assert!(matches!(
            progress(&c("stopped"), "running"),
            Progress::Failed(_)
        ));
        assert!(matches!(
            progress(&c("deleting"), "stopped"),
            Progress::Failed(_)
        ));
    }

    #[test]
    fn ids_are_told_from_names() {
        assert!(is_uuid("0b6f2c1e-9a3d-4c2b-8e0f-1a2b3c4d5e6f"));
        assert!(!is_uuid("my-box"));
        assert!(!is_uuid("ab12cd34"));
    }
}
