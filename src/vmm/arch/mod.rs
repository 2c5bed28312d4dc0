//! Architecture-specific parts of the VMM (only x86_64 for now).

pub mod x86_64;
