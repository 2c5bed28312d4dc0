//! The i8042 keyboard controller, reduced to what a VM needs: the CPU reset line. Writing 0xfe
//! (pulse output line 0) to the command port is how Linux reboots with `reboot=k`, and its
//! fallback when ACPI reset is absent.

use std::sync::Arc;

use super::bus::BusDevice;

pub mod persist;
use crate::vmm::exit::{ExitNotifier, VmExit};

/// Offset of the command/status port (0x64) from the data port (0x60), where this is registered.
pub const COMMAND_OFFSET: u64 = 4;
/// Number of ports from the data port to the command port inclusive.
pub const PORT_SPAN: u64 = 5;
/// "Pulse output line 0 low": resets the CPU.
const CMD_RESET_CPU: u8 = 0xfe;

/// The controller. Status reads say "no data, input buffer empty", so a guest polling before
/// sending a command never waits.
pub struct I8042 {
    exit: Arc<ExitNotifier>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitNotifier>) -> Self {
        I8042 { exit }
    }
}

impl I8042 {
    /// Nothing to save; see [`persist`].
    pub fn save(&self) -> persist::I8042State {
        persist::I8042State {}
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            tracing::info!("guest reset the CPU through the i8042");
            self.exit.request(VmExit::Reboot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_a_reboot() {
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status[0], 0, "input buffer empty");
        dev.write(0, &[0xfe]); // data port: not a command
        dev.write(COMMAND_OFFSET, &[0xd1]); // another command
        dev.write(COMMAND_OFFSET, &[]);
        assert_eq!(exit.reason(), None);
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(exit.reason(), Some(VmExit::Reboot));
    }
}
