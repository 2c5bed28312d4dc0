//! Wiring the configured virtio devices onto the MMIO bus: one window and one GSI each (from
//! `layout`), the device's interrupt eventfd registered as an irqfd, and every queue's
//! notification eventfd registered as an ioeventfd on the window's QueueNotify register.
//!
//! Order (and so the guest's names): the disks in configuration order (vda, vdb, ...), then
//! vsock, then rng, then the network cards in configuration order (last, so that adding a card
//! moves no other device's window or GSI).

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::acpi::VirtioMmioWindow;
use super::config::{NetRateLimit, VmConfig};
use super::devices::bus::{Bus, BusError};
use super::devices::virtio::block::{self, Block, BlockConfig, BlockError, BlockHandle, GrowError};
use super::devices::virtio::net::{Net, NetError, NetHandle};
use super::devices::virtio::persist::PersistError;
use super::devices::virtio::rng::Rng;
use super::devices::virtio::transport::persist::TransportState;
use super::devices::virtio::transport::{MmioError, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use super::devices::virtio::vsock::{Vsock, VsockConfig, VsockError};
use super::devices::virtio::{MmioTransport, VirtioDevice};
use super::layout;
use super::memory::GuestMemory;

/// Why a virtio device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
    #[error("network card {index}: {source}")]
    Net { index: usize, source: NetError },
    #[error("the vsock guest CID {0} does not fit in 32 bits")]
    Cid(u64),
    #[error("cannot set up a virtio transport: {0}")]
    Transport(#[from] MmioError),
    #[error("cannot create an eventfd for a virtio device: {0}")]
    EventFd(std::io::Error),
    #[error("KVM refused to {what} for virtio device {index}: {source}")]
    Kvm {
        what: &'static str,
        index: usize,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("{0} virtio devices do not fit; at most {max}", max = layout::VIRTIO_MMIO_MAX_DEVICES)]
    TooMany(usize),
    #[error("the VM has no network card {card} (it has {count}; the first is 0)")]
    NoNetCard { card: usize, count: usize },
    #[error("the VM has no disk {disk} (it has {count}; the first is 0)")]
    NoDisk { disk: usize, count: usize },
    #[error("disk {disk} was not grown: {source}")]
    Grow { disk: usize, source: GrowError },
    #[error("cannot restore virtio device {index} from the snapshot: {source}")]
    Restore { index: usize, source: PersistError },
}

/// The attached devices; their windows go into the DSDT.
#[derive(Default)]
pub struct AttachedDevices {
    windows: Vec<VirtioMmioWindow>,
    /// Each device's transport, also reachable through the MMIO bus.
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// The disks' size handles, in configuration order (their transports come first).
    disks: Vec<BlockHandle>,
    /// The network cards' limit handles, in configuration order.
    nets: Vec<NetHandle>,
}

impl AttachedDevices {
    pub fn windows(&self) -> &[VirtioMmioWindow] {
        &self.windows
    }

    fn each(&self, mut f: impl FnMut(&mut MmioTransport)) {
        for t in &self.transports {
            // A poisoned lock still holds plain register state; use it (see Bus::read).
            f(&mut t.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Stops every device worker at a queue boundary (after the vCPUs were paused).
    pub fn pause(&self) {
        self.each(|t| t.pause());
    }

    /// Lets every device worker run again.
    pub fn resume(&self) {
        self.each(|t| t.resume());
    }

    /// Replaces the rate limit of network card `card`.
    pub fn set_net_limit(&self, card: usize, limit: NetRateLimit) -> Result<(), VirtioError> {
        let handle = self.nets.get(card).ok_or(VirtioError::NoNetCard {
            card,
            count: self.nets.len(),
        })?;
        handle.set_limit(Some(limit));
        tracing::info!("net {card}: limit now {limit:?}");
        Ok(())
    }

    /// Grows disk `disk` to `size_bytes` and tells the guest (see [`block::grow_live`]); returns
    /// the disk's size now.
    pub fn grow_disk(&self, disk: usize, size_bytes: u64) -> Result<u64, VirtioError> {
        let count = self.disks.len();
        let (Some(handle), Some(transport)) = (self.disks.get(disk), self.transports.get(disk))
        else {
            return Err(VirtioError::NoDisk { disk, count });
        };
        // A poisoned lock still holds plain register state; use it (see Bus::read).
        let mut transport = transport.lock().unwrap_or_else(|e| e.into_inner());
        block::grow_live(&mut transport, handle, size_bytes)
            .map_err(|source| VirtioError::Grow { disk, source })
    }

    /// Each card's limit in force, in configuration order (for the snapshot's configuration).
    pub fn net_limits(&self) -> Vec<Option<NetRateLimit>> {
        self.nets.iter().map(|h| h.limit()).collect()
    }

    /// Every transport's state, in attach order; call while paused.
    pub fn save(&self) -> Vec<TransportState> {
        let mut states = Vec::with_capacity(self.transports.len());
        self.each(|t| states.push(t.save()));
        states
    }

    /// Restores the saved transports onto these freshly attached ones (same order and kinds).
    pub fn restore(&self, saved: &[TransportState]) -> Result<(), VirtioError> {
        if saved.len() != self.transports.len() {
            return Err(VirtioError::Restore {
                index: saved.len().min(self.transports.len()),
                source: PersistError::Mismatch {
                    what: "number of virtio devices",
                    saved: saved.len().to_string(),
                    here: self.transports.len().to_string(),
                    hint: "restore with the devices the snapshot was taken with",
                },
            });
        }
        for (index, (t, state)) in self.transports.iter().zip(saved).enumerate() {
            t.lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore(state)
                .map_err(|source| VirtioError::Restore { index, source })?;
        }
        Ok(())
    }
}

/// The device models in guest order, the disks' size handles and the network cards' limit
/// handles.
struct Models {
    devices: Vec<Box<dyn VirtioDevice>>,
    disks: Vec<BlockHandle>,
    nets: Vec<NetHandle>,
}

/// Builds the device models `config` asks for, in guest order, and the disks' and network
/// cards' handles.
fn device_models(config: &VmConfig) -> Result<Models, VirtioError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let mut disks = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        let block = Block::new(BlockConfig {
            path: disk.path.clone(),
            read_only: disk.read_only,
            serial: format!("deskd-disk{i}"),
        })?;
        disks.push(block.handle());
        devices.push(Box::new(block));
    }
    if let Some(vsock) = &config.vsock {
        let guest_cid =
            u32::try_from(vsock.guest_cid).map_err(|_| VirtioError::Cid(vsock.guest_cid))?;
        devices.push(Box::new(Vsock::new(VsockConfig {
            guest_cid,
            uds_path: vsock.socket.clone(),
        })?));
    }
    if config.rng {
        devices.push(Box::new(Rng::new()));
    }
    let mut nets = Vec::new();
    for (index, card) in config.net.iter().enumerate() {
        let net = Net::new(card).map_err(|source| VirtioError::Net { index, source })?;
        nets.push(net.handle());
        devices.push(Box::new(net));
    }
    Ok(Models {
        devices,
        disks,
        nets,
    })
}

/// Creates and attaches every virtio device `config` asks for.
pub fn attach(
    vm_fd: &VmFd,
    mem: &GuestMemory,
    mmio: &mut Bus,
    config: &VmConfig,
) -> Result<AttachedDevices, VirtioError> {
    let Models {
        devices,
        disks,
        nets,
    } = device_models(config)?;
    if devices.len() > layout::VIRTIO_MMIO_MAX_DEVICES {
        return Err(VirtioError::TooMany(devices.len()));
    }
    let mut attached = AttachedDevices {
        disks,
        nets,
        ..AttachedDevices::default()
    };
    for (index, model) in devices.into_iter().enumerate() {
        let kvm = |what: &'static str| {
            move |source| VirtioError::Kvm {
                what,
                index,
                source,
            }
        };
        let base = layout::virtio_mmio_base(index);
        let gsi = layout::virtio_gsi(index);
        let irq = EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        let transport = MmioTransport::new(
            model,
            mem.clone(),
            irq.try_clone().map_err(VirtioError::EventFd)?,
        )?;
        vm_fd
            .register_irqfd(&irq, gsi)
            .map_err(kvm("register the interrupt"))?;
        for (queue, evt) in transport.queue_evts().iter().enumerate() {
            vm_fd
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    queue as u32,
                )
                .map_err(kvm("register a queue notification"))?;
        }
        tracing::debug!(
            "virtio device {index} (type {}) at {base:#x}, GSI {gsi}",
            transport.device_type()
        );
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(base, MMIO_WINDOW_SIZE, transport.clone())?;
        attached.transports.push(transport);
        attached.windows.push(VirtioMmioWindow {
            base,
            size: MMIO_WINDOW_SIZE,
            gsi,
        });
    }
    Ok(attached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::config::{DiskConfig, VmConfig};

    fn config() -> VmConfig {
        VmConfig {
            kernel: "/k".into(),
            initrd: None,
            cmdline: String::new(),
            disks: Vec::new(),
            vcpus: 1,
            memory_mib: 128,
            vsock: None,
            net: Vec::new(),
            rng: true,
            console_log: None,
            console_stdout: false,
            control_socket: None,
            shutdown_timeout_secs: 1,
            host_decompress: true,
            exit_status_file: None,
            log_file: None,
            pid_file: None,
            confine: None,
        }
    }

    #[test]
    fn models_follow_the_documented_order() {
        let dir = std::env::temp_dir().join(format!("deskd-virtio-wiring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("d.img");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        let mut c = config();
        c.disks = vec![
            DiskConfig {
                path: disk.clone(),
                read_only: true,
            },
            DiskConfig {
                path: disk,
                read_only: false,
            },
        ];
        c.vsock = Some(crate::vmm::config::VsockConfig {
            socket: dir.join("v.sock"),
            guest_cid: 3,
        });
        let types: Vec<u32> = device_models(&c)
            .unwrap()
            .devices
            .iter()
            .map(|d| d.device_type())
            .collect();
        // virtio ids: block 2, vsock 19, rng 4.
        assert_eq!(types, vec![2, 2, 19, 4]);
        c.vsock.as_mut().unwrap().guest_cid = 1 << 33;
        assert!(matches!(device_models(&c), Err(VirtioError::Cid(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_network_card_without_its_tap_is_reported_with_its_index() {
        let mut c = config();
        c.net = vec![crate::vmm::config::NetConfig {
            tap: crate::vmm::config::TapSource::Fd(1_000_000),
            mac: "52:54:00:00:00:01".parse().unwrap(),
            limit: None,
        }];
        let err = device_models(&c).err().unwrap();
        assert!(matches!(err, VirtioError::Net { index: 0, .. }), "{err}");
        assert!(err.to_string().contains("1000000"), "{err}");
        assert!(AttachedDevices::default()
            .set_net_limit(0, NetRateLimit::default())
            .unwrap_err()
            .to_string()
            .contains("no network card 0"));
        assert!(AttachedDevices::default()
            .grow_disk(0, 1 << 30)
            .unwrap_err()
            .to_string()
            .contains("no disk 0"));
    }

    #[test]
    fn unreadable_disk_is_reported() {
        let mut c = config();
        c.disks = vec![DiskConfig {
            path: "/nonexistent/disk.img".into(),
            read_only: false,
        }];
        let err = device_models(&c).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
    }
}
