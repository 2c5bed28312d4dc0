//! The per-VMM control socket: a Unix stream socket speaking JSON lines.
//!
//! Requests, one JSON object per line:
//! - `{"cmd":"status"}` -> `{"ok":true,"state":"running"|"paused"|"shutting-down"|"stopping",
//!   "vcpus":N,"memory_mib":M,"uptime_ms":T,"pid":P}`
//! - `{"cmd":"pause"}` (vCPUs, then device workers at a queue boundary), `{"cmd":"resume"}`
//!   -> `{"ok":true}`
//! - `{"cmd":"snapshot","dir":"/path"}`, only while paused: writes a snapshot to DIR (see
//!   [`crate::vmm::snapshot`]; whole or absent), the VM stays paused ->
//!   `{"ok":true,"memory_bytes":N,"memory_data_bytes":D,"snapshot_ms":T}`
//! - `{"cmd":"set-net-limit","card":0,"limit":{"bandwidth_bytes_per_sec":N,"packets_per_sec":N}}`
//!   replaces network card 0's rate limit while the VM runs (either rate may be left out; `{}`
//!   lifts the limit) -> `{"ok":true}`
//! - `{"cmd":"grow-disk","disk":0,"size_bytes":N}` grows disk 0 (as in the VM's `disks` list)
//!   to N bytes while the VM runs: the image is extended (sparse) and the guest gets a
//!   configuration-change interrupt, on which Linux re-reads the disk's capacity. A shrink, a
//!   read-only disk, a size that is not a multiple of 512 or over 16 TiB are refused; the size the
//!   disk has already is fine. -> `{"ok":true,"disk_bytes":N}`
//! - `{"cmd":"shutdown"}` presses the ACPI power button (hard stop after the configured timeout);
//!   `{"cmd":"shutdown","force":true}` stops the VM at once. -> `{"ok":true}`
//!
//! Errors answer `{"ok":false,"error":"..."}` and keep the connection open. The types of both
//! directions are in [`protocol`]; the daemon speaks them through [`client::ControlClient`].

pub mod client;
pub mod protocol;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::vmm::config::NetRateLimit;

pub use client::{ControlClient, ControlClientError};
pub use protocol::{ControlRequest, ControlResponse, DiskGrown, RunState, SnapshotDone, VmStatus};

/// Longest request line accepted; a client sending more is cut off.
pub const MAX_LINE: u64 = 64 * 1024;

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    SocketPath(#[from] crate::vmm::socket_path::SocketPathError),
    #[error("cannot listen on the control socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot start the control thread: {0}")]
    Spawn(io::Error),
}

/// What the control socket can do to a VM.
pub trait Controllable: Send + Sync + 'static {
    fn status(&self) -> VmStatus;
    fn pause(&self) -> Result<(), String>;
    fn resume(&self);
    /// Writes a snapshot to `dir`; refused unless paused.
    fn snapshot(&self, dir: &Path) -> Result<SnapshotDone, String>;
    /// Replaces the rate limit of network card `card`.
    fn set_net_limit(&self, card: usize, limit: NetRateLimit) -> Result<(), String>;
    /// Grows disk `disk` to `size_bytes`; returns its size now.
    fn grow_disk(&self, disk: usize, size_bytes: u64) -> Result<u64, String>;
    fn shutdown(&self);
    fn force_stop(&self);
}

/// Answers one request line.
pub fn handle_line(vm: &dyn Controllable, line: &str) -> ControlResponse {
    let request: ControlRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            return ControlResponse::failed(format!("bad request ({e}); {}", protocol::USAGE))
        }
    };
    match request {
        ControlRequest::Status {} => ControlResponse::status(vm.status()),
        ControlRequest::Pause {} => match vm.pause() {
            Ok(()) => ControlResponse::done(),
            Err(e) => ControlResponse::failed(e),
        },
        ControlRequest::Resume {} => {
            vm.resume();
            ControlResponse::done()
        }
        ControlRequest::Snapshot { dir } => match vm.snapshot(&dir) {
            Ok(done) => ControlResponse::snapshot(done),
            Err(e) => ControlResponse::failed(e),
        },
        ControlRequest::SetNetLimit { card, limit } => {
            match limit
                .validate()
                .map_err(|e| e.to_string())
                .and_then(|()| vm.set_net_limit(card, limit))
            {
                Ok(()) => ControlResponse::done(),
                Err(e) => ControlResponse::failed(e),
            }
        }
        ControlRequest::GrowDisk { disk, size_bytes } => match vm.grow_disk(disk, size_bytes) {
            Ok(disk_bytes) => ControlResponse::grown(DiskGrown { disk_bytes }),
            Err(e) => ControlResponse::failed(e),
        },
        ControlRequest::Shutdown { force } => {
            if force {
                vm.force_stop();
            } else {
                vm.shutdown();
            }
            ControlResponse::done()
        }
    }
}

