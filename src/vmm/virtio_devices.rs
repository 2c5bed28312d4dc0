//! Wiring the configured virtio devices onto the MMIO bus, with their irqfd and ioeventfds.

use vmm_sys_util::eventfd::EventFd;

use super::acpi::VirtioMmioWindow;
use super::config::VmConfig;
use super::devices::bus::Bus;
use super::memory::GuestMemory;

/// Why a virtio device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error(
        "this build has no virtio device models yet; run without disks and vsock, with --no-rng"
    )]
    NotAvailable,
}

/// The attached devices; their windows go into the DSDT.
#[derive(Default)]
pub struct AttachedDevices {
    windows: Vec<VirtioMmioWindow>,
    _irq_evts: Vec<EventFd>,
}

impl AttachedDevices {
    pub fn windows(&self) -> &[VirtioMmioWindow] {
        &self.windows
    }
}

/// Creates and attaches every virtio device `config` asks for.
pub fn attach(
    _vm_fd: &kvm_ioctls::VmFd,
    _mem: &GuestMemory,
    _mmio: &mut Bus,
    config: &VmConfig,
) -> Result<AttachedDevices, VirtioError> {
    if config.virtio_device_count() > 0 {
        return Err(VirtioError::NotAvailable);
    }
    Ok(AttachedDevices::default())
}
