//! `PATCH /computers/{id}/resize`: the answer reports what was applied, per dimension, not what
//! was asked (200 all applied, 207 mixed, 422 none; 400 a bad value or a disk shrink, 403 over a
//! quota, both before anything is applied).
//!
//! - A **running** computer: the disk grows live (the VMM grows the device, the guest agent its
//!   root filesystem), the bandwidth limit changes live; vCPUs and memory cannot change live yet
//!   (no CPU or memory hotplug in deskd's VMM), so they are reported as not applied.
//! - A **stopped** computer (or one in `error`) **[ours]**: everything is stored and takes
//!   effect at its next start (its VMM is configured from the record, its disk file grown, and
//!   the guest grows its filesystem at boot); `takes_effect` says `next_start`.
//! - A **suspended** computer: its saved VM holds its vCPUs, memory and disk, so those are a 409;
//!   a bandwidth limit (given to its card on resume) and auto-stop are stored.
//! - A computer on its way up or down: 409.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};

use super::access::ScopedComputer;
use super::body::{check_int, field, optional_int, JsonObject};
use super::computers::{
    check_disk_quota, parse_auto_stop, parse_ram, reload, CPU_CHOICES, RESIZE_MEM_CHOICES,
};
use super::error::ApiError;
use super::AppState;
use crate::computers::{quota, Hotplug, LifecycleError, StoredResize};
use crate::store::{Computer, ComputerStatus};

/// What a resize asks for, validated.
#[derive(Debug, Clone, Copy, Default)]
struct Asked {
    vcpus: Option<u32>,
    mem_gb: Option<u32>,
    disk_gb: Option<u32>,
    bandwidth: Option<u32>,
    auto_stop: Option<u32>,
}

/// Per-dimension outcomes, in the contract's shape.
#[derive(Default)]
struct Results {
    entries: Map<String, Value>,
    ok: usize,
    failed: usize,
}

impl Results {
    fn applied(&mut self, name: &str, requested: u64, applied: u64) {
        self.ok += 1;
        self.entries.insert(
            name.into(),
            json!({ "requested": requested, "applied": applied, "ok": true }),
        );
    }

    fn failed(&mut self, name: &str, requested: u64, current: u64, error: String) {
        self.failed += 1;
        self.entries.insert(
            name.into(),
            json!({ "requested": requested, "applied": current, "ok": false, "error": error }),
        );
    }

    fn outcome(&mut self, name: &str, requested: u64, current: u64, r: Result<u64, String>) {
        match r {
            Ok(applied) => self.applied(name, requested, applied),
            Err(e) => self.failed(name, requested, current, e),
        }
    }

    fn status(&self) -> StatusCode {
        match (self.ok, self.failed) {
            (_, 0) => StatusCode::OK,
            (0, _) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::MULTI_STATUS,
        }
    }
}

fn parse(state: &AppState, c: &Computer, body: &Map<String, Value>) -> Result<Asked, ApiError> {
    let vcpus = field(body, "vcpus")
        .map(|v| {
            check_int(v, "vcpus", 1, 16).and_then(|n| {
                CPU_CHOICES
                    .contains(&(n as u32))
                    .then_some(n as u32)
                    .ok_or_else(|| ApiError::bad_request("vcpus must be one of 1, 2, 4, 8, 16."))
            })
        })
        .transpose()?;
    let mem_gb = field(body, "mem_gb")
        .map(|v| parse_ram(v, &RESIZE_MEM_CHOICES, "mem_gb"))
        .transpose()?;
    let disk_gb = optional_int(body, "disk_size_gb", 1, 1_000_000)?.map(|n| n as u32);
    if let Some(d) = disk_gb {
        if d < c.disk_size_gb {
            return Err(ApiError::bad_request(format!(
                "disk_size_gb can only grow: the disk is {} GB, {d} GB would shrink it.",
                c.disk_size_gb
            )));
        }
        check_disk_quota(state, d)?;
    }
    let bandwidth = optional_int(
        body,
        "bandwidth_limit_mbps",
        1,
        crate::templates::defaults::MAX_BANDWIDTH_MBPS as i64,
    )?
    .map(|n| n as u32);
    let auto_stop = parse_auto_stop(body)?;
    let asked = Asked {
        vcpus,
        mem_gb,
        disk_gb,
        bandwidth,
        auto_stop,
    };
    if vcpus.is_none()
        && mem_gb.is_none()
        && disk_gb.is_none()
        && bandwidth.is_none()
        && auto_stop.is_none()
    {
        return Err(ApiError::bad_request(
            "Nothing to resize: send any of vcpus, mem_gb, disk_size_gb, bandwidth_limit_mbps, auto_stop_minutes.",
        ));
    }
    Ok(asked)
}

