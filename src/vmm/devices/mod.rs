//! Emulated devices of the VMM.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;

#[cfg(test)]
mod console_fuzz;
