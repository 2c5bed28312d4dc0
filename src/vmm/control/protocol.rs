//! The control socket's wire types, one JSON object per line each way. The VMM's server and the
//! daemon's client both use these; the wire format is documented in the parent module.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::vmm::config::NetRateLimit;

/// A request line. Every command is a struct variant (possibly empty) so that unknown fields are
/// refused for all of them, not only for those with fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ControlRequest {
    /// What the VM is doing.
    Status {},
    /// Stops every vCPU (they finish their current exit first), then every device worker (at a
    /// queue boundary).
    Pause {},
    /// Lets paused devices and vCPUs run again.
    Resume {},
    /// Writes a snapshot of the paused VM to `dir` (whole or absent; an existing `dir` is
    /// replaced); the VM stays paused. See `crate::vmm::snapshot` for the layout.
    Snapshot { dir: PathBuf },
    /// Replaces the rate limit of network card `card` (0 is the first, as in the VM's `net`
    /// list) while the VM runs; `{}` lifts it. Applies to each direction separately, as in the
    /// VM configuration.
    SetNetLimit { card: usize, limit: NetRateLimit },
    /// Grows disk `disk` (0 is the first, as in the VM's `disks` list) to `size_bytes` while the
    /// VM runs: the image file is extended (sparse) and the guest is told by a
    /// configuration-change interrupt. Refused for a read-only disk, a smaller size (a shrink),
    /// a size that is not a multiple of 512, and one over
    /// [`crate::vmm::devices::virtio::block::resize::MAX_DISK_BYTES`]; the size it has already is fine.
    GrowDisk { disk: usize, size_bytes: u64 },
    /// Presses the ACPI power button (hard stop after the VMM's shutdown timeout); `force` stops
    /// the VM at once.
    Shutdown {
        #[serde(default)]
        force: bool,
    },
}

impl ControlRequest {
    pub const STATUS: ControlRequest = ControlRequest::Status {};
    pub const PAUSE: ControlRequest = ControlRequest::Pause {};
    pub const RESUME: ControlRequest = ControlRequest::Resume {};
}

/// The one-line usage text in error answers.
pub const USAGE: &str = "expected {\"cmd\": \"status\"|\"pause\"|\"resume\"|\"shutdown\"[, \"force\": true]} or {\"cmd\": \"snapshot\", \"dir\": \"/path\"} or {\"cmd\": \"set-net-limit\", \"card\": 0, \"limit\": {\"bandwidth_bytes_per_sec\": N, \"packets_per_sec\": N}} or {\"cmd\": \"grow-disk\", \"disk\": 0, \"size_bytes\": N}";

/// What the VM is doing, as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Paused,
    /// The power button was pressed; the guest is powering off.
    ShuttingDown,
    /// The VM is ending (its exit reason is known).
    Stopping,
}

/// The answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    pub state: RunState,
    pub vcpus: usize,
    pub memory_mib: u64,
    pub uptime_ms: u64,
    pub pid: u32,
}

/// The answer to `snapshot`: the memory file's size, how much of it is data (the rest are
/// holes), and how long the snapshot took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDone {
    pub memory_bytes: u64,
    pub memory_data_bytes: u64,
    pub snapshot_ms: u64,
}

/// The answer to `grow-disk`: the disk's size now, as the guest is told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskGrown {
    pub disk_bytes: u64,
}

/// An answer line: `{"ok":true}` (plus the status fields for `status`, the snapshot fields for
/// `snapshot`, the disk's size for `grow-disk`), or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
    pub status: Option<VmStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
    pub snapshot: Option<SnapshotDone>,
    #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
    pub grown: Option<DiskGrown>,
}

impl ControlResponse {
    pub fn done() -> ControlResponse {
        ControlResponse {
            ok: true,
            error: None,
            status: None,
            snapshot: None,
            grown: None,
        }
    }

    pub fn failed(error: impl Into<String>) -> ControlResponse {
        ControlResponse {
            ok: false,
            error: Some(error.into()),
            ..ControlResponse::done()
        }
    }

    pub fn status(status: VmStatus) -> ControlResponse {
        ControlResponse {
            status: Some(status),
            ..ControlResponse::done()
        }
    }

    pub fn snapshot(done: SnapshotDone) -> ControlResponse {
        ControlResponse {
            snapshot: Some(done),
            ..ControlResponse::done()
        }
    }