/// `PATCH /computers/{id}/resize`.
pub async fn resize(
    State(state): State<AppState>,
    ScopedComputer { computer: c, .. }: ScopedComputer,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let asked = parse(&state, &c, &body)?;
    let (results, takes_effect) = match c.status {
        ComputerStatus::Running => (live(&state, &c, asked).await?, "now"),
        ComputerStatus::Stopped | ComputerStatus::Error | ComputerStatus::Suspended => {
            (stored(&state, &c, asked).await?, "next_start")
        }
        other => {
            return Err(ApiError::conflict(format!(
                "The computer is {}; resize it once it is running or stopped.",
                other.as_str()
            )))
        }
    };
    let now = reload(&state, &c.id)?;
    Ok((
        results.status(),
        Json(json!({
            "vcpus": now.cpu,
            "mem_gb": now.ram_gb,
            "disk_size_gb": now.disk_size_gb,
            "bandwidth_limit_mbps": state.store.bandwidth_limit(&c.id)?,
            "auto_stop_minutes": now.auto_stop_minutes,
            "results": results.entries,
            "partial": results.ok > 0 && results.failed > 0,
            "takes_effect": takes_effect,
        })),
    ))
}

/// A running computer: each dimension applied to its VM on its own.
async fn live(state: &AppState, c: &Computer, asked: Asked) -> Result<Results, ApiError> {
    let mut results = Results::default();
    let lifecycle = &state.lifecycle;
    let why = |e: LifecycleError| e.to_string();
    if let Some(n) = asked.vcpus {
        let r = lifecycle
            .hotplug(&c.id, Hotplug::Vcpus(n))
            .await
            .map_err(why);
        results.outcome("vcpus", n.into(), c.cpu.into(), r);
    }
    if let Some(g) = asked.mem_gb {
        let mib = u64::from(g) * 1024;
        let r = lifecycle
            .hotplug(&c.id, Hotplug::MemMib(mib))
            .await
            .map_err(why);
        results.outcome("mem_mb", mib, u64::from(c.ram_gb) * 1024, r);
    }
    if let Some(d) = asked.disk_gb {
        match lifecycle.grow_disk(&c.id, d).await {
            Ok(grown) => match grown.filesystem {
                Ok(fs_bytes) => {
                    results.applied("disk_gb", d.into(), grown.disk_gb.into());
                    if let Some(Value::Object(entry)) = results.entries.get_mut("disk_gb") {
                        entry.insert("filesystem_bytes".into(), fs_bytes.into());
                    }
                }
                // The device grew (the record says so), the guest's filesystem did not.
                Err(e) => results.failed(
                    "disk_gb",
                    d.into(),
                    grown.disk_gb.into(),
                    format!(
                        "The disk grew to {} GB but the guest did not grow its filesystem onto it: {e}. \
                         Ask again with the same size, or restart the computer (it grows at boot).",
                        grown.disk_gb
                    ),
                ),
            },
            Err(e) => results.failed("disk_gb", d.into(), c.disk_size_gb.into(), e.to_string()),
        }
    }
    if let Some(b) = asked.bandwidth {
        let current = state.store.bandwidth_limit(&c.id)?.unwrap_or(0);
        let r = lifecycle
            .hotplug(&c.id, Hotplug::BandwidthMbps(b))
            .await
            .map_err(why);
        results.outcome("bandwidth_limit_mbps", b.into(), current.into(), r);
    }
    if let Some(m) = asked.auto_stop {
        set_auto_stop(state, c, m, &mut results);
    }
    Ok(results)
}

