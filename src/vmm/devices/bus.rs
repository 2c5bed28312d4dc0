//! The contract between the VMM's exit loop and the devices it dispatches MMIO and port I/O to,
//! and the bus that does the dispatching.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reached through MMIO or port I/O. `offset` is relative to the start of the range the
/// device was registered at. Accesses come from the guest and are untrusted: any offset and any
/// `data.len()` (1, 2, 4 or 8 in practice) must be handled without panicking.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`; unknown registers read as zero.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`; unknown registers ignore the write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus (all vCPU threads) and whoever else drives it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a device could not be put on a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap { base: u64, len: u64 },
}

/// An address space (port I/O or MMIO) with devices at fixed, non-overlapping ranges.
#[derive(Default)]
pub struct Bus {
    /// Keyed by base address: (length, device).
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`. The same device may be registered at several
    /// ranges (offsets are relative to each range).
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        let clashes_before = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(b, (l, _))| b + l > base);
        if clashes_before {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` in its range.
    fn find(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (base, (len, device)) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < *len).then_some((device, offset))
    }

    /// Dispatches a read; `false` if nothing is mapped at `addr` (caller decides what it reads as).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((device, offset)) => {
                // A device whose lock was poisoned by a panicking thread is still used: its state
                // is plain data and the VMM prefers a confused device to a dead VM.
                let mut dev = device.lock().unwrap_or_else(|e| e.into_inner());
                dev.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; `false` if nothing is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((device, offset)) => {
                let mut dev = device.lock().unwrap_or_else(|e| e.into_inner());
                dev.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }
    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_relative_offsets() {
        let a = Arc::new(Mutex::new(Probe::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, a.clone()).unwrap();
        bus.insert(0x60, 1, a.clone()).unwrap();
        let mut byte = [0u8; 1];
        assert!(bus.read(0x3fd, &mut byte));
        assert_eq!(byte[0], 5);
        assert!(bus.write(0x60, &[0xfe]));
        assert_eq!(a.lock().unwrap().last_write, Some((0, vec![0xfe])));
        assert!(!bus.read(0x400, &mut byte));
        assert!(!bus.read(0x3f7, &mut byte));
        assert!(!bus.write(0x61, &[1]));
    }

    #[test]
    fn overlapping_or_empty_ranges_are_refused() {
        let dev = || Arc::new(Mutex::new(Probe::default())) as SharedDevice;
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x1000, dev()).unwrap();
        assert!(bus.insert(0x1fff, 1, dev()).is_err());
        assert!(bus.insert(0x0800, 0x801, dev()).is_err());
        assert!(bus.insert(0x0f00, 0x2000, dev()).is_err());
        assert!(bus.insert(0x5000, 0, dev()).is_err());
        assert!(bus.insert(u64::MAX, 2, dev()).is_err());
        bus.insert(0x2000, 0x1000, dev()).unwrap();
        bus.insert(0x0800, 0x800, dev()).unwrap();
    }
}
