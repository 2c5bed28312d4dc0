//! Fuzz target: the guest's console (the 8250 UART) and the other port-I/O devices a guest can
//! poke (i8042, ACPI sleep control), driven by any sequence of reads and writes of any width at
//! any offset; the console writes to a real (capped) log file.

use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempdir::TempDir;

use super::acpi_pm::AcpiSleep;
use super::bus::BusDevice;
use super::i8042::I8042;
use super::serial::{ConsoleOutput, SerialDevice};
use super::virtio::fuzzing::{self, Input};
use crate::vmm::exit::ExitNotifier;

#[test]
fn fuzz_console_and_port_devices() {
    let dir = TempDir::new_with_prefix("/tmp/deskd-console-fuzz-").expect("temp dir");
    let log = dir.as_path().join("console.log");
    let reach = fuzzing::Reach::default();
    bolero::check!()
        .with_test_time(fuzzing::TEST_TIME)
        .for_each(|data: &[u8]| {
            reach.input();
            let logged_before = std::fs::metadata(&log).map_or(0, |m| m.len());
            let mut input = Input::new(data);
            let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
            let out = ConsoleOutput::new(Some(&log), false).expect("console log");
            let exit = Arc::new(ExitNotifier::new().expect("exit notifier"));
            let mut devices: [Box<dyn BusDevice>; 3] = [
                Box::new(SerialDevice::new(irq, out)),
                Box::new(I8042::new(exit.clone())),
                Box::new(AcpiSleep::new(exit)),
            ];
            while !input.is_empty() {
                let device = &mut devices[usize::from(input.u8() % 3)];
                let offset = match input.u8() % 4 {
                    0 => input.u64(),
                    _ => u64::from(input.u8() % 16),
                };
                let width = usize::from(input.u8() % 9);
                if input.u8().is_multiple_of(2) {
                    let mut buf = [0u8; 8];
                    device.read(offset, &mut buf[..width]);
                } else {
                    let bytes = input.bytes(width);
                    device.write(offset, bytes);
                }
            }
            drop(devices);
            if std::fs::metadata(&log).map_or(0, |m| m.len()) != logged_before {
                reach.deep();
            }
        });
    reach.report("fuzz_console_and_port_devices", "wrote to the console log");
}
