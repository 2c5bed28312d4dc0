//! What a virtio-net device keeps in a snapshot: its MAC, the features the driver accepted and
//! the limit it ran with (its queues are saved by the transport). The TAP is not saved: the
//! restored VM gets one from its configuration (`--net fd=N` or `tap=NAME` on the restore, as
//! disks are given anew). A frame the device held for the guest at the snapshot is lost, as on
//! a busy link; the guest's TCP sends it again.
//!
//! The limit in force is the restored configuration's: the VM writes the live limits into the
//! configuration it saves, so a restore keeps the last `set-net-limit` unless the restore gives
//! another one.

use serde::{Deserialize, Serialize};

use crate::vmm::config::{MacAddr, NetRateLimit};
use crate::vmm::devices::virtio::persist::PersistError;

/// The saved form of a limit (postcard needs every field present, unlike the JSON config type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLimit {
    pub bandwidth_bytes_per_sec: Option<u64>,
    pub packets_per_sec: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub mac: [u8; 6],
    pub acked_features: u64,
    pub limit: Option<SavedLimit>,
}

pub fn save(mac: MacAddr, acked_features: u64, limit: Option<NetRateLimit>) -> NetState {
    NetState {
        mac: mac.bytes(),
        acked_features,
        limit: limit.map(|l| SavedLimit {
            bandwidth_bytes_per_sec: l.bandwidth_bytes_per_sec,
            packets_per_sec: l.packets_per_sec,
        }),
    }
}

/// The guest knows its card by the MAC, so a restored card must have the saved one.
pub fn check(
    saved: &NetState,
    mac: MacAddr,
    limit: Option<NetRateLimit>,
) -> Result<(), PersistError> {
    if saved.mac != mac.bytes() {
        return Err(PersistError::Mismatch {
            what: "network card MAC",
            saved: MacAddr::new(saved.mac)
                .map(|m| m.to_string())
                .unwrap_or_else(|_| format!("{:02x?}", saved.mac)),
            here: mac.to_string(),
            hint: "restore with the network cards the snapshot was taken with (a new TAP, the same MAC)",
        });
    }
    let saved_limit = saved.limit.map(|l| NetRateLimit {
        bandwidth_bytes_per_sec: l.bandwidth_bytes_per_sec,
        packets_per_sec: l.packets_per_sec,
    });
    if saved_limit != limit {
        tracing::info!("net {mac}: limit {saved_limit:?} in the snapshot, {limit:?} now");
    }
    Ok(())
}