/// The listening socket; the file is removed when this is dropped.
pub struct ControlServer {
    path: PathBuf,
    /// Until [`ControlServer::serve`] hands it to the control thread.
    listener: Option<UnixListener>,
}

impl ControlServer {
    /// Listens on `path` (replacing a stale socket); clients wait in the backlog until
    /// [`ControlServer::serve`]. Bound before the VMM is confined (the socket's directory may not
    /// be writable by the confined VMM's user).
    pub fn bind(path: &Path) -> Result<ControlServer, ControlError> {
        crate::vmm::socket_path::claim(path)?;
        let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            listener: Some(listener),
        })
    }

    /// [`ControlServer::bind`] and [`ControlServer::serve`] in one.
    pub fn start(
        path: &Path,
        vm: Arc<dyn Controllable>,
        wake: EventFd,
    ) -> Result<ControlServer, ControlError> {
        let mut server = ControlServer::bind(path)?;
        server.serve(vm, wake)?;
        Ok(server)
    }

    /// Serves clients on background threads (one listener, one per client). `wake` is written
    /// after each command so the lifecycle loop re-reads the VM's state. A second call does
    /// nothing.
    pub fn serve(&mut self, vm: Arc<dyn Controllable>, wake: EventFd) -> Result<(), ControlError> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        let wake = Arc::new(wake);
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                // Clients drive this thread and the ones it starts (they inherit the filter).
                use crate::vmm::confine;
                if let Err(e) = confine::enter_thread(confine::ThreadKind::Control) {
                    tracing::error!("control: {e}; the control socket is closed");
                    return;
                }
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
        Ok(())
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
            let _ = write_answer(
                &mut writer,
                &ControlResponse::failed("request line too long"),
            );
            return;
        } else {
            match std::str::from_utf8(&line) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) if ends_the_vm(text.trim()) => {
                    // The VM (and this process) may end as soon as the request is carried out:
                    // the answer goes out first, or the client could be left without one.
                    let _ = write_answer(&mut writer, &ControlResponse::done());
                    handle_line(vm, text.trim());
                    let _ = wake.write(1);
                    continue;
                }
                Ok(text) => handle_line(vm, text.trim()),
                Err(_) => ControlResponse::failed("request is not UTF-8"),
            }
        };
        // Answer first, then wake the lifecycle loop (which may end the process).
        if write_answer(&mut writer, &answer).is_err() {
            let _ = wake.write(1);
            return;
        }
        let _ = wake.write(1);
    }
}

/// Whether a request line is a forced stop, which always succeeds and may end the process at
/// once. A graceful shutdown only presses the power button and arms the hard-stop timer, so it is
/// carried out before its answer: a client that asks for the status right after sees
/// `shutting-down` (the VMM e2e's hard-stop test once saw `running`).
fn ends_the_vm(line: &str) -> bool {
    matches!(
        serde_json::from_str::<ControlRequest>(line),
        Ok(ControlRequest::Shutdown { force: true })
    )
}

