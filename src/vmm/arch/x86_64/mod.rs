//! x86_64: loading a bzImage with the 64-bit boot protocol, vCPU boot state and CPUID.

pub mod boot;
pub mod cpuid;
pub mod payload;
pub mod regs;
