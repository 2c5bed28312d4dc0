//! The operator CLI (`deskd ls`, `create`, `show`, `start`, `stop`, `rm`, `screenshot`, `bash`,
//! `console`) against a real `deskd serve` on a temporary socket: output, `--json`, exit codes
//! and key handling, on the paths that need no VM (a host without hardware virtualization puts
//! computers in `error`; a stopped computer is not running anywhere). `tests/cli/rig-check`
//! drives `screenshot` and `bash` on a running computer in the rig.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use common::Daemon;
use serde_json::Value;

/// Exit codes, as src/cli/error.rs and the README define them.
const OK: i32 = 0;
const FAILED: i32 = 1;
const USAGE: i32 = 2;
const UNREACHABLE: i32 = 3;
const NOT_FOUND: i32 = 4;
const AUTH: i32 = 5;
const BASH_FAILED: i32 = 255;

fn kvm_capable() -> bool {
    deskd::vmm::host::cpu_has_hardware_virtualization()
}

struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.text(),
                self.stderr
            )
        })
    }

    #[track_caller]
    fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            code,
            "stdout: {}\nstderr: {}",
            self.text(),
            self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: o.stdout,
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// `deskd VERB ARGS...` with no key in the environment and `--socket` of `socket`.
fn bare(socket: &Path, verb: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deskd"));
    cmd.arg(verb)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("DESKD_API_KEY")
        .env_remove("ORGO_API_KEY")
        .env_remove("DESKD_SOCKET");
    cmd
}

/// `deskd VERB ARGS...` against `d`, its key in $DESKD_API_KEY.
fn cli(d: &Daemon, verb: &str, args: &[&str]) -> Run {
    bare(&d.socket, verb, args)
        .env("DESKD_API_KEY", &d.key)
        .output()
        .expect("run deskd")
        .into()
}

/// A computer made with `deskd create --json`; its JSON.
fn create(d: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    cli(d, "create", &all).expect(OK).json()
}

#[test]
fn ls_lists_nothing_then_the_computers_created() {
    let d = Daemon::start();
    let r = cli(&d, "ls", &[]).expect(OK);
    assert_eq!(r.text(), "ID  NAME  WORKSPACE  STATUS  CPU  RAM  DISK\n");
    assert!(r.stderr.contains("no computers yet"), "{}", r.stderr);
    assert_eq!(
        cli(&d, "ls", &["--json"]).expect(OK).json()["computers"],
        serde_json::json!([])
    );

    let a = create(&d, &["--name", "alpha", "--workspace", "one"]);
    let b = create(&d, &["--name", "beta", "--project", "two", "--cpu", "2"]);
    let table = cli(&d, "ls", &[]).expect(OK).text();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("ID ") && lines[0].contains("STATUS"),
        "{table}"
    );
    for (c, ws, cpu) in [(&a, "one", "1"), (&b, "two", "2")] {
        let id = c["id"].as_str().unwrap();
        let line = lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} not in {table}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[1], c["name"].as_str().unwrap());
        assert_eq!(cells[2], ws);
        assert_eq!(cells[3], c["status"].as_str().unwrap());
        assert_eq!(cells[4], cpu);
    }
    let listed = cli(&d, "ls", &["--json"]).expect(OK).json();
    assert_eq!(listed["computers"].as_array().unwrap().len(), 2);
    // Filtered by workspace name or ID.
    let only = cli(&d, "ls", &["--json", "--workspace", "two"])
        .expect(OK)
        .json();
    assert_eq!(only["computers"].as_array().unwrap().len(), 1);
    assert_eq!(only["computers"][0]["id"], b["id"]);
    let by_id = cli(
        &d,
        "ls",
        &["--json", "--workspace", a["workspace_id"].as_str().unwrap()],
    )
    .expect(OK)
    .json();
    assert_eq!(by_id["computers"][0]["id"], a["id"]);
    let r = cli(&d, "ls", &["--workspace", "nowhere"]).expect(NOT_FOUND);
    assert!(r.stderr.contains("nowhere"), "{}", r.stderr);
}

