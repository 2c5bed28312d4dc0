//! After the host grew the computer's disk while it runs (a live resize): the daemon asks the
//! agent to grow the root filesystem onto the new space, and the answer says what the guest now
//! has. The root filesystem is ext4 on the whole disk (`/dev/vda`, no partition table), grown
//! online by `resize2fs`; at boot `x-systemd.growfs` does the same, so a disk grown while the
//! computer was stopped needs no request.

use serde::{Deserialize, Serialize};

/// Largest disk the agent believes a request about: the VMM's own cap (16 TiB).
pub const MAX_DISK_BYTES: u64 = 16 << 40;

/// How long the guest waits for its kernel to see the grown disk (Linux handles the VMM's
/// configuration-change interrupt on a workqueue, so the new size shows a moment later).
pub const SEE_NEW_SIZE_SECS: u64 = 30;

/// How long the daemon waits for the whole answer: the wait above, then `resize2fs`, which
/// writes the new block groups' metadata (seconds on a slow disk for a large growth).
pub const DEADLINE_SECS: u64 = 180;

/// `POST` [`super::paths::GROW_ROOT_FS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrowRootFs {
    /// The disk's size as the host made it, bytes: the guest grows its filesystem once its
    /// kernel sees at least this much.
    pub disk_bytes: u64,
}

impl GrowRootFs {
    /// A size the VMM could have made: more than nothing, whole sectors, within its cap.
    pub fn check(&self) -> Result<(), String> {
        let b = self.disk_bytes;
        if b == 0 || !b.is_multiple_of(512) || b > MAX_DISK_BYTES {
            return Err(format!(
                "disk_bytes must be a whole number of 512-byte sectors between 512 and {MAX_DISK_BYTES} (got {b})"
            ));
        }
        Ok(())
    }
}

/// The answer: what the guest sees now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFsGrown {
    /// The root disk's size as the guest's kernel sees it, bytes.
    pub disk_bytes: u64,
    /// The root filesystem's size after the growth, bytes (`statvfs` blocks times fragment
    /// size: a little less than the disk, ext4 keeps its metadata outside that count).
    pub filesystem_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_the_vmm_cannot_have_made_are_refused() {
        for bad in [0, 511, 513, MAX_DISK_BYTES + 512, u64::MAX] {
            let err = GrowRootFs { disk_bytes: bad }.check().unwrap_err();
            assert!(err.starts_with("disk_bytes"), "{err}");
        }
        assert!(GrowRootFs {
            disk_bytes: 12 << 30
        }
        .check()
        .is_ok());
    }

    #[test]
    fn the_wire_form_is_strict() {
        let text = serde_json::to_string(&GrowRootFs { disk_bytes: 1024 }).unwrap();
        assert_eq!(text, r#"{"disk_bytes":1024}"#);
        for bad in [
            r#"{}"#,
            r#"{"disk_bytes":-1}"#,
            r#"{"disk_bytes":"1024"}"#,
            r#"{"disk_bytes":1024,"device":"/dev/vdb"}"#,
        ] {
            assert!(serde_json::from_str::<GrowRootFs>(bad).is_err(), "{bad}");
        }
    }
}