fn write_answer(writer: &mut UnixStream, answer: &ControlResponse) -> io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// Records the calls the protocol layer makes.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<&'static str>>,
    }
    impl Controllable for Recorder {
        fn status(&self) -> VmStatus {
            self.calls.lock().unwrap().push("status");
            VmStatus {
                state: RunState::Running,
                vcpus: 1,
                memory_mib: 64,
                uptime_ms: 1,
                pid: 1,
            }
        }
        fn pause(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("pause");
            Err("stuck".into())
        }
        fn resume(&self) {
            self.calls.lock().unwrap().push("resume");
        }
        fn snapshot(&self, dir: &Path) -> Result<SnapshotDone, String> {
            self.calls.lock().unwrap().push("snapshot");
            if dir == Path::new("/refused") {
                return Err("not paused".into());
            }
            Ok(SnapshotDone {
                memory_bytes: 2,
                memory_data_bytes: 1,
                snapshot_ms: 3,
            })
        }
        fn set_net_limit(&self, card: usize, _: NetRateLimit) -> Result<(), String> {
            self.calls.lock().unwrap().push("set-net-limit");
            if card > 0 {
                return Err(format!("no network card {card}"));
            }
            Ok(())
        }
        fn grow_disk(&self, disk: usize, size_bytes: u64) -> Result<u64, String> {
            self.calls.lock().unwrap().push("grow-disk");
            if disk > 0 {
                return Err(format!("no disk {disk}"));
            }
            Ok(size_bytes)
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
        assert!(status.ok);
        assert_eq!(status.status.unwrap().state, RunState::Running);
        let paused = handle_line(&vm, r#"{"cmd":"pause"}"#);
        assert_eq!(paused, ControlResponse::failed("stuck"));
        assert!(handle_line(&vm, r#"{"cmd":"resume"}"#).ok);
        assert!(handle_line(&vm, r#"{"cmd":"shutdown"}"#).ok);
        assert!(handle_line(&vm, r#"{"cmd":"shutdown","force":true}"#).ok);
        let snap = handle_line(&vm, r#"{"cmd":"snapshot","dir":"/s"}"#);
        assert_eq!(snap.snapshot.unwrap().memory_data_bytes, 1);
        let refused = handle_line(&vm, r#"{"cmd":"snapshot","dir":"/refused"}"#);
        assert_eq!(refused, ControlResponse::failed("not paused"));
        let limit = r#"{"cmd":"set-net-limit","card":0,"limit":{"packets_per_sec":10}}"#;
        assert!(handle_line(&vm, limit).ok);
        let no_card = r#"{"cmd":"set-net-limit","card":1,"limit":{}}"#;
        assert_eq!(
            handle_line(&vm, no_card),
            ControlResponse::failed("no network card 1")
        );
        let grow = handle_line(&vm, r#"{"cmd":"grow-disk","disk":0,"size_bytes":1024}"#);
        assert_eq!(grow.grown.unwrap().disk_bytes, 1024);
        assert_eq!(
            handle_line(&vm, r#"{"cmd":"grow-disk","disk":1,"size_bytes":1024}"#),
            ControlResponse::failed("no disk 1")
        );
        // A zero rate is refused before the VM sees it.
        let zero = r#"{"cmd":"set-net-limit","card":0,"limit":{"packets_per_sec":0}}"#;
        assert!(handle_line(&vm, zero)
            .error
            .unwrap()
            .contains("leave it out"));
        assert_eq!(
            *vm.calls.lock().unwrap(),
            vec![
                "status",
                "pause",
                "resume",
                "shutdown",
                "force",
                "snapshot",
                "snapshot",
                "set-net-limit",
                "set-net-limit",
                "grow-disk",
                "grow-disk"
            ]
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
            assert!(!answer.ok, "{line}");
            assert!(answer.error.unwrap().contains("bad request"));
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
        // The answer goes out before the wake, so the last wake may trail the last answer.
        let mut woken = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while woken < 3 && std::time::Instant::now() < deadline {
            match wake.read() {
                Ok(n) => woken += n,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        assert!(woken >= 3, "woken {woken} times");
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
    fn a_graceful_shutdown_is_carried_out_before_its_answer_and_a_forced_one_after() {
        let path =
            std::env::temp_dir().join(format!("deskd-control-sd-{}.sock", std::process::id()));
        let vm = Arc::new(Recorder::default());
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let server = ControlServer::start(&path, vm.clone(), wake).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"{\"cmd\":\"shutdown\"}\n").unwrap();
        let mut reader = BufReader::new(client.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({"ok": true})
        );
        assert_eq!(
            *vm.calls.lock().unwrap(),
            vec!["shutdown"],
            "answered before it was done"
        );
        client
            .write_all(b"{\"cmd\":\"shutdown\",\"force\":true}\n")
            .unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&line).unwrap(),
            json!({"ok": true})
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while vm.calls.lock().unwrap().len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(*vm.calls.lock().unwrap(), vec!["shutdown", "force"]);
        drop(server);
    }

    #[test]
    fn refuses_to_replace_a_regular_file() {
        let path = std::env::temp_dir().join(format!("deskd-control-{}.txt", std::process::id()));
        std::fs::write(&path, b"precious").unwrap();
        let wake = EventFd::new(EFD_NONBLOCK).unwrap();
        let err = ControlServer::start(&path, Arc::new(Recorder::default()), wake)
            .err()
            .unwrap();
        assert!(matches!(
            err,
            ControlError::SocketPath(crate::vmm::socket_path::SocketPathError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();
    }
}
