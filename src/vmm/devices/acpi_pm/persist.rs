//! What the ACPI sleep registers keep in a snapshot: nothing (writes act at once, reads are
//! zero). A struct all the same, so a later format version can add fields.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {}
