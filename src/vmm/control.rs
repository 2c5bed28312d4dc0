//! The per-VMM control socket: a Unix stream socket speaking JSON lines.
//!
//! Requests, one JSON object per line:
//! - `{"cmd":"status"}` -> `{"ok":true,"state":"running"|"paused"|"shutting-down"|"stopping",
//!   "vcpus":N,"memory_mib":M,"uptime_ms":T,"pid":P}`
//! - `{"cmd":"pause"}`, `{"cmd":"resume"}` -> `{"ok":true}`
//! - `{"cmd":"shutdown"}` presses the ACPI power button (hard stop after the configured timeout);
//!   `{"cmd":"shutdown","force":true}` stops the VM at once. -> `{"ok":true}`
//!
//! Errors answer `{"ok":false,"error":"..."}` and keep the connection open.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use vmm_sys_util::eventfd::EventFd;

/// Longest request line accepted; a client sending more is cut off.
const MAX_LINE: u64 = 64 * 1024;

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot listen on the control socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot start the control thread: {0}")]
    Spawn(io::Error),
}

/// What the control socket can do to a VM.
pub trait Controllable: Send + Sync + 'static {
    fn status(&self) -> Value;
    fn pause(&self) -> Result<(), String>;
    fn resume(&self);
    fn shutdown(&self);
    fn force_stop(&self);
}

/// A request line. Kept flat (rather than an internally tagged enum) so unknown fields are
/// rejected for every command.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    cmd: String,
    /// Only meaningful for `shutdown`.
    #[serde(default)]
    force: bool,
}

const USAGE: &str = "expected {\"cmd\": \"status\"|\"pause\"|\"resume\"|\"shutdown\"}";

/// Answers one request line.
pub fn handle_line(vm: &dyn Controllable, line: &str) -> Value {
    let request: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return json!({"ok": false, "error": format!("bad request ({e}); {USAGE}")}),
    };
    match request.cmd.as_str() {
        "status" => {
            let mut status = vm.status();
            if let Some(obj) = status.as_object_mut() {
                obj.insert("ok".into(), Value::Bool(true));
            }
            status
        }
        "pause" => match vm.pause() {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": e}),
        },
        "resume" => {
            vm.resume();
            json!({"ok": true})
        }
        "shutdown" => {
            if request.force {
                vm.force_stop();
            } else {
                vm.shutdown();
            }
            json!({"ok": true})
        }
        other => {
            json!({"ok": false, "error": format!("bad request (unknown command {other:?}); {USAGE}")})
        }
    }
}

/// The listening socket; the file is removed when this is dropped.
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Listens on `path` (replacing a stale socket) and serves clients on background threads.
    /// `wake` is written after each command so the lifecycle loop re-reads the VM's state.
    pub fn start(
        path: &Path,
        vm: Arc<dyn Controllable>,
        wake: EventFd,
    ) -> Result<ControlServer, ControlError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ControlError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        let wake = Arc::new(wake);
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => {
                            let (vm, wake) = (vm.clone(), wake.clone());
                            let spawned = std::thread::Builder::new()
                                .name("control-client".into())
                                .spawn(move || serve_client(stream, &*vm, &wake));
                            if let Err(e) = spawned {
                                tracing::warn!("control: cannot serve a client: {e}");
                            }
                        }
                        Err(e) => tracing::warn!("control: accept failed: {e}"),
                    }
                }
            })
            .map_err(ControlError::Spawn)?;
        Ok(ControlServer {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve_client(stream: UnixStream, vm: &dyn Controllable, wake: &EventFd) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("control: {e}");
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let read = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line);
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        let answer = if !line.ends_with(b"\n") && line.len() as u64 >= MAX_LINE {
            let _ = writeln!(
                writer,
                "{}",
                json!({"ok": false, "error": "request line too long"})
            );
            return;
        } else {
            match std::str::from_utf8(&line) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => handle_line(vm, text.trim()),
                Err(_) => json!({"ok": false, "error": "request is not UTF-8"}),
            }
        };
        let _ = wake.write(1);
        if writeln!(writer, "{answer}").is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// Records the calls the protocol layer makes.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<&'static str>>,
    }
    impl Controllable for Recorder {
        fn status(&self) -> Value {
            self.calls.lock().unwrap().push("status");
            json!({"state": "running"})
        }
        fn pause(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("pause");
            Err("stuck".into())
        }
        fn resume(&self) {
            self.calls.lock().unwrap().push("resume");
        }
        fn shutdown(&self) {
            self.calls.lock().unwrap().push("shutdown");
        }
        fn force_stop(&self) {
            self.calls.lock().unwrap().push("force");
        }
    }

    #[test]
    fn requests_map_to_actions() {
        let vm = Recorder::default();
        let status = handle_line(&vm, r#"{"cmd":"status"}"#);
        assert_eq!(status["ok"], true);
        assert_eq!(status["state"], "running");
        let paused = handle_line(&vm, r#"{"cmd":"pause"}"#);
        assert_eq!(paused, json!({"ok": false, "error": "stuck"}));
        assert_eq!(handle_line(&vm, r#"{"cmd":"resume"}"#)["ok"], true);
        assert_eq!(handle_line(&vm, r#"{"cmd":"shutdown"}"#)["ok"], true);
        assert_eq!(
            handle_line(&vm, r#"{"cmd":"shutdown","force":true}"#)["ok"],
            true
        );
        assert_eq!(
            *vm.calls.lock().unwrap(),
            vec!["status", "pause", "resume", "shutdown", "force"]
        );
    }

    #[test]
    fn bad_requests_get_an_error_and_no_action() {
        let vm = Recorder::default();
        for line in [
            "",
            "nope",
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"status","x":1}"#,
            "[]",
        ] {
            let answer = handle_line(&vm, line);
            assert_eq!(answer["ok"], false, "{line}");
            assert!(answer["error"].as_str().unwrap().contains("bad request"));
        }
        assert!(vm.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn socket_serves_json_lines() {
        let path = std::env::temp_dir().join(format!("deskd-control-{}.sock", std::process::id()));
        let vm = Arc::new(Recorder::default());
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let server = ControlServer::start(&path, vm.clone(), wake.try_clone().unwrap()).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client
            .write_all(b"{\"cmd\":\"status\"}\n\ngarbage\n{\"cmd\":\"resume\"}\n")
            .unwrap();
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut answers = Vec::new();
        for _ in 0..3 {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            answers.push(serde_json::from_str::<Value>(&line).unwrap());
        }
        assert_eq!(answers[0]["state"], "running");
        assert_eq!(answers[1]["ok"], false);
        assert_eq!(answers[2], json!({"ok": true}));
        assert!(wake.read().unwrap() >= 3);
        // An endless line is cut off without hurting the server.
        let mut flood = UnixStream::connect(&path).unwrap();
        let _ = flood.write_all(&vec![b'x'; MAX_LINE as usize + 10]);
        let mut line = String::new();
        BufReader::new(flood).read_line(&mut line).unwrap();
        assert!(line.contains("too long"), "{line}");
        drop(server);
        assert!(!path.exists());
    }

    #[test]
    fn refuses_to_replace_a_regular_file() {
        let path = std::env::temp_dir().join(format!("deskd-control-{}.txt", std::process::id()));
        std::fs::write(&path, b"precious").unwrap();
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let err = ControlServer::start(&path, Arc::new(Recorder::default()), wake)
            .err()
            .unwrap();
        assert!(matches!(err, ControlError::NotASocket { .. }));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();
    }
}