#[test]
fn create_makes_the_record_with_the_options_given() {
    let d = Daemon::start();
    // No workspace yet: `default` is created.
    let c = create(
        &d,
        &[
            "--name",
            "box",
            "--cpu",
            "2",
            "--ram",
            "8",
            "--disk",
            "12",
            "--resolution",
            "1920x1080x24",
            "--template",
            "system/desktop@1.0.0",
            "--auto-stop",
            "15",
        ],
    );
    let id = c["id"].as_str().unwrap();
    let stored = d.get(&format!("/api/computers/{id}")).expect(200);
    assert_eq!(stored["name"], "box");
    assert_eq!(stored["project_name"], "default");
    assert_eq!(
        (stored["cpu"].as_u64(), stored["ram"].as_u64()),
        (Some(2), Some(8))
    );
    assert_eq!(stored["disk_size_gb"], 12);
    assert_eq!(stored["resolution"], "1920x1080x24");
    assert_eq!(stored["template_ref"], "system/desktop@1.0.0");
    assert_eq!(stored["auto_stop_minutes"], 15);
    assert_eq!(c["workspace_id"], stored["workspace_id"]);

    // One workspace: it is used; a name given by its workspace ID works too; a new name is made.
    let second = create(&d, &[]);
    assert_eq!(second["workspace_id"], c["workspace_id"]);
    let name = second["name"].as_str().unwrap();
    assert!(
        name.len() == 13 && name.starts_with("computer-") && name[9..].parse::<u32>().is_ok(),
        "an SDK-style default name: {name}"
    );
    let by_id = create(&d, &["--workspace", c["workspace_id"].as_str().unwrap()]);
    assert_eq!(by_id["workspace_id"], c["workspace_id"]);
    let fresh = create(&d, &["--workspace", "fresh"]);
    assert_ne!(fresh["workspace_id"], c["workspace_id"]);
    assert_eq!(fresh["project_name"], "fresh");

    // Human output names the computer; an unknown workspace ID is not a name to create.
    let r = cli(&d, "create", &["--name", "human"]).expect(OK);
    assert!(r.text().starts_with("id "), "{}", r.text());
    assert!(r.text().contains("\nname         human\n"), "{}", r.text());
    let r = cli(
        &d,
        "create",
        &["--workspace", "0b6f2c1e-9a3d-4c2b-8e0f-1a2b3c4d5e6f"],
    )
    .expect(NOT_FOUND);
    assert!(r.stderr.contains("no workspace has the ID"), "{}", r.stderr);
    // The daemon's own refusal, with its message.
    let r = cli(&d, "create", &["--cpu", "3"]).expect(FAILED);
    assert!(
        r.stderr
            .starts_with("deskd: cpu must be one of 1, 2, 4, 8, 16"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());
    cli(&d, "create", &["--cpu", "lots"]).expect(USAGE);
}

#[test]
fn create_wait_fails_with_the_reason_when_the_computer_cannot_start() {
    if kvm_capable() {
        eprintln!("SKIPPED create --wait failure: this host has hardware virtualization, computers may boot");
        return;
    }
    let d = Daemon::start();
    let r = cli(&d, "create", &["--name", "w", "--wait"]).expect(FAILED);
    assert!(
        r.stderr.contains("the computer is in error")
            && r.stderr.contains("hardware virtualization"),
        "{}",
        r.stderr
    );
    // The record exists and is printed all the same.
    assert!(r.text().contains("\nname         w\n"), "{}", r.text());
    let r = cli(&d, "create", &["--name", "x"]).expect(OK);
    assert!(
        r.stderr.contains("created but could not start"),
        "{}",
        r.stderr
    );
    assert!(r.text().contains("status       error: "), "{}", r.text());
}

#[test]
fn show_finds_a_computer_by_id_name_or_instance_id() {
    let d = Daemon::start();
    let c = create(&d, &["--name", "box"]);
    let id = c["id"].as_str().unwrap();
    let api = d.get(&format!("/api/computers/{id}")).expect(200);
    for named in [id, "box", c["instance_id"].as_str().unwrap()] {
        let shown = cli(&d, "show", &["--json", named]).expect(OK).json();
        assert_eq!(shown["id"], api["id"], "{named}");
        assert_eq!(shown["vnc_password"], api["vnc_password"]);
    }
    let human = cli(&d, "show", &["box"]).expect(OK).text();
    assert!(
        human.starts_with(&format!("id           {id}\nname         box\n")),
        "{human}"
    );
    assert!(human.contains("\nworkspace    default ("), "{human}");
    assert!(
        !human.contains(api["vnc_password"].as_str().unwrap()),
        "no secrets in the summary"
    );

    let r = cli(&d, "show", &["nobody"]).expect(NOT_FOUND);
    assert!(r.stderr.contains("\"nobody\""), "{}", r.stderr);
    let r = cli(&d, "show", &["0b6f2c1e-9a3d-4c2b-8e0f-1a2b3c4d5e6f"]).expect(NOT_FOUND);
    assert_eq!(
        r.stderr, "deskd: Computer not found\n",
        "the daemon's message"
    );
    // The same name in two workspaces needs the ID.
    create(&d, &["--name", "box", "--workspace", "other"]);
    let r = cli(&d, "show", &["box"]).expect(USAGE);
    assert!(
        r.stderr.contains("2 computers are named \"box\""),
        "{}",
        r.stderr
    );
    cli(&d, "show", &[]).expect(USAGE);
}

#[test]
fn stop_start_rm_say_what_happened() {
    let d = Daemon::start();
    let c = create(&d, &["--name", "box"]);
    let id = c["id"].as_str().unwrap();
    let r = cli(&d, "stop", &["box", "--wait"]).expect(OK);
    assert_eq!(r.text(), format!("{id} stopped\n"));
    let r = cli(&d, "stop", &[id]).expect(FAILED);
    assert_eq!(r.stderr, "deskd: The computer is already stopped.\n");
    let r = cli(&d, "stop", &["--json", id]).expect(FAILED);
    assert!(r.stdout.is_empty(), "errors go to stderr only");
    if kvm_capable() {
        eprintln!("SKIPPED start failure: this host has hardware virtualization");
    } else {
        let r = cli(&d, "start", &[id]).expect(FAILED);
        assert!(
            r.stderr.contains("could not be started")
                && r.stderr.contains("hardware virtualization"),
            "{}",
            r.stderr
        );
        assert_eq!(
            d.get(&format!("/api/computers/{id}")).expect(200)["status"],
            "error"
        );
        let stopped = cli(&d, "stop", &["--json", id]).expect(OK).json();
        assert_eq!(
            (stopped["success"].as_bool(), stopped["status"].as_str()),
            (Some(true), Some("stopped"))
        );
    }
    let r = cli(&d, "rm", &["box"]).expect(OK);
    assert_eq!(r.text(), format!("{id} deleted\n"));
    d.get(&format!("/api/computers/{id}")).expect(404);
    cli(&d, "rm", &[id]).expect(NOT_FOUND);
    cli(&d, "show", &["box"]).expect(NOT_FOUND);
    cli(&d, "start", &[id]).expect(NOT_FOUND);
    let other = create(&d, &["--name", "two"]);
    let r = cli(&d, "rm", &["--json", "two"]).expect(OK).json();
    assert_eq!(r["success"], true);
    d.get(&format!("/api/computers/{}", other["id"].as_str().unwrap()))
        .expect(404);
}

#[test]
fn the_key_comes_from_the_flag_the_environment_or_roots_key_file() {
    let d = Daemon::start();
    let run = |cmd: &mut Command| -> Run { cmd.output().expect("run deskd").into() };
    let ls = || bare(&d.socket, "ls", &["--json", "--data-dir", "/nonexistent"]);
    run(ls().env("DESKD_API_KEY", &d.key)).expect(OK);
    run(ls().env("ORGO_API_KEY", &d.key)).expect(OK);
    run(ls().arg("--api-key").arg(&d.key)).expect(OK);
    // DESKD_API_KEY comes before ORGO_API_KEY, the flag before both.
    run(ls()
        .env("DESKD_API_KEY", &d.key)
        .env("ORGO_API_KEY", "sk_live_wrong"))
    .expect(OK);
    let r = run(ls()
        .env("DESKD_API_KEY", "sk_live_wrong")
        .env("ORGO_API_KEY", &d.key))
    .expect(AUTH);
    assert_eq!(
        r.stderr,
        "deskd: Invalid API key. (the key came from $DESKD_API_KEY)\n"
    );
    run(ls()
        .env("DESKD_API_KEY", "sk_live_wrong")
        .arg("--api-key")
        .arg(&d.key))
    .expect(OK);
    let r = run(ls().arg("--api-key").arg("sk_live_wrong")).expect(AUTH);
    assert!(
        r.stderr.contains("Invalid API key") && r.stderr.contains("--api-key"),
        "{}",
        r.stderr
    );

    // No key anywhere: a clear message before anything is sent.
    let empty = tempfile::tempdir().unwrap();
    let r = run(bare(Path::new("/nonexistent/sock"), "ls", &[])
        .arg("--data-dir")
        .arg(empty.path()))
    .expect(AUTH);
    assert!(
        r.stderr
            .starts_with("deskd: no API key: pass --api-key KEY or set DESKD_API_KEY"),
        "{}",
        r.stderr
    );

    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED the key file test: it needs root (the file is root-only)");
        return;
    }
    let r = run(bare(&d.socket, "ls", &["--json"])
        .arg("--data-dir")
        .arg(&d.data))
    .expect(OK);
    assert!(r.json()["computers"].is_array());
    // Not root: the file is not read, and the message says why.
    let nobody = bare(&d.socket, "ls", &[])
        .arg("--data-dir")
        .arg(&d.data)
        .uid(65534)
        .gid(65534)
        .output();
    let nobody: Run = match nobody {
        Ok(o) => o.into(),
        Err(e) => {
            eprintln!("SKIPPED the non-root key test: deskd cannot run as nobody here ({e})");
            return;
        }
    };
    let r = nobody.expect(AUTH);
    assert!(r.stderr.contains("Run as root"), "{}", r.stderr);
}

