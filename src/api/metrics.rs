//! `GET /api/metrics` (behind a key): the daemon's state in Prometheus text format. Counters are
//! kept by the handlers that see the events (actions and their latency, agent failures); gauges
//! are read when scraped (computers by status, VMs, bytes in flight from agents, disk used by
//! kind).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::store::ComputerStatus;

/// Upper bounds (seconds) of the action latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    /// Observations at or under each bucket's bound.
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// What handlers count.
#[derive(Default)]
pub struct Metrics {
    /// Action latency by action name (`click`, `screenshot`, ...).
    actions: Mutex<BTreeMap<&'static str, Histogram>>,
    /// Agent failures by kind (`unreachable`, `timed_out`, `too_large`, `agent_error`).
    agent_errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Records one forwarded action and how long it took.
    pub fn action(&self, name: &'static str, took: Duration) {
        let secs = took.as_secs_f64();
        let mut actions = self.actions.lock().unwrap_or_else(|p| p.into_inner());
        let h = actions.entry(name).or_default();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Records an agent call that failed.
    pub fn agent_error(&self, kind: &'static str) {
        let mut errors = self.agent_errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(kind).or_default() += 1;
    }

    fn render_counters(&self, out: &mut String) {
        let actions = self.actions.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP deskd_action_seconds Time from an action's request to its answer.\n");
        out.push_str("# TYPE deskd_action_seconds histogram\n");
        for (name, h) in actions.iter() {
            for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "deskd_action_seconds_bucket{{action=\"{name}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "deskd_action_seconds_bucket{{action=\"{name}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "deskd_action_seconds_sum{{action=\"{name}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "deskd_action_seconds_count{{action=\"{name}\"}} {}",
                h.count
            );
        }
        drop(actions);
        let errors = self.agent_errors.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP deskd_agent_errors_total Agent calls that got no usable answer.\n");
        out.push_str("# TYPE deskd_agent_errors_total counter\n");
        for (kind, n) in errors.iter() {
            let _ = writeln!(out, "deskd_agent_errors_total{{kind=\"{kind}\"}} {n}");
        }
    }
}

/// Bytes a directory tree takes on disk (allocated blocks, so sparse disks count what they use).
fn disk_used(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_used(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Disk used under the data directory, by kind.
fn disk_by_kind(data_dir: &Path) -> BTreeMap<&'static str, u64> {
    use std::os::unix::fs::MetadataExt;
    let mut kinds = BTreeMap::new();
    let computers = data_dir.join("computers");
    for entry in std::fs::read_dir(&computers)
        .into_iter()
        .flatten()
        .flatten()
    {
        for file in std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = file.file_name();
            let name = name.to_string_lossy();
            let kind = if name.starts_with("disk.img") {
                "disks"
            } else if name.ends_with(".log") || name.ends_with(".log.1") {
                "logs"
            } else if name.starts_with("snapshot") {
                "snapshots"
            } else {
                "other"
            };
            let bytes = match file.metadata() {
                Ok(m) if m.is_dir() => disk_used(&file.path()),
                Ok(m) => m.blocks() * 512,
                Err(_) => 0,
            };
            *kinds.entry(kind).or_default() += bytes;
        }
    }
    kinds.insert("screenshots", disk_used(&data_dir.join("storage")));
    kinds.insert("images", disk_used(&data_dir.join("images")));
    let db_file = crate::store::DB_FILE;
    let db: u64 = [
        db_file.to_string(),
        format!("{db_file}-wal"),
        format!("{db_file}-shm"),
    ]
    .iter()
    .filter_map(|f| std::fs::metadata(data_dir.join(f)).ok())
    .map(|m| m.blocks() * 512)
    .sum();
    kinds.insert("database", db);
    kinds
}

/// The daemon process's own gauges under Prometheus's standard names: resident memory (from
/// `/proc/self/statm`) and open descriptors; `None` where /proc cannot say.
fn process_gauges() -> Vec<(&'static str, &'static str, u64)> {
    let mut out = Vec::new();
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let resident = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok());
    if let (Some(pages), Ok(page)) = (resident, u64::try_from(page)) {
        out.push((
            "process_resident_memory_bytes",
            "Resident memory of the daemon in bytes.",
            pages * page,
        ));
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.push((
            "process_open_fds",
            "Open file descriptors of the daemon.",
            fds.count() as u64,
        ));
    }
    out
}

/// `GET /api/metrics`.
pub async fn serve(State(state): State<AppState>) -> Result<Response, ApiError> {
    let computers = state.store.all_computers()?;
    let mut out = String::new();
    out.push_str("# HELP deskd_computers Computers by status.\n# TYPE deskd_computers gauge\n");
    for status in ComputerStatus::ALL {
        let n = computers.iter().filter(|c| c.status == status).count();
        let _ = writeln!(out, "deskd_computers{{status=\"{}\"}} {n}", status.as_str());
    }
    let vms = computers.iter().filter(|c| c.status.expects_vm()).count();
    out.push_str(
        "# HELP deskd_vms Computers whose VM should be running.\n# TYPE deskd_vms gauge\n",
    );
    let _ = writeln!(out, "deskd_vms {vms}");
    out.push_str(
        "# HELP deskd_agent_bytes_in_flight Bytes of agent answers being read now.\n# TYPE deskd_agent_bytes_in_flight gauge\n",
    );
    let _ = writeln!(
        out,
        "deskd_agent_bytes_in_flight {}",
        state.lifecycle.agent_bytes_in_flight()
    );
    state.metrics.render_counters(&mut out);
    let data_dir = state.lifecycle.data_dir().to_path_buf();
    let disk = tokio::task::spawn_blocking(move || disk_by_kind(&data_dir))
        .await
        .map_err(|e| ApiError::internal(format!("measuring disk use failed: {e}")))?;
    out.push_str("# HELP deskd_disk_bytes Disk used under the data directory, by kind.\n# TYPE deskd_disk_bytes gauge\n");
    for (kind, bytes) in disk {
        let _ = writeln!(out, "deskd_disk_bytes{{kind=\"{kind}\"}} {bytes}");
    }
    for (name, help, value) in process_gauges() {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_gauges_are_this_processs_memory_and_descriptors() {
        let gauges = process_gauges();
        let value = |n: &str| gauges.iter().find(|g| g.0 == n).map(|g| g.2);
        let rss = value("process_resident_memory_bytes").unwrap();
        // A test binary holds at least a few MiB, and not terabytes.
        assert!(rss > (1 << 20) && rss < (1 << 40), "{rss}");
        let before = value("process_open_fds").unwrap();
        let _extra: Vec<_> = (0..8)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let after = process_gauges()
            .into_iter()
            .find(|g| g.0 == "process_open_fds")
            .unwrap()
            .2;
        assert!(after >= before + 8, "{before} -> {after}");
    }

    #[test]
    fn histograms_and_counters_render_as_prometheus_text() {
        let m = Metrics::default();
        m.action("click", Duration::from_millis(30));
        m.action("click", Duration::from_secs(3));
        m.agent_error("timed_out");
        let mut out = String::new();
        m.render_counters(&mut out);
        assert!(
            out.contains("deskd_action_seconds_bucket{action=\"click\",le=\"0.05\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("deskd_action_seconds_bucket{action=\"click\",le=\"5\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("deskd_action_seconds_count{action=\"click\"} 2\n"));
        assert!(out.contains("deskd_agent_errors_total{kind=\"timed_out\"} 1\n"));
    }
}