    pub fn grown(grown: DiskGrown) -> ControlResponse {
        ControlResponse {
            grown: Some(grown),
            ..ControlResponse::done()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_their_wire_shape() {
        let line = serde_json::to_string(&ControlRequest::STATUS).unwrap();
        assert_eq!(line, r#"{"cmd":"status"}"#);
        let line = serde_json::to_string(&ControlRequest::Shutdown { force: true }).unwrap();
        assert_eq!(line, r#"{"cmd":"shutdown","force":true}"#);
        let parsed: ControlRequest = serde_json::from_str(r#"{"cmd":"shutdown"}"#).unwrap();
        assert_eq!(parsed, ControlRequest::Shutdown { force: false });
        let snap = ControlRequest::Snapshot {
            dir: "/var/lib/deskd/c/snap".into(),
        };
        let line = serde_json::to_string(&snap).unwrap();
        assert_eq!(line, r#"{"cmd":"snapshot","dir":"/var/lib/deskd/c/snap"}"#);
        assert_eq!(serde_json::from_str::<ControlRequest>(&line).unwrap(), snap);
        let limit = ControlRequest::SetNetLimit {
            card: 1,
            limit: NetRateLimit {
                bandwidth_bytes_per_sec: Some(1_250_000),
                packets_per_sec: None,
            },
        };
        let line = serde_json::to_string(&limit).unwrap();
        assert_eq!(
            line,
            r#"{"cmd":"set-net-limit","card":1,"limit":{"bandwidth_bytes_per_sec":1250000,"packets_per_sec":null}}"#
        );
        assert_eq!(
            serde_json::from_str::<ControlRequest>(&line).unwrap(),
            limit
        );
        let grow = ControlRequest::GrowDisk {
            disk: 0,
            size_bytes: 12 << 30,
        };
        let line = serde_json::to_string(&grow).unwrap();
        assert_eq!(
            line,
            r#"{"cmd":"grow-disk","disk":0,"size_bytes":12884901888}"#
        );
        assert_eq!(serde_json::from_str::<ControlRequest>(&line).unwrap(), grow);
        for bad in [
            r#"{"cmd":"grow-disk","disk":0}"#,
            r#"{"cmd":"grow-disk","size_bytes":512}"#,
            r#"{"cmd":"grow-disk","disk":-1,"size_bytes":512}"#,
            r#"{"cmd":"grow-disk","disk":0,"size_bytes":-512}"#,
            r#"{"cmd":"grow-disk","disk":0,"size_bytes":1e3}"#,
            r#"{"cmd":"grow-disk","disk":0,"size_bytes":"512"}"#,
            r#"{"cmd":"grow-disk","disk":0,"size_bytes":18446744073709551616}"#,
            r#"{"cmd":"grow-disk","disk":0,"size_bytes":512,"shrink":true}"#,
            r#"{"cmd":"set-net-limit","card":0}"#,
            r#"{"cmd":"set-net-limit","card":0,"limit":{"bandwidth":1}}"#,
            r#"{"cmd":"status","x":1}"#,
            r#"{"cmd":"pause","force":true}"#,
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"snapshot"}"#,
            r#"{"cmd":"snapshot","dir":"/x","force":true}"#,
            r#"{}"#,
        ] {
            assert!(
                serde_json::from_str::<ControlRequest>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn answers_round_trip() {
        let status = ControlResponse::status(VmStatus {
            state: RunState::ShuttingDown,
            vcpus: 2,
            memory_mib: 512,
            uptime_ms: 7,
            pid: 9,
        });
        let line = serde_json::to_string(&status).unwrap();
        assert!(line.contains(r#""state":"shutting-down""#), "{line}");
        assert_eq!(
            serde_json::from_str::<ControlResponse>(&line).unwrap(),
            status
        );
        let done = serde_json::to_string(&ControlResponse::done()).unwrap();
        assert_eq!(done, r#"{"ok":true}"#);
        assert_eq!(
            serde_json::from_str::<ControlResponse>(&done).unwrap(),
            ControlResponse::done()
        );
        let failed: ControlResponse = serde_json::from_str(r#"{"ok":false,"error":"e"}"#).unwrap();
        assert_eq!(failed, ControlResponse::failed("e"));
        let snap = ControlResponse::snapshot(SnapshotDone {
            memory_bytes: 1 << 28,
            memory_data_bytes: 1 << 20,
            snapshot_ms: 42,
        });
        let line = serde_json::to_string(&snap).unwrap();
        assert_eq!(
            line,
            r#"{"ok":true,"memory_bytes":268435456,"memory_data_bytes":1048576,"snapshot_ms":42}"#
        );
        assert_eq!(
            serde_json::from_str::<ControlResponse>(&line).unwrap(),
            snap
        );
        let grown = ControlResponse::grown(DiskGrown {
            disk_bytes: 1 << 34,
        });
        let line = serde_json::to_string(&grown).unwrap();
        assert_eq!(line, r#"{"ok":true,"disk_bytes":17179869184}"#);
        let back: ControlResponse = serde_json::from_str(&line).unwrap();
        assert_eq!(back, grown);
        assert_eq!(back.snapshot, None);
    }
}