#[test]
fn no_daemon_means_exit_3_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("deskd.sock");
    let run = |socket: &Path, verb: &str, args: &[&str]| -> Run {
        bare(socket, verb, args)
            .env("DESKD_API_KEY", "sk_live_x")
            .output()
            .expect("run deskd")
            .into()
    };
    let r = run(&missing, "ls", &[]).expect(UNREACHABLE);
    assert!(
        r.stderr.contains("no socket at") && r.stderr.contains("deskd serve"),
        "{}",
        r.stderr
    );
    // A socket file nobody listens on (a daemon that died).
    drop(std::os::unix::net::UnixListener::bind(&missing).unwrap());
    let r = run(&missing, "show", &["box"]).expect(UNREACHABLE);
    assert!(r.stderr.contains("nothing listens on"), "{}", r.stderr);
    // `bash` keeps its own statuses for the command: deskd's failures are 255.
    let r = run(&missing, "bash", &["box", "--", "true"]).expect(BASH_FAILED);
    assert!(r.stderr.contains("nothing listens on"), "{}", r.stderr);
    // $DESKD_SOCKET names the socket when --socket is not given.
    let r: Run = Command::new(env!("CARGO_BIN_EXE_deskd"))
        .args(["ls"])
        .env("DESKD_SOCKET", dir.path().join("elsewhere.sock"))
        .env("DESKD_API_KEY", "sk_live_x")
        .output()
        .unwrap()
        .into();
    let r = r.expect(UNREACHABLE);
    assert!(r.stderr.contains("elsewhere.sock"), "{}", r.stderr);
}

