//! The configuration file the daemon writes for each `deskd vmm --config PATH` process: the
//! contract between the daemon and the VMM (JSON, one file per computer).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::backend::VmSpec;

/// vsock port the guest agent listens on (architecture decision 4).
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// Guest CID of every VM: each VM has its own hybrid vsock socket, so CIDs never meet.
pub const GUEST_CID: u32 = 3;

/// Files of one guest image (a template's boot artefacts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
}

/// What one VMM process boots. Paths are absolute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmConfig {
    pub computer_id: String,
    pub instance_id: String,
    pub vcpus: u32,
    pub mem_mib: u64,
    /// bzImage of the guest kernel.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// Raw disk image (virtio-blk), writable.
    pub disk: PathBuf,
    /// Where the guest's serial console goes.
    pub console_log: PathBuf,
    /// Host side of the hybrid vsock device.
    pub vsock_socket: PathBuf,
    pub guest_cid: u32,
}

impl VmmConfig {
    /// The configuration for `spec`, booting `image` from `disk`.
    pub fn new(spec: &VmSpec, image: &GuestImage, disk: &Path) -> VmmConfig {
        VmmConfig {
            computer_id: spec.computer_id.clone(),
            instance_id: spec.instance_id.clone(),
            vcpus: spec.vcpus,
            mem_mib: spec.mem_mib,
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            cmdline: format!(
                "console=ttyS0 reboot=k panic=1 root=/dev/vda rw deskd.resolution={} deskd.instance={}",
                spec.resolution, spec.instance_id
            ),
            disk: disk.to_path_buf(),
            console_log: spec.dir.join("console.log"),
            vsock_socket: spec.dir.join("vsock.sock"),
            guest_cid: GUEST_CID,
        }
    }

    /// Writes the file atomically (a VMM never reads half a config).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, path)
    }

    /// Reads a file written by [`VmmConfig::write`].
    pub fn read(path: &Path) -> std::io::Result<VmmConfig> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_file() {
        let d = tempfile::tempdir().unwrap();
        let spec = VmSpec {
            computer_id: "c".into(),
            instance_id: "0011aabb".into(),
            vcpus: 2,
            mem_mib: 4096,
            disk_size_gb: 8,
            resolution: "1280x720x24".into(),
            template_ref: "system/desktop@1.0.0".into(),
            dir: d.path().to_path_buf(),
        };
        let image = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
            rootfs: "/r".into(),
        };
        let c = VmmConfig::new(&spec, &image, &d.path().join("disk.img"));
        assert!(c.cmdline.contains("deskd.resolution=1280x720x24"));
        let p = d.path().join("vmm.json");
        c.write(&p).unwrap();
        assert_eq!(VmmConfig::read(&p).unwrap(), c);
    }
}