/// A computer that is not running: everything stored for its next start at once (quotas
/// first), or nothing and the reason.
async fn stored(state: &AppState, c: &Computer, asked: Asked) -> Result<Results, ApiError> {
    let want = StoredResize {
        vcpus: asked.vcpus,
        mem_gb: asked.mem_gb,
        disk_gb: asked.disk_gb,
        bandwidth_mbps: asked.bandwidth,
    };
    let quotas = state.config.quotas.clone();
    let host = state.host;
    let (cpu_before, ram_before) = (c.cpu, c.ram_gb);
    let now = state
        .lifecycle
        .resize_stored(&c.id, want, move |others, shape| {
            let (cpu, ram_gb) = (shape.cpu.unwrap_or(0), shape.ram_gb.unwrap_or(0));
            // Less than it had is always allowed: quotas lowered since must not trap it.
            if cpu <= cpu_before && ram_gb <= ram_before {
                return Ok(());
            }
            quota::admit_resize(&quotas, host, cpu, ram_gb, others)
        })
        .await?;
    let mut results = Results::default();
    if let Some(n) = asked.vcpus {
        results.applied("vcpus", n.into(), now.cpu.into());
    }
    if let Some(g) = asked.mem_gb {
        results.applied("mem_mb", u64::from(g) * 1024, u64::from(now.ram_gb) * 1024);
    }
    if let Some(d) = asked.disk_gb {
        results.applied("disk_gb", d.into(), now.disk_size_gb.into());
    }
    if let Some(b) = asked.bandwidth {
        let applied = state.store.bandwidth_limit(&c.id)?.unwrap_or(0);
        results.applied("bandwidth_limit_mbps", b.into(), applied.into());
    }
    if let Some(m) = asked.auto_stop {
        set_auto_stop(state, c, m, &mut results);
    }
    Ok(results)
}

fn set_auto_stop(state: &AppState, c: &Computer, minutes: u32, results: &mut Results) {
    let r = state
        .store
        .set_auto_stop(&c.id, Some(minutes))
        .map(|()| u64::from(minutes))
        .map_err(|e| e.to_string());
    results.outcome(
        "auto_stop_minutes",
        minutes.into(),
        c.auto_stop_minutes.unwrap_or(0).into(),
        r,
    );
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower_service::Service;

    use super::*;
    use crate::api::testing::test_api;
    use crate::config::Config;

    async fn patch(api: &crate::api::testing::TestApi, body: Value) -> (u16, Value) {
        let req = Request::builder()
            .method("PATCH")
            .uri(format!("/api/computers/{}/resize", api.computer.id))
            .header("authorization", format!("Bearer {}", api.key))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = crate::api::router(api.state.clone())
            .call(req)
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// A computer the record says runs, whose VM is gone (it just ended): every live change
    /// fails with the reason, what is not the VM's still applies, and the answer says which.
    #[tokio::test]
    async fn a_mixed_live_resize_answers_207_and_all_failed_422() {
        let api = test_api(Config::default());
        let id = &api.computer.id;
        api.state
            .store
            .set_computer_status(id, ComputerStatus::Running, None)
            .unwrap();
        let (status, v) = patch(&api, json!({"vcpus": 2, "auto_stop_minutes": 5})).await;
        assert_eq!(status, 207, "{v}");
        assert_eq!(v["partial"], true);
        assert_eq!(v["takes_effect"], "now");
        assert_eq!(v["results"]["vcpus"]["ok"], false);
        assert_eq!(
            v["results"]["vcpus"]["applied"], 1,
            "what it has, not what was asked"
        );
        assert!(v["results"]["vcpus"]["error"]
            .as_str()
            .unwrap()
            .contains("not running"));
        assert_eq!(
            v["results"]["auto_stop_minutes"],
            json!({"requested": 5, "applied": 5, "ok": true})
        );
        assert_eq!(v["vcpus"], 1);

        let (status, v) = patch(
            &api,
            json!({"mem_gb": 8, "disk_size_gb": 12, "bandwidth_limit_mbps": 10}),
        )
        .await;
        assert_eq!(status, 422, "{v}");
        assert_eq!(v["partial"], false);
        for (name, current) in [("mem_mb", 4096), ("disk_gb", 8)] {
            assert_eq!(v["results"][name]["ok"], false, "{name}: {v}");
            assert_eq!(v["results"][name]["applied"], current, "{name}: {v}");
        }
        assert_eq!(v["results"]["bandwidth_limit_mbps"]["applied"], 0);
        let now = api.state.store.computer(id).unwrap().unwrap();
        assert_eq!((now.ram_gb, now.disk_size_gb), (4, 8), "nothing applied");
        assert_eq!(api.state.store.bandwidth_limit(id).unwrap(), None);
    }

    #[tokio::test]
    async fn a_computer_on_its_way_is_409_after_its_values_are_checked() {
        let api = test_api(Config::default());
        api.state
            .store
            .set_computer_status(&api.computer.id, ComputerStatus::Stopping, None)
            .unwrap();
        let (status, v) = patch(&api, json!({"vcpus": 3})).await;
        assert_eq!(status, 400, "{v}");
        let (status, v) = patch(&api, json!({"vcpus": 2})).await;
        assert_eq!(status, 409, "{v}");
        assert!(v["error"].as_str().unwrap().contains("is stopping"), "{v}");
    }
}
