//! `process_start` / `process_stop`: a once-a-second diff of the pids in /proc, done only while a
//! client listens (reading /proc is a few hundred small reads on a desktop).

use std::collections::HashMap;
use std::time::Duration;

use super::EventHub;
use crate::protocol::{EventData, EventKind, ProcessData};

const PERIOD: Duration = Duration::from_secs(1);

fn snapshot() -> HashMap<u32, String> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        out.insert(pid, name);
    }
    out
}

pub fn start(hub: EventHub) {
    tokio::spawn(async move {
        let mut known: Option<HashMap<u32, String>> = None;
        loop {
            tokio::time::sleep(PERIOD).await;
            if !hub.wants(EventKind::ProcessStart) && !hub.wants(EventKind::ProcessStop) {
                known = None;
                continue;
            }
            let now = match tokio::task::spawn_blocking(snapshot).await {
                Ok(s) => s,
                Err(_) => continue,
            };
            if let Some(prev) = &known {
                for (pid, name) in &now {
                    if !prev.contains_key(pid) {
                        hub.emit(EventData::ProcessStart(ProcessData {
                            pid: *pid,
                            name: name.clone(),
                        }));
                    }
                }
                for (pid, name) in prev {
                    if !now.contains_key(pid) {
                        hub.emit(EventData::ProcessStop(ProcessData {
                            pid: *pid,
                            name: name.clone(),
                        }));
                    }
                }
            }
            known = Some(now);
        }
    });
}
