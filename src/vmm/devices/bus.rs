//! The contract between the VMM's exit loop and the devices it dispatches MMIO and port I/O to.

/// A device reached through MMIO or port I/O. `offset` is relative to the start of the range the
/// device was registered at. Accesses come from the guest and are untrusted: any offset and any
/// `data.len()` (1, 2, 4 or 8 in practice) must be handled without panicking.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`; unknown registers read as zero.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`; unknown registers ignore the write.
    fn write(&mut self, offset: u64, data: &[u8]);
}
