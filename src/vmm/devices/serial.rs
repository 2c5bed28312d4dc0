//! COM1: a 16550A UART (vm-superio) whose output goes to the console log file and, optionally,
//! the VMM's stdout. Guest input is not wired: the console is for logs; the guest agent speaks
//! over vsock.

use crate::vmm::capped_log::{self, CappedLog};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

pub mod persist;

/// Why the serial console could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("cannot open the console log {path}: {source}")]
    OpenLog { path: PathBuf, source: io::Error },
    #[error("the snapshot's serial port state is invalid: {0}")]
    Restore(String),
}

/// Raises the UART's interrupt by writing the eventfd registered as COM1's irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where console bytes go. Write failures (full disk, closed stdout) drop the bytes: the guest
/// must never stall or crash the VMM because of its console.
pub struct ConsoleOutput {
    log: Option<CappedLog>,
    stdout: bool,
    reported_error: bool,
}

impl ConsoleOutput {
    /// Appends to `log` (created if missing; capped, see [`CappedLog`]) and/or copies to stdout.
    pub fn new(log: Option<&Path>, stdout: bool) -> Result<Self, SerialError> {
        let log = match log {
            Some(path) => Some(
                CappedLog::open(path, capped_log::DEFAULT_CAP_BYTES).map_err(|source| {
                    SerialError::OpenLog {
                        path: path.to_path_buf(),
                        source,
                    }
                })?,
            ),
            None => None,
        };
        Ok(ConsoleOutput {
            log,
            stdout,
            reported_error: false,
        })
    }

    fn report(&mut self, what: &str, e: io::Error) {
        if !self.reported_error {
            tracing::warn!("console output to {what} failed ({e}); further bytes may be lost");
            self.reported_error = true;
        }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(log) = self.log.as_mut() {
            if let Err(e) = log.write_all(buf) {
                self.report("the log file", e);
            }
        }
        if self.stdout {
            let mut out = io::stdout().lock();
            if let Err(e) = out.write_all(buf).and_then(|_| out.flush()) {
                self.report("stdout", e);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// COM1 on the port I/O bus.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOutput>,
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: ConsoleOutput) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// The UART's registers for a snapshot.
    pub fn save(&self) -> persist::SerialSnapshot {
        persist::SerialSnapshot::from(&self.uart.state())
    }

    /// A UART in the saved state (a pending interrupt is raised again).
    pub fn restore(
        irq: EventFd,
        out: ConsoleOutput,
        state: &persist::SerialSnapshot,
    ) -> Result<Self, SerialError> {
        let uart = Serial::from_state(
            &vm_superio::serial::SerialState::from(state),
            IrqTrigger(irq),
            vm_superio::serial::NoEvents,
            out,
        )
        .map_err(|e| SerialError::Restore(format!("{e:?}")))?;
        Ok(SerialDevice { uart })
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(offset), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) else {
            return;
        };
        if let Err(e) = self.uart.write(offset, value) {
            tracing::debug!("serial write: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn bytes_written_to_the_data_register_reach_the_log_and_raise_the_irq() {
        let path = std::env::temp_dir().join(format!("deskd-serial-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(
            irq.try_clone().unwrap(),
            ConsoleOutput::new(Some(&path), false).unwrap(),
        );
        dev.write(1, &[0x02]); // IER: transmitter-empty interrupt on
        let _ = irq.read();
        for b in b"hello\n" {
            // The driver reads IIR to acknowledge the previous THR-empty interrupt.
            let mut iir = [0u8; 1];
            dev.read(2, &mut iir);
            dev.write(0, &[*b]);
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
        assert!(irq.read().unwrap() >= 1, "THR-empty interrupt raised");
        // Line status: transmitter empty bits set, the guest never waits.
        let mut lsr = [0u8; 1];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
        // Odd accesses are harmless.
        let mut wide = [0xffu8; 4];
        dev.read(5, &mut wide);
        assert_eq!(&wide[1..], &[0, 0, 0]);
        dev.read(1 << 40, &mut wide);
        dev.write(1 << 40, &[1]);
        dev.write(0, &[]);
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_restored_uart_has_the_saved_registers_and_keeps_logging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(
            irq.try_clone().unwrap(),
            ConsoleOutput::new(Some(&path), false).unwrap(),
        );
        dev.write(3, &[0x83]); // LCR: DLAB on, 8 data bits
        dev.write(0, &[0x0c]); // divisor low: 9600 baud
        dev.write(3, &[0x03]); // DLAB off
        dev.write(7, &[0x5a]); // scratch
        dev.write(1, &[0x02]); // IER: THR empty
        dev.write(0, b"a");
        let saved = dev.save();
        let bytes = postcard::to_stdvec(&saved).unwrap();
        let saved: persist::SerialSnapshot = postcard::from_bytes(&bytes).unwrap();
        drop(dev);
        let _ = irq.read();
        let mut restored = SerialDevice::restore(
            irq.try_clone().unwrap(),
            ConsoleOutput::new(Some(&path), false).unwrap(),
            &saved,
        )
        .unwrap();
        let read = |d: &mut SerialDevice, off: u64| {
            let mut b = [0u8; 1];
            d.read(off, &mut b);
            b[0]
        };
        assert_eq!(read(&mut restored, 7), 0x5a);
        assert_eq!(read(&mut restored, 3), 0x03);
        assert_eq!(read(&mut restored, 1), 0x02);
        restored.write(3, &[0x83]);
        assert_eq!(read(&mut restored, 0), 0x0c, "divisor kept");
        restored.write(3, &[0x03]);
        // The THR-empty interrupt that was pending is raised again.
        assert!(irq.read().unwrap() >= 1);
        restored.write(0, b"b");
        assert_eq!(std::fs::read(&path).unwrap(), b"ab");
        // A FIFO longer than the UART's is refused, not trusted.
        let mut bad = saved.clone();
        bad.in_buffer = vec![0; 1000];
        let err = SerialDevice::restore(irq, ConsoleOutput::new(None, false).unwrap(), &bad);
        assert!(err.is_err());
    }

    #[test]
    fn log_in_missing_directory_is_a_clear_error() {
        let err = ConsoleOutput::new(Some(Path::new("/nonexistent/dir/console.log")), false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/dir/console.log"));
    }
}
