//! Emulated devices of the VMM.

pub mod bus;
pub mod virtio;
