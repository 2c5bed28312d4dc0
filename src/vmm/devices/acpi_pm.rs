//! The hardware-reduced ACPI sleep registers (FADT `SLEEP_CONTROL_REG` / `SLEEP_STATUS_REG`):
//! the guest powers off by writing SLP_TYP = S5 with SLP_EN set to the control register.

use std::sync::Arc;

use super::bus::BusDevice;

pub mod persist;
use crate::vmm::acpi::S5_SLEEP_TYPE;
use crate::vmm::exit::{ExitNotifier, VmExit};

/// Offset of the control register (registered at `layout::ACPI_SLEEP_CONTROL_PORT`).
pub const CONTROL_OFFSET: u64 = 0;
/// Offset of the status register (`layout::ACPI_SLEEP_STATUS_PORT`), which reads as zero.
#[cfg(test)]
pub const STATUS_OFFSET: u64 = 1;
/// Number of ports.
pub const PORT_SPAN: u64 = 2;
/// SLP_EN in the sleep control register.
const SLEEP_ENABLE: u8 = 1 << 5;
/// SLP_TYP field of the sleep control register (bits 2-4).
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0x7;

/// The two sleep registers. Only S5 is announced in the DSDT, so other sleep types are ignored.
pub struct AcpiSleep {
    exit: Arc<ExitNotifier>,
}

impl AcpiSleep {
    pub fn new(exit: Arc<ExitNotifier>) -> Self {
        AcpiSleep { exit }
    }
}

impl AcpiSleep {
    /// Nothing to save; see [`persist`].
    pub fn save(&self) -> persist::AcpiPmState {
        persist::AcpiPmState {}
    }
}

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: never "woken" (WAK_STS clear); control reads back as zero.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if offset != CONTROL_OFFSET || value & SLEEP_ENABLE == 0 {
            return;
        }
        let sleep_type = (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
        if sleep_type == S5_SLEEP_TYPE {
            tracing::info!("guest powered off (ACPI S5)");
            self.exit.request(VmExit::PowerOff);
        } else {
            // Guest-triggerable, so never above debug.
            tracing::debug!("guest asked for unsupported sleep type {sleep_type}; ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_sleep_enable_powers_off() {
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let mut dev = AcpiSleep::new(exit.clone());
        // What Linux writes: (SLP_TYP << 2) & 0x1c | SLP_EN.
        let s5 = (S5_SLEEP_TYPE << 2) | SLEEP_ENABLE;
        dev.write(CONTROL_OFFSET, &[s5 & !SLEEP_ENABLE]); // type without enable
        dev.write(STATUS_OFFSET, &[s5]); // wrong register
        dev.write(CONTROL_OFFSET, &[(3 << 2) | SLEEP_ENABLE]); // S3: not offered
        dev.write(CONTROL_OFFSET, &[]);
        assert_eq!(exit.reason(), None);
        dev.write(CONTROL_OFFSET, &[s5]);
        assert_eq!(exit.reason(), Some(VmExit::PowerOff));
        let mut status = [0xff; 1];
        dev.read(STATUS_OFFSET, &mut status);
        assert_eq!(status, [0]);
    }
}