#[test]
fn screenshot_bash_console_on_a_computer_that_is_not_running() {
    let d = Daemon::start();
    let c = create(&d, &["--name", "box"]);
    let id = c["id"].as_str().unwrap();
    cli(&d, "stop", &[id, "--wait"]).expect(OK);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shot.png");
    let file_arg = file.to_str().unwrap();

    let r = cli(&d, "screenshot", &["box", "-o", file_arg]).expect(FAILED);
    assert_eq!(
        r.stderr,
        "deskd: Desktop instance not available (the computer's status is stopped)\n"
    );
    assert!(!file.exists(), "no file for a failed screenshot");
    let r = cli(&d, "screenshot", &[id]).expect(FAILED);
    assert!(
        r.stdout.is_empty() && r.stderr.contains("Desktop instance not available"),
        "{}",
        r.stderr
    );

    let r = cli(&d, "bash", &["box", "--", "echo", "hi"]).expect(BASH_FAILED);
    assert!(r.stdout.is_empty());
    assert_eq!(
        r.stderr,
        "deskd: Desktop instance not available (the computer's status is stopped)\n"
    );
    cli(&d, "bash", &["box"]).expect(USAGE);
    let r = cli(&d, "bash", &["nobody", "--", "true"]).expect(BASH_FAILED);
    assert!(r.stderr.contains("\"nobody\""), "{}", r.stderr);

    // Never booted here: an empty log, as text or JSON.
    let r = cli(&d, "console", &["box"]).expect(OK);
    if !kvm_capable() {
        assert!(r.stdout.is_empty(), "{}", r.text());
    }
    let log = cli(&d, "console", &["--json", "--tail", "100", id])
        .expect(OK)
        .json();
    assert_eq!(log["id"], id);
    assert!(log["log"].is_string() && log["size"].is_u64(), "{log}");
    let r = cli(&d, "console", &["box", "--tail", "0"]).expect(FAILED);
    assert!(
        r.stderr.contains("bytes must be a whole number"),
        "{}",
        r.stderr
    );
    cli(&d, "console", &["box", "--follow", "--json"]).expect(USAGE);
    cli(&d, "console", &["nobody"]).expect(NOT_FOUND);
}

