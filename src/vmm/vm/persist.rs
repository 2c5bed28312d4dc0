//! The VM-wide KVM state in a snapshot: the in-kernel irqchip (both PICs and the IOAPIC), the
//! PIT, and the KVM clock.
//!
//! The clock is restored as saved, not advanced by the time the VM spent on disk (what
//! Firecracker and Cloud Hypervisor do too): the guest's TSC is restored as saved as well, and
//! moving kvmclock alone would make the two clocks disagree. So the guest's monotonic clock goes
//! on from the instant of the snapshot, as if it had been paused; its wall clock is behind by the
//! time it was away until the guest agent sets it from the host after the restore.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// Why the VM's state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("KVM refused to {what}: {source}")]
pub struct VmPersistError {
    what: &'static str,
    source: kvm_ioctls::Error,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmPersistError {
    move |source| VmPersistError { what, source }
}

#[derive(Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("clock_ns", &self.clock.clock)
            .finish_non_exhaustive()
    }
}

fn read_chip(vm: &VmFd, chip_id: u32, what: &'static str) -> Result<kvm_irqchip, VmPersistError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(kvm(what))?;
    Ok(chip)
}

/// Reads the VM's state; the vCPUs must be paused.
pub fn save(vm: &VmFd) -> Result<VmState, VmPersistError> {
    Ok(VmState {
        pic_master: read_chip(vm, KVM_IRQCHIP_PIC_MASTER, "read the master PIC")?,
        pic_slave: read_chip(vm, KVM_IRQCHIP_PIC_SLAVE, "read the slave PIC")?,
        ioapic: read_chip(vm, KVM_IRQCHIP_IOAPIC, "read the IOAPIC")?,
        pit: vm.get_pit2().map_err(kvm("read the PIT"))?,
        clock: vm.get_clock().map_err(kvm("read the KVM clock"))?,
    })
}

/// Writes the saved state into a VM whose irqchip and PIT were just created.
pub fn restore(vm: &VmFd, state: &VmState) -> Result<(), VmPersistError> {
    vm.set_pit2(&state.pit).map_err(kvm("set the PIT"))?;
    let mut chips = [state.pic_master, state.pic_slave, state.ioapic];
    for (chip, id) in chips.iter_mut().zip([
        KVM_IRQCHIP_PIC_MASTER,
        KVM_IRQCHIP_PIC_SLAVE,
        KVM_IRQCHIP_IOAPIC,
    ]) {
        // The saved id is what was asked for; set it again so a corrupt id cannot redirect.
        chip.chip_id = id;
        vm.set_irqchip(chip).map_err(kvm("set the irqchip"))?;
    }
    Ok(())
}

/// Sets the KVM clock to its saved value (see the module docs); done last, just before the vCPUs
/// may run.
pub fn restore_clock(vm: &VmFd, state: &VmState) -> Result<(), VmPersistError> {
    // Only the value is given back: the flags KVM reported (TSC_STABLE, REALTIME, HOST_TSC) are
    // outputs, and REALTIME as an input would advance the clock, which we do not want.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(kvm("set the KVM clock"))
}
