//! The configuration file the daemon writes for each `deskd vmm --config PATH` process. Its format
//! is the VMM's own [`crate::vmm::config::VmConfig`]; this module only decides what goes in it.

use std::path::Path;

use crate::vmm::config::{DiskConfig, VmConfig, VsockConfig, DEFAULT_CMDLINE};

use super::backend::VmSpec;
use super::images::GuestImage;

/// Guest CID of every VM: each VM has its own hybrid vsock socket, so CIDs never meet.
pub const GUEST_CID: u64 = 3;
/// Seconds the VMM gives the guest after the power button before stopping it hard; shorter than
/// the daemon's own grace period so the VMM, not SIGKILL, ends the VM.
pub const VMM_SHUTDOWN_TIMEOUT_SECS: u64 = 15;

/// Per-computer file names inside its directory.
pub mod files {
    pub const CONFIG: &str = "vmm.json";
    pub const DISK: &str = "disk.img";
    pub const CONSOLE_LOG: &str = "console.log";
    pub const VMM_LOG: &str = "vmm.log";
    pub const VSOCK: &str = "vsock.sock";
    pub const CONTROL: &str = "control.sock";
    pub const PID: &str = "vmm.pid";
    /// Written by the VMM when its VM ends: `<exit status> <word>`.
    pub const EXIT_STATUS: &str = "vmm.exit";
    /// The saved VM (a snapshot directory) the next start restores: see `saved_vm`.
    pub const SAVED_VM: &str = "saved";
    /// Present when the saved VM is a copy of another computer's (a clone of a running one).
    pub const SAVED_VM_IS_COPY: &str = "saved.copy";
}

/// The VM description for `spec`, booting `image` with `disk` as its root disk.
pub fn vm_config(spec: &VmSpec, image: &GuestImage, disk: &Path) -> VmConfig {
    VmConfig {
        kernel: image.kernel.clone(),
        initrd: Some(image.initrd.clone()),
        cmdline: format!(
            "{DEFAULT_CMDLINE} root=/dev/vda rw deskd.resolution={} deskd.hostname=deskd-{}",
            spec.resolution, spec.instance_id
        ),
        disks: vec![DiskConfig {
            path: disk.to_path_buf(),
            read_only: false,
        }],
        // The API allows at most 16 vCPUs, the VMM's maximum too.
        vcpus: u8::try_from(spec.vcpus).unwrap_or(u8::MAX),
        memory_mib: spec.mem_mib,
        vsock: Some(VsockConfig {
            socket: spec.dir.join(files::VSOCK),
            guest_cid: GUEST_CID,
        }),
        // The card on the TAP the daemon set up in the computer's namespace (src/network).
        net: spec.net.iter().map(|nic| nic.card.clone()).collect(),
        rng: true,
        console_log: Some(spec.dir.join(files::CONSOLE_LOG)),
        console_stdout: false,
        control_socket: Some(spec.dir.join(files::CONTROL)),
        shutdown_timeout_secs: VMM_SHUTDOWN_TIMEOUT_SECS,
        host_decompress: true,
        exit_status_file: Some(spec.dir.join(files::EXIT_STATUS)),
        // Capped by the VMM; its stdout and stderr (early errors, panics) also go to this file.
        log_file: Some(spec.dir.join(files::VMM_LOG)),
        pid_file: Some(spec.dir.join(files::PID)),
        confine: None,
    }
}

/// Writes the file atomically (a VMM never reads half a config).
pub fn write(config: &VmConfig, path: &Path) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(config).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vmm_reads_what_the_daemon_writes() {
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
            net: None,
        };
        let image = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
            rootfs: "/r".into(),
        };
        let c = vm_config(&spec, &image, &d.path().join("disk.img"));
        assert!(c.cmdline.contains("deskd.resolution=1280x720x24"));
        let p = d.path().join("vmm.json");
        write(&c, &p).unwrap();
        // Parsed by the VMM's own reader, as `deskd vmm --config` will.
        assert_eq!(VmConfig::from_file(&p).unwrap(), c);
        assert!(c.net.is_empty(), "no network, no card");
    }

    #[test]
    fn a_computer_with_a_network_gets_its_card_on_the_inherited_tap() {
        use crate::computers::backend::{GuestNic, VMM_TAP_FD};
        use crate::vmm::config::{NetRateLimit, TapSource};
        let d = tempfile::tempdir().unwrap();
        let tap = std::fs::File::open("/dev/null").unwrap();
        let card = crate::vmm::config::NetConfig {
            tap: TapSource::Fd(VMM_TAP_FD),
            mac: crate::vmm::config::MacAddr::new(crate::network::GUEST_MAC).unwrap(),
            limit: Some(NetRateLimit::from_megabits_per_sec(10)),
        };
        let spec = VmSpec {
            computer_id: "c".into(),
            instance_id: "0011aabb".into(),
            vcpus: 1,
            mem_mib: 1024,
            disk_size_gb: 8,
            resolution: "1280x720x24".into(),
            template_ref: "system/desktop@1.0.0".into(),
            dir: d.path().to_path_buf(),
            net: Some(GuestNic {
                tap: std::sync::Arc::new(tap.into()),
                card: card.clone(),
            }),
        };
        let image = GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
            rootfs: "/r".into(),
        };
        let c = vm_config(&spec, &image, &d.path().join("disk.img"));
        assert_eq!(c.net, vec![card]);
        let p = d.path().join("vmm.json");
        write(&c, &p).unwrap();
        assert_eq!(VmConfig::from_file(&p).unwrap(), c);
    }
}