#[test]
fn screenshot_will_not_write_an_image_to_a_terminal() {
    // `script` (util-linux, essential on Debian) gives the command a terminal as stdout.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED the terminal test: no `script` command to make a terminal with");
        return;
    }
    let d = Daemon::start();
    let line = format!(
        "DESKD_API_KEY={} {} screenshot --socket {} some-id",
        d.key,
        env!("CARGO_BIN_EXE_deskd"),
        d.socket.display()
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .expect("run script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(USAGE), "{text}");
    assert!(
        text.contains("refusing to write image bytes to a terminal"),
        "{text}"
    );
}

#[test]
fn console_prints_the_serial_log_and_follows_it() {
    use std::io::{Read, Write};
    let d = Daemon::start();
    let c = create(&d, &["--name", "box"]);
    let id = c["id"].as_str().unwrap();
    cli(&d, "stop", &[id, "--wait"]).expect(OK);
    // Stands in for the VMM, which writes the guest's serial output to this file.
    let dir = d.data.join("computers").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("console.log");
    std::fs::write(&path, "Linux version 6.1\nboot: é ok\n").unwrap();
    assert_eq!(
        cli(&d, "console", &["box"]).expect(OK).text(),
        "Linux version 6.1\nboot: é ok\n"
    );
    assert_eq!(
        cli(&d, "console", &["box", "--tail", "4"])
            .expect(OK)
            .stdout,
        b" ok\n"
    );

    let mut child = bare(&d.socket, "console", &["box", "--follow", "--tail", "12"])
        .env("DESKD_API_KEY", &d.key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut read_until = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !String::from_utf8_lossy(&seen).contains(want) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => seen.extend(chunk),
                Err(_) => panic!("no {want:?} in {:?}", String::from_utf8_lossy(&seen)),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    };
    assert_eq!(
        read_until("ok\n"),
        "boot: é ok\n",
        "the first answer honours --tail"
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"login: ")
        .unwrap();
    assert_eq!(
        read_until("login: "),
        "boot: é ok\nlogin: ",
        "only what grew, once"
    );
    // The VMM rotates a full log to console.log.1 and starts a new one; the daemon reads across
    // both, and only the new line is printed.
    std::fs::rename(&path, dir.join("console.log.1")).unwrap();
    std::fs::write(&path, "after rotation\n").unwrap();
    assert_eq!(
        read_until("rotation\n"),
        "boot: é ok\nlogin: after rotation\n"
    );
    let _ = child.kill();
    let _ = child.wait();
}
