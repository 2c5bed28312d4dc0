//! The verbs that reach inside a computer: `screenshot` (image bytes to stdout or a file),
//! `bash` (output, then the command's own exit status) and `console` (the serial log, or
//! following it).

use std::io::IsTerminal;
use std::time::Duration;

use base64::Engine;
use deskd_agent::protocol::{BashRequest, BashResponse};
use hyper::Method;
use serde_json::Value;

use super::client::Client;
use super::computers::computer_id;
use super::error::{exit, CliError};
use super::follow::Follower;
use super::{output, BashArgs, ConsoleArgs, ImageFormat, ScreenshotArgs};

/// How often `console --follow` asks for more.
const FOLLOW_POLL: Duration = Duration::from_secs(1);
/// The most the daemon's console route returns at once.
const CONSOLE_MAX: u64 = 1 << 20;

/// Refuses (before any request) to pour image bytes onto a terminal.
pub fn check_destination(args: &ScreenshotArgs) -> Result<(), CliError> {
    if args.output.is_none() && !args.target.conn.json && std::io::stdout().is_terminal() {
        return Err(CliError::Usage(
            "refusing to write image bytes to a terminal: redirect stdout (deskd screenshot ID > shot.png) or pass -o FILE".into(),
        ));
    }
    Ok(())
}

pub fn screenshot(client: &Client, args: &ScreenshotArgs) -> Result<(), CliError> {
    check_destination(args)?;
    let id = computer_id(client, &args.target.computer)?;
    let format = match args.format {
        ImageFormat::Png => "png",
        ImageFormat::Jpeg => "jpeg",
    };
    let answer = client.json(
        Method::GET,
        &format!("/api/computers/{id}/screenshot?format={format}"),
        None,
    )?;
    let image = answer
        .get("image")
        .and_then(Value::as_str)
        .ok_or_else(|| CliError::Failed("the daemon's screenshot answer has no image".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(image)
        .map_err(|e| CliError::Failed(format!("the daemon's screenshot is not base64: {e}")))?;
    if let Some(path) = &args.output {
        std::fs::write(path, &bytes).map_err(|e| {
            CliError::Failed(format!(
                "cannot write the screenshot to {}: {e}",
                path.display()
            ))
        })?;
    }
    if args.target.conn.json {
        return output::json(&answer);
    }
    match &args.output {
        Some(path) => output::stdout(
            format!(
                "{}: {}x{} {}, {} bytes\n",
                path.display(),
                output::text(&answer, "width"),
                output::text(&answer, "height"),
                output::text(&answer, "mime_type"),
                bytes.len()
            )
            .as_bytes(),
        ),
        None => output::stdout(&bytes),
    }
}

/// The shell line sent for `args`: one argument as it is, several quoted as words.
pub fn shell_line(words: &[String]) -> Result<String, CliError> {
    match words {
        [line] => Ok(line.clone()),
        _ => shlex::try_join(words.iter().map(String::as_str))
            .map_err(|e| CliError::Usage(format!("cannot quote the command: {e}"))),
    }
}

/// Runs the command; returns its exit status as this process's.
pub fn bash(client: &Client, args: &BashArgs) -> Result<u8, CliError> {
    let id = computer_id(client, &args.target.computer)?;
    let request = BashRequest {
        command: shell_line(&args.command)?,
        timeout: args.timeout,
    };
    let body = serde_json::to_value(&request)
        .map_err(|e| CliError::Failed(format!("cannot encode the request: {e}")))?;
    let answer = client.json(
        Method::POST,
        &format!("/api/computers/{id}/bash"),
        Some(&body),
    )?;
    let ran: BashResponse = serde_json::from_value(answer.clone()).map_err(|e| {
        CliError::Failed(format!(
            "the daemon's bash answer has an unexpected shape ({e}): {answer}"
        ))
    })?;
    if args.target.conn.json {
        output::json(&answer)?;
    } else {
        output::stdout(ran.output.as_bytes())?;
    }
    if ran.truncated {
        eprintln!("deskd: the output was cut at the agent's limit");
    }
    if let Some(e) = &ran.error {
        eprintln!("deskd: {e}");
    }
    // Statuses outside 0..=255 cannot be an exit status; 255 is also what `ssh` gives then.
    Ok(u8::try_from(ran.exit_code).unwrap_or(exit::BASH_FAILED))
}

pub fn console(client: &Client, args: &ConsoleArgs) -> Result<(), CliError> {
    let id = computer_id(client, &args.target.computer)?;
    let bytes = args.tail.unwrap_or(CONSOLE_MAX);
    let path = format!("/api/computers/{id}/console?bytes={bytes}");
    if args.target.conn.json {
        return output::json(&client.json(Method::GET, &path, None)?);
    }
    if !args.follow {
        let reply = client.ok(Method::GET, &format!("{path}&format=text"), None)?;
        return output::stdout(&reply.body);
    }
    let mut follower = Follower::new(bytes);
    loop {
        // Every poll asks for the whole tail (a local socket makes that cheap).
        let answer = client.json(
            Method::GET,
            &format!("/api/computers/{id}/console?bytes={CONSOLE_MAX}"),
            None,
        )?;
        let log = answer.get("log").and_then(Value::as_str).unwrap_or("");
        let size = answer.get("size").and_then(Value::as_u64).unwrap_or(0);
        output::stdout(follower.fresh(log, size).as_bytes())?;
        std::thread::sleep(FOLLOW_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_argument_is_a_shell_line_several_are_words() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(shell_line(&words(&["ls | wc -l"])).unwrap(), "ls | wc -l");
        assert_eq!(shell_line(&words(&["echo", "hi"])).unwrap(), "echo hi");
        assert_eq!(
            shell_line(&words(&["sh", "-c", "exit 7"])).unwrap(),
            "sh -c 'exit 7'"
        );
        assert!(shell_line(&words(&["a\0b", "c"])).is_err());
    }
}
