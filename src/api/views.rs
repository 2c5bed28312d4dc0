//! The JSON shapes of workspaces and computers (section 1 and 2 of the API contract).

use serde_json::{json, Value};

use super::AppState;
use crate::store::{Computer, Workspace};

/// A computer as every endpoint shows it.
pub fn computer(state: &AppState, c: &Computer, workspace_name: &str) -> Value {
    let base = state.config.public_base();
    let desktop = format!("{base}/desktops/{}", c.instance_id);
    let (width, height, depth) = split_resolution(&c.resolution);
    json!({
        "id": c.id,
        "name": c.name,
        "workspace_id": c.workspace_id,
        "project_id": c.workspace_id,
        "project_name": workspace_name,
        "os": c.os,
        "ram": c.ram_gb,
        "cpu": c.cpu,
        "gpu": c.gpu,
        "disk_size_gb": c.disk_size_gb,
        "resolution": c.resolution,
        "status": c.status.as_str(),
        "status_reason": c.status_reason,
        "url": desktop,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "auto_stop_minutes": c.auto_stop_minutes,
        "instance_id": c.instance_id,
        "fly_instance_id": c.instance_id,
        "hostname": hostname(&desktop),
        // As the service: clients append `/ws/websockify` (or `/websockify`) themselves.
        "connection_url": desktop,
        "vnc_password": c.vnc_password,
        "template_ref": c.template_ref,
        "image": c.image,
        "instance_details": {
            "resolution": c.resolution,
            "width": width,
            "height": height,
            "depth": depth,
            "vcpus": c.cpu,
            "ram_gb": c.ram_gb,
            "disk_size_gb": c.disk_size_gb,
            "status": c.status.as_str(),
            "error": c.status_reason,
            // A suspended computer's saved VM (or a clone's copy) on disk, bytes; null if none.
            "saved_vm_bytes": state.lifecycle.saved_vm_bytes(&c.id),
            // Ours: its network card's limit each way, Mbit/s; null if none.
            "bandwidth_limit_mbps": state.store.bandwidth_limit(&c.id).ok().flatten(),
        },
    })
}

/// The computer's `hostname` as viewers use it: `orgo-vnc` connects to
/// `wss://{hostname}/websockify`, so it is the desktop's URL without its scheme (host, port and
/// path), which `/desktops/{id}/websockify` answers.
fn hostname(desktop_url: &str) -> &str {
    desktop_url
        .strip_prefix("https://")
        .or_else(|| desktop_url.strip_prefix("http://"))
        .unwrap_or(desktop_url)
}

fn split_resolution(r: &str) -> (Option<u32>, Option<u32>, Option<u32>) {
    let mut it = r.split('x').map(|p| p.parse::<u32>().ok());
    (
        it.next().flatten(),
        it.next().flatten(),
        it.next().flatten(),
    )
}

/// A workspace with its computers (`desktops`, read by the SDK).
pub fn workspace(state: &AppState, ws: &Workspace, computers: &[Computer]) -> Value {
    let desktops: Vec<Value> = computers
        .iter()
        .map(|c| computer(state, c, &ws.name))
        .collect();
    json!({
        "id": ws.id,
        "name": ws.name,
        "user_id": state.account_id.as_ref(),
        "status": ws.status.as_str(),
        "icon_url": ws.icon_url,
        "created_at": ws.created_at,
        "updated_at": ws.updated_at,
        "computer_count": computers.len(),
        "desktops": desktops,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostname_is_the_desktop_url_without_its_scheme() {
        for (url, want) in [
            (
                "https://desk.example.org/desktops/ab12cd34",
                "desk.example.org/desktops/ab12cd34",
            ),
            (
                "http://127.0.0.1:8080/p/desktops/x",
                "127.0.0.1:8080/p/desktops/x",
            ),
        ] {
            assert_eq!(super::hostname(url), want);
        }
    }
}
